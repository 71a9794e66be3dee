// The decoder head's last step on the CPU: raw per-voxel outputs (M, K*14) -> the M*K Gaussians
// (the SH orders above the DC, one set per voxel, are a separate linear output), and its adjoint, in
// one pass each. Written with torch ops the many narrow strided
// slices (3 or 4 values per Gaussian) make every elementwise op take the slow strided path.
// Pure-PyTorch reference: recon.decoder.decoder._DecodeHead (formulas in the module docstring):
//   means      = centre + extent * tanh(raw_off + offset_bias_k)
//   log_scales = base + span * sigmoid(raw_scale + scale_bias)
//   quats      = raw_quat + (1, 0, 0, 0);  opacity_logits = raw_opacity + opacity_bias
//   sh0        = dc + raw_dc / SH_C0
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/tanh.h>
#include <torch/library.h>

#include <tuple>

#include "parallel.h"

namespace splat {
namespace {

using at::Tensor;
constexpr int kPer = 14;  // per Gaussian: offset 3, log-scale 3, quat 4, opacity 1, SH DC 3
constexpr double kShC0 = 0.28209479177387814;

struct HeadShape {
  int64_t m, k, width;
};

HeadShape head_shape(const Tensor& raw, int64_t k) {
  TORCH_CHECK(raw.device().is_cpu() && raw.dim() == 2 && raw.is_contiguous(),
              "decode_head: raw must be a contiguous CPU (M, P) tensor");
  TORCH_CHECK(k >= 1, "decode_head: K must be positive");
  HeadShape s{raw.size(0), k, raw.size(1)};
  TORCH_CHECK(s.width == k * kPer, "decode_head: raw has ", s.width, " columns, expected ", k * kPer);
  return s;
}

void check_rows(const Tensor& t, const Tensor& raw, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == raw.scalar_type() &&
                  t.numel() == rows * cols,
              "decode_head: ", name, " must be a contiguous CPU tensor of ", rows, " x ", cols, " like raw");
}

// tanh(raw offset + offset bias) and sigmoid(raw log-scale + scale bias), (M*K, 3) each, by ATen's
// vectorised kernels (scalar libm tanh/exp cost ~20 ns each, several times the rest of the head).
std::tuple<Tensor, Tensor> activations(const Tensor& raw, const Tensor& offset_bias, const HeadShape& s,
                                       double scale_bias) {
  const int64_t n = s.m * s.k;
  Tensor t = at::empty({n, 3}, raw.options()), sg = at::empty({n, 3}, raw.options());
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "decode_head_activations", [&] {
    using T = scalar_t;
    const T* r = raw.data_ptr<T>();
    const T* ob = offset_bias.data_ptr<T>();
    T* pt = t.data_ptr<T>();
    T* ps = sg.data_ptr<T>();
    const T sb = static_cast<T>(scale_bias);
    parallel_run(s.m, 4096, [&](int64_t vb, int64_t ve, int) {
      for (int64_t v = vb; v < ve; ++v)
        for (int64_t j = 0; j < s.k; ++j) {
          const T* p = r + v * s.width + j * kPer;
          const int64_t g = v * s.k + j;
          for (int i = 0; i < 3; ++i) {
            pt[3 * g + i] = p[i] + ob[3 * j + i];
            ps[3 * g + i] = p[3 + i] + sb;
          }
        }
    });
  });
  t.tanh_();
  sg.sigmoid_();
  return {t, sg};
}

}  // namespace

// Also returns tanh(offset) and sigmoid(log-scale), (M*K, 3) each, for the backward (recomputing them
// there cost more than the rest of the backward).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> decode_head_forward(
    const Tensor& raw, const Tensor& centers, const Tensor& dc, const Tensor& offset_bias, int64_t k,
    double offset_extent, double scale_bias, double log_scale_base, double log_scale_span, double opacity_bias) {
  const HeadShape s = head_shape(raw, k);
  check_rows(centers, raw, s.m, 3, "centers");
  check_rows(dc, raw, s.m, 3, "dc");
  check_rows(offset_bias, raw, k, 3, "offset_bias");
  const int64_t n = s.m * k;
  auto opts = raw.options();
  Tensor means = at::empty({n, 3}, opts), quats = at::empty({n, 4}, opts), log_scales = at::empty({n, 3}, opts);
  Tensor opacity = at::empty({n}, opts), sh0 = at::empty({n, 1, 3}, opts);
  const auto act = activations(raw, offset_bias, s, scale_bias);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "decode_head_forward", [&] {
    using T = scalar_t;
    const T* r = raw.data_ptr<T>();
    const T* cen = centers.data_ptr<T>();
    const T* d = dc.data_ptr<T>();
    const T* at_t = std::get<0>(act).data_ptr<T>();
    const T* at_s = std::get<1>(act).data_ptr<T>();
    T* pm = means.data_ptr<T>();
    T* pq = quats.data_ptr<T>();
    T* ps = log_scales.data_ptr<T>();
    T* po = opacity.data_ptr<T>();
    T* psh = sh0.data_ptr<T>();
    const T ext = static_cast<T>(offset_extent);
    const T base = static_cast<T>(log_scale_base), span = static_cast<T>(log_scale_span);
    const T obias = static_cast<T>(opacity_bias), inv_c0 = static_cast<T>(1.0 / kShC0);
    parallel_run(s.m, 2048, [&](int64_t vb, int64_t ve, int) {
      for (int64_t v = vb; v < ve; ++v) {
        const T* rv = r + v * s.width;
        for (int64_t j = 0; j < k; ++j) {
          const T* p = rv + j * kPer;
          const int64_t g = v * k + j;
          for (int i = 0; i < 3; ++i) {
            pm[3 * g + i] = cen[3 * v + i] + ext * at_t[3 * g + i];
            ps[3 * g + i] = base + span * at_s[3 * g + i];
          }
          pq[4 * g] = p[6] + T(1);
          for (int i = 1; i < 4; ++i) pq[4 * g + i] = p[6 + i];
          po[g] = p[10] + obias;
          for (int i = 0; i < 3; ++i) psh[3 * g + i] = d[3 * v + i] + p[11 + i] * inv_c0;
        }
      }
    });
  });
  return {means, quats, log_scales, opacity, sh0, std::get<0>(act), std::get<1>(act)};
}

