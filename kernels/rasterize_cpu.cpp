// Tile binning, depth sorting and the parallel drivers of the forward and backward compositing,
// plus the operator registrations (torch.ops.recon_splat.*).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "parallel.h"
#include "splat_common.h"

namespace splat {

// Defined once per instruction set in raster_tiles_<isa>.cpp.
namespace generic {
template <typename T> int rect_cells(const T*, int, int, int, int, int, int32_t*, uint32_t*);
template <typename T> void composite_forward(const TileData<T>&, int64_t);
template <typename T> void composite_backward(const TileData<T>&, T*, int64_t);
}  // namespace generic
#if defined(__x86_64__) && defined(__GNUC__)
#define SPLAT_HAS_X86_BUILDS 1
namespace avx2 {
template <typename T> int rect_cells(const T*, int, int, int, int, int, int32_t*, uint32_t*);
template <typename T> void composite_forward(const TileData<T>&, int64_t);
template <typename T> void composite_backward(const TileData<T>&, T*, int64_t);
}  // namespace avx2
namespace avx512 {
template <typename T> int rect_cells(const T*, int, int, int, int, int, int32_t*, uint32_t*);
template <typename T> void composite_forward(const TileData<T>&, int64_t);
template <typename T> void composite_backward(const TileData<T>&, T*, int64_t);
}  // namespace avx512
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_forward(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double, double, double,
    double);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

namespace {

using at::Tensor;

enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa widest_isa() {
#if defined(SPLAT_HAS_X86_BUILDS)
  static const Isa widest = [] {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kGeneric;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
      return Isa::kAvx512;
    return Isa::kAvx2;
  }();
  return widest;
#else
  return Isa::kGeneric;
#endif
}

// The tile kernels in use: "auto" (the widest the CPU supports), or at most "avx2" or "generic"
// (RECON_SPLAT_ISA or select_isa); tests force each to check the builds agree.
Isa& isa_in_use() {
  static Isa isa = [] {
    const char* env = std::getenv("RECON_SPLAT_ISA");
    const std::string choice = env ? env : "auto";
    const Isa cap = choice == "generic" ? Isa::kGeneric : choice == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    return std::min(cap, widest_isa());
  }();
  return isa;
}

template <typename T>
using RectCells = int (*)(const T*, int, int, int, int, int, int32_t*, uint32_t*);

template <typename T>
RectCells<T> rect_cells_fn() {
#if defined(SPLAT_HAS_X86_BUILDS)
  if (isa_in_use() == Isa::kAvx512) return &avx512::rect_cells<T>;
  if (isa_in_use() == Isa::kAvx2) return &avx2::rect_cells<T>;
#endif
  return &generic::rect_cells<T>;
}

template <typename T>
void run_forward_tile(const TileData<T>& d, int64_t tile) {
#if defined(SPLAT_HAS_X86_BUILDS)
  if (isa_in_use() == Isa::kAvx512) return avx512::composite_forward<T>(d, tile);
  if (isa_in_use() == Isa::kAvx2) return avx2::composite_forward<T>(d, tile);
#endif
  generic::composite_forward<T>(d, tile);
}

template <typename T>
void run_backward_tile(const TileData<T>& d, T* slab, int64_t tile) {
#if defined(SPLAT_HAS_X86_BUILDS)
  if (isa_in_use() == Isa::kAvx512) return avx512::composite_backward<T>(d, slab, tile);
  if (isa_in_use() == Isa::kAvx2) return avx2::composite_backward<T>(d, slab, tile);
#endif
  generic::composite_backward<T>(d, slab, tile);
}

// Tiles by list length, longest first: threads claim them in this order, so the last tiles to
// start are the cheap ones and no thread is left finishing a dense tile alone.
template <typename T>
std::vector<int32_t> heaviest_first(const TileData<T>& d, int64_t n_tiles) {
  std::vector<int32_t> order(n_tiles);
  for (int64_t t = 0; t < n_tiles; ++t) order[t] = static_cast<int32_t>(t);
  const int32_t* to = d.tile_offsets;
  std::stable_sort(order.begin(), order.end(),
                   [to](int32_t a, int32_t b) { return to[a + 1] - to[a] > to[b + 1] - to[b]; });
  return order;
}

template <typename T>
void forward_all_tiles(const TileData<T>& d, int64_t n_tiles) {
  const std::vector<int32_t> order = heaviest_first(d, n_tiles);
  parallel_run(n_tiles, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) run_forward_tile<T>(d, order[t]);
  });
}

