"""Gaussians -> the arrays viser's splat renderer takes (centres, 3x3 covariances, RGB, opacity).

viser splats carry one RGB per Gaussian, so spherical harmonics are reduced to a colour here:
degree 0 is the DC term alone (the colour averaged over all view directions, what .splat files
store); degree d > 0 evaluates bands 0..d for the direction from a given eye point to each Gaussian.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.gaussians import SH_C0, Gaussians

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


@dataclass
class SplatArrays:
    """float32 numpy arrays for N Gaussians: centers (N,3), covariances (N,3,3), opacities (N,)
    in [0,1], sh (N,K,3) coefficients (sh[:, 0] is the DC term)."""

    centers: np.ndarray
    covariances: np.ndarray
    opacities: np.ndarray
    sh: np.ndarray

    def __len__(self) -> int:
        return self.centers.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def subset(self, idx: np.ndarray) -> "SplatArrays":
        return SplatArrays(self.centers[idx], self.covariances[idx], self.opacities[idx], self.sh[idx])


def quat_to_rotmat(quats: np.ndarray) -> np.ndarray:
    """(N, 4) wxyz quaternions (any norm > 0) -> (N, 3, 3) rotation matrices."""
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)


def splat_arrays(g: Gaussians) -> SplatArrays:
    """Activate the raw parameters: Sigma = R diag(s^2) R^T, opacity = sigmoid(logit).
    Gaussians with non-finite parameters or a zero quaternion are dropped (the renderer would
    draw them as garbage)."""
    with torch.no_grad():
        t = [x.detach().to("cpu", torch.float64).numpy() for x in g.tensors()]
    means, quats, log_scales, logits, sh = t
    n = means.shape[0]
    rows = [a.reshape(n, -1) for a in t]
    ok = np.all(np.concatenate([np.isfinite(r) for r in rows], axis=1), axis=1)
    ok &= np.abs(quats).sum(axis=1) > 0
    if not ok.all():
        means, quats, log_scales, logits, sh = (a[ok] for a in (means, quats, log_scales, logits, sh))
    rot = quat_to_rotmat(quats)
    var = np.exp(2.0 * log_scales)
    cov = np.einsum("nij,nj,nkj->nik", rot, var, rot)
    opac = 1.0 / (1.0 + np.exp(-logits))
    return SplatArrays(means.astype(np.float32), cov.astype(np.float32), opac.astype(np.float32),
                       sh.astype(np.float32))


def eval_sh(sh: np.ndarray, dirs: np.ndarray, degree: int) -> np.ndarray:
    """RGB (N, 3) of SH coefficients `sh` (N, K, 3) seen along unit `dirs` (N, 3), bands 0..degree,
    with the 3DGS +0.5 offset, clipped to [0, 1]. Same basis and signs as gsplat / the INRIA code."""
    degree = max(0, min(degree, int(round(sh.shape[1] ** 0.5)) - 1))
    out = SH_C0 * sh[:, 0]
    if degree >= 1:
        x, y, z = (dirs[:, i:i + 1] for i in range(3))
        out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
        if degree >= 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5]
                   + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6] + SH_C2[3] * xz * sh[:, 7]
                   + SH_C2[4] * (xx - yy) * sh[:, 8])
            if degree >= 3:
                out = (out + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
                       + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                       + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                       + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                       + SH_C3[5] * z * (xx - yy) * sh[:, 14] + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return np.clip(out + 0.5, 0.0, 1.0)


def splat_colors(arrays: SplatArrays, degree: int, eye: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) RGB in [0, 1]: the DC colour for degree 0 (or no eye), else SH seen from `eye`."""
    if degree <= 0 or eye is None or arrays.sh.shape[1] == 1:
        return np.clip(SH_C0 * arrays.sh[:, 0] + 0.5, 0.0, 1.0)
    d = arrays.centers - np.asarray(eye, dtype=np.float32)[None]
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return eval_sh(arrays.sh, d, degree)


def voxel_spacing(points: np.ndarray) -> float:
    """Grid step of points lying on a regular grid (voxel centres): the smallest positive gap
    between distinct coordinates on any axis. Falls back to 1/100 of the extent."""
    if len(points) < 2:
        return 0.01
    extent = float(np.max(np.ptp(points, axis=0)))
    best = np.inf
    for a in range(3):
        u = np.unique(np.round(points[:, a].astype(np.float64), 7))
        gaps = np.diff(u)
        gaps = gaps[gaps > 1e-6 * max(extent, 1e-12)]
        if len(gaps):
            best = min(best, float(gaps.min()))
    if not np.isfinite(best):
        best = extent / 100.0 if extent > 0 else 0.01
    return best
