"""Coarse-to-fine carving without masks, by photo-consistency along viewing rays.

Candidates are cells that at least three training images see (a reference and two views to agree with
it), inside the bound. For each cell and each view, a 3x3 patch is sampled around the cell's image, with
samples one cell footprint apart (from the image pyramid level of that footprint). A view's cost for the
cell is the mean over the two best-matching other views of (1 - ZNCC) / 2 between the grey patches: 0 for
a perfect match, robust to exposure changes, and to occlusion (views where something else hides the cell
just do not match, and only the best two count). Views where the patch has no texture neither judge nor
get judged.

Each view then picks, along each of its viewing rays (image bins one cell footprint wide), the cell with
the lowest cost, when that cost is a clear minimum (below `photo_distinct` times the ray's mean: on a
textureless ray every depth matches and none is picked). At coarse levels cells that some view picks
survive, grown by `photo_band` cells so the finer level gets a band around the surface; at the finest
level a cell survives when `photo_min_picks` views pick it and its cost is below `photo_threshold`.
Cells around SfM points (`seeds`) always survive. What remains is a surface shell with holes where the
images have no texture; the trainer fills those in.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from recon.init.config import InitConfig
from recon.init.grid import (CHUNK, record, all_cells, cell_centers, cell_keys, check_levels, children, dilate_cells,
                             unique_cells)
from recon.init.occupancy import OccupancyGrid
from recon.init.threads import single_threaded
from recon.init.views import NEAR, TrainViews

PHOTO_K = 2  # other views a reference patch must match
_PATCH = torch.stack([g.reshape(-1) for g in torch.meshgrid(torch.arange(-1.0, 2.0), torch.arange(-1.0, 2.0),
                                                            indexing="xy")], -1)  # (9, 2) offsets in footprints


def patch_costs(patches: torch.Tensor, usable: torch.Tensor, k: int = PHOTO_K) -> torch.Tensor:
    """(N, P) cost per reference view: mean (1 - ZNCC) / 2 to its k best-matching other views.

    patches (N, P, S, 3) colour samples; usable (N, P) where the view sees the cell with texture.
    inf where the reference is not usable or fewer than k others are."""
    n = patches.shape[0]
    grey = patches.mean(-1)
    grey = grey - grey.mean(-1, keepdim=True)
    unit = grey / (grey.norm(dim=-1, keepdim=True) + 1e-6)
    x = unit.permute(1, 0, 2)  # (P, N, S)
    # elementwise rather than batched 9x9 matrix products, which thread badly
    cost = (1.0 - (x[:, :, None, :] * x[:, None, :, :]).sum(-1)) * 0.5  # (P, N ref, N other)
    ok = usable.T[:, :, None] & usable.T[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None]
    cost.masked_fill_(~ok, math.inf)
    best = torch.topk(cost, min(k, n), dim=2, largest=False).values
    return best.mean(2).T.contiguous()


def _score_cells(views: TrainViews, cells: np.ndarray, level: int, bound: float, texture: float):
    """costs (N, P), ray bin per view (N, P) (-1 where unseen), seen counts (P,), number of bins."""
    h = 2.0 * bound / level
    # bins about one cell footprint wide at the distance of the bound's centre: one viewing ray each
    dist = torch.linalg.norm(views.t, dim=1).clamp_min(NEAR)
    bin_px = (views.f * h / dist).clamp_min(1.0)
    bins_x = torch.ceil(views.width / bin_px).to(torch.int64)
    n_bins = int((bins_x * torch.ceil(views.height / bin_px).to(torch.int64)).max())
    costs, bins, counts = [], [], []
    step = max(1024, CHUNK // max(1, views.n * views.n) * 2)
    for s in range(0, len(cells), step):
        proj = views.project(cell_centers(cells[s:s + step], level, bound))
        seen = (proj.z > NEAR) & views.in_image(proj.uv)
        footprint = views.f[:, None] * h / proj.z.clamp_min(NEAR)
        patches = views.sample_patches(proj.uv, footprint, _PATCH)
        textured = patches.mean(-1).std(-1) > texture
        costs.append(patch_costs(patches, seen & textured))
        counts.append(seen.sum(0))
        u = (proj.uv[..., 0].clamp(0, views.width - 1e-3) / bin_px[:, None]).floor().to(torch.int64)
        v = (proj.uv[..., 1].clamp(0, views.height - 1e-3) / bin_px[:, None]).floor().to(torch.int64)
        bins.append(torch.where(seen, v * bins_x[:, None] + u, torch.full_like(u, -1)))
    if not costs:
        return (torch.zeros(views.n, 0), torch.zeros(views.n, 0, dtype=torch.int64),
                torch.zeros(0, dtype=torch.int64), n_bins)
    return torch.cat(costs, 1), torch.cat(bins, 1), torch.cat(counts), n_bins


def ray_picks(costs: torch.Tensor, bins: torch.Tensor, n_bins: int, distinct: float) -> torch.Tensor:
    """(P,) how many views pick each cell as the surface on its ray: the lowest cost on the ray, and at
    most `distinct` times the ray's mean cost."""
    n, p = costs.shape
    picks = torch.zeros(p, dtype=torch.int64)
    for i in range(n):
        ok = (bins[i] >= 0) & torch.isfinite(costs[i])
        b, c = bins[i][ok], costs[i][ok]
        if len(c) == 0:
            continue
        best = torch.full((n_bins,), math.inf).scatter_reduce_(0, b, c, reduce="amin")
        total = torch.zeros(n_bins).scatter_add_(0, b, c)
        count = torch.zeros(n_bins).scatter_add_(0, b, torch.ones_like(c))
        mean = total / count.clamp_min(1.0)
        win = (c <= best[b]) & (c <= distinct * mean[b]) & (count[b] >= 3)
        picks[torch.nonzero(ok, as_tuple=True)[0][win]] += 1
    return picks