// Each slot (thread) accumulates into its own slab, zeroed on first use; returns which were used.
template <typename T>
std::vector<char> backward_all_tiles(const TileData<T>& d, T* slabs, int64_t slab_size, int n_slots, int64_t n_tiles) {
  std::vector<char> used(n_slots, 0);
  const std::vector<int32_t> order = heaviest_first(d, n_tiles);
  parallel_run(n_tiles, 1, [&](int64_t b, int64_t e, int slot) {
    T* slab = slabs + slot * slab_size;
    if (!used[slot]) {
      std::fill(slab, slab + slab_size, T(0));
      used[slot] = 1;
    }
    for (int64_t t = b; t < e; ++t) run_backward_tile<T>(d, slab, order[t]);
  }, n_slots);
  return used;
}

// Order-preserving unsigned keys for IEEE floats, so a radix sort orders depths correctly.
inline uint32_t sort_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline uint64_t sort_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, 8);
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

// Stable LSD radix sort of (key, value) pairs, 8 bits per pass; passes where every key shares
// the digit are skipped. Stability keeps ties in input (entry) order, like gsplat's radix sort.
template <typename K>
void radix_sort_pairs(std::vector<K>& keys, std::vector<int32_t>& vals) {
  const size_t n = keys.size();
  if (n < 2) return;
  std::vector<K> keys_tmp(n);
  std::vector<int32_t> vals_tmp(n);
  for (int shift = 0; shift < static_cast<int>(sizeof(K) * 8); shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
    bool trivial = false;
    for (int b = 1; b <= 256; ++b)
      if (count[b] == n) trivial = true;
    if (trivial) continue;
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const size_t pos = count[(keys[i] >> shift) & 0xFF]++;
      keys_tmp[pos] = keys[i];
      vals_tmp[pos] = vals[i];
    }
    keys.swap(keys_tmp);
    vals.swap(vals_tmp);
  }
}

struct TileRect {
  int32_t x0, y0, x1, y1;  // [x0, x1) x [y0, y1) in tiles
};

template <typename T>
inline TileRect tile_rect(const T* mean2d, const int32_t* radius, int tiles_x, int tiles_y) {
  TileRect r{0, 0, 0, 0};
  if (radius[0] <= 0 || radius[1] <= 0) return r;
  const T tx = mean2d[0] / T(kTile), ty = mean2d[1] / T(kTile);
  const T rx = static_cast<T>(radius[0]) / T(kTile), ry = static_cast<T>(radius[1]) / T(kTile);
  auto clampi = [](T v, int hi) -> int32_t {
    if (!(v > 0)) return 0;  // also maps NaN to 0
    return v >= hi ? hi : static_cast<int32_t>(v);
  };
  r.x0 = clampi(std::floor(tx - rx), tiles_x);
  r.y0 = clampi(std::floor(ty - ry), tiles_y);
  r.x1 = clampi(std::ceil(tx + rx), tiles_x);
  r.y1 = clampi(std::ceil(ty + ry), tiles_y);
  if (r.x1 < r.x0) r.x1 = r.x0;
  if (r.y1 < r.y0) r.y1 = r.y0;
  return r;
}

// Visible entries in (image, depth) order. Entries must be grouped by image (image_ids
// non-decreasing). Fills tiles_per_gauss with bounding-box tile counts (build_tile_lists narrows
// them) and returns per-image offsets of visible entries; `order_out` maps record id -> entry id.
struct DepthOrder {
  std::vector<int64_t> vis_start;
};

