"""Floater elimination: drop connected pieces of the carved solid that the views do not need.

With masks (GaussianObject-style): pieces are visited from the largest down, and a piece stays only when,
in some training view, it covers at least `floater_min_pixels` mask pixels that no piece kept so far
covers. Ghost volumes of a few-view visual hull project inside the masks, but always where the real
object already projects, so they go; a genuinely separate part of the object explains its own pixels
and stays. Without masks a piece stays when it holds at least `floater_min_fraction` of the voxels of the
largest piece, pieces joined across gaps of up to `floater_gap` empty cells (photo-consistent surfaces are
full of small holes, and a fragment of the object must not count as a floater).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from recon.init.config import InitConfig
from recon.init.occupancy import OccupancyGrid
from recon.init.raster import splat_pixels
from recon.init.threads import single_threaded
from recon.init.views import TrainViews


def label_components(occ: OccupancyGrid, gap: int = 0) -> tuple[np.ndarray, int]:
    """Pieces: labels (same shape as occ.grid, 0 = empty) and their number. Cells are connected through
    any of their 26 neighbours, or across up to `gap` empty cells (photo-consistent surfaces have holes)."""
    cube = np.ones((3, 3, 3), dtype=bool)
    if gap <= 0:
        labels, n = ndimage.label(occ.grid, structure=cube)
        return labels, int(n)
    grown = ndimage.binary_dilation(np.pad(occ.grid, gap), structure=cube, iterations=gap)
    labels, _ = ndimage.label(grown, structure=cube)
    labels = labels[(slice(gap, -gap),) * 3]
    # renumber the pieces that hold occupied cells 1..n
    used, compact = np.unique(labels[occ.grid], return_inverse=True)
    out = np.zeros(occ.grid.shape, dtype=np.int32)
    out[occ.grid] = compact.reshape(-1) + 1
    return out, int(len(used))


@single_threaded
def remove_floaters(occ: OccupancyGrid, views: TrainViews, cfg: InitConfig) -> tuple[OccupancyGrid, dict]:
    t0 = time.perf_counter()
    labels, n = label_components(occ, 0 if views.has_masks else cfg.floater_gap)
    stats = {"components": n, "kept_components": n, "dropped_voxels": 0}
    if n <= 1:
        stats["seconds"] = time.perf_counter() - t0
        return occ, stats
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = np.argsort(-sizes[1:], kind="stable") + 1  # labels, largest first
    if views.has_masks:
        keep = _needed_for_masks(occ, labels, order, views, cfg)
    else:
        keep = np.zeros(n + 1, dtype=bool)
        keep[1:] = sizes[1:] >= cfg.floater_min_fraction * sizes[order[0]]
    keep[0] = False
    grid = keep[labels]
    stats.update(kept_components=int(keep.sum()), dropped_voxels=int(occ.grid.sum() - grid.sum()),
                 seconds=time.perf_counter() - t0)
    return occ.with_grid(grid), stats


def _needed_for_masks(occ: OccupancyGrid, labels: np.ndarray, order: np.ndarray, views: TrainViews,
                      cfg: InitConfig) -> np.ndarray:
    n = int(labels.max())
    keep = np.zeros(n + 1, dtype=bool)
    largest = int(order[0])
    keep[largest] = True
    surf = occ.surface_grid()
    idx = np.argwhere(surf)
    comp = torch.from_numpy(labels[surf].astype(np.int64))
    centers = torch.from_numpy(occ.centers(idx + occ.offset)).to(torch.float32)
    hw = views.height * views.width
    mask = (views.masks[:, 0] >= cfg.mask_threshold).reshape(-1)

    # mask pixels under the smaller pieces, as (pixel, piece) pairs
    small = comp != largest
    pix, lab = _mask_pixels(views, centers[small], occ.voxel_size, comp[small], mask)
    if len(pix) == 0:
        return keep
    # what the largest piece covers, drawn only near those pixels (it is most of the work otherwise)
    near = torch.zeros(views.n * hw, dtype=torch.bool)
    near[pix] = True
    reach = int(np.ceil(float(views.f.max()) * occ.voxel_size * 1.8 / max(_min_depth(views, centers), 1e-3))) + 1
    near = F.max_pool2d(near.view(views.n, 1, views.height, views.width).float(), 2 * reach + 1, 1, reach) > 0
    big = ~small
    proj = views.project(centers[big])
    u = proj.uv[..., 0].floor().clamp(0, views.width - 1).to(torch.int64)
    v = proj.uv[..., 1].floor().clamp(0, views.height - 1).to(torch.int64)
    pairs = near[:, 0].reshape(views.n, -1).gather(1, v * views.width + u)
    covered = torch.zeros(views.n * hw, dtype=torch.bool)
    for flat, _ in _disk_pixels(views, centers[big], occ.voxel_size, pairs, cover_all=True):
        covered[flat] = True

    sort = torch.argsort(lab, stable=True)
    pix, lab = pix[sort], lab[sort]
    starts = torch.searchsorted(lab, torch.arange(n + 2))
    for c in order[1:].tolist():
        p = pix[starts[c]:starts[c + 1]]
        if len(p) == 0:
            continue
        alone = torch.unique(p[~covered[p]])
        if len(alone) == 0:
            continue
        per_view = torch.bincount(torch.div(alone, hw, rounding_mode="floor"), minlength=views.n)
        if int(per_view.max()) >= cfg.floater_min_pixels:
            keep[c] = True
            covered[p] = True
    return keep


def _mask_pixels(views: TrainViews, centers: torch.Tensor, size: float, comp: torch.Tensor, mask: torch.Tensor):
    pix_parts, comp_parts = [], []
    if len(centers):
        for flat, pi in _disk_pixels(views, centers, size):
            on_mask = mask[flat]
            pix_parts.append(flat[on_mask])
            comp_parts.append(comp[pi[on_mask]])
    if not pix_parts:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(pix_parts), torch.cat(comp_parts)


def _disk_pixels(views: TrainViews, centers: torch.Tensor, size: float, pairs: torch.Tensor | None = None,
                 cover_all: bool = False):
    """Pixels under each cell's image, drawn as a disk: of the half edge (inside the cube's image, so a
    candidate piece is never credited with pixels it does not cover) or, with cover_all, of the half
    diagonal (covering the whole image, so the pieces already kept leave no holes between cells)."""
    proj = views.project(centers)
    valid = proj.z > 1e-3
    if pairs is not None:
        valid &= pairs
    half = 0.5 * size * (3 ** 0.5 if cover_all else 1.0)
    r = views.f[:, None] * half / proj.z.clamp_min(1e-3)
    yield from splat_pixels(proj.uv, r, views.width, views.height, valid)


def _min_depth(views: TrainViews, centers: torch.Tensor) -> float:
    """Smallest depth of the cells in front of any camera (how large a cell can look)."""
    if len(centers) == 0:
        return 1.0
    z = views.project(centers).z
    z = z[z > 1e-3]
    return float(z.min()) if len(z) else 1.0
