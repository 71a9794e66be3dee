// Sparse 3D convolution on the CPU in gather form, for the decoder's U-Net (recon/decoder/sparse_conv.py
// builds the neighbour tables and wraps this in autograd):
//   y[i] = act(bias + sum_k x[nbr[i, k]] @ w[k])          nbr (N_out, K) int32, -1 = no neighbour
// with w (K, C_in, C_out) and act = LeakyReLU(slope) (a negative slope stands for no activation). An
// empty table (0 columns) is the identity, y[i] = act(bias + x[i] @ w[0]): a per-voxel linear layer.
// The backward takes the transposed table nbr_t (N_in, K), nbr_t[j, k] = i where nbr[i, k] = j (each
// (j, k) has at most one such i for submanifold, strided and inverse convs), so the input gradient is
// the same gather:
//   gp = g * act'(y);  dbias = sum_i gp[i];  dx[j] = sum_k gp[nbr_t[j, k]] @ w[k]^T;
//   dw[k] = sum_i x[nbr[i, k]]^T gp[i]
// spconv's CPU path runs one gather, one small matmul and one scatter per kernel offset, ~4x slower
// at the decoder's widths (8-32 channels). Pure-PyTorch reference: recon.decoder.sparse_conv.reference.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "parallel.h"
#include "vec8.h"