template <typename T>
DepthOrder sort_entries(const Tensor& means2d, const Tensor& radii, const Tensor& depths, const Tensor& image_ids,
                           int64_t n_images, int tiles_x, int tiles_y, Tensor& order_out, Tensor& tiles_per_gauss) {
  const int64_t M = means2d.numel() / 2;
  const T* m2 = means2d.data_ptr<T>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  const T* dp = depths.data_ptr<T>();
  // no image_ids: the (C, N) layout, entry i belongs to image i / N
  const int32_t* ip = image_ids.numel() > 0 ? image_ids.data_ptr<int32_t>() : nullptr;
  const int64_t per_image = M / n_images;
  int32_t* tpg = tiles_per_gauss.data_ptr<int32_t>();

  parallel_run(M, 16384, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const TileRect r = tile_rect(m2 + 2 * i, rp + 2 * i, tiles_x, tiles_y);
      tpg[i] = (r.x1 - r.x0) * (r.y1 - r.y0);
    }
  });

  // per image: entry range, visible count, intersection count
  DepthOrder out;
  std::vector<int64_t> entry_start(n_images + 1, M);
  out.vis_start.assign(n_images + 1, 0);
  int64_t box_isects = 0;
  {
    int64_t img = -1;
    for (int64_t i = 0; i < M; ++i) {
      const int32_t id = ip ? ip[i] : static_cast<int32_t>(i / per_image);
      TORCH_CHECK(id >= 0 && id < n_images && id >= img, "image_ids must be sorted and within range");
      while (img < id) entry_start[++img] = i;
      box_isects += tpg[i];
      out.vis_start[id + 1] += tpg[i] > 0;
    }
    while (img < n_images - 1) entry_start[++img] = M;
    entry_start[n_images] = M;
    for (int64_t c = 0; c < n_images; ++c) {
      out.vis_start[c + 1] += out.vis_start[c];
    }
  }
  TORCH_CHECK(box_isects < (int64_t(1) << 31), "too many tile intersections for int32 indices");
  order_out = at::empty({out.vis_start[n_images]}, means2d.options().dtype(at::kInt));
  int32_t* order = order_out.data_ptr<int32_t>();

  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  parallel_run(n_images, 1, [&](int64_t cb, int64_t ce, int) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<Key> keys;
      std::vector<int32_t> sorted;
      keys.reserve(out.vis_start[c + 1] - out.vis_start[c]);
      sorted.reserve(out.vis_start[c + 1] - out.vis_start[c]);
      for (int64_t i = entry_start[c]; i < entry_start[c + 1]; ++i) {
        if (tpg[i] == 0) continue;
        keys.push_back(sort_key(dp[i]));
        sorted.push_back(static_cast<int32_t>(i));
      }
      radix_sort_pairs(keys, sorted);
      std::copy(sorted.begin(), sorted.end(), order + out.vis_start[c]);
    }
  });
  return out;
}