// Gradient of raw (M, width) from the outputs' gradients (an empty tensor stands for a zero gradient),
// with the forward's activations t = tanh(offset) and sg = sigmoid(log-scale), (M*K, 3) each.
Tensor decode_head_backward(const Tensor& t, const Tensor& sg, int64_t k, double offset_extent,
                            double log_scale_span, const Tensor& g_means, const Tensor& g_quats,
                            const Tensor& g_log_scales, const Tensor& g_opacity, const Tensor& g_sh) {
  TORCH_CHECK(k >= 1, "decode_head: K must be positive");
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.size(1) == 3 && t.is_contiguous() && t.size(0) % k == 0 &&
                  sg.sizes() == t.sizes() && sg.is_contiguous() && sg.scalar_type() == t.scalar_type(),
              "decode_head: the saved activations must be two contiguous (M*K, 3) CPU tensors");
  const HeadShape s{t.size(0) / k, k, k * kPer};
  const int64_t n = s.m * k;
  const bool has_m = g_means.numel() > 0, has_q = g_quats.numel() > 0, has_s = g_log_scales.numel() > 0;
  const bool has_o = g_opacity.numel() > 0, has_sh = g_sh.numel() > 0;
  if (has_m) check_rows(g_means, t, n, 3, "grad of means");
  if (has_q) check_rows(g_quats, t, n, 4, "grad of quats");
  if (has_s) check_rows(g_log_scales, t, n, 3, "grad of log_scales");
  if (has_o) check_rows(g_opacity, t, n, 1, "grad of opacity_logits");
  if (has_sh) check_rows(g_sh, t, n, 3, "grad of sh0");
  Tensor g_raw = at::empty({s.m, s.width}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "decode_head_backward", [&] {
    using T = scalar_t;
    const T* at_t = t.data_ptr<T>();
    const T* at_s = sg.data_ptr<T>();
    const T* gm = has_m ? g_means.data_ptr<T>() : nullptr;
    const T* gq = has_q ? g_quats.data_ptr<T>() : nullptr;
    const T* gs = has_s ? g_log_scales.data_ptr<T>() : nullptr;
    const T* go = has_o ? g_opacity.data_ptr<T>() : nullptr;
    const T* gsh = has_sh ? g_sh.data_ptr<T>() : nullptr;
    T* out = g_raw.data_ptr<T>();
    const T ext = static_cast<T>(offset_extent);
    const T span = static_cast<T>(log_scale_span), inv_c0 = static_cast<T>(1.0 / kShC0);
    parallel_run(s.m, 2048, [&](int64_t vb, int64_t ve, int) {
      for (int64_t v = vb; v < ve; ++v) {
        T* ov = out + v * s.width;
        for (int64_t j = 0; j < k; ++j) {
          T* o = ov + j * kPer;
          const int64_t g = v * k + j;
          for (int i = 0; i < 3; ++i) {
            const T t = at_t[3 * g + i], sg = at_s[3 * g + i];
            o[i] = has_m ? gm[3 * g + i] * ext * (T(1) - t * t) : T(0);
            o[3 + i] = has_s ? gs[3 * g + i] * span * sg * (T(1) - sg) : T(0);
          }
          for (int i = 0; i < 4; ++i) o[6 + i] = has_q ? gq[4 * g + i] : T(0);
          o[10] = has_o ? go[g] : T(0);
          for (int i = 0; i < 3; ++i) o[11 + i] = has_sh ? gsh[3 * g + i] * inv_c0 : T(0);
        }
      }
    });
  });
  return g_raw;
}

}  // namespace splat

TORCH_LIBRARY_FRAGMENT(recon_splat, m) {
  m.def("decode_head_forward", &splat::decode_head_forward);
  m.def("decode_head_backward", &splat::decode_head_backward);
}
