// EWA projection of 3D Gaussians into pinhole cameras (gsplat 1.5 "fully fused" semantics),
// optional spherical-harmonics colour, and the exact adjoint of both.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <tuple>

#include "parallel.h"
#include "splat_common.h"

namespace splat {
namespace {

using at::Tensor;

// Symmetric 3x3 matrices are stored as (xx, xy, xz, yy, yz, zz).
enum { XX = 0, XY = 1, XZ = 2, YY = 3, YZ = 4, ZZ = 5 };

template <typename T>
inline T sym(const T* S, int i, int j) {
  static constexpr int index[3][3] = {{XX, XY, XZ}, {XY, YY, YZ}, {XZ, YZ, ZZ}};
  return S[index[i][j]];
}

// R S R^T for a row-major 3x3 R and symmetric S.
template <typename T>
inline void congruence(const T* R, const T* S, T* out) {
  T A[9];  // R S
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      A[3 * i + j] = R[3 * i] * sym(S, 0, j) + R[3 * i + 1] * sym(S, 1, j) + R[3 * i + 2] * sym(S, 2, j);
  auto entry = [&](int i, int j) { return A[3 * i] * R[3 * j] + A[3 * i + 1] * R[3 * j + 1] + A[3 * i + 2] * R[3 * j + 2]; };
  out[XX] = entry(0, 0);
  out[XY] = entry(0, 1);
  out[XZ] = entry(0, 2);
  out[YY] = entry(1, 1);
  out[YZ] = entry(1, 2);
  out[ZZ] = entry(2, 2);
}

// Rotation (row-major) from a quaternion (w, x, y, z) normalised like torch.nn.functional.normalize.
template <typename T>
inline void quat_to_rotmat(const T* q_raw, T qn[4], T& norm, T* r) {
  norm = std::sqrt(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
  const T inv = T(1) / std::max(norm, T(1e-12));
  for (int i = 0; i < 4; ++i) qn[i] = q_raw[i] * inv;
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
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
template <typename T>
inline void sh_basis(int n_bases, T x, T y, T z, T* b) {
  b[0] = T(0.2820947917738781);
  if (n_bases <= 1) return;
  b[1] = T(-0.48860251190292) * y;
  b[2] = T(0.48860251190292) * z;
  b[3] = T(-0.48860251190292) * x;
  if (n_bases <= 4) return;
  const T z2 = z * z;
  const T fTmpB = T(-1.092548430592079) * z;
  const T fC1 = x * x - y * y, fS1 = 2 * x * y;
  b[4] = T(0.5462742152960395) * fS1;
  b[5] = fTmpB * y;
  b[6] = T(0.9461746957575601) * z2 - T(0.3153915652525201);
  b[7] = fTmpB * x;
  b[8] = T(0.5462742152960395) * fC1;
  if (n_bases <= 9) return;
  const T fTmpC = T(-2.285228997322329) * z2 + T(0.4570457994644658);
  const T fTmpB3 = T(1.445305721320277) * z;
  const T fTmpA3 = T(-0.5900435899266435);
  const T fC2 = x * fC1 - y * fS1, fS2 = x * fS1 + y * fC1;
  b[9] = fTmpA3 * fS2;
  b[10] = fTmpB3 * fS1;
  b[11] = fTmpC * y;
  b[12] = z * (T(1.865881662950577) * z2 - T(1.119528997770346));
  b[13] = fTmpC * x;
  b[14] = fTmpB3 * fC1;
  b[15] = fTmpA3 * fC2;
}

// d(basis_k)/d(x, y, z), rows k < n_bases.
template <typename T>
inline void sh_basis_grad(int n_bases, T x, T y, T z, T (*g)[3]) {
  for (int k = 0; k < n_bases; ++k) g[k][0] = g[k][1] = g[k][2] = T(0);
  if (n_bases <= 1) return;
  const T A1 = T(0.48860251190292);
  g[1][1] = -A1;
  g[2][2] = A1;
  g[3][0] = -A1;
  if (n_bases <= 4) return;
  const T B2 = T(1.092548430592079), A2 = T(0.5462742152960395);
  g[4][0] = 2 * A2 * y; g[4][1] = 2 * A2 * x;
  g[5][1] = -B2 * z; g[5][2] = -B2 * y;
  g[6][2] = 2 * T(0.9461746957575601) * z;
  g[7][0] = -B2 * z; g[7][2] = -B2 * x;
  g[8][0] = 2 * A2 * x; g[8][1] = -2 * A2 * y;
  if (n_bases <= 9) return;
  const T z2 = z * z;
  const T fTmpC = T(-2.285228997322329) * z2 + T(0.4570457994644658);
  const T dC = T(-2.0) * T(2.285228997322329) * z;  // d fTmpC / dz
  const T B3 = T(1.445305721320277), A3 = T(-0.5900435899266435);
  const T fC1 = x * x - y * y, fS1 = 2 * x * y;
  // fS2 = 3x^2 y - y^3, fC2 = x^3 - 3 x y^2
  g[9][0] = A3 * 6 * x * y; g[9][1] = A3 * (3 * x * x - 3 * y * y);
  g[10][0] = B3 * z * 2 * y; g[10][1] = B3 * z * 2 * x; g[10][2] = B3 * fS1;
  g[11][1] = fTmpC; g[11][2] = dC * y;
  g[12][2] = T(3) * T(1.865881662950577) * z2 - T(1.119528997770346);
  g[13][0] = fTmpC; g[13][2] = dC * x;
  g[14][0] = B3 * z * 2 * x; g[14][1] = -B3 * z * 2 * y; g[14][2] = B3 * fC1;
  g[15][0] = A3 * (3 * x * x - 3 * y * y); g[15][1] = A3 * (-6 * x * y);
}

struct ProjectSettings {
  int64_t width, height;
  double eps2d, near_plane, far_plane, radius_clip;
};

// Everything the forward computes for one (camera, Gaussian) pair that the backward reuses.
template <typename T>
struct Projected {
  bool visible = false;
  T W[9];           // world-to-camera rotation (row-major)
  T pc[3];          // mean in camera space
  T Rq[9];          // rotation of the Gaussian (row-major)
  T qn[4], qnorm;   // normalised quaternion and the raw norm
  T cov_c[6];       // camera-space covariance (symmetric)
  T J00, J02, J11, J12;  // projection Jacobian [[J00, 0, J02], [0, J11, J12]] (with the fov clamp)
  bool clamp_x, clamp_y;
  T cov2d[3];       // blurred 2D covariance (xx, xy, yy)
  T conic[3];
  T mean2d[2];
  int32_t rx = 0, ry = 0;
};

template <typename T>
inline void project_one(const T* mean, const T* quat, const T* scale, T opacity, const T* viewmat, const T* K,
                        const ProjectSettings& s, bool cull, Projected<T>& out) {
  out.visible = false;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) out.W[3 * i + j] = viewmat[4 * i + j];
  const T* W = out.W;
  for (int i = 0; i < 3; ++i)
    out.pc[i] = W[3 * i] * mean[0] + W[3 * i + 1] * mean[1] + W[3 * i + 2] * mean[2] + viewmat[4 * i + 3];
  const T x = out.pc[0], y = out.pc[1], z = out.pc[2];
  if (cull && (z < T(s.near_plane) || z > T(s.far_plane))) return;

  // world covariance M M^T with M = Rq diag(scale), then W cov W^T
  quat_to_rotmat(quat, out.qn, out.qnorm, out.Rq);
  T M[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[3 * i + j] = out.Rq[3 * i + j] * scale[j];
  auto mm = [&](int i, int j) { return M[3 * i] * M[3 * j] + M[3 * i + 1] * M[3 * j + 1] + M[3 * i + 2] * M[3 * j + 2]; };
  const T cov[6] = {mm(0, 0), mm(0, 1), mm(0, 2), mm(1, 1), mm(1, 2), mm(2, 2)};
  congruence(W, cov, out.cov_c);

  const T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  const T width = static_cast<T>(s.width), height = static_cast<T>(s.height);
  const T tan_fovx = T(0.5) * width / fx, tan_fovy = T(0.5) * height / fy;
  const T lim_x_pos = (width - cx) / fx + T(0.3) * tan_fovx;
  const T lim_x_neg = cx / fx + T(0.3) * tan_fovx;
  const T lim_y_pos = (height - cy) / fy + T(0.3) * tan_fovy;
  const T lim_y_neg = cy / fy + T(0.3) * tan_fovy;
  const T rz = T(1) / z, rz2 = rz * rz;
  const T u = x * rz, v = y * rz;
  out.clamp_x = !(u <= lim_x_pos && u >= -lim_x_neg);
  out.clamp_y = !(v <= lim_y_pos && v >= -lim_y_neg);
  const T tx = z * std::min(lim_x_pos, std::max(-lim_x_neg, u));
  const T ty = z * std::min(lim_y_pos, std::max(-lim_y_neg, v));
  out.J00 = fx * rz;
  out.J02 = -fx * tx * rz2;
  out.J11 = fy * rz;
  out.J12 = -fy * ty * rz2;

  // cov2d = J cov_c J^T with the sparse J
  const T* C = out.cov_c;
  const T c00 = out.J00 * out.J00 * C[XX] + T(2) * out.J00 * out.J02 * C[XZ] + out.J02 * out.J02 * C[ZZ];
  const T c01 = out.J00 * out.J11 * C[XY] + out.J00 * out.J12 * C[XZ] + out.J02 * out.J11 * C[YZ] +
                out.J02 * out.J12 * C[ZZ];
  const T c11 = out.J11 * out.J11 * C[YY] + T(2) * out.J11 * out.J12 * C[YZ] + out.J12 * out.J12 * C[ZZ];
  out.mean2d[0] = fx * x * rz + cx;
  out.mean2d[1] = fy * y * rz + cy;

  const T eps = static_cast<T>(s.eps2d);
  out.cov2d[0] = c00 + eps;
  out.cov2d[1] = c01;
  out.cov2d[2] = c11 + eps;
  const T det = out.cov2d[0] * out.cov2d[2] - out.cov2d[1] * out.cov2d[1];
  if (cull && !(det > T(0))) return;
  const T inv_det = T(1) / det;
  out.conic[0] = out.cov2d[2] * inv_det;
  out.conic[1] = -out.cov2d[1] * inv_det;
  out.conic[2] = out.cov2d[0] * inv_det;

  if (cull) {
    // opacity-aware extent (gsplat passes opacities to its projection): beyond it alpha < 1/255
    if (opacity < T(kAlphaThreshold)) return;
    const T extend = std::min(T(3.33), std::sqrt(T(2) * std::log(opacity / T(kAlphaThreshold))));
    const T rx = std::ceil(extend * std::sqrt(out.cov2d[0]));
    const T ry = std::ceil(extend * std::sqrt(out.cov2d[2]));
    if (rx <= T(s.radius_clip) && ry <= T(s.radius_clip)) return;
    if (out.mean2d[0] + rx <= 0 || out.mean2d[0] - rx >= width || out.mean2d[1] + ry <= 0 ||
        out.mean2d[1] - ry >= height)
      return;
    out.rx = static_cast<int32_t>(rx);
    out.ry = static_cast<int32_t>(ry);
  }
  out.visible = true;
}

template <typename T>
void project_forward_impl(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
                          const Tensor& viewmats, const Tensor& Ks, const Tensor& campos, const Tensor& sh,
                          int64_t sh_degree, const ProjectSettings& s, Tensor& radii, Tensor& means2d,
                          Tensor& depths, Tensor& conics, Tensor& colors) {
  const int64_t N = means.size(0), C = viewmats.size(0);
  const T* mp = means.data_ptr<T>();
  const T* qp = quats.data_ptr<T>();
  const T* sp = scales.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();
  const T* vp = viewmats.data_ptr<T>();
  const T* kp = Ks.data_ptr<T>();
  const T* cp = campos.data_ptr<T>();
  const bool use_sh = sh_degree >= 0;
  const T* shp = use_sh ? sh.data_ptr<T>() : nullptr;
  const int64_t K = use_sh ? sh.size(1) : 0;
  const int n_bases = use_sh ? static_cast<int>((sh_degree + 1) * (sh_degree + 1)) : 0;
  int32_t* rp = radii.data_ptr<int32_t>();
  T* m2 = means2d.data_ptr<T>();
  T* dp = depths.data_ptr<T>();
  T* cn = conics.data_ptr<T>();
  T* colp = use_sh ? colors.data_ptr<T>() : nullptr;

  parallel_run(C * N, 1024, [&](int64_t begin, int64_t end, int) {
    T basis[16];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t c = idx / N, g = idx % N;
      Projected<T> pr;
      project_one(mp + 3 * g, qp + 4 * g, sp + 3 * g, op[g], vp + 16 * c, kp + 9 * c, s, true, pr);
      if (!pr.visible) continue;  // outputs were zero-initialised
      rp[2 * idx] = pr.rx;
      rp[2 * idx + 1] = pr.ry;
      m2[2 * idx] = pr.mean2d[0];
      m2[2 * idx + 1] = pr.mean2d[1];
      dp[idx] = pr.pc[2];
      cn[3 * idx] = pr.conic[0];
      cn[3 * idx + 1] = pr.conic[1];
      cn[3 * idx + 2] = pr.conic[2];
      if (use_sh) {
        T dir[3] = {mp[3 * g] - cp[3 * c], mp[3 * g + 1] - cp[3 * c + 1], mp[3 * g + 2] - cp[3 * c + 2]};
        const T len = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
        const T inv = T(1) / std::max(len, T(1e-12));
        sh_basis(n_bases, dir[0] * inv, dir[1] * inv, dir[2] * inv, basis);
        const T* coef = shp + g * K * 3;
        for (int ch = 0; ch < 3; ++ch) {
          T acc = 0;
          for (int k = 0; k < n_bases; ++k) acc += basis[k] * coef[k * 3 + ch];
          const T val = acc + T(0.5);
          colp[3 * idx + ch] = val > T(0) ? val : T(0);
        }
      }
    }
  });
}

template <typename T>
void project_backward_impl(const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats,
                           const Tensor& Ks, const Tensor& campos, const Tensor& sh, int64_t sh_degree,
                           const ProjectSettings& s, const Tensor& radii, const Tensor& v_means2d,
                           const Tensor& v_depths, const Tensor& v_conics, const Tensor& v_colors, Tensor& v_means,
                           Tensor& v_quats, Tensor& v_scales, Tensor& v_sh) {
  const int64_t N = means.size(0), C = viewmats.size(0);
  const T* mp = means.data_ptr<T>();
  const T* qp = quats.data_ptr<T>();
  const T* sp = scales.data_ptr<T>();
  const T* vp = viewmats.data_ptr<T>();
  const T* kp = Ks.data_ptr<T>();
  const T* cp = campos.data_ptr<T>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  const T* vm2 = v_means2d.data_ptr<T>();
  const T* vd = v_depths.data_ptr<T>();
  const T* vc = v_conics.data_ptr<T>();
  const bool use_sh = sh_degree >= 0 && v_colors.defined() && v_colors.numel() > 0;
  const T* shp = use_sh ? sh.data_ptr<T>() : nullptr;
  const T* vcol = use_sh ? v_colors.data_ptr<T>() : nullptr;
  const int64_t K = use_sh ? sh.size(1) : 0;
  const int n_bases = use_sh ? static_cast<int>((sh_degree + 1) * (sh_degree + 1)) : 0;
  T* gm = v_means.data_ptr<T>();
  T* gq = v_quats.data_ptr<T>();
  T* gs = v_scales.data_ptr<T>();
  T* gsh = use_sh ? v_sh.data_ptr<T>() : nullptr;

  // one Gaussian per iteration, cameras inside: every write goes to this Gaussian's own slots
  parallel_run(N, 1024, [&](int64_t begin, int64_t end, int) {
    T basis[16];
    T dbasis[16][3];
    for (int64_t g = begin; g < end; ++g) {
      T acc_m[3] = {0, 0, 0}, acc_q[4] = {0, 0, 0, 0}, acc_s[3] = {0, 0, 0};
      for (int64_t c = 0; c < C; ++c) {
        const int64_t idx = c * N + g;
        if (rp[2 * idx] <= 0 || rp[2 * idx + 1] <= 0) continue;
        const T* K3 = kp + 9 * c;
        Projected<T> pr;
        project_one(mp + 3 * g, qp + 4 * g, sp + 3 * g, T(1), vp + 16 * c, K3, s, false, pr);
        const T* W = pr.W;

        // conic = inverse(cov2d): dL/dcov = -inv G inv, the off-diagonal gradient split in two
        const T a = pr.conic[0], b = pr.conic[1], cc = pr.conic[2];
        const T ga = vc[3 * idx], gb = T(0.5) * vc[3 * idx + 1], gc = vc[3 * idx + 2];
        const T t00 = a * ga + b * gb, t01 = a * gb + b * gc;
        const T t10 = b * ga + cc * gb, t11 = b * gb + cc * gc;
        const T V00 = -(t00 * a + t01 * b);
        const T V01 = -(t00 * b + t01 * cc);  // == -(t10 * a + t11 * b): V is symmetric
        const T V11 = -(t10 * b + t11 * cc);

        // cov2d = J cov_c J^T: dL/dcov_c = J^T V J, dL/dJ = 2 V J cov_c
        const T r0[3] = {pr.J00, 0, pr.J02}, r1[3] = {0, pr.J11, pr.J12};  // rows of J
        T u0[3], u1[3];
        for (int j = 0; j < 3; ++j) {
          u0[j] = V00 * r0[j] + V01 * r1[j];
          u1[j] = V01 * r0[j] + V11 * r1[j];
        }
        auto vcc = [&](int i, int j) { return r0[i] * u0[j] + r1[i] * u1[j]; };
        const T v_cov_c[6] = {vcc(0, 0), vcc(0, 1), vcc(0, 2), vcc(1, 1), vcc(1, 2), vcc(2, 2)};
        T JC0[3], JC1[3];  // rows of J cov_c
        for (int j = 0; j < 3; ++j) {
          JC0[j] = r0[0] * sym(pr.cov_c, 0, j) + r0[2] * sym(pr.cov_c, 2, j);
          JC1[j] = r1[1] * sym(pr.cov_c, 1, j) + r1[2] * sym(pr.cov_c, 2, j);
        }
        const T vJ00 = T(2) * (V00 * JC0[0] + V01 * JC1[0]);
        const T vJ02 = T(2) * (V00 * JC0[2] + V01 * JC1[2]);
        const T vJ11 = T(2) * (V01 * JC0[1] + V11 * JC1[1]);
        const T vJ12 = T(2) * (V01 * JC0[2] + V11 * JC1[2]);

        const T fx = K3[0], fy = K3[4];
        const T x = pr.pc[0], y = pr.pc[1], z = pr.pc[2];
        const T rz = T(1) / z, rz2 = rz * rz, rz3 = rz2 * rz;
        T v_pc[3] = {0, 0, 0};
        const T gmx = vm2[2 * idx], gmy = vm2[2 * idx + 1];
        v_pc[0] += fx * rz * gmx;
        v_pc[1] += fy * rz * gmy;
        v_pc[2] += -(fx * x * gmx + fy * y * gmy) * rz2;
        v_pc[2] += vd[idx];
        // J00 = fx/z, J11 = fy/z, J02 = -fx tx/z^2, J12 = -fy ty/z^2 with tx clamped to the fov
        v_pc[2] += -fx * rz2 * vJ00 - fy * rz2 * vJ11;
        if (!pr.clamp_x) {
          v_pc[0] += -fx * rz2 * vJ02;
          v_pc[2] += T(2) * fx * x * rz3 * vJ02;
        } else {
          const T tx = -pr.J02 / (fx * rz2);
          v_pc[2] += fx * tx * rz3 * vJ02;
        }
        if (!pr.clamp_y) {
          v_pc[1] += -fy * rz2 * vJ12;
          v_pc[2] += T(2) * fy * y * rz3 * vJ12;
        } else {
          const T ty = -pr.J12 / (fy * rz2);
          v_pc[2] += fy * ty * rz3 * vJ12;
        }

        // pc = W mean + t ; cov_c = W cov W^T  ->  dL/dcov = W^T dL/dcov_c W
        for (int j = 0; j < 3; ++j) acc_m[j] += W[j] * v_pc[0] + W[3 + j] * v_pc[1] + W[6 + j] * v_pc[2];
        const T Wt[9] = {W[0], W[3], W[6], W[1], W[4], W[7], W[2], W[5], W[8]};
        T v_cov[6];
        congruence(Wt, v_cov_c, v_cov);

        // cov = M M^T, M = Rq diag(s): dL/dM = 2 dL/dcov M (dL/dcov symmetric)
        const T* sc = sp + 3 * g;
        T v_R[9];
        for (int j = 0; j < 3; ++j) {
          T acc = 0;
          for (int i = 0; i < 3; ++i) {
            T vM = 0;
            for (int k = 0; k < 3; ++k) vM += sym(v_cov, i, k) * pr.Rq[3 * k + j] * sc[j];
            vM *= T(2);
            v_R[3 * i + j] = vM * sc[j];
            acc += vM * pr.Rq[3 * i + j];
          }
          acc_s[j] += acc;
        }
        const T w = pr.qn[0], qx = pr.qn[1], qy = pr.qn[2], qz = pr.qn[3];
        auto r = [&](int i, int j) { return v_R[3 * i + j]; };
        T v_qn[4];
        v_qn[0] = 2 * (-qz * r(0, 1) + qy * r(0, 2) + qz * r(1, 0) - qx * r(1, 2) - qy * r(2, 0) + qx * r(2, 1));
        v_qn[1] = 2 * (qy * r(0, 1) + qz * r(0, 2) + qy * r(1, 0) - 2 * qx * r(1, 1) - w * r(1, 2) + qz * r(2, 0) +
                       w * r(2, 1) - 2 * qx * r(2, 2));
        v_qn[2] = 2 * (-2 * qy * r(0, 0) + qx * r(0, 1) + w * r(0, 2) + qx * r(1, 0) + qz * r(1, 2) - w * r(2, 0) +
                       qz * r(2, 1) - 2 * qy * r(2, 2));
        v_qn[3] = 2 * (-2 * qz * r(0, 0) - w * r(0, 1) + qx * r(0, 2) + w * r(1, 0) - 2 * qz * r(1, 1) +
                       qy * r(1, 2) + qx * r(2, 0) + qy * r(2, 1));
        if (pr.qnorm > T(1e-12)) {
          const T dot = v_qn[0] * pr.qn[0] + v_qn[1] * pr.qn[1] + v_qn[2] * pr.qn[2] + v_qn[3] * pr.qn[3];
          for (int i = 0; i < 4; ++i) acc_q[i] += (v_qn[i] - pr.qn[i] * dot) / pr.qnorm;
        } else {
          for (int i = 0; i < 4; ++i) acc_q[i] += v_qn[i] / T(1e-12);
        }

        if (use_sh) {
          const T* mg = mp + 3 * g;
          T dir[3] = {mg[0] - cp[3 * c], mg[1] - cp[3 * c + 1], mg[2] - cp[3 * c + 2]};
          const T len = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
          const T denom = std::max(len, T(1e-12));
          const T n[3] = {dir[0] / denom, dir[1] / denom, dir[2] / denom};
          sh_basis(n_bases, n[0], n[1], n[2], basis);
          sh_basis_grad(n_bases, n[0], n[1], n[2], dbasis);
          const T* coef = shp + g * K * 3;
          T* gcoef = gsh + g * K * 3;
          T v_n[3] = {0, 0, 0};
          for (int ch = 0; ch < 3; ++ch) {
            T raw = T(0.5);
            for (int k = 0; k < n_bases; ++k) raw += basis[k] * coef[k * 3 + ch];
            if (raw < T(0)) continue;  // clamp_min(0) passes no gradient below zero
            const T gcol = vcol[3 * idx + ch];
            for (int k = 0; k < n_bases; ++k) {
              gcoef[k * 3 + ch] += basis[k] * gcol;
              for (int j = 0; j < 3; ++j) v_n[j] += dbasis[k][j] * coef[k * 3 + ch] * gcol;
            }
          }
          if (len > T(1e-12)) {
            const T dot = v_n[0] * n[0] + v_n[1] * n[1] + v_n[2] * n[2];
            for (int j = 0; j < 3; ++j) acc_m[j] += (v_n[j] - n[j] * dot) / len;
          } else {
            for (int j = 0; j < 3; ++j) acc_m[j] += v_n[j] / T(1e-12);
          }
        }
      }
      for (int j = 0; j < 3; ++j) gm[3 * g + j] = acc_m[j];
      for (int j = 0; j < 4; ++j) gq[4 * g + j] = acc_q[j];
      for (int j = 0; j < 3; ++j) gs[3 * g + j] = acc_s[j];
    }
  });
}

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> project_forward(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& opacities,
    const Tensor& viewmats, const Tensor& Ks, const Tensor& campos, const Tensor& sh, int64_t sh_degree,
    int64_t width, int64_t height, double eps2d, double near_plane, double far_plane, double radius_clip) {
  for (auto* t : {&means, &quats, &scales, &opacities, &viewmats, &Ks, &campos}) check_cpu(*t, "projection input");
  if (sh_degree >= 0) {
    check_cpu(sh, "sh");
    TORCH_CHECK(sh.dim() == 3 && sh.size(0) == means.size(0) && sh.size(2) == 3, "sh must be (N, K, 3)");
    TORCH_CHECK((sh_degree + 1) * (sh_degree + 1) <= sh.size(1) && sh_degree <= 3, "sh_degree too high");
  }
  const int64_t N = means.size(0), C = viewmats.size(0);
  auto opts = means.options();
  Tensor radii = at::zeros({C, N, 2}, opts.dtype(at::kInt));
  Tensor means2d = at::zeros({C, N, 2}, opts);
  Tensor depths = at::zeros({C, N}, opts);
  Tensor conics = at::zeros({C, N, 3}, opts);
  Tensor colors = sh_degree >= 0 ? at::zeros({C, N, 3}, opts) : at::empty({0}, opts);
  const ProjectSettings s{width, height, eps2d, near_plane, far_plane, radius_clip};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    project_forward_impl<scalar_t>(means, quats, scales, opacities, viewmats, Ks, campos, sh, sh_degree, s, radii,
                                   means2d, depths, conics, colors);
  });
  return {radii, means2d, depths, conics, colors};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> project_backward(
    const Tensor& means, const Tensor& quats, const Tensor& scales, const Tensor& viewmats, const Tensor& Ks,
    const Tensor& campos, const Tensor& sh, int64_t sh_degree, int64_t width, int64_t height, double eps2d,
    const Tensor& radii, const Tensor& v_means2d, const Tensor& v_depths, const Tensor& v_conics,
    const Tensor& v_colors) {
  for (auto* t : {&means, &quats, &scales, &viewmats, &Ks, &campos, &radii, &v_means2d, &v_depths, &v_conics})
    check_cpu(*t, "projection backward input");
  Tensor v_means = at::zeros_like(means);
  Tensor v_quats = at::zeros_like(quats);
  Tensor v_scales = at::zeros_like(scales);
  const bool use_sh = sh_degree >= 0 && v_colors.numel() > 0;
  if (use_sh) check_cpu(v_colors, "v_colors");
  Tensor v_sh = use_sh ? at::zeros_like(sh) : at::empty({0}, means.options());
  const ProjectSettings s{width, height, eps2d, 0.0, 0.0, 0.0};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    project_backward_impl<scalar_t>(means, quats, scales, viewmats, Ks, campos, sh, sh_degree, s, radii, v_means2d,
                                    v_depths, v_conics, v_colors, v_means, v_quats, v_scales, v_sh);
  });
  return {v_means, v_quats, v_scales, v_sh};
}

}  // namespace splat