// Per (image, tile) lists of record ids (tile_lists), entry ids (gsplat's flatten_ids) and
// cells (tile_cells: the half-rows the tile loops composite), front to back. A record is listed
// only in the tiles of its bounding box where some pixel can reach alpha >= 1/255 (the others
// would composite nothing), and tiles_per_gauss counts those tiles. A counting sort over the
// depth-ordered records: they are cut into chunks (over all images) that are counted and
// scattered in parallel, with chunk-major offsets so the scatter stays stable.
template <typename T>
void build_tile_lists(const DepthOrder& depth_order, const Tensor& records, const Tensor& order_t,
                      int64_t n_images, int tiles_x, int tiles_y, Tensor& tiles_per_gauss, Tensor& tile_offsets,
                      Tensor& tile_lists, Tensor& flatten_ids, Tensor& tile_cells) {
  const int64_t tiles_per_image = static_cast<int64_t>(tiles_x) * tiles_y;
  auto int_opts = records.options().dtype(at::kInt);
  const T* rec_data = records.data_ptr<T>();
  const int32_t* order = order_t.data_ptr<int32_t>();
  int32_t* tpg = tiles_per_gauss.data_ptr<int32_t>();
  const RectCells<T> cells_of = rect_cells_fn<T>();

  auto rect_of = [&](int64_t record) {
    const T* s = rec_data + record * rec::kSize;
    const int32_t radius[2] = {static_cast<int32_t>(s[rec::kRadiusX]), static_cast<int32_t>(s[rec::kRadiusY])};
    return tile_rect(s + rec::kMeanX, radius, tiles_x, tiles_y);
  };

  // chunks never straddle images, so each chunk's counts belong to one image's tiles
  struct Chunk {
    int64_t image, begin, end;
  };
  std::vector<Chunk> chunks;
  // about 4 chunks per thread in all: images run in parallel too, and the counters below take
  // chunks x tiles ints, so many images get fewer chunks each
  const int64_t per_image = std::max<int64_t>(1, (4 * parallel_slots() + n_images - 1) / n_images);
  for (int64_t c = 0; c < n_images; ++c) {
    const int64_t first = depth_order.vis_start[c], n_sorted = depth_order.vis_start[c + 1] - first;
    const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(per_image, n_sorted / 2048));
    const int64_t chunk_len = (n_sorted + n_chunks - 1) / n_chunks;
    for (int64_t k = 0; k < n_chunks; ++k)
      chunks.push_back({c, first + std::min(n_sorted, k * chunk_len), first + std::min(n_sorted, (k + 1) * chunk_len)});
  }
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  std::vector<int32_t> cursors(n_chunks * tiles_per_image, 0);
  // each chunk's listings (tile, record, cells) in visiting order, so the scatter is one flat loop
  struct Listings {
    std::unique_ptr<int32_t[]> tiles, records;
    std::unique_ptr<uint32_t[]> cells;
    int64_t count = 0;
  };
  std::vector<Listings> listed(n_chunks);
  parallel_run(n_chunks, 1, [&](int64_t cb, int64_t ce, int) {
    for (int64_t k = cb; k < ce; ++k) {
      int64_t room = 0;  // bounding-box tiles of the chunk's records
      for (int64_t record = chunks[k].begin; record < chunks[k].end; ++record) room += tpg[order[record]];
      Listings& out = listed[k];
      // new T[n], not make_unique: no zero fill (and C++17, which older torch builds use)
      out.tiles.reset(new int32_t[room]);
      out.records.reset(new int32_t[room]);
      out.cells.reset(new uint32_t[room]);
      int32_t* hist = cursors.data() + k * tiles_per_image;
      int64_t n = 0;
      for (int64_t record = chunks[k].begin; record < chunks[k].end; ++record) {
        const TileRect r = rect_of(record);
        const int got = cells_of(rec_data + record * rec::kSize, r.x0, r.y0, r.x1, r.y1, tiles_x,
                                 out.tiles.get() + n, out.cells.get() + n);
        for (int i = 0; i < got; ++i) {
          ++hist[out.tiles[n + i]];
          out.records[n + i] = static_cast<int32_t>(record);
        }
        tpg[order[record]] = got;
        n += got;
      }
      out.count = n;
    }
  });
  // tile offsets: image-major, and within a tile chunk-major (chunks are in depth order)
  tile_offsets = at::empty({n_images * tiles_per_image + 1}, int_opts);
  int32_t* to = tile_offsets.data_ptr<int32_t>();
  int64_t running = 0;
  for (int64_t c = 0, k0 = 0; c < n_images; ++c) {
    int64_t k1 = k0;
    while (k1 < n_chunks && chunks[k1].image == c) ++k1;
    for (int64_t t = 0; t < tiles_per_image; ++t) {
      to[c * tiles_per_image + t] = static_cast<int32_t>(running);
      for (int64_t k = k0; k < k1; ++k) {
        const int32_t count = cursors[k * tiles_per_image + t];
        cursors[k * tiles_per_image + t] = static_cast<int32_t>(running);
        running += count;
      }
    }
    k0 = k1;
  }
  const int64_t n_isects = running;  // at most the bounding-box count checked in sort_entries
  to[n_images * tiles_per_image] = static_cast<int32_t>(n_isects);
  tile_lists = at::empty({n_isects}, int_opts);
  flatten_ids = at::empty({n_isects}, int_opts);
  tile_cells = at::empty({n_isects}, int_opts);
  int32_t* tl = tile_lists.data_ptr<int32_t>();
  int32_t* fl = flatten_ids.data_ptr<int32_t>();
  uint32_t* tc = reinterpret_cast<uint32_t*>(tile_cells.data_ptr<int32_t>());
  parallel_run(n_chunks, 1, [&](int64_t cb, int64_t ce, int) {
    for (int64_t k = cb; k < ce; ++k) {
      int32_t* cursor = cursors.data() + k * tiles_per_image;
      const Listings& in = listed[k];
      for (int64_t i = 0; i < in.count; ++i) {
        const int32_t slot = cursor[in.tiles[i]]++;
        tl[slot] = in.records[i];
        fl[slot] = order[in.records[i]];
        tc[slot] = in.cells[i];
      }
    }
  });
}