namespace splat {

// Small constant-trip loops over accumulator vectors, fully unrolled so the accumulators live in
// registers: left to GCC's heuristics, wide ones (e.g. 8 vectors) stayed in stack arrays, and every
// FMA went through a store and a reload (3x slower).
#define UNROLL _Pragma("GCC unroll 16")

namespace {

using at::Tensor;

// The first n (< 8) lanes of a vector from / to memory (a row's last, partial vector).
template <typename T>
__attribute__((always_inline)) inline V8<T> load_part(const T* p, int n) {
  T tmp[8] = {};
  std::memcpy(tmp, p, sizeof(T) * n);
  return load8(tmp);
}

template <typename T>
__attribute__((always_inline)) inline void store_part(T* p, const V8<T>& v, int n) {
  T tmp[8];
  store8(tmp, v);
  std::memcpy(p, tmp, sizeof(T) * n);
}

struct Conv {
  int64_t n_out, cin, cout, k;
  const int32_t* nbr;  // (n_out, k) table; unused for the identity
  bool identity;       // a per-row layer (0-column table): row i reads row i
};

// Output columns go in panels of up to 64 (NV <= 8 vectors per row, so the accumulators of a row
// stay in registers); a panel whose width is not a multiple of 8 has zero-padded weights and stores
// its last vector partially.
constexpr int64_t kPanel = 64;

// One output row of a panel: bias, activation, and the store of its first `width` values.
template <typename T, int NV>
__attribute__((always_inline)) inline void finish_row(const V8<T>* acc, const T* bias, T slope, T* yr, int width) {
  UNROLL for (int v = 0; v < NV; ++v) {
    V8<T> a = acc[v];
    if (bias) a += load8(bias + 8 * v);
    if (slope >= T(0)) a = a > T(0) ? a : a * slope;
    if (8 * v + 8 <= width)
      store8(yr + 8 * v, a);
    else
      store_part(yr + 8 * v, a, width - 8 * v);
  }
}

// Rows [i0, i1) of one output panel: y[i, :width] = act(bias + gather-conv), wp (K, C_in, 8 NV) the
// panel's weights, y and bias already offset to the panel. NS accumulator sets over the input channels
// keep enough independent FMA chains in flight (a panel row has only NV vectors).
template <typename T, int NV>
SIMD_CLONES void conv_rows(const Conv& c, const T* __restrict__ x, const T* __restrict__ wp,
                           const T* __restrict__ bias, T slope, T* __restrict__ y, int width, int64_t i0,
                           int64_t i1) {
  constexpr int W = 8 * NV;
  constexpr int NS = NV >= 5 ? 1 : (NV >= 3 ? 2 : 4);
  for (int64_t i = i0; i < i1; ++i) {
    V8<T> acc[NS][NV];
    UNROLL for (int s = 0; s < NS; ++s)
      UNROLL for (int v = 0; v < NV; ++v) acc[s][v] = V8<T>{};
    for (int64_t k = 0; k < c.k; ++k) {
      const int64_t j = c.identity ? i : c.nbr[i * c.k + k];
      if (j < 0) continue;
      const T* xr = x + j * c.cin;
      const T* wk = wp + k * c.cin * W;
      int64_t ci = 0;
      for (; ci + NS <= c.cin; ci += NS)
        UNROLL for (int s = 0; s < NS; ++s) {
          const V8<T> xv = bcast(xr[ci + s]);
          UNROLL for (int v = 0; v < NV; ++v) acc[s][v] += xv * load8(wk + (ci + s) * W + 8 * v);
        }
      for (; ci < c.cin; ++ci) {
        const V8<T> xv = bcast(xr[ci]);
        UNROLL for (int v = 0; v < NV; ++v) acc[0][v] += xv * load8(wk + ci * W + 8 * v);
      }
    }
    // a copy goes to finish_row: acc's own address must not escape, or GCC keeps it on the stack
    V8<T> sum[NV];
    UNROLL for (int v = 0; v < NV; ++v) {
      sum[v] = acc[0][v];
      UNROLL for (int s = 1; s < NS; ++s) sum[v] += acc[s][v];
    }
    finish_row<T, NV>(sum, bias, slope, y + i * c.cout, width);
  }
}

// conv_rows for tables with several offsets, organised by offset: per block of 64 rows the outputs
// sit in a small buffer, and for each offset k the rows that have that neighbour are worked P at a time
// with w[k] loaded once per input channel for all P (P * NV accumulators). Row by row, each row would
// stream every w[k] from L2 (a 3x3x3 conv's weights outgrow L1 from 16 x 32 channels on); here w[k]
// (at most 64 x C_in values) stays in L1 while the block's rows pass.
template <typename T, int NV>
SIMD_CLONES void conv_rows_by_offset(const Conv& c, const T* __restrict__ x, const T* __restrict__ wp,
                                     const T* __restrict__ bias, T slope, T* __restrict__ y, int width,
                                     int64_t i0, int64_t i1) {
  constexpr int W = 8 * NV;
  constexpr int P = NV >= 5 ? 1 : (NV >= 3 ? 2 : (NV == 2 ? 6 : 8));
  constexpr int64_t kRows = 64;
  V8<T> out[kRows][NV];
  int64_t rows[kRows], srcs[kRows];
  for (int64_t ib = i0; ib < i1; ib += kRows) {
    const int64_t ie = std::min(i1, ib + kRows);
    for (int64_t r = 0; r < ie - ib; ++r)
      UNROLL for (int v = 0; v < NV; ++v) out[r][v] = V8<T>{};
    for (int64_t k = 0; k < c.k; ++k) {
      int n = 0;
      for (int64_t i = ib; i < ie; ++i) {
        const int64_t j = c.nbr[i * c.k + k];
        rows[n] = i - ib;
        srcs[n] = j;
        n += j >= 0;
      }
      const T* wk = wp + k * c.cin * W;
      int p = 0;
      for (; p + P <= n; p += P) {
        V8<T> acc[P][NV];
        const T* xr[P];
        UNROLL for (int q = 0; q < P; ++q) {
          xr[q] = x + srcs[p + q] * c.cin;
          UNROLL for (int v = 0; v < NV; ++v) acc[q][v] = out[rows[p + q]][v];
        }
        for (int64_t ci = 0; ci < c.cin; ++ci) {
          V8<T> wv[NV];
          UNROLL for (int v = 0; v < NV; ++v) wv[v] = load8(wk + ci * W + 8 * v);
          UNROLL for (int q = 0; q < P; ++q) {
            const V8<T> xv = bcast(xr[q][ci]);
            UNROLL for (int v = 0; v < NV; ++v) acc[q][v] += xv * wv[v];
          }
        }
        UNROLL for (int q = 0; q < P; ++q)
          UNROLL for (int v = 0; v < NV; ++v) out[rows[p + q]][v] = acc[q][v];
      }
      for (; p < n; ++p) {
        V8<T> acc[NV];
        const T* xr = x + srcs[p] * c.cin;
        UNROLL for (int v = 0; v < NV; ++v) acc[v] = out[rows[p]][v];
        for (int64_t ci = 0; ci < c.cin; ++ci) {
          const V8<T> xv = bcast(xr[ci]);
          UNROLL for (int v = 0; v < NV; ++v) acc[v] += xv * load8(wk + ci * W + 8 * v);
        }
        UNROLL for (int v = 0; v < NV; ++v) out[rows[p]][v] = acc[v];
      }
    }
    for (int64_t i = ib; i < ie; ++i) finish_row<T, NV>(out[i - ib], bias, slope, y + i * c.cout, width);
  }
}

// Columns [o0, o0 + width) of w (K, C_in, C_out) as a contiguous (K, C_in, 8 NV) panel, zero-padded.
// With one panel of a width that is a multiple of 8, w itself is returned and nothing is copied.
template <typename T>
const T* weight_panel(const Conv& c, const T* w, int64_t o0, int width, std::vector<T>& buf) {
  const int wpad = (width + 7) / 8 * 8;
  if (o0 == 0 && width == c.cout && wpad == width) return w;
  buf.assign(static_cast<size_t>(c.k * c.cin * wpad), T(0));
  for (int64_t r = 0; r < c.k * c.cin; ++r) std::memcpy(buf.data() + r * wpad, w + r * c.cout + o0, sizeof(T) * width);
  return buf.data();
}

template <typename T>
void conv(const Conv& c, const T* x, const T* w, const T* bias, T slope, T* y) {
  std::vector<T> wbuf;
  for (int64_t o0 = 0; o0 < c.cout; o0 += kPanel) {
    const int width = static_cast<int>(std::min(kPanel, c.cout - o0));
    const T* wp = weight_panel(c, w, o0, width, wbuf);
    T bpad[kPanel] = {};
    if (bias) std::memcpy(bpad, bias + o0, sizeof(T) * width);
    const T* bp = bias ? bpad : nullptr;
    const bool by_offset = !c.identity && c.k > 8;  // 3x3x3 tables; kernel-2 ones have 1-8 entries a row
    parallel_run(c.n_out, 512, [&](int64_t i0, int64_t i1, int) {
#define CONV_CASE(N)                                                                   \
  case N:                                                                              \
    if (by_offset) return conv_rows_by_offset<T, N>(c, x, wp, bp, slope, y + o0, width, i0, i1); \
    return conv_rows<T, N>(c, x, wp, bp, slope, y + o0, width, i0, i1);
      switch ((width + 7) / 8) {
        CONV_CASE(1)
        CONV_CASE(2)
        CONV_CASE(3)
        CONV_CASE(4)
        CONV_CASE(5)
        CONV_CASE(6)
        CONV_CASE(7)
        default:
          CONV_CASE(8)
      }
#undef CONV_CASE
    });
  }
}

// dw[k] += x[nbr[i, k]]^T gp[i] over rows [i0, i1) for one output panel, into a thread's (K, C_in, 8 NV)
// panel buffer; gp is offset to the panel (row stride C_out). Rows go in blocks of 64: per block and
// offset k the rows with a neighbour are listed once, then each group of CB input channels of dw[k] is
// summed over them in registers (CB * NV accumulators) and stored once.
template <typename T, int NV>
SIMD_CLONES void weight_grad(const Conv& c, const T* __restrict__ x, const T* __restrict__ gp, int width,
                             T* __restrict__ dw, int64_t i0, int64_t i1) {
  constexpr int W = 8 * NV;
  constexpr int CB = NV >= 8 ? 1 : (NV >= 4 ? 2 : (NV >= 2 ? 4 : 8));
  constexpr int64_t kRows = 64;
  int64_t rows[kRows], srcs[kRows];
  V8<T> gv[kRows][NV];
  for (int64_t ib = i0; ib < i1; ib += kRows) {
    const int64_t ie = std::min(i1, ib + kRows);
    for (int64_t i = ib; i < ie; ++i)
      UNROLL for (int v = 0; v < NV; ++v)
        gv[i - ib][v] = 8 * v + 8 <= width ? load8(gp + i * c.cout + 8 * v)
                                           : load_part(gp + i * c.cout + 8 * v, width - 8 * v);
    for (int64_t k = 0; k < c.k; ++k) {
      int n = 0;
      for (int64_t i = ib; i < ie; ++i) {
        const int64_t j = c.identity ? i : c.nbr[i * c.k + k];
        rows[n] = i - ib;
        srcs[n] = j;
        n += j >= 0;
      }
      if (n == 0) continue;
      T* dk = dw + k * c.cin * W;
      for (int64_t c0 = 0; c0 < c.cin; c0 += CB) {
        const int cb = static_cast<int>(std::min<int64_t>(CB, c.cin - c0));
        V8<T> acc[CB][NV];
        UNROLL for (int b = 0; b < CB; ++b)
          UNROLL for (int v = 0; v < NV; ++v) acc[b][v] = b < cb ? load8(dk + (c0 + b) * W + 8 * v) : V8<T>{};
        if (cb == CB) {
          for (int p = 0; p < n; ++p) {
            const T* xr = x + srcs[p] * c.cin + c0;
            UNROLL for (int b = 0; b < CB; ++b) {
              const V8<T> xv = bcast(xr[b]);
              UNROLL for (int v = 0; v < NV; ++v) acc[b][v] += xv * gv[rows[p]][v];
            }
          }
        } else {
          for (int p = 0; p < n; ++p) {
            const T* xr = x + srcs[p] * c.cin + c0;
            UNROLL for (int b = 0; b < CB; ++b) {  // constant bounds: acc stays in registers
              if (b >= cb) continue;
              const V8<T> xv = bcast(xr[b]);
              UNROLL for (int v = 0; v < NV; ++v) acc[b][v] += xv * gv[rows[p]][v];
            }
          }
        }
        UNROLL for (int b = 0; b < CB; ++b)
          if (b < cb)
            UNROLL for (int v = 0; v < NV; ++v) store8(dk + (c0 + b) * W + 8 * v, acc[b][v]);
      }
    }
  }
}

// dw (K, C_in, C_out) = sum over rows, panel by panel, from per-thread panel buffers.
template <typename T>
void weight_grads(const Conv& c, const T* x, const T* gp, T* dw, int slots) {
  for (int64_t o0 = 0; o0 < c.cout; o0 += kPanel) {
    const int width = static_cast<int>(std::min(kPanel, c.cout - o0));
    const int wpad = (width + 7) / 8 * 8;
    const int64_t psize = c.k * c.cin * wpad;
    std::vector<T> parts(static_cast<size_t>(slots) * psize, T(0));
    parallel_run(c.n_out, 1024, [&](int64_t i0, int64_t i1, int slot) {
      T* part = parts.data() + slot * psize;
      switch (wpad / 8) {
        case 1: return weight_grad<T, 1>(c, x, gp + o0, width, part, i0, i1);
        case 2: return weight_grad<T, 2>(c, x, gp + o0, width, part, i0, i1);
        case 3: return weight_grad<T, 3>(c, x, gp + o0, width, part, i0, i1);
        case 4: return weight_grad<T, 4>(c, x, gp + o0, width, part, i0, i1);
        case 5: return weight_grad<T, 5>(c, x, gp + o0, width, part, i0, i1);
        case 6: return weight_grad<T, 6>(c, x, gp + o0, width, part, i0, i1);
        case 7: return weight_grad<T, 7>(c, x, gp + o0, width, part, i0, i1);
        default: return weight_grad<T, 8>(c, x, gp + o0, width, part, i0, i1);
      }
    });
    for (int sl = 1; sl < slots; ++sl)
      for (int64_t e = 0; e < psize; ++e) parts[e] += parts[sl * psize + e];
    for (int64_t r = 0; r < c.k * c.cin; ++r)
      std::memcpy(dw + r * c.cout + o0, parts.data() + r * wpad, sizeof(T) * width);
  }
}

// gp = g * act'(y) (y > 0: 1, else slope) and the per-column sums of gp added to db. Vector code where
// the width allows: scalar, GCC turns the select into a branch on the sign of y, which mispredicts.
template <typename T>
SIMD_CLONES void activation_grad(const T* __restrict__ g, const T* __restrict__ y, T slope, T* __restrict__ gp,
                                 T* __restrict__ db, int64_t rows, int64_t co) {
  if (co % 8 == 0) {
    const V8<T> one = bcast(T(1)), low = bcast(slope);
    for (int64_t o = 0; o < co; o += 8) {
      V8<T> acc = V8<T>{};
      for (int64_t i = 0; i < rows; ++i) {
        const V8<T> v = load8(g + i * co + o) * (load8(y + i * co + o) > T(0) ? one : low);
        store8(gp + i * co + o, v);
        acc += v;
      }
      store8(db + o, load8(db + o) + acc);
    }
    return;
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t o = 0; o < co; ++o) {
      const T v = g[i * co + o] * (y[i * co + o] > T(0) ? T(1) : slope);
      gp[i * co + o] = v;
      db[o] += v;
    }
}

template <typename T>
SIMD_CLONES void column_sums(const T* __restrict__ g, T* __restrict__ db, int64_t rows, int64_t co) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t o = 0; o < co; ++o) db[o] += g[i * co + o];
}

