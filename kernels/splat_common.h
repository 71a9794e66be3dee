// Shared constants and data layouts for the CPU splatting kernels.
// Header-only and free of ATen so the per-ISA tile translation units compile fast.
#pragma once

#include <cmath>
#include <cstdint>

namespace splat {

constexpr int kTile = 16;                 // tile side in pixels (gsplat's default tile_size)
constexpr int kTilePixels = kTile * kTile;
constexpr float kAlphaThreshold = 1.0f / 255.0f;  // skip splats fainter than this
constexpr double kLog2AlphaThreshold = -7.994353436858858;  // log2(1/255): the tile loops test exponents
constexpr float kAlphaMax = 0.999f;       // gsplat 1.5 clamps alpha here
constexpr float kTransmittanceMin = 1e-4f;  // a pixel is done once T would drop to this
constexpr int kMaxChannels = 4;           // channels per compositing pass

// Visible splats are copied, in (image, depth) order, into one 16-scalar record each, so the
// tile loops read one cache line per splat instead of five scattered arrays.
namespace rec {
constexpr int kMeanX = 0, kMeanY = 1;
constexpr int kConicA = 2, kConicB = 3, kConicC = 4;  // inverse 2D covariance [[a, b], [b, c]]
constexpr int kOpacity = 5;
constexpr int kColor = 6;      // kMaxChannels slots
// Pixels of a row at offset dy = mean_y - pixel_y that can reach alpha >= 1/255 lie within
// pixel_x = mean_x - slope * dy +- sqrt(q0 - q1 * dy^2); none when that is negative.
constexpr int kSlopeX = 10;
constexpr int kSpanQ0 = 11;
constexpr int kSpanQ1 = 12;
constexpr int kRadiusX = 13, kRadiusY = 14;  // the projection's integer radii, for the tile range
constexpr int kLog2Opacity = 15;  // the tile loops evaluate alpha as 2^(log2(opacity) - sigma log2(e))
constexpr int kSize = 16;
}  // namespace rec

// Per-splat gradient record (same 16-scalar stride), accumulated per thread.
namespace grad {
constexpr int kMeanX = 0, kMeanY = 1, kConicA = 2, kConicB = 3, kConicC = 4, kOpacity = 5;
constexpr int kAbsX = 6, kAbsY = 7;
constexpr int kColor = 8;  // kMaxChannels slots
constexpr int kSize = 16;
}  // namespace grad

template <typename T>
struct TileData {
  const T* splats = nullptr;             // (n_visible, rec::kSize)
  const int32_t* tile_offsets = nullptr; // (I * TH * TW + 1,) start of each tile's list
  const int32_t* tile_lists = nullptr;   // (n_isects,) record ids, front to back per tile
  const uint32_t* tile_cells = nullptr;  // (n_isects,) the entry's half-rows that can reach 1/255
  const T* backgrounds = nullptr;        // (I, D) or null
  int D = 0, width = 0, height = 0, tiles_x = 0, tiles_y = 0;

  // forward outputs
  T* out_colors = nullptr;      // (I, H, W, D)
  T* out_alphas = nullptr;      // (I, H, W)
  T* out_T = nullptr;           // (I, H, W) final transmittance, kept for the backward
  int32_t* out_last = nullptr;  // (I, H, W) tile-list position where the pixel finished (list end if never)

  // backward inputs (the forward outputs above are read back)
  const T* v_out_colors = nullptr;  // (I, H, W, D)
  const T* v_out_alphas = nullptr;  // (I, H, W)
  bool absgrad = false;             // also sum |dL/d mean2d| per splat (grad::kAbsX/Y)
};

}  // namespace splat