// One record per visible entry (see splat_common.h), including the analytic extents that let the
// tile loops skip rows and half-rows where alpha cannot reach 1/255.
template <typename T>
void pack_records(const Tensor& order_t, const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                  const Tensor& opacities, const Tensor& radii, Tensor& records) {
  const int64_t n_vis = order_t.numel();
  const int D = static_cast<int>(colors.size(-1));
  const int32_t* order = order_t.data_ptr<int32_t>();
  const T* m2 = means2d.data_ptr<T>();
  const T* cn = conics.data_ptr<T>();
  const T* col = colors.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  records = at::empty({n_vis, rec::kSize}, means2d.options());
  T* out = records.data_ptr<T>();
  // in T: the margin below scales with T's epsilon and the conditioning, so it also covers the
  // rounding of these few operations
  const T eps = std::numeric_limits<T>::epsilon();
  const T log_threshold = std::log(static_cast<T>(kAlphaThreshold));
  parallel_run(n_vis, 2048, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = order[r];
      T* s = out + r * rec::kSize;
      const T a = cn[3 * i], bb = cn[3 * i + 1], c = cn[3 * i + 2];
      s[rec::kMeanX] = m2[2 * i];
      s[rec::kMeanY] = m2[2 * i + 1];
      s[rec::kConicA] = a;
      s[rec::kConicB] = bb;
      s[rec::kConicC] = c;
      s[rec::kOpacity] = op[i];
      s[rec::kRadiusX] = static_cast<T>(rp[2 * i]);
      s[rec::kRadiusY] = static_cast<T>(rp[2 * i + 1]);
      for (int k = 0; k < kMaxChannels; ++k) s[rec::kColor + k] = k < D ? col[i * D + k] : T(0);
      // capped so that 2^x stays in range in the tile loops (alpha is clamped at 0.999 anyway)
      s[rec::kLog2Opacity] = std::min(std::log2(op[i]), T(127));
      // alpha >= 1/255 needs sigma <= L = ln(opacity * 255). Along a row at offset dy, sigma is a
      // parabola in dx = mean_x - pixel_x with minimum dy^2 det / (2a) at dx = -b dy / a, so the
      // reachable pixels satisfy (dx + b dy / a)^2 <= 2L/a - dy^2 det / a^2.
      // L gets a relative margin scaled by the conic's conditioning, which bounds the rounding of
      // sigma in the kernels, so the culling never drops a pixel the kernels would composite.
      const T det = a * c - bb * bb;
      const T L = std::log(op[i]) - log_threshold;
      if (!(a > 0) || !(det > 0) || !(L >= 0) || !std::isfinite(a + bb + c)) {
        // degenerate: no analytic bound; let every row of the listed tiles through, or none when
        // the splat cannot reach the threshold anywhere
        s[rec::kSlopeX] = 0;
        s[rec::kSpanQ0] = L >= 0 ? T(1e30) : T(-1);
        s[rec::kSpanQ1] = 0;
        continue;
      }
      const T inv_a = T(1) / a;
      const T cond = (a + c) * (a + c) / det;
      const T L_m = L * (T(1) + T(64) * eps * cond) + T(64) * eps;
      s[rec::kSlopeX] = -bb * inv_a;
      s[rec::kSpanQ0] = T(2) * L_m * inv_a;
      s[rec::kSpanQ1] = det * inv_a * inv_a;
    }
  });
}

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