// Smallest and largest entry of a table (lo, hi keep their values when n = 0).
SIMD_CLONES void table_range(const int32_t* __restrict__ p, int64_t n, int32_t& lo, int32_t& hi) {
  if (n == 0) return;
  int32_t a = p[0], b = p[0];
  for (int64_t e = 0; e < n; ++e) {
    a = std::min(a, p[e]);
    b = std::max(b, p[e]);
  }
  lo = a;
  hi = b;
}

void check_table(const Tensor& nbr, int64_t rows, int64_t n_in, const char* name) {
  if (nbr.numel() == 0 && nbr.dim() == 2 && nbr.size(1) == 0) return;  // identity
  TORCH_CHECK(nbr.device().is_cpu() && nbr.dim() == 2 && nbr.is_contiguous() &&
                  nbr.scalar_type() == at::kInt && nbr.size(0) == rows,
              "sparse_conv: ", name, " must be a contiguous int32 CPU table with ", rows, " rows");
  // Entries index rows of the gathered tensor: check them once here, not per access (min and max in
  // one branch-free pass; a check per entry cost as much as a small conv)
  int32_t lo = -1, hi = -1;
  table_range(nbr.data_ptr<int32_t>(), nbr.numel(), lo, hi);
  TORCH_CHECK(lo >= -1 && hi < n_in, "sparse_conv: ", name, " has entries in [", lo, ", ", hi,
              "], outside [-1, ", n_in, ")");
}

