// SSIM loss (11x11 Gaussian window, 'valid' region, as in 3DGS) fused into one forward and one
// backward pass over channels-last images (B, H, W, C), so the training loss needs no layout copies,
// no per-statistic convolution calls and no autograd graph of ~30 image-sized temporaries.
// Pure-PyTorch reference: recon.train.losses.ssim_map.
//
// Forward: the five local moments (blurred a, b, a^2, b^2, ab) by a separable blur (rows, then
// columns), then the SSIM map and its sum; the moments are kept for the backward.
// Backward (gradient for `a` only, the render): per window the derivatives of SSIM with respect to
// the blurred a, a^2 and ab, pushed back through the transposed blur, then
//   dL/da = blur^T(d/dmu_a) + 2 a blur^T(d/dE[a^2]) + b blur^T(d/dE[ab]).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "parallel.h"
#include "vec8.h"

namespace splat {
namespace {

using at::Tensor;
constexpr int kMoments = 5;  // E[a], E[b], E[a^2], E[b^2], E[ab]

struct Geometry {
  int64_t B, H, W, C, K, Ho, Wo, row_in, row_out;  // row_* = values per image row (W*C, Wo*C)
};

Geometry geometry(const Tensor& a, const Tensor& window) {
  Geometry g;
  g.B = a.size(0);
  g.H = a.size(1);
  g.W = a.size(2);
  g.C = a.size(3);
  g.K = window.numel();
  g.Ho = g.H - g.K + 1;
  g.Wo = g.W - g.K + 1;
  g.row_in = g.W * g.C;
  g.row_out = g.Wo * g.C;
  return g;
}

void check(const Tensor& a, const Tensor& b, const Tensor& window) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && window.device().is_cpu(), "ssim: CPU tensors only");
  TORCH_CHECK(a.dim() == 4 && a.sizes() == b.sizes(), "ssim: a and b must be (B, H, W, C) of one shape");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous() && window.is_contiguous(), "ssim: contiguous tensors only");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.scalar_type() == window.scalar_type(), "ssim: one dtype");
  TORCH_CHECK(window.dim() == 1 && window.numel() % 2 == 1, "ssim: the window must be 1-D of odd length");
  TORCH_CHECK(a.size(1) >= window.numel() && a.size(2) >= window.numel(), "ssim: image smaller than the window");
}

// out[j] = sum_k w[k] in[j + k * stride], k < K, summed in k order. Outputs are done in
// blocks that stay in registers across the taps (8 AVX2 accumulators: enough independent FMA
// chains to keep both units busy), so each is stored once instead of loaded and stored per tap.
// The last block is moved back to end at n, recomputing a few outputs, instead of a scalar tail.
template <typename T>
SIMD_CLONES void fir(T* __restrict__ out, const T* __restrict__ in, const T* __restrict__ w, int64_t K,
                     int64_t stride, int64_t n) {
  constexpr int64_t kBlock = 64;
  if (n < kBlock) {
    for (int64_t j = 0; j < n; ++j) out[j] = T(0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < n; ++j) out[j] += w[k] * in[k * stride + j];
    return;
  }
  constexpr int kVecs = kBlock / 8;
  for (int64_t j = 0;; j += kBlock) {
    if (j + kBlock > n) j = n - kBlock;
    V8<T> acc[kVecs];
    for (int i = 0; i < kVecs; ++i) acc[i] = V8<T>{};
    for (int64_t k = 0; k < K; ++k) {
      const V8<T> wk = bcast(w[k]);
      const T* src = in + k * stride + j;
      for (int i = 0; i < kVecs; ++i) acc[i] += wk * load8(src + 8 * i);
    }
    for (int i = 0; i < kVecs; ++i) store8(out + j + 8 * i, acc[i]);
    if (j + kBlock == n) break;
  }
}

// One window's SSIM = (A1 A2) / (B1 B2) from the five moment planes (`stride` apart).
template <typename T>
struct Window {
  T mu_a, mu_b, A1, A2, B1, B2;
};

template <typename T>
inline Window<T> window_terms(const T* __restrict__ m, int64_t stride, int64_t j) {
  constexpr T c1 = T(0.01 * 0.01), c2 = T(0.03 * 0.03);
  Window<T> w;
  w.mu_a = m[j];
  w.mu_b = m[stride + j];
  const T saa = m[2 * stride + j] - w.mu_a * w.mu_a;
  const T sbb = m[3 * stride + j] - w.mu_b * w.mu_b;
  const T sab = m[4 * stride + j] - w.mu_a * w.mu_b;
  w.A1 = T(2) * w.mu_a * w.mu_b + c1;
  w.A2 = T(2) * sab + c2;
  w.B1 = w.mu_a * w.mu_a + w.mu_b * w.mu_b + c1;
  w.B2 = saa + sbb + c2;
  return w;
}