template <typename T>
TileData<T> make_tile_data(const Tensor& records, const Tensor& backgrounds, const Tensor& tile_offsets,
                           const Tensor& tile_lists, const Tensor& tile_cells, int64_t D, int64_t width,
                           int64_t height) {
  TORCH_CHECK(tile_cells.numel() == tile_lists.numel() && tile_cells.scalar_type() == at::kInt,
              "tile_cells must be int32 and as long as tile_lists");
  TileData<T> d;
  d.splats = records.data_ptr<T>();
  d.backgrounds = backgrounds.numel() > 0 ? backgrounds.data_ptr<T>() : nullptr;
  d.tile_offsets = tile_offsets.data_ptr<int32_t>();
  d.tile_lists = tile_lists.data_ptr<int32_t>();
  d.tile_cells = reinterpret_cast<const uint32_t*>(tile_cells.data_ptr<int32_t>());
  d.D = static_cast<int>(D);
  d.width = static_cast<int>(width);
  d.height = static_cast<int>(height);
  d.tiles_x = static_cast<int>((width + kTile - 1) / kTile);
  d.tiles_y = static_cast<int>((height + kTile - 1) / kTile);
  return d;
}

}  // namespace

// Forward compositing. Returns colours (I,H,W,D), alphas (I,H,W,1), final transmittance (I,H,W),
// last contributor (I,H,W), the packed splat records, tile offsets, per-tile record lists,
// per-tile entry lists (gsplat's flatten_ids), record -> entry map, tiles per entry, and the
// per-list-entry cells (see build_tile_lists) that the backward reads back.
std::vector<Tensor> rasterize_forward(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                      const Tensor& opacities, const Tensor& radii, const Tensor& depths,
                                      const Tensor& image_ids, const Tensor& backgrounds, int64_t n_images,
                                      int64_t width, int64_t height) {
  for (auto* t : {&means2d, &conics, &colors, &opacities, &radii, &depths, &image_ids}) check_cpu(*t, "raster input");
  TORCH_CHECK(colors.dim() >= 1 && colors.size(-1) >= 1 && colors.size(-1) <= kMaxChannels,
              "colors must be (..., D) with D <= 4");
  TORCH_CHECK(width > 0 && height > 0 && n_images >= 1, "bad image size");
  TORCH_CHECK(radii.scalar_type() == at::kInt && image_ids.scalar_type() == at::kInt, "radii/image_ids must be int32");
  for (auto* t : {&conics, &colors, &opacities, &depths})
    TORCH_CHECK(t->scalar_type() == means2d.scalar_type(), "all float inputs must share one dtype");
  // entries may arrive as (C, N, ...) or (M, ...): only the flat layout matters
  const int64_t D = colors.size(-1), M = means2d.numel() / 2;
  TORCH_CHECK(colors.numel() == M * D && conics.numel() == M * 3 && opacities.numel() == M && radii.numel() == M * 2 &&
                  depths.numel() == M && (image_ids.numel() == M || (image_ids.numel() == 0 && M % n_images == 0)),
              "entry tensors disagree in length");
  if (backgrounds.numel() > 0) {
    check_cpu(backgrounds, "backgrounds");
    TORCH_CHECK(backgrounds.numel() == n_images * D && backgrounds.scalar_type() == means2d.scalar_type(),
                "backgrounds must be (I, D)");
  }
  const int tiles_x = static_cast<int>((width + kTile - 1) / kTile);
  const int tiles_y = static_cast<int>((height + kTile - 1) / kTile);
  auto opts = means2d.options();
  Tensor out_colors = at::empty({n_images, height, width, D}, opts);
  Tensor out_alphas = at::empty({n_images, height, width, 1}, opts);
  Tensor out_T = at::empty({n_images, height, width}, opts);
  Tensor out_last = at::empty({n_images, height, width}, opts.dtype(at::kInt));
  Tensor order, tile_offsets, tile_lists, flatten_ids, tile_cells, records;
  Tensor tiles_per_gauss = at::empty({M}, opts.dtype(at::kInt));

  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward", [&] {
    const DepthOrder depth_order = sort_entries<scalar_t>(means2d, radii, depths, image_ids, n_images,
                                                                    tiles_x, tiles_y, order, tiles_per_gauss);
    pack_records<scalar_t>(order, means2d, conics, colors, opacities, radii, records);
    build_tile_lists<scalar_t>(depth_order, records, order, n_images, tiles_x, tiles_y, tiles_per_gauss,
                               tile_offsets, tile_lists, flatten_ids, tile_cells);
    TileData<scalar_t> d =
        make_tile_data<scalar_t>(records, backgrounds, tile_offsets, tile_lists, tile_cells, D, width, height);
    d.out_colors = out_colors.data_ptr<scalar_t>();
    d.out_alphas = out_alphas.data_ptr<scalar_t>();
    d.out_T = out_T.data_ptr<scalar_t>();
    d.out_last = out_last.data_ptr<int32_t>();
    forward_all_tiles<scalar_t>(d, n_images * tiles_x * tiles_y);
  });
  return {out_colors, out_alphas, out_T, out_last, records, tile_offsets, tile_lists, flatten_ids, order,
          tiles_per_gauss, tile_cells};
}