def seed_cells(seeds: torch.Tensor | None, level: int, bound: float, radius: int) -> np.ndarray:
    """Cells within `radius` of the cells holding SfM points inside the bound."""
    if seeds is None or len(seeds) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    p = seeds.detach().cpu().numpy().astype(np.float64)
    idx = np.floor((p + bound) / (2.0 * bound / level)).astype(np.int64)
    idx = idx[np.all((idx >= 0) & (idx < level), axis=1)]
    if len(idx) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    return dilate_cells(unique_cells(idx, level), level, radius)


def _member(cells: np.ndarray, of: np.ndarray, level: int) -> np.ndarray:
    if len(of) == 0 or len(cells) == 0:
        return np.zeros(len(cells), dtype=bool)
    return np.isin(cell_keys(cells, level), cell_keys(of, level))


@single_threaded
def carve_photo(views: TrainViews, cfg: InitConfig, seeds: torch.Tensor | None = None,
                on_level=None) -> tuple[OccupancyGrid, list[dict]]:
    """Surface cells at the finest of cfg.levels from photo-consistency; stats per level (also passed to
    `on_level`). `seeds` (P, 3) are SfM points in the normalised frame."""
    levels = check_levels(cfg.levels)
    bound = float(cfg.bound)
    cells = all_cells(levels[0])
    stats = []
    for li, level in enumerate(levels):
        t0 = time.perf_counter()
        finest = li == len(levels) - 1
        n_cand = len(cells)
        costs, bins, n_seen, n_bins = _score_cells(views, cells, level, bound, cfg.photo_texture)
        picks = ray_picks(costs, bins, n_bins, cfg.photo_distinct).numpy()
        candidate = (n_seen >= max(PHOTO_K + 1, cfg.min_views)).numpy()
        forced = _member(cells, seed_cells(seeds, level, bound, cfg.seed_radius if finest else 0), level)
        if finest:
            best = torch.nan_to_num(costs, posinf=math.inf).min(0).values.numpy() if len(cells) else np.zeros(0)
            keep = candidate & (picks >= cfg.photo_min_picks) & (best <= cfg.photo_threshold)
            keep |= forced
            cells = cells[keep]
            record(stats, {"level": level, "candidates": n_cand, "kept": int(keep.sum()),
                           "seeded": int(forced.sum()), "seconds": time.perf_counter() - t0}, on_level)
            break
        keep = (candidate & (picks >= 1)) | forced
        band = dilate_cells(cells[keep], level, cfg.photo_band)
        record(stats, {"level": level, "candidates": n_cand, "kept": int(keep.sum()), "band": int(len(band)),
                       "seconds": time.perf_counter() - t0}, on_level)
        cells = children(band)
    t0 = time.perf_counter()
    occ = OccupancyGrid.from_cells(levels[-1], bound, {levels[-1]: cells})
    record(stats, {"level": "grid", "occupied": len(occ), "seconds": time.perf_counter() - t0}, on_level)
    return occ, stats