Conv make_conv(const Tensor& x, const Tensor& w, const Tensor& nbr) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(),
              "sparse_conv: x must be a contiguous (N, C_in) CPU tensor");
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 3 && w.is_contiguous() && w.scalar_type() == x.scalar_type() &&
                  w.size(1) == x.size(1),
              "sparse_conv: w must be a contiguous (K, C_in, C_out) tensor of x's dtype, C_in = ", x.size(1));
  const bool identity = nbr.dim() == 2 && nbr.size(1) == 0;
  TORCH_CHECK(identity ? w.size(0) == 1 : nbr.dim() == 2 && nbr.size(1) == w.size(0),
              "sparse_conv: the table has ", nbr.dim() == 2 ? nbr.size(1) : -1, " columns for ", w.size(0),
              " kernel offsets");
  TORCH_CHECK(identity || (nbr.device().is_cpu() && nbr.scalar_type() == at::kInt && nbr.is_contiguous()),
              "sparse_conv: nbr must be a contiguous int32 CPU table");
  Conv c;
  c.n_out = identity ? x.size(0) : nbr.size(0);
  c.cin = x.size(1);
  c.cout = w.size(2);
  c.k = w.size(0);
  c.nbr = identity ? nullptr : nbr.data_ptr<int32_t>();  // null for a table without rows too
  c.identity = identity;
  return c;
}

}  // namespace