// Backward compositing: gradients for means2d, conics, colours, opacities and, when absgrad, the
// per-pixel sums of |dL/d means2d| that gsplat stores as means2d.absgrad.
std::vector<Tensor> rasterize_backward(const Tensor& means2d, const Tensor& colors, const Tensor& records,
                                       const Tensor& backgrounds, const Tensor& tile_offsets,
                                       const Tensor& tile_lists, const Tensor& tile_cells, const Tensor& order,
                                       const Tensor& out_T, const Tensor& out_last, const Tensor& v_colors,
                                       const Tensor& v_alphas, int64_t n_images, int64_t width, int64_t height,
                                       bool absgrad) {
  for (auto* t : {&records, &tile_offsets, &tile_lists, &tile_cells, &order, &out_T, &out_last, &v_colors,
                  &v_alphas})
    check_cpu(*t, "raster backward input");
  const int64_t D = colors.size(-1), n_vis = order.numel();
  TORCH_CHECK(v_colors.numel() == n_images * height * width * D && v_alphas.numel() == n_images * height * width,
              "gradient images have the wrong size");
  const int tiles_x = static_cast<int>((width + kTile - 1) / kTile);
  const int tiles_y = static_cast<int>((height + kTile - 1) / kTile);
  const int64_t n_tiles = n_images * tiles_x * tiles_y;
  auto opts = records.options();
  // gradients take the entries' layout: (C, N, ...) or (nnz, ...)
  std::vector<int64_t> lead(means2d.sizes().begin(), means2d.sizes().end() - 1);
  std::vector<int64_t> conic_shape = lead;
  conic_shape.push_back(3);
  Tensor g_means2d = at::zeros(means2d.sizes(), opts);
  Tensor g_conics = at::zeros(conic_shape, opts);
  Tensor g_colors = at::zeros(colors.sizes(), opts);
  Tensor g_opacities = at::zeros(lead, opts);
  Tensor g_abs = absgrad ? at::zeros(means2d.sizes(), opts) : at::empty({0}, opts);

  AT_DISPATCH_FLOATING_TYPES(records.scalar_type(), "rasterize_backward", [&] {
    TileData<scalar_t> d =
        make_tile_data<scalar_t>(records, backgrounds, tile_offsets, tile_lists, tile_cells, D, width, height);
    d.out_T = const_cast<scalar_t*>(out_T.data_ptr<scalar_t>());
    d.out_last = const_cast<int32_t*>(out_last.data_ptr<int32_t>());
    d.v_out_colors = v_colors.data_ptr<scalar_t>();
    d.v_out_alphas = v_alphas.data_ptr<scalar_t>();
    d.absgrad = absgrad;

    // one private gradient slab per thread (records are shared between tiles), summed afterwards
    const int n_slots = parallel_slots();
    Tensor slabs = at::empty({n_slots, n_vis, grad::kSize}, opts);
    const std::vector<char> used =
        backward_all_tiles<scalar_t>(d, slabs.data_ptr<scalar_t>(), n_vis * grad::kSize, n_slots, n_tiles);

    const scalar_t* sl = slabs.data_ptr<scalar_t>();
    const int32_t* ord = order.data_ptr<int32_t>();
    scalar_t* gm = g_means2d.data_ptr<scalar_t>();
    scalar_t* gc = g_conics.data_ptr<scalar_t>();
    scalar_t* gcol = g_colors.data_ptr<scalar_t>();
    scalar_t* gop = g_opacities.data_ptr<scalar_t>();
    scalar_t* gab = absgrad ? g_abs.data_ptr<scalar_t>() : nullptr;
    parallel_run(n_vis, 16384, [&](int64_t b, int64_t e, int) {
      for (int64_t r = b; r < e; ++r) {
        scalar_t sum[grad::kSize];
        for (int j = 0; j < grad::kSize; ++j) sum[j] = 0;
        for (int t = 0; t < n_slots; ++t) {
          if (!used[t]) continue;
          const scalar_t* src = sl + (static_cast<int64_t>(t) * n_vis + r) * grad::kSize;
          for (int j = 0; j < grad::kSize; ++j) sum[j] += src[j];
        }
        const int64_t i = ord[r];
        gm[2 * i] = sum[grad::kMeanX];
        gm[2 * i + 1] = sum[grad::kMeanY];
        gc[3 * i] = sum[grad::kConicA];
        gc[3 * i + 1] = sum[grad::kConicB];
        gc[3 * i + 2] = sum[grad::kConicC];
        gop[i] = sum[grad::kOpacity];
        for (int k = 0; k < D; ++k) gcol[i * D + k] = sum[grad::kColor + k];
        if (gab) {
          gab[2 * i] = sum[grad::kAbsX];
          gab[2 * i + 1] = sum[grad::kAbsY];
        }
      }
    });
  });
  return {g_means2d, g_conics, g_colors, g_opacities, g_abs};
}