// SSIM of each window of one row.
template <typename T>
SIMD_CLONES void ssim_row(const T* __restrict__ m, int64_t stride, T* __restrict__ out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const Window<T> w = window_terms(m, stride, j);
    out[j] = (w.A1 * w.A2) / (w.B1 * w.B2);
  }
}

// Derivatives of scale * SSIM of each window of one row with respect to E[a], E[a^2] and E[ab].
template <typename T>
SIMD_CLONES void ssim_grad_row(const T* __restrict__ m, int64_t stride, T scale, T* __restrict__ d_mu,
                               T* __restrict__ d_aa, T* __restrict__ d_ab, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const Window<T> w = window_terms(m, stride, j);
    // divide only by B1 >= c1 and B2 (~c2 at least): A1 or A2 may be exactly 0
    const T q = scale / (w.B1 * w.B2);
    const T s = q * w.A1 * w.A2;
    // through mu_a directly and through the variances it enters
    d_mu[j] = q * T(2) * w.mu_b * (w.A2 - w.A1) + s * T(2) * w.mu_a * (T(1) / w.B2 - T(1) / w.B1);
    d_aa[j] = -s / w.B2;
    d_ab[j] = T(2) * q * w.A1;
  }
}

// moments: (B, 5, Ho, Wo*C). Rows of every image are blurred along x into a scratch band per
// output-row chunk, then along y.
template <typename T>
void blur_moments(const T* a, const T* b, const T* w, const Geometry& g, T* moments) {
  const int64_t chunks_per_image = (g.Ho + 31) / 32;
  parallel_run(g.B * chunks_per_image, 1, [&](int64_t cb, int64_t ce, int) {
    std::vector<T> band;
    for (int64_t chunk = cb; chunk < ce; ++chunk) {
      const int64_t img = chunk / chunks_per_image;
      const int64_t y0 = (chunk % chunks_per_image) * 32;
      const int64_t y1 = std::min<int64_t>(g.Ho, y0 + 32);
      const int64_t rows = y1 - y0 + g.K - 1;  // input rows this chunk reads
      band.resize(static_cast<size_t>(kMoments * rows * g.row_out));
      std::vector<T> prod(static_cast<size_t>(3 * g.row_in));
      for (int64_t r = 0; r < rows; ++r) {
        const T* ar = a + (img * g.H + y0 + r) * g.row_in;
        const T* br = b + (img * g.H + y0 + r) * g.row_in;
        T* __restrict__ aa = prod.data();
        T* __restrict__ bb = aa + g.row_in;
        T* __restrict__ ab = bb + g.row_in;
        for (int64_t j = 0; j < g.row_in; ++j) {
          aa[j] = ar[j] * ar[j];
          bb[j] = br[j] * br[j];
          ab[j] = ar[j] * br[j];
        }
        const T* src[kMoments] = {ar, br, aa, bb, ab};
        for (int m = 0; m < kMoments; ++m) {
          T* __restrict__ out = band.data() + (m * rows + r) * g.row_out;
          const T* __restrict__ in = src[m];
          fir<T>(out, in, w, g.K, g.C, g.row_out);
        }
      }
      for (int m = 0; m < kMoments; ++m) {
        for (int64_t y = y0; y < y1; ++y) {
          T* __restrict__ dst = moments + ((img * kMoments + m) * g.Ho + y) * g.row_out;
          fir<T>(dst, band.data() + (m * rows + (y - y0)) * g.row_out, w, g.K, g.row_out, g.row_out);
        }
      }
    }
  });
}

}  // namespace

// Returns (sum of the SSIM map over all B*Ho*Wo*C values, the moments for the backward).
std::tuple<Tensor, Tensor> ssim_forward(const Tensor& a, const Tensor& b, const Tensor& window) {
  check(a, b, window);
  const Geometry g = geometry(a, window);
  Tensor moments = at::empty({g.B, kMoments, g.Ho, g.row_out}, a.options());
  Tensor total = at::empty({}, a.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_forward", [&] {
    blur_moments<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), window.data_ptr<scalar_t>(), g,
                           moments.data_ptr<scalar_t>());
    const scalar_t* m = moments.data_ptr<scalar_t>();
    const int64_t plane = g.Ho * g.row_out;
    std::vector<double> row_sums(static_cast<size_t>(g.B * g.Ho), 0.0);
    parallel_run(g.B * g.Ho, 16, [&](int64_t rb, int64_t re, int) {
      std::vector<scalar_t> values(static_cast<size_t>(g.row_out));
      for (int64_t row = rb; row < re; ++row) {
        const int64_t img = row / g.Ho, y = row % g.Ho;
        const scalar_t* mi = m + img * kMoments * plane;
        ssim_row<scalar_t>(mi + y * g.row_out, plane, values.data(), g.row_out);
        double sum = 0;
        for (int64_t x = 0; x < g.row_out; ++x) sum += static_cast<double>(values[x]);
        row_sums[row] = sum;
      }
    });
    double sum = 0;
    for (double v : row_sums) sum += v;  // fixed order: the result does not depend on the threads
    total.fill_(sum);
  });
  return {total, moments};
}

