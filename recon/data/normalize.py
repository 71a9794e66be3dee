"""Centre and scale a scene so that what the cameras look at fills the cube [-1, 1]^3.

centre: the least-squares point closest to the training cameras' optical axes (the point they look at).
scale:  1 / (median camera distance to the centre * tan(half the smaller field of view)), so the region a
        typical camera sees at the look-at depth has radius 1.
"""
from __future__ import annotations

import numpy as np
import torch

from recon.data.scene import Normalization


def lookat_point(centers: np.ndarray, forwards: np.ndarray) -> np.ndarray | None:
    """Least-squares point nearest to the lines centers[i] + t * forwards[i]; None when they are ~parallel."""
    d = forwards / np.linalg.norm(forwards, axis=1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors onto each line's normal plane
    A = P.sum(0)
    b = np.einsum("nij,nj->i", P, centers)
    eig = np.linalg.eigvalsh(A)
    if eig[0] < 1e-3 * len(centers):  # forward-facing or single camera: the point along the axes is undefined
        return None
    return np.linalg.solve(A, b)


def _fallback_center(centers: np.ndarray, forwards: np.ndarray, points: np.ndarray | None) -> np.ndarray:
    """For parallel axes: a point in front of the cameras at the scene's median depth (from SfM points when
    there are some, else the spread of the cameras or one unit)."""
    mean_c = centers.mean(0)
    mean_f = forwards.mean(0)
    mean_f /= np.linalg.norm(mean_f) + 1e-12
    depth = None
    if points is not None and len(points):
        z = (points - mean_c) @ mean_f
        z = z[z > 0]
        if len(z):
            depth = float(np.median(z))
    if depth is None:
        spread = float(np.linalg.norm(centers - mean_c, axis=1).max()) if len(centers) > 1 else 0.0
        depth = 2.0 * spread if spread > 0 else 1.0
    return mean_c + depth * mean_f


def compute_normalization(
    camtoworlds: np.ndarray, Ks: np.ndarray, width: int, height: int, points: np.ndarray | None = None,
    fallback_center: np.ndarray | None = None,
) -> Normalization:
    """Normalization from the training cameras (c2w (N, 4, 4) OpenCV, Ks (N, 3, 3)).

    fallback_center is used when these cameras' axes do not pin a point down (one view, parallel views),
    e.g. the point all train candidates look at.
    """
    centers = camtoworlds[:, :3, 3]
    forwards = camtoworlds[:, :3, 2]
    center = lookat_point(centers, forwards)
    if center is None:
        center = fallback_center if fallback_center is not None else _fallback_center(centers, forwards, points)
    dist = float(np.median(np.linalg.norm(centers - center, axis=1)))
    # tan of half the smaller field of view, per camera, then the median over cameras
    tan_half = np.minimum(width / (2.0 * Ks[:, 0, 0]), height / (2.0 * Ks[:, 1, 1]))
    radius = dist * float(np.median(tan_half))
    scale = 1.0 / radius if radius > 1e-12 else 1.0
    return Normalization(torch.as_tensor(center, dtype=torch.float64), float(scale))


def normalize_camtoworlds(c2w: np.ndarray, norm: Normalization) -> np.ndarray:
    """Camera-to-world matrices in the normalised frame (rotations unchanged, centres moved and scaled)."""
    out = c2w.copy()
    out[:, :3, 3] = (c2w[:, :3, 3] - norm.center.numpy()) * norm.scale
    return out


def normalize_points(points: np.ndarray, norm: Normalization) -> np.ndarray:
    return (points - norm.center.numpy()) * norm.scale
