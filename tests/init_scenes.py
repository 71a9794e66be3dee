"""Analytic scenes for the tests/test_init_*.py files: spheres ray-cast into a ring of cameras."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.data.cameras import Cameras, intrinsics_matrix
from recon.data.scene import Normalization, Scene
from data_helpers import look_at_c2w


def ring_cameras(n: int, radius: float = 3.0, size: int = 96, fov_deg: float = 40.0, seed: int = 0) -> Cameras:
    """n cameras around the origin (azimuths evenly spread, elevations in [-30, 45] deg), all looking at it."""
    rng = np.random.default_rng(seed)
    c2w = []
    for i in range(n):
        a = 2 * np.pi * i / n + 0.3
        e = np.deg2rad(rng.uniform(-30, 45))
        eye = radius * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
        c2w.append(look_at_c2w(eye, np.zeros(3)))
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    K = intrinsics_matrix(f, f, size / 2, size / 2)
    return Cameras(torch.tensor(np.stack(c2w), dtype=torch.float32), K[None].repeat(n, 1, 1), size, size)


def smooth_texture(points: np.ndarray, seed: int = 1, freq: float = 12.0) -> np.ndarray:
    """(P, 3) colours in [0, 1]: a sum of random 3D sinusoids (texture for photo-consistency)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(points), 3))
    for _ in range(6):
        k = rng.normal(size=3) * freq
        phase = rng.uniform(0, 2 * np.pi, 3)
        out += np.sin(points @ k[:, None] + phase[None]) / 6
    return np.clip(0.5 + out, 0.0, 1.0)


def render_spheres(cams: Cameras, spheres: list[tuple[tuple[float, float, float], float]],
                   colors=None, background=(0.5, 0.5, 0.5), supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and alpha masks (N, H, W) uint8 of opaque spheres [(centre, radius)].

    colors(points) -> (P, 3) in [0, 1] colours the hit points (default: red where x > 0, blue elsewhere)."""
    if colors is None:
        colors = lambda p: np.where(p[:, :1] > 0, [[0.9, 0.1, 0.1]], [[0.1, 0.1, 0.9]])  # noqa: E731
    W, H, s = cams.width, cams.height, supersample
    sub = (np.arange(s) + 0.5) / s
    xs = (np.arange(W)[:, None] + sub[None]).reshape(-1)
    ys = (np.arange(H)[:, None] + sub[None]).reshape(-1)
    u, v = np.meshgrid(xs, ys, indexing="xy")
    imgs, masks = [], []
    for c2w, K in zip(cams.camtoworlds.double().numpy(), cams.Ks.double().numpy()):
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        d = d_cam @ c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = c2w[:3, 3]
        t_best = np.full(len(d), np.inf)
        for center, r in spheres:
            oc = o - np.asarray(center)
            b = d @ oc
            disc = b * b - (oc @ oc - r * r)
            t = -b - np.sqrt(np.maximum(disc, 0))
            hit = (disc > 0) & (t > 0)
            t_best = np.where(hit & (t < t_best), t, t_best)
        hit = np.isfinite(t_best)
        rgb = np.tile(np.asarray(background, float), (len(d), 1))
        if hit.any():
            rgb[hit] = colors(o + t_best[hit, None] * d[hit])
        rgb = rgb.reshape(H, s, W, s, 3).mean((1, 3))
        alpha = hit.reshape(H, s, W, s).mean((1, 3))
        imgs.append(np.round(rgb * 255).astype(np.uint8))
        masks.append(np.round(alpha * 255).astype(np.uint8))
    return np.stack(imgs), np.stack(masks)


def sphere_scene(n_views: int = 8, spheres=(((0.0, 0.0, 0.0), 0.5),), size: int = 96, with_masks: bool = True,
                 colors=None, background=(0.5, 0.5, 0.5), normalization: Normalization | None = None) -> Scene:
    """A Scene of spheres seen by a ring of cameras; all views are training views."""
    cams = ring_cameras(n_views, size=size)
    imgs, masks = render_spheres(cams, list(spheres), colors=colors, background=background)
    return Scene(root=Path("synthetic"), format="transforms", names=[f"v{i}.png" for i in range(n_views)],
                 images=torch.from_numpy(imgs), masks=torch.from_numpy(masks) if with_masks else None,
                 cameras=cams, train_idx=list(range(n_views)), test_idx=[],
                 normalization=normalization or Normalization.identity())


def in_visual_hull(points: np.ndarray, cams: Cameras, spheres) -> np.ndarray:
    """Exact visual hull of the spheres' silhouettes: a point is in it when its ray from every camera
    hits a sphere (the silhouette is the union of the spheres' images)."""
    inside = np.ones(len(points), dtype=bool)
    for c2w in cams.camtoworlds.double().numpy():
        o = c2w[:3, 3]
        d = points - o
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        any_hit = np.zeros(len(points), dtype=bool)
        for center, r in spheres:
            oc = o - np.asarray(center)
            b = d @ oc
            any_hit |= (b * b - (oc @ oc - r * r) > 0) & (b < 0)
        inside &= any_hit
    return inside
