// EWA projection of 3D Gaussians into pinhole cameras (gsplat 1.5 "fully fused" semantics),
// optional spherical-harmonics colour, and the exact adjoint of both.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "parallel.h"
#include "splat_common.h"
#include "vec8.h"

namespace splat {
namespace {

using at::Tensor;

// Eight (camera, Gaussian) pairs at a time: every quantity below is a vector of 8 lanes (one per
// Gaussian), camera values are scalars, and the scalar code's early returns are lane masks. The
// arithmetic is the scalar formula's, in the same order.
template <typename S>
using V = V8<S>;
template <typename S>
using M = decltype(V<S>{} < V<S>{});

// Every helper taking or returning lanes is inlined into the SIMD_CLONES loops: a vector passed
// by value between an AVX2 clone and a baseline-ISA function would not agree on the registers.
#define LANES_INLINE __attribute__((always_inline)) inline
#define LAMBDA_INLINE __attribute__((always_inline))  // the same for lambdas (not cloned either)

// std::min / std::max semantics lane by lane (the second / first operand where a lane is NaN).
template <typename L>
LANES_INLINE L vmin(L a, L b) { return b < a ? b : a; }
template <typename L>
LANES_INLINE L vmax(L a, L b) { return a < b ? b : a; }

template <typename S>
LANES_INLINE V<S> vsqrt(V<S> x) {
  V<S> r;
  for (int i = 0; i < 8; ++i) r[i] = std::sqrt(x[i]);
  return r;
}
template <typename S>
LANES_INLINE V<S> vceil(V<S> x) {
  V<S> r;
  for (int i = 0; i < 8; ++i) r[i] = std::ceil(x[i]);
  return r;
}

template <typename Mask>
LANES_INLINE uint32_t lane_bits(const Mask& m) {
  uint32_t bits = 0;
  for (int i = 0; i < 8; ++i) bits |= (m[i] ? 1u : 0u) << i;
  return bits;
}

// Rows g0 .. g0 + count - 1 of an (N, D) array, one lane each; lanes past count repeat the last row
// (they are computed and never written back).
template <int D, typename S>
LANES_INLINE void gather_rows(const S* base, int64_t g0, int count, V<S> (&out)[D]) {
  for (int i = 0; i < 8; ++i) {
    const int64_t g = g0 + (i < count ? i : count - 1);
    for (int j = 0; j < D; ++j) out[j][i] = base[g * D + j];
  }
}

// Symmetric 3x3 matrices are stored as (xx, xy, xz, yy, yz, zz).
enum { XX = 0, XY = 1, XZ = 2, YY = 3, YZ = 4, ZZ = 5 };

template <typename L>
LANES_INLINE L sym(const L* S, int i, int j) {
  static constexpr int index[3][3] = {{XX, XY, XZ}, {XY, YY, YZ}, {XZ, YZ, ZZ}};
  return S[index[i][j]];
}

// R S R^T for a row-major 3x3 R (camera: scalars) and symmetric S (lanes).
template <typename R, typename L>
LANES_INLINE void congruence(const R* Rm, const L* S, L* out) {
  L A[9];  // R S
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      A[3 * i + j] = Rm[3 * i] * sym(S, 0, j) + Rm[3 * i + 1] * sym(S, 1, j) + Rm[3 * i + 2] * sym(S, 2, j);
  auto entry = [&](int i, int j) LAMBDA_INLINE { return A[3 * i] * Rm[3 * j] + A[3 * i + 1] * Rm[3 * j + 1] + A[3 * i + 2] * Rm[3 * j + 2]; };
  out[XX] = entry(0, 0);
  out[XY] = entry(0, 1);
  out[XZ] = entry(0, 2);
  out[YY] = entry(1, 1);
  out[YZ] = entry(1, 2);
  out[ZZ] = entry(2, 2);
}

// Rotation (row-major) from a quaternion (w, x, y, z) normalised like torch.nn.functional.normalize.
template <typename S>
LANES_INLINE void quat_to_rotmat(const V<S>* q_raw, V<S> qn[4], V<S>& norm, V<S>* r) {
  norm = vsqrt<S>(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
  const V<S> inv = S(1) / vmax(norm, bcast(S(1e-12)));
  for (int i = 0; i < 4; ++i) qn[i] = q_raw[i] * inv;
  const V<S> w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  r[0] = 1 - 2 * (y * y + z * z);
  r[1] = 2 * (x * y - w * z);
  r[2] = 2 * (x * z + w * y);
  r[3] = 2 * (x * y + w * z);
  r[4] = 1 - 2 * (x * x + z * z);
  r[5] = 2 * (y * z - w * x);
  r[6] = 2 * (x * z - w * y);
  r[7] = 2 * (y * z + w * x);
  r[8] = 1 - 2 * (x * x + y * y);
}

// SH basis (gsplat / Sloan's fast evaluation) at a unit direction, and its gradient.
template <typename S>
LANES_INLINE void sh_basis(int n_bases, V<S> x, V<S> y, V<S> z, V<S>* b) {
  b[0] = bcast(S(0.2820947917738781));
  if (n_bases <= 1) return;
  b[1] = S(-0.48860251190292) * y;
  b[2] = S(0.48860251190292) * z;
  b[3] = S(-0.48860251190292) * x;
  if (n_bases <= 4) return;
  const V<S> z2 = z * z;
  const V<S> fTmpB = S(-1.092548430592079) * z;
  const V<S> fC1 = x * x - y * y, fS1 = 2 * x * y;
  b[4] = S(0.5462742152960395) * fS1;
  b[5] = fTmpB * y;
  b[6] = S(0.9461746957575601) * z2 - S(0.3153915652525201);
  b[7] = fTmpB * x;
  b[8] = S(0.5462742152960395) * fC1;
  if (n_bases <= 9) return;
  const V<S> fTmpC = S(-2.285228997322329) * z2 + S(0.4570457994644658);
  const V<S> fTmpB3 = S(1.445305721320277) * z;
  const S fTmpA3 = S(-0.5900435899266435);
  const V<S> fC2 = x * fC1 - y * fS1, fS2 = x * fS1 + y * fC1;
  b[9] = fTmpA3 * fS2;
  b[10] = fTmpB3 * fS1;
  b[11] = fTmpC * y;
  b[12] = z * (S(1.865881662950577) * z2 - S(1.119528997770346));
  b[13] = fTmpC * x;
  b[14] = fTmpB3 * fC1;
  b[15] = fTmpA3 * fC2;
}

// d(basis_k)/d(x, y, z), rows k < n_bases.
template <typename S>
LANES_INLINE void sh_basis_grad(int n_bases, V<S> x, V<S> y, V<S> z, V<S> (*g)[3]) {
  for (int k = 0; k < n_bases; ++k) g[k][0] = g[k][1] = g[k][2] = V<S>{};
  if (n_bases <= 1) return;
  const S A1 = S(0.48860251190292);
  g[1][1] = bcast(-A1);
  g[2][2] = bcast(A1);
  g[3][0] = bcast(-A1);
  if (n_bases <= 4) return;
  const S B2 = S(1.092548430592079), A2 = S(0.5462742152960395);
  g[4][0] = 2 * A2 * y; g[4][1] = 2 * A2 * x;
  g[5][1] = -B2 * z; g[5][2] = -B2 * y;
  g[6][2] = 2 * S(0.9461746957575601) * z;
  g[7][0] = -B2 * z; g[7][2] = -B2 * x;
  g[8][0] = 2 * A2 * x; g[8][1] = -2 * A2 * y;
  if (n_bases <= 9) return;
  const V<S> z2 = z * z;
  const V<S> fTmpC = S(-2.285228997322329) * z2 + S(0.4570457994644658);
  const V<S> dC = S(-2.0) * S(2.285228997322329) * z;  // d fTmpC / dz
  const S B3 = S(1.445305721320277), A3 = S(-0.5900435899266435);
  const V<S> fC1 = x * x - y * y, fS1 = 2 * x * y;
  // fS2 = 3x^2 y - y^3, fC2 = x^3 - 3 x y^2
  g[9][0] = A3 * 6 * x * y; g[9][1] = A3 * (3 * x * x - 3 * y * y);
  g[10][0] = B3 * z * 2 * y; g[10][1] = B3 * z * 2 * x; g[10][2] = B3 * fS1;
  g[11][1] = fTmpC; g[11][2] = dC * y;
  g[12][2] = S(3) * S(1.865881662950577) * z2 - S(1.119528997770346);
  g[13][0] = fTmpC; g[13][2] = dC * x;
  g[14][0] = B3 * z * 2 * x; g[14][1] = -B3 * z * 2 * y; g[14][2] = B3 * fC1;
  g[15][0] = A3 * (3 * x * x - 3 * y * y); g[15][1] = A3 * (-6 * x * y);
}

struct ProjectSettings {
  int64_t width, height;
  double eps2d, near_plane, far_plane, radius_clip;
};

// Everything the forward computes for 8 (camera, Gaussian) pairs that the backward reuses.
template <typename S>
struct Projected {
  M<S> visible;
  S W[9];              // world-to-camera rotation (row-major)
  V<S> pc[3];          // mean in camera space
  V<S> Rq[9];          // rotation of the Gaussian (row-major)
  V<S> qn[4], qnorm;   // normalised quaternion and the raw norm
  V<S> cov_c[6];       // camera-space covariance (symmetric)
  V<S> J00, J02, J11, J12;  // projection Jacobian [[J00, 0, J02], [0, J11, J12]] (with the fov clamp)
  M<S> clamp_x, clamp_y;
  V<S> cov2d[3];       // blurred 2D covariance (xx, xy, yy)
  V<S> conic[3];
  V<S> mean2d[2];
  V<S> rx, ry;         // pixel radii (whole numbers) where visible
};

template <typename S>
LANES_INLINE void project_lanes(const V<S>* mean, const V<S>* quat, const V<S>* scale, V<S> opacity, const S* viewmat,
                          const S* K, const ProjectSettings& s, bool cull, Projected<S>& out) {
  typedef V<S> L;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) out.W[3 * i + j] = viewmat[4 * i + j];
  const S* W = out.W;
  for (int i = 0; i < 3; ++i)
    out.pc[i] = W[3 * i] * mean[0] + W[3 * i + 1] * mean[1] + W[3 * i + 2] * mean[2] + viewmat[4 * i + 3];
  const L x = out.pc[0], y = out.pc[1], z = out.pc[2];
  M<S> visible = ~M<S>{};
  if (cull) visible = ~((z < S(s.near_plane)) | (z > S(s.far_plane)));

  // world covariance M M^T with M = Rq diag(scale), then W cov W^T
  quat_to_rotmat<S>(quat, out.qn, out.qnorm, out.Rq);
  L Mq[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) Mq[3 * i + j] = out.Rq[3 * i + j] * scale[j];
  auto mm = [&](int i, int j) LAMBDA_INLINE { return Mq[3 * i] * Mq[3 * j] + Mq[3 * i + 1] * Mq[3 * j + 1] + Mq[3 * i + 2] * Mq[3 * j + 2]; };
  const L cov[6] = {mm(0, 0), mm(0, 1), mm(0, 2), mm(1, 1), mm(1, 2), mm(2, 2)};
  congruence(W, cov, out.cov_c);

  const S fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  const S width = static_cast<S>(s.width), height = static_cast<S>(s.height);
  const S tan_fovx = S(0.5) * width / fx, tan_fovy = S(0.5) * height / fy;
  const S lim_x_pos = (width - cx) / fx + S(0.3) * tan_fovx;
  const S lim_x_neg = cx / fx + S(0.3) * tan_fovx;
  const S lim_y_pos = (height - cy) / fy + S(0.3) * tan_fovy;
  const S lim_y_neg = cy / fy + S(0.3) * tan_fovy;
  const L rz = S(1) / z, rz2 = rz * rz;
  const L u = x * rz, v = y * rz;
  out.clamp_x = ~((u <= lim_x_pos) & (u >= -lim_x_neg));
  out.clamp_y = ~((v <= lim_y_pos) & (v >= -lim_y_neg));
  const L tx = z * vmin(bcast(lim_x_pos), vmax(bcast(-lim_x_neg), u));
  const L ty = z * vmin(bcast(lim_y_pos), vmax(bcast(-lim_y_neg), v));
  out.J00 = fx * rz;
  out.J02 = -fx * tx * rz2;
  out.J11 = fy * rz;
  out.J12 = -fy * ty * rz2;

  // cov2d = J cov_c J^T with the sparse J
  const L* C = out.cov_c;
  const L c00 = out.J00 * out.J00 * C[XX] + S(2) * out.J00 * out.J02 * C[XZ] + out.J02 * out.J02 * C[ZZ];
  const L c01 = out.J00 * out.J11 * C[XY] + out.J00 * out.J12 * C[XZ] + out.J02 * out.J11 * C[YZ] +
                out.J02 * out.J12 * C[ZZ];
  const L c11 = out.J11 * out.J11 * C[YY] + S(2) * out.J11 * out.J12 * C[YZ] + out.J12 * out.J12 * C[ZZ];
  out.mean2d[0] = fx * x * rz + cx;
  out.mean2d[1] = fy * y * rz + cy;

  const S eps = static_cast<S>(s.eps2d);
  out.cov2d[0] = c00 + eps;
  out.cov2d[1] = c01;
  out.cov2d[2] = c11 + eps;
  const L det = out.cov2d[0] * out.cov2d[2] - out.cov2d[1] * out.cov2d[1];
  const L inv_det = S(1) / det;
  out.conic[0] = out.cov2d[2] * inv_det;
  out.conic[1] = -out.cov2d[1] * inv_det;
  out.conic[2] = out.cov2d[0] * inv_det;

  if (cull) {
    visible &= det > S(0);
    // opacity-aware extent (gsplat passes opacities to its projection): beyond it alpha < 1/255
    visible &= ~(opacity < S(kAlphaThreshold));
    L extend;
    for (int i = 0; i < 8; ++i)
      extend[i] = std::min(S(3.33), std::sqrt(S(2) * std::log(std::max(opacity[i], S(kAlphaThreshold)) / S(kAlphaThreshold))));
    out.rx = vceil<S>(extend * vsqrt<S>(out.cov2d[0]));
    out.ry = vceil<S>(extend * vsqrt<S>(out.cov2d[2]));
    visible &= ~((out.rx <= S(s.radius_clip)) & (out.ry <= S(s.radius_clip)));
    visible &= ~((out.mean2d[0] + out.rx <= 0) | (out.mean2d[0] - out.rx >= width) | (out.mean2d[1] + out.ry <= 0) |
                 (out.mean2d[1] - out.ry >= height));
  }
  out.visible = visible;
}

template <typename S>
struct ProjectArgs {
  int64_t N = 0, C = 0;
  int n_bases = 0;  // 0: no SH colours
  ProjectSettings s{};
  const S *means = nullptr, *quats = nullptr, *scales = nullptr, *opacities = nullptr;
  const S *viewmats = nullptr, *Ks = nullptr, *campos = nullptr;
  // SH coefficients as two (N, K_i, 3) arrays, bases [0, K0) then [K0, K0 + K1): one whole array with an
  // empty rest, or the (DC, rest) pair trainers keep, without concatenating them
  const S *sh = nullptr, *sh_rest = nullptr;
  int64_t K0 = 0, K1 = 0;
  // rest row g / G belongs to Gaussian g: G consecutive Gaussians may share one (a decoder's K per voxel)
  int64_t G = 1;
  // forward outputs
  int32_t* radii = nullptr;
  S *means2d = nullptr, *depths = nullptr, *conics = nullptr, *colors = nullptr;
  // backward inputs and outputs
  const int32_t* radii_in = nullptr;
  const S *v_means2d = nullptr, *v_depths = nullptr, *v_conics = nullptr, *v_colors = nullptr;
  S *v_means = nullptr, *v_quats = nullptr, *v_scales = nullptr, *v_sh = nullptr, *v_sh_rest = nullptr;
};

// SH coefficients of 8 Gaussians as lanes: coef[k * 3 + ch].
template <typename S>
LANES_INLINE void gather_sh(const ProjectArgs<S>& a, int64_t g0, int count, V<S>* coef) {
  const int n = a.n_bases * 3, n0 = static_cast<int>(std::min<int64_t>(a.K0, a.n_bases)) * 3;
  for (int i = 0; i < 8; ++i) {
    const int64_t g = g0 + (i < count ? i : count - 1);
    const S* head = a.sh + g * a.K0 * 3;
    const S* rest = a.sh_rest ? a.sh_rest + (g / a.G) * a.K1 * 3 : nullptr;
    for (int j = 0; j < n0; ++j) coef[j][i] = head[j];
    for (int j = n0; j < n; ++j) coef[j][i] = rest[j - n0];
  }
}

template <typename S>
LANES_INLINE void view_direction(const V<S>* mean, const S* campos, V<S> (&dir)[3], V<S>& len) {
  for (int j = 0; j < 3; ++j) dir[j] = mean[j] - campos[j];
  len = vsqrt<S>(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
}

template <typename S>
SIMD_CLONES void project_forward_range(const ProjectArgs<S>& a, int64_t g_begin, int64_t g_end) {
  typedef V<S> L;
  const bool use_sh = a.n_bases > 0;
  L coef[48], basis[16];
  for (int64_t g0 = g_begin; g0 < g_end; g0 += 8) {
    const int count = static_cast<int>(std::min<int64_t>(8, g_end - g0));
    L mean[3], quat[4], scale[3], opac[1];
    gather_rows<3>(a.means, g0, count, mean);
    gather_rows<4>(a.quats, g0, count, quat);
    gather_rows<3>(a.scales, g0, count, scale);
    gather_rows<1>(a.opacities, g0, count, opac);
    if (use_sh) gather_sh(a, g0, count, coef);
    for (int64_t c = 0; c < a.C; ++c) {
      Projected<S> pr;
      project_lanes<S>(mean, quat, scale, opac[0], a.viewmats + 16 * c, a.Ks + 9 * c, a.s, true, pr);
      const uint32_t bits = lane_bits(pr.visible) & ((1u << count) - 1);
      if (!bits) continue;  // outputs were zero-initialised
      L col[3];
      if (use_sh) {
        L dir[3], len;
        view_direction<S>(mean, a.campos + 3 * c, dir, len);
        const L inv = S(1) / vmax(len, bcast(S(1e-12)));
        sh_basis<S>(a.n_bases, dir[0] * inv, dir[1] * inv, dir[2] * inv, basis);
        for (int ch = 0; ch < 3; ++ch) {
          L acc = L{};
          for (int k = 0; k < a.n_bases; ++k) acc += basis[k] * coef[k * 3 + ch];
          const L val = acc + S(0.5);
          col[ch] = val > S(0) ? val : L{};
        }
      }
      for (int i = 0; i < count; ++i) {
        if (!((bits >> i) & 1u)) continue;
        const int64_t idx = c * a.N + g0 + i;
        a.radii[2 * idx] = static_cast<int32_t>(pr.rx[i]);
        a.radii[2 * idx + 1] = static_cast<int32_t>(pr.ry[i]);
        a.means2d[2 * idx] = pr.mean2d[0][i];
        a.means2d[2 * idx + 1] = pr.mean2d[1][i];
        a.depths[idx] = pr.pc[2][i];
        for (int j = 0; j < 3; ++j) a.conics[3 * idx + j] = pr.conic[j][i];
        if (use_sh)
          for (int ch = 0; ch < 3; ++ch) a.colors[3 * idx + ch] = col[ch][i];
      }
    }
  }
}

template <typename S>
SIMD_CLONES void project_backward_range(const ProjectArgs<S>& a, int64_t g_begin, int64_t g_end) {
  typedef V<S> L;
  const bool use_sh = a.n_bases > 0;
  const int n_bases = a.n_bases;
  const L zero = L{};
  L coef[48], basis[16], dbasis[16][3], acc_sh[48];
  for (int64_t g0 = g_begin; g0 < g_end; g0 += 8) {
    const int count = static_cast<int>(std::min<int64_t>(8, g_end - g0));
    L mean[3], quat[4], sc[3];
    gather_rows<3>(a.means, g0, count, mean);
    gather_rows<4>(a.quats, g0, count, quat);
    gather_rows<3>(a.scales, g0, count, sc);
    if (use_sh) {
      gather_sh(a, g0, count, coef);
      for (int j = 0; j < 3 * n_bases; ++j) acc_sh[j] = zero;
    }
    L acc_m[3] = {zero, zero, zero}, acc_q[4] = {zero, zero, zero, zero}, acc_s[3] = {zero, zero, zero};
    for (int64_t c = 0; c < a.C; ++c) {
      // the pairs the forward kept (and real lanes only)
      M<S> active = M<S>{};
      L vc[3], vm[2], vdep;
      for (int i = 0; i < 8; ++i) {
        const int64_t idx = c * a.N + g0 + i;
        const bool on = i < count && a.radii_in[2 * idx] > 0 && a.radii_in[2 * idx + 1] > 0;
        active[i] = on ? -1 : 0;
        for (int j = 0; j < 3; ++j) vc[j][i] = on ? a.v_conics[3 * idx + j] : S(0);
        for (int j = 0; j < 2; ++j) vm[j][i] = on ? a.v_means2d[2 * idx + j] : S(0);
        vdep[i] = on && a.v_depths ? a.v_depths[idx] : S(0);
      }
      if (!lane_bits(active)) continue;
      const S* K3 = a.Ks + 9 * c;
      Projected<S> pr;
      project_lanes<S>(mean, quat, sc, bcast(S(1)), a.viewmats + 16 * c, K3, a.s, false, pr);
      const S* W = pr.W;

      // conic = inverse(cov2d): dL/dcov = -inv G inv, the off-diagonal gradient split in two
      const L ca = pr.conic[0], cb = pr.conic[1], cc = pr.conic[2];
      const L ga = vc[0], gb = S(0.5) * vc[1], gc = vc[2];
      const L t00 = ca * ga + cb * gb, t01 = ca * gb + cb * gc;
      const L t10 = cb * ga + cc * gb, t11 = cb * gb + cc * gc;
      const L V00 = -(t00 * ca + t01 * cb);
      const L V01 = -(t00 * cb + t01 * cc);  // == -(t10 * ca + t11 * cb): V is symmetric
      const L V11 = -(t10 * cb + t11 * cc);

      // cov2d = J cov_c J^T: dL/dcov_c = J^T V J, dL/dJ = 2 V J cov_c
      const L r0[3] = {pr.J00, zero, pr.J02}, r1[3] = {zero, pr.J11, pr.J12};  // rows of J
      L u0[3], u1[3];
      for (int j = 0; j < 3; ++j) {
        u0[j] = V00 * r0[j] + V01 * r1[j];
        u1[j] = V01 * r0[j] + V11 * r1[j];
      }
      auto vcc = [&](int i, int j) LAMBDA_INLINE { return r0[i] * u0[j] + r1[i] * u1[j]; };
      const L v_cov_c[6] = {vcc(0, 0), vcc(0, 1), vcc(0, 2), vcc(1, 1), vcc(1, 2), vcc(2, 2)};
      L JC0[3], JC1[3];  // rows of J cov_c
      for (int j = 0; j < 3; ++j) {
        JC0[j] = r0[0] * sym(pr.cov_c, 0, j) + r0[2] * sym(pr.cov_c, 2, j);
        JC1[j] = r1[1] * sym(pr.cov_c, 1, j) + r1[2] * sym(pr.cov_c, 2, j);
      }
      const L vJ00 = S(2) * (V00 * JC0[0] + V01 * JC1[0]);
      const L vJ02 = S(2) * (V00 * JC0[2] + V01 * JC1[2]);
      const L vJ11 = S(2) * (V01 * JC0[1] + V11 * JC1[1]);
      const L vJ12 = S(2) * (V01 * JC0[2] + V11 * JC1[2]);

      const S fx = K3[0], fy = K3[4];
      const L x = pr.pc[0], y = pr.pc[1], z = pr.pc[2];
      const L rz = S(1) / z, rz2 = rz * rz, rz3 = rz2 * rz;
      L v_pc[3] = {zero, zero, zero};
      const L gmx = vm[0], gmy = vm[1];
      v_pc[0] += fx * rz * gmx;
      v_pc[1] += fy * rz * gmy;
      v_pc[2] += -(fx * x * gmx + fy * y * gmy) * rz2;
      v_pc[2] += vdep;
      // J00 = fx/z, J11 = fy/z, J02 = -fx tx/z^2, J12 = -fy ty/z^2 with tx clamped to the fov
      v_pc[2] += -fx * rz2 * vJ00 - fy * rz2 * vJ11;
      {
        const L tx = -pr.J02 / (fx * rz2);
        v_pc[0] += pr.clamp_x ? zero : -fx * rz2 * vJ02;
        v_pc[2] += pr.clamp_x ? fx * tx * rz3 * vJ02 : S(2) * fx * x * rz3 * vJ02;
        const L ty = -pr.J12 / (fy * rz2);
        v_pc[1] += pr.clamp_y ? zero : -fy * rz2 * vJ12;
        v_pc[2] += pr.clamp_y ? fy * ty * rz3 * vJ12 : S(2) * fy * y * rz3 * vJ12;
      }

      // pc = W mean + t ; cov_c = W cov W^T  ->  dL/dcov = W^T dL/dcov_c W
      L d_m[3];
      for (int j = 0; j < 3; ++j) d_m[j] = W[j] * v_pc[0] + W[3 + j] * v_pc[1] + W[6 + j] * v_pc[2];
      const S Wt[9] = {W[0], W[3], W[6], W[1], W[4], W[7], W[2], W[5], W[8]};
      L v_cov[6];
      congruence(Wt, v_cov_c, v_cov);

      // cov = M M^T, M = Rq diag(s): dL/dM = 2 dL/dcov M (dL/dcov symmetric)
      L v_R[9], d_s[3];
      for (int j = 0; j < 3; ++j) {
        L acc = zero;
        for (int i = 0; i < 3; ++i) {
          L vM = zero;
          for (int k = 0; k < 3; ++k) vM += sym(v_cov, i, k) * pr.Rq[3 * k + j] * sc[j];
          vM *= S(2);
          v_R[3 * i + j] = vM * sc[j];
          acc += vM * pr.Rq[3 * i + j];
        }
        d_s[j] = acc;
      }
      const L w = pr.qn[0], qx = pr.qn[1], qy = pr.qn[2], qz = pr.qn[3];
      auto r = [&](int i, int j) LAMBDA_INLINE { return v_R[3 * i + j]; };
      L v_qn[4];
      v_qn[0] = 2 * (-qz * r(0, 1) + qy * r(0, 2) + qz * r(1, 0) - qx * r(1, 2) - qy * r(2, 0) + qx * r(2, 1));
      v_qn[1] = 2 * (qy * r(0, 1) + qz * r(0, 2) + qy * r(1, 0) - 2 * qx * r(1, 1) - w * r(1, 2) + qz * r(2, 0) +
                     w * r(2, 1) - 2 * qx * r(2, 2));
      v_qn[2] = 2 * (-2 * qy * r(0, 0) + qx * r(0, 1) + w * r(0, 2) + qx * r(1, 0) + qz * r(1, 2) - w * r(2, 0) +
                     qz * r(2, 1) - 2 * qy * r(2, 2));
      v_qn[3] = 2 * (-2 * qz * r(0, 0) - w * r(0, 1) + qx * r(0, 2) + w * r(1, 0) - 2 * qz * r(1, 1) +
                     qy * r(1, 2) + qx * r(2, 0) + qy * r(2, 1));
      L d_q[4];
      {
        const M<S> normal = pr.qnorm > S(1e-12);
        const L dot = v_qn[0] * pr.qn[0] + v_qn[1] * pr.qn[1] + v_qn[2] * pr.qn[2] + v_qn[3] * pr.qn[3];
        for (int i = 0; i < 4; ++i) d_q[i] = normal ? (v_qn[i] - pr.qn[i] * dot) / pr.qnorm : v_qn[i] / S(1e-12);
      }

      if (use_sh) {
        L dir[3], len;
        view_direction<S>(mean, a.campos + 3 * c, dir, len);
        const L denom = vmax(len, bcast(S(1e-12)));
        const L n[3] = {dir[0] / denom, dir[1] / denom, dir[2] / denom};
        sh_basis<S>(n_bases, n[0], n[1], n[2], basis);
        sh_basis_grad<S>(n_bases, n[0], n[1], n[2], dbasis);
        L v_n[3] = {zero, zero, zero};
        for (int ch = 0; ch < 3; ++ch) {
          L raw = bcast(S(0.5));
          for (int k = 0; k < n_bases; ++k) raw += basis[k] * coef[k * 3 + ch];
          L gcol;
          for (int i = 0; i < 8; ++i) gcol[i] = active[i] ? a.v_colors[3 * (c * a.N + g0 + i) + ch] : S(0);
          // clamp_min(0) passes no gradient below zero
          const M<S> pass = active & ~(raw < S(0));
          gcol = pass ? gcol : zero;
          for (int k = 0; k < n_bases; ++k) {
            acc_sh[k * 3 + ch] += pass ? basis[k] * gcol : zero;
            for (int j = 0; j < 3; ++j) v_n[j] += pass ? dbasis[k][j] * coef[k * 3 + ch] * gcol : zero;
          }
        }
        const L dot = v_n[0] * n[0] + v_n[1] * n[1] + v_n[2] * n[2];
        const M<S> normal = len > S(1e-12);
        for (int j = 0; j < 3; ++j) d_m[j] += normal ? (v_n[j] - n[j] * dot) / len : v_n[j] / S(1e-12);
      }
      // selects, not products: lanes the forward dropped may hold Inf or NaN
      for (int j = 0; j < 3; ++j) acc_m[j] += active ? d_m[j] : zero;
      for (int j = 0; j < 4; ++j) acc_q[j] += active ? d_q[j] : zero;
      for (int j = 0; j < 3; ++j) acc_s[j] += active ? d_s[j] : zero;
    }
    for (int i = 0; i < count; ++i) {
      const int64_t g = g0 + i;
      for (int j = 0; j < 3; ++j) a.v_means[3 * g + j] = acc_m[j][i];
      for (int j = 0; j < 4; ++j) a.v_quats[4 * g + j] = acc_q[j][i];
      for (int j = 0; j < 3; ++j) a.v_scales[3 * g + j] = acc_s[j][i];
      if (use_sh) {  // every coefficient is written (bases past the degree get 0): no zero fill first
        S* head = a.v_sh + g * a.K0 * 3;
        for (int j = 0; j < 3 * a.K0; ++j) head[j] = j < 3 * n_bases ? acc_sh[j][i] : S(0);
        if (a.v_sh_rest) {
          // a shared row: the group's first Gaussian writes it, the others add (a chunk holds whole
          // groups and runs them in order on one thread)
          S* rest = a.v_sh_rest + (g / a.G) * a.K1 * 3;
          const int r0 = 3 * static_cast<int>(a.K0);
          if (g % a.G == 0) {
            for (int j = r0; j < r0 + 3 * a.K1; ++j) rest[j - r0] = j < 3 * n_bases ? acc_sh[j][i] : S(0);
          } else {
            for (int j = r0; j < 3 * n_bases; ++j) rest[j - r0] += acc_sh[j][i];
          }
        }
      }
    }
  }
}

template <typename S>
ProjectArgs<S> project_args(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats,
                            const Tensor& Ks, const Tensor& campos, const Tensor& sh, const Tensor& sh_rest,
                            int64_t sh_degree, const ProjectSettings& s) {
  ProjectArgs<S> a;
  a.N = means.size(0);
  a.C = viewmats.size(0);
  a.s = s;
  a.means = means.data_ptr<S>();
  a.quats = quats.data_ptr<S>();
  a.scales = scales.data_ptr<S>();
  a.viewmats = viewmats.data_ptr<S>();
  a.Ks = Ks.data_ptr<S>();
  a.campos = campos.data_ptr<S>();
  if (sh_degree >= 0) {
    a.sh = sh.data_ptr<S>();
    a.K0 = sh.size(1);
    a.K1 = sh_rest.size(1);
    a.sh_rest = a.K1 > 0 ? sh_rest.data_ptr<S>() : nullptr;
    a.G = sh_rest.size(0) > 0 ? std::max<int64_t>(a.N / sh_rest.size(0), 1) : 1;
    a.n_bases = static_cast<int>((sh_degree + 1) * (sh_degree + 1));
  }
  return a;
}

// Gaussians per chunk of the thread pool (a multiple of the 8 lanes).
constexpr int64_t kGaussiansPerChunk = 512;

// Chunks hold whole groups of Gaussians sharing an SH rest row (their gradient is summed in order).
template <typename S>
int64_t chunk_for(const ProjectArgs<S>& a) {
  return a.G <= kGaussiansPerChunk ? kGaussiansPerChunk / a.G * a.G : a.G;
}

template <typename S>
void project_forward_impl(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
                          const Tensor& viewmats, const Tensor& Ks, const Tensor& campos, const Tensor& sh,
                          const Tensor& sh_rest, int64_t sh_degree, const ProjectSettings& s, Tensor& radii,
                          Tensor& means2d, Tensor& depths, Tensor& conics, Tensor& colors) {
  ProjectArgs<S> a = project_args<S>(means, quats, scales, viewmats, Ks, campos, sh, sh_rest, sh_degree, s);
  a.opacities = opacities.data_ptr<S>();
  a.radii = radii.data_ptr<int32_t>();
  a.means2d = means2d.data_ptr<S>();
  a.depths = depths.data_ptr<S>();
  a.conics = conics.data_ptr<S>();
  if (a.n_bases > 0) a.colors = colors.data_ptr<S>();
  parallel_run(a.N, kGaussiansPerChunk, [&](int64_t begin, int64_t end, int) { project_forward_range<S>(a, begin, end); });
}

template <typename S>
void project_backward_impl(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats,
                           const Tensor& Ks, const Tensor& campos, const Tensor& sh, const Tensor& sh_rest,
                           int64_t sh_degree, const ProjectSettings& s, const Tensor& radii,
                           const Tensor& v_means2d, const Tensor& v_depths, const Tensor& v_conics,
                           const Tensor& v_colors, Tensor& v_means, Tensor& v_quats, Tensor& v_scales, Tensor& v_sh,
                           Tensor& v_sh_rest) {
  const bool use_sh = sh_degree >= 0 && v_colors.defined() && v_colors.dim() == 3;
  ProjectArgs<S> a =
      project_args<S>(means, quats, scales, viewmats, Ks, campos, sh, sh_rest, use_sh ? sh_degree : -1, s);
  a.radii_in = radii.data_ptr<int32_t>();
  a.v_means2d = v_means2d.data_ptr<S>();
  a.v_depths = v_depths.numel() > 0 ? v_depths.data_ptr<S>() : nullptr;  // empty: no depth gradient
  a.v_conics = v_conics.data_ptr<S>();
  a.v_means = v_means.data_ptr<S>();
  a.v_quats = v_quats.data_ptr<S>();
  a.v_scales = v_scales.data_ptr<S>();
  if (use_sh) {
    a.v_colors = v_colors.data_ptr<S>();
    a.v_sh = v_sh.data_ptr<S>();
    a.v_sh_rest = a.K1 > 0 ? v_sh_rest.data_ptr<S>() : nullptr;
  }
  // one Gaussian per lane, cameras inside: every write goes to that Gaussian's own slots (or its group's)
  const int64_t chunk = chunk_for(a);
  TORCH_CHECK(chunk % a.G == 0, "project_backward: a chunk must hold whole groups of shared SH rows");
  parallel_run(a.N, chunk, [&](int64_t begin, int64_t end, int) { project_backward_range<S>(a, begin, end); });
}

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The SH input is the pair (sh (N, K0, 3), sh_rest (N, K1, 3)): bases [0, K0) then [K0, K0 + K1). Pass
// an empty sh_rest for one whole array.
void check_sh(const Tensor& means, const Tensor& sh, const Tensor& sh_rest, int64_t sh_degree) {
  check_cpu(sh, "sh");
  TORCH_CHECK(sh.dim() == 3 && sh.size(0) == means.size(0) && sh.size(2) == 3, "sh must be (N, K, 3)");
  TORCH_CHECK(sh.scalar_type() == means.scalar_type(), "sh must have the dtype of means");
  const bool has_rest = sh_rest.dim() == 3;  // (N, K1, 3); any other shape (e.g. (0,)) means none
  if (has_rest) {
    check_cpu(sh_rest, "sh_rest");
    const int64_t n = means.size(0), rows = sh_rest.size(0);
    TORCH_CHECK(sh_rest.dim() == 3 && sh_rest.size(2) == 3 && (rows == n || (rows > 0 && rows < n && n % rows == 0)),
                "sh_rest must be (N, K, 3), or (N / G, K, 3) with a row per G consecutive Gaussians");
    TORCH_CHECK(sh_rest.scalar_type() == means.scalar_type(), "sh_rest must have the dtype of means");
  }
  const int64_t K = sh.size(1) + (has_rest ? sh_rest.size(1) : 0);
  TORCH_CHECK((sh_degree + 1) * (sh_degree + 1) <= K && sh_degree <= 3, "sh_degree too high");
}

Tensor rest_or_empty(const Tensor& sh, const Tensor& sh_rest) {
  return sh_rest.dim() == 3 ? sh_rest : at::empty({sh.size(0), 0, 3}, sh.options());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> project_forward(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
    const Tensor& viewmats, const Tensor& Ks, const Tensor& campos, const Tensor& sh, const Tensor& sh_rest,
    int64_t sh_degree, int64_t width, int64_t height, double eps2d, double near_plane, double far_plane,
    double radius_clip) {
  for (auto* t : {&means, &quats, &scales, &opacities, &viewmats, &Ks, &campos}) check_cpu(*t, "projection input");
  if (sh_degree >= 0) check_sh(means, sh, sh_rest, sh_degree);
  const int64_t N = means.size(0), C = viewmats.size(0);
  auto opts = means.options();
  Tensor radii = at::zeros({C, N, 2}, opts.dtype(at::kInt));
  Tensor means2d = at::zeros({C, N, 2}, opts);
  Tensor depths = at::zeros({C, N}, opts);
  Tensor conics = at::zeros({C, N, 3}, opts);
  Tensor colors = sh_degree >= 0 ? at::zeros({C, N, 3}, opts) : at::empty({0}, opts);
  const Tensor rest = sh_degree >= 0 ? rest_or_empty(sh, sh_rest) : sh_rest;
  const ProjectSettings s{width, height, eps2d, near_plane, far_plane, radius_clip};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    project_forward_impl<scalar_t>(means, quats, scales, opacities, viewmats, Ks, campos, sh, rest, sh_degree, s,
                                   radii, means2d, depths, conics, colors);
  });
  return {radii, means2d, depths, conics, colors};
}

// Returns v_means, v_quats, v_scales, v_sh, v_sh_rest (the last two shaped like sh and sh_rest).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> project_backward(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats, const Tensor& Ks,
    const Tensor& campos, const Tensor& sh, const Tensor& sh_rest, int64_t sh_degree, int64_t width,
    int64_t height, double eps2d, const Tensor& radii, const Tensor& v_means2d, const Tensor& v_depths,
    const Tensor& v_conics, const Tensor& v_colors) {
  for (auto* t : {&means, &quats, &scales, &viewmats, &Ks, &campos, &radii, &v_means2d, &v_depths, &v_conics})
    check_cpu(*t, "projection backward input");
  // every Gaussian's row is written by the kernel (zeros where no camera kept it)
  Tensor v_means = at::empty_like(means);
  Tensor v_quats = at::empty_like(quats);
  Tensor v_scales = at::empty_like(scales);
  const bool use_sh = sh_degree >= 0 && v_colors.dim() == 3;  // (C, N, 3), N may be 0
  if (use_sh) {
    check_cpu(v_colors, "v_colors");
    check_sh(means, sh, sh_rest, sh_degree);
  }
  const Tensor rest = use_sh ? rest_or_empty(sh, sh_rest) : sh_rest;
  Tensor v_sh = use_sh ? at::empty_like(sh) : at::empty({0}, means.options());
  Tensor v_sh_rest = use_sh ? at::empty_like(rest) : at::empty({0}, means.options());
  const ProjectSettings s{width, height, eps2d, 0.0, 0.0, 0.0};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    project_backward_impl<scalar_t>(means, quats, scales, viewmats, Ks, campos, sh, rest, sh_degree, s, radii,
                                    v_means2d, v_depths, v_conics, v_colors, v_means, v_quats, v_scales, v_sh,
                                    v_sh_rest);
  });
  return {v_means, v_quats, v_scales, v_sh, v_sh_rest};
}

}  // namespace splat