// Gradient of grad_sum * (sum of the SSIM map) with respect to a.
Tensor ssim_backward(const Tensor& a, const Tensor& b, const Tensor& window, const Tensor& moments,
                     double grad_sum) {
  check(a, b, window);
  const Geometry g = geometry(a, window);
  TORCH_CHECK(moments.device().is_cpu() && moments.scalar_type() == a.scalar_type() && moments.is_contiguous() &&
                  moments.numel() == g.B * kMoments * g.Ho * g.row_out,
              "ssim_backward: moments do not match the images");
  Tensor grad_a = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "ssim_backward", [&] {
    using T = scalar_t;
    const T* w = window.data_ptr<T>();
    const T* m = moments.data_ptr<T>();
    const T* ap = a.data_ptr<T>();
    const T* bp = b.data_ptr<T>();
    T* ga = grad_a.data_ptr<T>();
    const int64_t plane = g.Ho * g.row_out;
    const T scale = static_cast<T>(grad_sum);
    // d(sum)/d(E[a]), d/d(E[a^2]), d/d(E[ab]) per window, (B, 3, Ho, Wo*C)
    std::vector<T> d(static_cast<size_t>(g.B * 3 * plane));
    parallel_run(g.B * g.Ho, 16, [&](int64_t rb, int64_t re, int) {
      for (int64_t row = rb; row < re; ++row) {
        const int64_t img = row / g.Ho, y = row % g.Ho;
        const T* mi = m + img * kMoments * plane + y * g.row_out;
        T* di = d.data() + img * 3 * plane + y * g.row_out;
        ssim_grad_row<T>(mi, plane, scale, di, di + plane, di + 2 * plane, g.row_out);
      }
    });
    // transposed blur: along y (each input row gathers the windows that cover it), then along x
    // (rows padded by K-1 pixels of zeros on both sides), then combine with a and b
    parallel_run(g.B * g.H, 8, [&](int64_t rb, int64_t re, int) {
      const int64_t pad = (g.K - 1) * g.C;
      std::vector<T> col(static_cast<size_t>(3 * (g.row_out + 2 * pad)));
      std::vector<T> acc(static_cast<size_t>(3 * g.row_in));
      for (int64_t row = rb; row < re; ++row) {
        const int64_t img = row / g.H, y = row % g.H;
        const T* di = d.data() + img * 3 * plane;
        for (int q = 0; q < 3; ++q) {
          T* c = col.data() + q * (g.row_out + 2 * pad);
          for (int64_t j = 0; j < pad; ++j) c[j] = c[pad + g.row_out + j] = T(0);
          // window row y - k has this row as its k-th tap; the k with a window row in range
          const int64_t k0 = std::max<int64_t>(0, y - (g.Ho - 1)), k1 = std::min<int64_t>(g.K - 1, y);
          fir<T>(c + pad, di + q * plane + (y - k0) * g.row_out, w + k0, k1 - k0 + 1, -g.row_out, g.row_out);
        }
        const int64_t base = (img * g.H + y) * g.row_in;
        for (int q = 0; q < 3; ++q) {
          T* __restrict__ t = acc.data() + q * g.row_in;
          const T* __restrict__ c = col.data() + q * (g.row_out + 2 * pad) + pad;
          // column j gathers window column j - k*C
          fir<T>(t, c, w, g.K, -g.C, g.row_in);
        }
        const T* t0 = acc.data();
        const T* t1 = t0 + g.row_in;
        const T* t2 = t1 + g.row_in;
        for (int64_t j = 0; j < g.row_in; ++j)
          ga[base + j] = t0[j] + T(2) * ap[base + j] * t1[j] + bp[base + j] * t2[j];
      }
    });
  });
  return grad_a;
}

}  // namespace splat

TORCH_LIBRARY_FRAGMENT(recon_splat, m) {
  m.def("ssim_forward", &splat::ssim_forward);
  m.def("ssim_backward", &splat::ssim_backward);
}