// Pixel-splat pairs the compositing evaluates (8-pixel half-rows, x8), from the tile_cells
// rasterize_forward returned: the unit of the cost model.
int64_t count_pairs(const Tensor& tile_cells) {
  check_cpu(tile_cells, "tile_cells");
  TORCH_CHECK(tile_cells.scalar_type() == at::kInt, "tile_cells must be int32");
  const uint32_t* c = reinterpret_cast<const uint32_t*>(tile_cells.data_ptr<int32_t>());
  int64_t total = 0;
  for (int64_t i = 0; i < tile_cells.numel(); ++i) total += __builtin_popcount(c[i]);
  return total * 8;
}

// Selects the tile kernels: "auto" (the widest the CPU supports), or at most "avx2" or "generic"
// ("query" changes nothing). Returns the one in use.
std::string select_isa(const std::string& name) {
  TORCH_CHECK(name == "auto" || name == "avx512" || name == "avx2" || name == "generic" || name == "query",
              "isa must be auto, avx512, avx2, generic or query");
  if (name != "query") {
    const Isa cap = name == "generic" ? Isa::kGeneric : name == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    isa_in_use() = std::min(cap, widest_isa());
  }
  switch (isa_in_use()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace splat

TORCH_LIBRARY(recon_splat, m) {
  m.def("project_forward", &splat::project_forward);
  m.def("project_backward", &splat::project_backward);
  m.def("rasterize_forward", &splat::rasterize_forward);
  m.def("rasterize_backward", &splat::rasterize_backward);
  m.def("select_isa", &splat::select_isa);
  m.def("count_pairs", &splat::count_pairs);
}