// y = act(bias + gather-conv(x)); bias may be empty (none); slope < 0 means no activation.
Tensor sparse_conv_forward(const Tensor& x, const Tensor& w, const Tensor& nbr, const Tensor& bias, double slope) {
  Conv c = make_conv(x, w, nbr);
  check_table(nbr, c.n_out, x.size(0), "nbr");
  const bool has_bias = bias.numel() > 0;
  if (has_bias)
    TORCH_CHECK(bias.device().is_cpu() && bias.is_contiguous() && bias.numel() == c.cout &&
                    bias.scalar_type() == x.scalar_type(),
                "sparse_conv: bias must have C_out = ", c.cout, " values of x's dtype");
  Tensor y = at::empty({c.n_out, c.cout}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_conv_forward", [&] {
    using T = scalar_t;
    conv<T>(c, x.data_ptr<T>(), w.data_ptr<T>(), has_bias ? bias.data_ptr<T>() : nullptr, static_cast<T>(slope),
            y.data_ptr<T>());
  });
  return y;
}

// Gradients (dx, dw, dbias) of sparse_conv_forward from g = dL/dy; y is the forward's output (for the
// activation's derivative). nbr_t is the transposed table (see the top of the file). need_x / need_w
// skip dx / dw (returned empty).
std::tuple<Tensor, Tensor, Tensor> sparse_conv_backward(const Tensor& g, const Tensor& y, const Tensor& x,
                                                       const Tensor& w, const Tensor& nbr, const Tensor& nbr_t,
                                                       double slope, bool need_x, bool need_w) {
  Conv c = make_conv(x, w, nbr);
  TORCH_CHECK(g.device().is_cpu() && g.is_contiguous() && g.dim() == 2 && g.size(0) == c.n_out && g.size(1) == c.cout &&
                  g.scalar_type() == x.scalar_type(),
              "sparse_conv: the output gradient must be a contiguous (", c.n_out, ", ", c.cout, ") tensor");
  TORCH_CHECK(slope < 0 || (y.device().is_cpu() && y.is_contiguous() && y.sizes() == g.sizes() &&
                             y.scalar_type() == g.scalar_type()),
              "sparse_conv: y must be like the gradient");
  const bool identity = c.identity;
  if (!identity) TORCH_CHECK(nbr_t.dim() == 2 && nbr_t.size(1) == c.k, "sparse_conv: nbr_t must have K columns");
  if (need_x && !identity) check_table(nbr_t, x.size(0), c.n_out, "nbr_t");
  if (need_w && !identity) check_table(nbr, c.n_out, x.size(0), "nbr");
  const int slots = parallel_slots();
  Tensor gp = slope >= 0 ? at::empty_like(g) : g;
  Tensor db = at::zeros({c.cout}, g.options());
  Tensor dx, dw;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_conv_backward", [&] {
    using T = scalar_t;
    const int64_t co = c.cout;
    // gp = g * act'(y) and the bias gradient, per-thread partial sums
    std::vector<T> db_part(static_cast<size_t>(slots) * co, T(0));
    {
      const T* pg = g.data_ptr<T>();
      const T* py = slope >= 0 ? y.data_ptr<T>() : nullptr;
      T* pgp = gp.data_ptr<T>();
      parallel_run(c.n_out, 2048, [&](int64_t i0, int64_t i1, int slot) {
        T* acc = db_part.data() + slot * co;
        if (py)
          activation_grad<T>(pg + i0 * co, py + i0 * co, static_cast<T>(slope), pgp + i0 * co, acc, i1 - i0, co);
        else
          column_sums<T>(pg + i0 * co, acc, i1 - i0, co);
      });
      T* pdb = db.data_ptr<T>();
      for (int sl = 0; sl < slots; ++sl)
        for (int64_t o = 0; o < co; ++o) pdb[o] += db_part[sl * co + o];
    }
    const T* pgp = gp.data_ptr<T>();
    if (need_x) {
      // dx = gather-conv of gp through the transposed table with w[k]^T (K, C_out, C_in)
      Tensor wt = w.transpose(1, 2).contiguous();
      dx = at::empty_like(x);
      Conv t{x.size(0), co, c.cin, c.k, identity ? nullptr : nbr_t.data_ptr<int32_t>(), identity};
      conv<T>(t, pgp, wt.data_ptr<T>(), nullptr, T(-1), dx.data_ptr<T>());
    }
    if (need_w) {
      dw = at::empty_like(w);
      weight_grads<T>(c, x.data_ptr<T>(), pgp, dw.data_ptr<T>(), slots);
    }
  });
  if (!dx.defined()) dx = at::empty({0}, x.options());
  if (!dw.defined()) dw = at::empty({0}, x.options());
  return {dx, dw, db};
}

}  // namespace splat

TORCH_LIBRARY_FRAGMENT(recon_splat, m) {
  m.def("sparse_conv_forward", &splat::sparse_conv_forward);
  m.def("sparse_conv_backward", &splat::sparse_conv_backward);
}
