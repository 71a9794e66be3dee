// Per-tile front-to-back compositing (forward) and its back-to-front adjoint (backward).
//
// Included by one translation unit per instruction set (raster_tiles_<isa>.cpp), each defining
// SPLAT_ISA to a distinct namespace; the ISA is picked at run time. Everything here has internal
// linkage and calls no library templates, so no AVX code can leak into the portable build.
//
// Work layout: a tile is 16 rows of 16 pixels; each splat is applied to the 8-pixel half-rows
// ("cells") where it can reach alpha >= 1/255, found once per tile list entry at binning
// (rect_cells) and read from TileData::tile_cells. A half-row is one 8-lane vector (GCC vector extensions: the
// compiler maps it to one AVX register, or two SSE registers in the portable build), so the
// lane code is branch-free and vectorised whatever the floating-point flags.

#ifndef SPLAT_ISA
#error "define SPLAT_ISA before including raster_tiles.h"
#endif

namespace splat {
namespace SPLAT_ISA {
namespace {

constexpr int kLanes = 8;

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t Mask __attribute__((vector_size(32)));
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t Mask __attribute__((vector_size(64)));
};
typedef int32_t IndexV __attribute__((vector_size(32)));

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void store(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <typename V, typename T>
inline V splat_v(T s) {
  V v = {};
  return v + s;
}

#if defined(SPLAT_X86_INTRINSICS)
// Float lanes <-> the intrinsics' register type (same 32 bytes).
inline __m256 m256(Lanes<float>::V v) {
  __m256 r;
  __builtin_memcpy(&r, &v, 32);
  return r;
}
inline Lanes<float>::V lanes(__m256 v) {
  Lanes<float>::V r;
  __builtin_memcpy(&r, &v, 32);
  return r;
}
#endif

// 2^x for float lanes: x = n + r with n = round(x) (exact, so no Cody-Waite split), then a
// degree-6 polynomial for 2^r on [-0.5, 0.5] (about 1 ulp) in Estrin's form: the compositing
// loops are bound by this dependency chain, so a shorter chain is worth an extra multiply. Callers
// drop the lanes where x is below -126 or above 128, whatever this returns there.
inline Lanes<float>::V exp2_v(Lanes<float>::V x) {
  typedef Lanes<float>::V V;
  typedef Lanes<float>::Mask I;
#if defined(SPLAT_X86_INTRINSICS)
  const V n = lanes(_mm256_round_ps(m256(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const I ni = __builtin_convertvector(n, I);
#else
  // clamped first (those lanes are dropped anyway): converting a float outside the int range, or
  // NaN, is undefined; truncation of the positive x + 128.5 rounds to nearest
  const V xc = x > -127.0f ? (x < 128.0f ? x : V{} + 128.0f) : V{} - 127.0f;
  const I ni = __builtin_convertvector(xc + 128.5f, I) - 128;
  const V n = __builtin_convertvector(ni, V);
#endif
  const V r = x - n;
  const V r2 = r * r;
  const V p01 = r * 2.4022647929e-1f + 6.9314720285e-1f;
  const V p23 = r * 9.6184373577e-3f + 5.5503324712e-2f;
  const V p45 = r * 1.5353361883e-4f + 1.3398874403e-3f;
  const V p = p45 * (r2 * r2) + (p23 * r2 + p01);
  const V y = r * p + 1.0f;
  const I bits = (ni + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(V));
  return y * scale;
}

// Double lanes are for float64 checks (gradcheck); exactness matters there, not speed.
inline Lanes<double>::V exp2_v(Lanes<double>::V x) {
  Lanes<double>::V r;
  for (int i = 0; i < kLanes; ++i) r[i] = std::exp2(x[i]);
  return r;
}

inline Lanes<float>::V sqrt_v(Lanes<float>::V x) {
#if defined(SPLAT_X86_INTRINSICS)
  return lanes(_mm256_sqrt_ps(m256(x)));
#else
  Lanes<float>::V r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrtf(x[i]);
  return r;
#endif
}

inline Lanes<double>::V sqrt_v(Lanes<double>::V x) {
  Lanes<double>::V r;
  for (int i = 0; i < kLanes; ++i) r[i] = __builtin_sqrt(x[i]);
  return r;
}

// Lane-wise min / max (b where a is NaN); one instruction instead of a compare and a blend.
inline Lanes<float>::V min_v(Lanes<float>::V a, Lanes<float>::V b) {
#if defined(SPLAT_X86_INTRINSICS)
  return lanes(_mm256_min_ps(m256(a), m256(b)));
#else
  return a < b ? a : b;
#endif
}

inline Lanes<float>::V max_v(Lanes<float>::V a, Lanes<float>::V b) {
#if defined(SPLAT_X86_INTRINSICS)
  return lanes(_mm256_max_ps(m256(a), m256(b)));
#else
  return a > b ? a : b;
#endif
}

inline Lanes<double>::V max_v(Lanes<double>::V a, Lanes<double>::V b) { return a > b ? a : b; }

inline Lanes<double>::V min_v(Lanes<double>::V a, Lanes<double>::V b) { return a < b ? a : b; }

template <typename T>
inline T hsum(const typename Lanes<T>::V& v) {
  T s = 0;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// Lane j of the result is the sum of all lanes of v[j] (three butterfly levels).
template <typename V>
inline V reduce8(const V (&v)[8]) {
  V t[4], u[2];
  for (int i = 0; i < 4; ++i)
    t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// Bit i set where lane i of the mask is set.
template <typename M>
inline uint32_t lane_bits(const M& m) {
#if defined(SPLAT_X86_INTRINSICS)
  if constexpr (sizeof(M) == 32) {
    __m256 v;
    __builtin_memcpy(&v, &m, 32);
    return static_cast<uint32_t>(_mm256_movemask_ps(v));
  } else {
    __m256d lo, hi;
    __builtin_memcpy(&lo, &m, 32);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&m) + 32, 32);
    return static_cast<uint32_t>(_mm256_movemask_pd(lo)) | (static_cast<uint32_t>(_mm256_movemask_pd(hi)) << 4);
  }
#else
  uint32_t bits = 0;
  for (int i = 0; i < kLanes; ++i) bits |= (m[i] ? 1u : 0u) << i;
  return bits;
#endif
}

// Margin (pixels) added to the analytic half-widths; rounding in the kernels is far smaller.
constexpr float kPixelMargin = 1e-3f;
constexpr int kPrefetch = 6;  // splat records fetched this many list entries ahead

// Which 8-pixel half-rows of the tile can hold a pixel with alpha >= 1/255 for this splat:
// bit r of cells[h] for row r, half h. A row's reachable pixels form one interval,
// centre - slope*dy +- sqrt(q0 - q1 dy^2) (see pack_records); all 16 rows are tested at once.
template <typename T>
inline void splat_cells(const T* s, const T (&row_dy)[kTile], uint32_t cells[2]) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::Mask Mask;
  const T q0 = s[rec::kSpanQ0], q1 = s[rec::kSpanQ1], slope = s[rec::kSlopeX];
  const T centre = s[rec::kMeanX];  // already shifted to tile-local lane units by the caller
  const V zero = splat_v<V>(T(0));
  cells[0] = cells[1] = 0;
  for (int half = 0; half < 2; ++half) {
    const V dy = load<V>(row_dy + half * kLanes);
    const V disc = q0 - q1 * dy * dy;
    const Mask reachable = disc >= zero;
    const V half_width = sqrt_v(reachable ? disc : zero) + static_cast<T>(kPixelMargin);
    const V mid = centre - slope * dy;
    const V lo = mid - half_width, hi = mid + half_width;
    const Mask left = reachable & (lo <= T(kLanes - 1)) & (hi >= zero);
    const Mask right = reachable & (lo <= T(kTile - 1)) & (hi >= T(kLanes));
    cells[0] |= lane_bits(left) << (half * kLanes);
    cells[1] |= lane_bits(right) << (half * kLanes);
  }
}

// log2(alpha before the clamp) = log2(opacity) - sigma log2(e) for one splat, where
// sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2, split into the terms that depend only on the
// half-row's lanes (dx) and only on the row (dy), so that a cell costs one FMA and one add:
// nb[h] * dy[row] + na[h] + nc[row]. The opacity rides in na, so alpha is a single 2^x.
template <typename V, typename T>
struct Log2Alpha {
  V na[2], nb[2];
  alignas(64) T nc[kTile];
  const T (&dy)[kTile];
  Log2Alpha(const V (&dx)[2], const T (&row_dy)[kTile], T ca, T cb, T cc, T log2_opacity) : dy(row_dy) {
    const T l2e = T(1.4426950408889634);
    for (int h = 0; h < 2; ++h) {
      na[h] = (T(-0.5) * l2e * ca) * dx[h] * dx[h] + log2_opacity;
      nb[h] = (-l2e * cb) * dx[h];
    }
    for (int i = 0; i < kTile; ++i) nc[i] = (T(-0.5) * l2e * cc) * dy[i] * dy[i];
  }
  V at(int h, int row) const { return nb[h] * dy[row] + na[h] + nc[row]; }
};

struct TileCoords {
  int64_t image;
  int x0, y0;
  int w_in, h_in;  // pixels of the tile inside the image (fewer than kTile at the right/bottom border)
  int32_t start, end;
};

template <typename T>
inline TileCoords tile_coords(const TileData<T>& d, int64_t tile_index) {
  const int tiles_per_image = d.tiles_x * d.tiles_y;
  const int tile_in_image = static_cast<int>(tile_index % tiles_per_image);
  TileCoords c;
  c.image = tile_index / tiles_per_image;
  c.x0 = (tile_in_image % d.tiles_x) * kTile;
  c.y0 = (tile_in_image / d.tiles_x) * kTile;
  c.w_in = d.width - c.x0 < kTile ? d.width - c.x0 : kTile;
  c.h_in = d.height - c.y0 < kTile ? d.height - c.y0 : kTile;
  c.start = d.tile_offsets[tile_index];
  c.end = d.tile_offsets[tile_index + 1];
  return c;
}

template <typename T>
inline void prefetch_record(const T* base, int32_t id) {
  const char* p = reinterpret_cast<const char*>(base + static_cast<int64_t>(id) * rec::kSize);
  __builtin_prefetch(p);
  if (sizeof(T) * rec::kSize > 64) __builtin_prefetch(p + 64);
}

// The record with its mean moved to tile-local lane units (pixel centre of lane i is at i), which
// is what splat_cells expects.
template <typename T>
inline void local_record(const T* s, int x0, T (&out)[rec::kSize]) {
  for (int j = 0; j < rec::kSize; ++j) out[j] = s[j];
  out[rec::kMeanX] = s[rec::kMeanX] - T(0.5) - static_cast<T>(x0);
}

template <typename T, int CD>
void fwd_tile(const TileData<T>& d, int64_t tile_index) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::Mask Mask;
  const TileCoords tc = tile_coords(d, tile_index);
  const int x0 = tc.x0, y0 = tc.y0;

  alignas(64) T trans[kTilePixels];  // running transmittance; 0 once the pixel is finished
  alignas(64) T trans_done[kTilePixels];  // transmittance of finished pixels
  alignas(64) T acc[CD][kTilePixels];
  alignas(64) int32_t stop_at[kTilePixels];  // list position where the pixel finished, or end
  alignas(64) T lane_x[kTile];
  alignas(64) T row_y[kTile];

  // pixels past the image border start finished so they never accumulate
  const int w_in = tc.w_in, h_in = tc.h_in;
  for (int r = 0; r < kTile; ++r)
    for (int i = 0; i < kTile; ++i) trans[r * kTile + i] = (r < h_in && i < w_in) ? T(1) : T(0);
  for (int p = 0; p < kTilePixels; ++p) {
    trans_done[p] = T(0);
    stop_at[p] = tc.end;
  }
  for (int c = 0; c < CD; ++c)
    for (int p = 0; p < kTilePixels; ++p) acc[c][p] = T(0);
  for (int i = 0; i < kTile; ++i) {
    lane_x[i] = static_cast<T>(x0 + i) + T(0.5);
    row_y[i] = static_cast<T>(y0 + i) + T(0.5);
  }
  // cells (bit h * kTile + row, as in `todo` below) with a pixel that still accumulates
  uint32_t live = 0;
  for (int r = 0; r < h_in; ++r) live |= (1u | (w_in > kLanes ? 1u << kTile : 0u)) << r;

  const V zero = splat_v<V>(T(0));
  const V alpha_max = splat_v<V>(static_cast<T>(kAlphaMax));
  const V log2_alpha_min = splat_v<V>(static_cast<T>(kLog2AlphaThreshold));
  const V t_min = splat_v<V>(static_cast<T>(kTransmittanceMin));

  for (int32_t k = tc.start; k < tc.end; ++k) {
    if (k + kPrefetch < tc.end) prefetch_record(d.splats, d.tile_lists[k + kPrefetch]);
    // the entry's cells (see tile_cells), less the finished ones; one loop over them, so the
    // only data-dependent branch per cell is the loop's own (cells are disjoint pixels: any order)
    uint32_t todo = d.tile_cells[k] & live;
    if (!todo) continue;
    const T* s = d.splats + static_cast<int64_t>(d.tile_lists[k]) * rec::kSize;
    const T mx = s[rec::kMeanX], my = s[rec::kMeanY];
    alignas(64) T row_dy[kTile];
    for (int i = 0; i < kTile; ++i) row_dy[i] = my - row_y[i];
    const T ca = s[rec::kConicA], cb = s[rec::kConicB], cc = s[rec::kConicC];
    const T log2_op = s[rec::kLog2Opacity];
    T col[CD];
    for (int c = 0; c < CD; ++c) col[c] = s[rec::kColor + c];
    const V dx_half[2] = {mx - load<V>(lane_x), mx - load<V>(lane_x + kLanes)};
    const Log2Alpha<V, T> log2_alpha(dx_half, row_dy, ca, cb, cc, log2_op);
    const V sigma_zero = splat_v<V>(log2_op);  // where sigma = 0

    while (todo) {
      const int cell = __builtin_ctz(todo);
      todo &= todo - 1;
      const int row = cell & (kTile - 1), h = cell >> 4;
      const int base = row * kTile + h * kLanes;
      const V l2a = log2_alpha.at(h, row);
      // sigma >= 0 and alpha >= 1/255, tested on the exponent (2^x is meaningless below -126 and
      // the lanes that are not ok are dropped whatever it returns)
      const Mask ok = (l2a <= sigma_zero) & (l2a >= log2_alpha_min);
      V alpha = min_v(exp2_v(l2a), alpha_max);
      alpha = ok ? alpha : zero;
      const V t_cur = load<V>(trans + base);
      V w = alpha * t_cur;
      V t_next = t_cur - w;  // T (1 - alpha)
      const Mask stop = (t_next <= t_min) & (t_cur > zero);
      const uint32_t stop_bits = lane_bits(stop);
      if (__builtin_expect(stop_bits != 0, 0)) {
        // the splat that would take T to 1e-4 is left out and the pixel is finished
        for (int i = 0; i < kLanes; ++i) {
          if (!((stop_bits >> i) & 1u)) continue;
          trans_done[base + i] = t_cur[i];
          stop_at[base + i] = k;
        }
        w = stop ? zero : w;
        t_next = stop ? zero : t_next;
        if (lane_bits(t_next > zero) == 0) live &= ~(1u << cell);
      }
      for (int c = 0; c < CD; ++c) store(acc[c] + base, load<V>(acc[c] + base) + w * col[c]);
      store(trans + base, t_next);
    }
    if (!live) break;  // every pixel of the tile is finished
  }

  T bg[CD];
  for (int c = 0; c < CD; ++c) bg[c] = d.backgrounds ? d.backgrounds[tc.image * CD + c] : T(0);
  for (int r = 0; r < h_in; ++r) {
    const int64_t row_pix = (tc.image * d.height + y0 + r) * d.width + x0;
    const int p0 = r * kTile;
    T* colors_out = d.out_colors + row_pix * CD;
    for (int i = 0; i < w_in; ++i) {
      const int p = p0 + i;
      const T t_final = trans[p] > T(0) ? trans[p] : trans_done[p];
      for (int c = 0; c < CD; ++c) colors_out[i * CD + c] = acc[c][p] + t_final * bg[c];
      d.out_alphas[row_pix + i] = T(1) - t_final;
      d.out_T[row_pix + i] = t_final;
      d.out_last[row_pix + i] = stop_at[p];
    }
  }
}

template <typename T, int CD, bool ABS>
void bwd_tile(const TileData<T>& d, T* grad_slab, int64_t tile_index) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::Mask Mask;
  const TileCoords tc = tile_coords(d, tile_index);
  const int x0 = tc.x0, y0 = tc.y0;

  alignas(64) T trans[kTilePixels];       // transmittance in front of the current splat
  alignas(64) T behind[kTilePixels];      // (colour composited behind the current splat) . v_pix
  alignas(64) T v_pix[CD][kTilePixels];   // dL/d(pixel colour)
  alignas(64) T v_final[kTilePixels];     // T_final * (dL/d pixel alpha - bg . dL/d colour)
  alignas(64) int32_t stop_at[kTilePixels];
  alignas(64) T lane_x[kTile];
  alignas(64) T row_y[kTile];

  T bg[CD];
  for (int c = 0; c < CD; ++c) bg[c] = d.backgrounds ? d.backgrounds[tc.image * CD + c] : T(0);
  // pixels past the image border: T = 1, no gradient, and no list entry in range
  const int w_in = tc.w_in, h_in = tc.h_in;
  if (w_in < kTile || h_in < kTile) {
    for (int p = 0; p < kTilePixels; ++p) {
      trans[p] = T(1);
      stop_at[p] = tc.start;
      v_final[p] = T(0);
    }
    for (int c = 0; c < CD; ++c)
      for (int p = 0; p < kTilePixels; ++p) v_pix[c][p] = T(0);
  }
  for (int p = 0; p < kTilePixels; ++p) behind[p] = T(0);
  int32_t k_first = tc.start - 1;  // the last list position any pixel of the tile consumed
  for (int r = 0; r < h_in; ++r) {
    const int64_t row_pix = (tc.image * d.height + y0 + r) * d.width + x0;
    const int p0 = r * kTile;
    const T* v_colors_in = d.v_out_colors + row_pix * CD;
    for (int i = 0; i < w_in; ++i) {
      const int p = p0 + i;
      const T t_final = d.out_T[row_pix + i];
      trans[p] = t_final;
      const int32_t last = d.out_last[row_pix + i];
      stop_at[p] = last;
      k_first = last - 1 > k_first ? last - 1 : k_first;
      T bg_dot = T(0);
      for (int c = 0; c < CD; ++c) {
        const T v = v_colors_in[i * CD + c];
        v_pix[c][p] = v;
        bg_dot += bg[c] * v;
      }
      v_final[p] = t_final * (d.v_out_alphas[row_pix + i] - bg_dot);
    }
  }
  for (int i = 0; i < kTile; ++i) {
    lane_x[i] = static_cast<T>(x0 + i) + T(0.5);
    row_y[i] = static_cast<T>(y0 + i) + T(0.5);
  }
  // A cell (bit h * kTile + row) joins `live` once k is below the stop position of one of its
  // pixels; cells are queued by that position, latest first.
  int32_t cell_last[2 * kTile];
  int cell_order[2 * kTile];
  int n_cells = 0;
  for (int r = 0; r < h_in; ++r)
    for (int h = 0; h * kLanes < w_in; ++h) {
      int32_t m = tc.start;
      for (int i = 0; i < kLanes; ++i) {
        const int32_t last = stop_at[r * kTile + h * kLanes + i];
        m = last > m ? last : m;
      }
      // insertion into descending order
      int j = n_cells++;
      for (; j > 0 && cell_last[j - 1] < m; --j) {
        cell_last[j] = cell_last[j - 1];
        cell_order[j] = cell_order[j - 1];
      }
      cell_last[j] = m;
      cell_order[j] = h * kTile + r;
    }
  uint32_t live = 0;
  int next_cell = 0;

  const V zero = splat_v<V>(T(0));
  const V one = splat_v<V>(T(1));
  const V alpha_max = splat_v<V>(static_cast<T>(kAlphaMax));
  const V log2_alpha_min = splat_v<V>(static_cast<T>(kLog2AlphaThreshold));

  for (int32_t k = k_first; k >= tc.start; --k) {
    if (k - kPrefetch >= tc.start) {
      const int32_t ahead = d.tile_lists[k - kPrefetch];
      prefetch_record(d.splats, ahead);
      prefetch_record(static_cast<const T*>(grad_slab), ahead);
    }
    while (next_cell < n_cells && k < cell_last[next_cell]) live |= 1u << cell_order[next_cell++];
    uint32_t todo = d.tile_cells[k] & live;  // as in fwd_tile
    if (!todo) continue;
    const int32_t id = d.tile_lists[k];
    const T* s = d.splats + static_cast<int64_t>(id) * rec::kSize;
    const T mx = s[rec::kMeanX], my = s[rec::kMeanY];
    alignas(64) T row_dy[kTile];
    for (int i = 0; i < kTile; ++i) row_dy[i] = my - row_y[i];
    const T ca = s[rec::kConicA], cb = s[rec::kConicB], cc = s[rec::kConicC];
    const T log2_op = s[rec::kLog2Opacity];
    T col[CD];
    for (int c = 0; c < CD; ++c) col[c] = s[rec::kColor + c];
    const IndexV k_vec = IndexV{} + k;
    const V dx_half[2] = {mx - load<V>(lane_x), mx - load<V>(lane_x + kLanes)};
    const Log2Alpha<V, T> log2_alpha(dx_half, row_dy, ca, cb, cc, log2_op);
    const V sigma_zero = splat_v<V>(log2_op);

    // acc: the sums of p, p dx, p dy, p dx^2, p dx dy, p dy^2 (k* order below) and |dL/d mean x|,
    // |dL/d mean y| (absgrad), where p = -dL/dsigma per pixel: the shape gradients are linear in
    // them, so they are formed once per splat below; acc_col: colours
    constexpr int kP = 0, kPx = 1, kPy = 2, kPxx = 3, kPxy = 4, kPyy = 5, kAbsX = 6, kAbsY = 7;
    V acc[8], acc_col[8];
    for (int i = 0; i < 8; ++i) acc[i] = acc_col[i] = zero;

    // Two passes: the splat's alphas first (independent exp chains), then the updates.
    alignas(64) T alphas[2 * kTile][kLanes], live_alpha[2 * kTile][kLanes];
    for (uint32_t left = todo; left; left &= left - 1) {
      const int cell = __builtin_ctz(left);
      const int row = cell & (kTile - 1), h = cell >> 4;
      const int base = row * kTile + h * kLanes;
      const V l2a = log2_alpha.at(h, row);
      const V op_vis = exp2_v(l2a);  // opacity x exp(-sigma)
      const V alpha = min_v(op_vis, alpha_max);
      const IndexV in_range = k_vec < load<IndexV>(stop_at + base);
      const Mask ok = __builtin_convertvector(in_range, Mask) & (l2a <= sigma_zero) & (l2a >= log2_alpha_min);
      // lanes that are not ok get alpha 0: T and the sums below are then left unchanged
      store(alphas[cell], ok ? alpha : zero);
      // the 0.999 clamp blocks the gradient to opacity and shape
      store(live_alpha[cell], ok & (op_vis <= alpha_max) ? op_vis : zero);
    }
    while (todo) {
      const int cell = __builtin_ctz(todo);
      todo &= todo - 1;
      const int row = cell & (kTile - 1), h = cell >> 4;
      const T dy = row_dy[row];
      const int base = row * kTile + h * kLanes;
      const V dx = dx_half[h];
      const V a_ok = load<V>(alphas[cell]);
      const V lv = load<V>(live_alpha[cell]);
      const V ra = one / (one - a_ok);
      const V t_here = load<V>(trans + base) * ra;
      const V fac = a_ok * t_here;
      // dL/dalpha = sum_c (col_c T - behind_c / (1 - alpha)) v_c + T_final (v_alpha - bg . v) / (1 - alpha)
      V col_dot = zero;
      for (int c = 0; c < CD; ++c) {
        const V vp = load<V>(v_pix[c] + base);
        acc_col[c] += fac * vp;
        col_dot += col[c] * vp;
      }
      const V bh = load<V>(behind + base);
      const V v_alpha = col_dot * t_here + ra * (load<V>(v_final + base) - bh);
      store(behind + base, bh + fac * col_dot);
      // selects, not products with lv = 0: an Inf or NaN pixel gradient must not reach splats
      // that do not contribute to the pixel (live lanes have alpha >= 1/255)
      // p = dL/dalpha x alpha (before the clamp) = -dL/dsigma, since d alpha / d sigma = -alpha
      const V p = lv > zero ? lv * v_alpha : zero;
      const V pdx = p * dx, pdy = p * dy;
      acc[kP] += p;
      acc[kPx] += pdx;
      acc[kPy] += pdy;
      acc[kPxx] += pdx * dx;
      acc[kPxy] += pdx * dy;
      acc[kPyy] += pdy * dy;
      if constexpr (ABS) {
        const V gx = ca * pdx + cb * pdy, gy = cb * pdx + cc * pdy;  // -dL/d mean, per pixel
        acc[kAbsX] += gx < zero ? -gx : gx;
        acc[kAbsY] += gy < zero ? -gy : gy;
      }
      store(trans + base, t_here);
    }
    T* g = grad_slab + static_cast<int64_t>(id) * grad::kSize;
    const V m = reduce8(acc);
    // sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 with dx = mean x - pixel x: dL/dsigma = -p gives
    // the mean's gradient -(a dx + b dy) p, -(b dx + c dy) p and the conic's -0.5 dx^2 p, ...;
    // alpha = opacity exp(-sigma) gives dL/dopacity = p / opacity
    const T op = s[rec::kOpacity];
    V sums = zero;
    sums[grad::kMeanX] = -(ca * m[kPx] + cb * m[kPy]);
    sums[grad::kMeanY] = -(cb * m[kPx] + cc * m[kPy]);
    sums[grad::kConicA] = T(-0.5) * m[kPxx];
    sums[grad::kConicB] = -m[kPxy];
    sums[grad::kConicC] = T(-0.5) * m[kPyy];
    sums[grad::kOpacity] = op > T(0) ? m[kP] / op : T(0);
    sums[grad::kAbsX] = m[kAbsX];
    sums[grad::kAbsY] = m[kAbsY];
    store(g, load<V>(g) + sums);
    store(g + grad::kColor, load<V>(g + grad::kColor) + reduce8(acc_col));
  }
}

// The cells of tile (x0, y0) (pixel origin) where record s can reach alpha >= 1/255, as the
// tile loops' bit set: bit h * kTile + row for half h of a row.
template <typename T>
inline uint32_t tile_cells_of(const T* s, int x0, int y0) {
  alignas(64) T row_dy[kTile];
  // the same arithmetic as the tile loops' row offsets
  for (int i = 0; i < kTile; ++i) row_dy[i] = s[rec::kMeanY] - (static_cast<T>(y0 + i) + T(0.5));
  T local[rec::kSize];
  local_record(s, x0, local);
  uint32_t cells[2];
  splat_cells(local, row_dy, cells);
  return cells[0] | (cells[1] << kTile);
}

}  // namespace

// Entry points with external linkage, one set per ISA namespace.
template <typename T>
void composite_forward(const TileData<T>& d, int64_t tile_index) {
  switch (d.D) {
    case 1: fwd_tile<T, 1>(d, tile_index); break;
    case 2: fwd_tile<T, 2>(d, tile_index); break;
    case 3: fwd_tile<T, 3>(d, tile_index); break;
    default: fwd_tile<T, 4>(d, tile_index); break;
  }
}

template <typename T>
void composite_backward(const TileData<T>& d, T* grad_slab, int64_t tile_index) {
  if (d.absgrad) {
    switch (d.D) {
      case 1: bwd_tile<T, 1, true>(d, grad_slab, tile_index); break;
      case 2: bwd_tile<T, 2, true>(d, grad_slab, tile_index); break;
      case 3: bwd_tile<T, 3, true>(d, grad_slab, tile_index); break;
      default: bwd_tile<T, 4, true>(d, grad_slab, tile_index); break;
    }
    return;
  }
  switch (d.D) {
    case 1: bwd_tile<T, 1, false>(d, grad_slab, tile_index); break;
    case 2: bwd_tile<T, 2, false>(d, grad_slab, tile_index); break;
    case 3: bwd_tile<T, 3, false>(d, grad_slab, tile_index); break;
    default: bwd_tile<T, 4, false>(d, grad_slab, tile_index); break;
  }
}

// Lists record s in the tiles [tx0, tx1) x [ty0, ty1) of a tiles_x-wide grid where it has cells:
// their tile indices and cells go to tiles / cells (room for the whole rectangle); returns how many.
template <typename T>
int rect_cells(const T* s, int tx0, int ty0, int tx1, int ty1, int tiles_x, int32_t* tiles, uint32_t* cells) {
  int n = 0;
  for (int ty = ty0; ty < ty1; ++ty)
    for (int tx = tx0; tx < tx1; ++tx) {
      const uint32_t m = tile_cells_of(s, tx * kTile, ty * kTile);
      tiles[n] = ty * tiles_x + tx;  // written always, kept only when m != 0: no branch
      cells[n] = m;
      n += m != 0;
    }
  return n;
}

template int rect_cells<float>(const float*, int, int, int, int, int, int32_t*, uint32_t*);
template int rect_cells<double>(const double*, int, int, int, int, int, int32_t*, uint32_t*);
template void composite_forward<float>(const TileData<float>&, int64_t);
template void composite_forward<double>(const TileData<double>&, int64_t);
template void composite_backward<float>(const TileData<float>&, float*, int64_t);
template void composite_backward<double>(const TileData<double>&, double*, int64_t);

}  // namespace SPLAT_ISA
}  // namespace splat
