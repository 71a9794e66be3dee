"""Coarse-to-fine visual hull on an octree of cells.

At every coarse level a cell is one of:
  dropped  - more than `mask_tolerance` views surely see all of it outside their mask (or too few views
             can see it at all): no descendant can survive, so nothing on the true surface is lost;
  interior - every view but `mask_tolerance` sees all of it inside the mask: all descendants survive,
             so it is kept whole and never subdivided;
  boundary - anything else: split into 8 children for the next level.
Tests use the projected bounding sphere of the cell (a disk), against distance fields of the masks, so a
coarse decision is always implied by the decisions its descendants would get (the octree result equals a
brute-force pass over the finest grid). Memory follows the boundary cells, not the dense grid.

At the finest level a cell survives when the mask comes within `footprint` x (its projected bounding-sphere
radius) of its centre in every view that sees it, but `mask_tolerance`: footprint 1 keeps every cell the
object touches (conservative), smaller values give tighter silhouettes. A view sees a cell when the cell
projects into its image; a view whose mask stays clear of the image border (`closed`) also sees, as
background, whatever projects outside its image. A cell must be seen by `min_views` views.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from recon.init.config import InitConfig
from recon.init.grid import CHUNK, record, all_cells, cell_centers, check_levels, children
from recon.init.occupancy import OccupancyGrid
from recon.init.threads import single_threaded
from recon.init.views import NEAR, TrainViews

# added to mask_margin_px at coarse levels: slack for bilinear distance lookups and for a cube's image taken as a disk
COARSE_MARGIN_PX = 1.0


def classify_coarse(views: TrainViews, centers: torch.Tensor, half_diag: float, cfg: InitConfig):
    """(drop, interior) bool (P,) for cells with these centres and bounding-sphere radius."""
    proj = views.project(centers)
    z = proj.z
    valid = z - half_diag > NEAR
    r = views.f[:, None] * half_diag * proj.stretch / (z - half_diag).clamp_min(NEAR) + COARSE_MARGIN_PX \
        + cfg.mask_margin_px
    r = torch.where(valid, r, torch.full_like(r, 1e6))
    carver = valid & (views.object_distance(proj.uv) > r)
    maybe_seen = (z + half_diag > NEAR) & (~valid | views.seen(proj, r))
    surely_seen = valid & (views.closed[:, None] | views.in_image(proj.uv, r))
    potential_carver = maybe_seen & ~(valid & (views.background_distance(proj.uv) > r))
    drop = (carver.sum(0) > cfg.mask_tolerance) | (maybe_seen.sum(0) < cfg.min_views)
    interior = ~drop & (potential_carver.sum(0) <= cfg.mask_tolerance) & (surely_seen.sum(0) >= cfg.min_views)
    return drop, interior


def classify_finest(views: TrainViews, centers: torch.Tensor, half_diag: float, cfg: InitConfig) -> torch.Tensor:
    """keep bool (P,): the footprint touches the mask in all views that see the centre, but the tolerance."""
    proj = views.project(centers)
    seen = views.seen(proj)
    r = cfg.footprint * views.f[:, None] * half_diag * proj.stretch / proj.z.clamp_min(NEAR) + cfg.mask_margin_px
    carver = seen & (views.object_distance(proj.uv) > r)
    return (carver.sum(0) <= cfg.mask_tolerance) & (seen.sum(0) >= cfg.min_views)


def _chunked(fn, cells: np.ndarray, level: int, bound: float, n_views: int):
    """Apply fn(centres) over chunks of cells, concatenating the outputs (tuples or tensors)."""
    step = max(1024, CHUNK // max(1, n_views) * 8)
    outs = []
    for s in range(0, len(cells), step):
        outs.append(fn(cell_centers(cells[s:s + step], level, bound)))
    if not outs:
        return None
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts).numpy() for parts in zip(*outs))
    return torch.cat(outs).numpy()


@single_threaded
def carve(views: TrainViews, cfg: InitConfig, on_level=None) -> tuple[OccupancyGrid, list[dict]]:
    """Visual hull of the masks at the finest of cfg.levels; stats per level (also passed to `on_level`)."""
    if not views.has_masks:
        raise ValueError("carve() needs masks; use photo_consistency.carve_photo without them")
    levels = check_levels(cfg.levels)
    bound = float(cfg.bound)
    cells = all_cells(levels[0])
    kept: dict[int, np.ndarray] = {}
    stats = []
    for li, level in enumerate(levels):
        t0 = time.perf_counter()
        h = 2.0 * bound / level
        half_diag = 0.5 * math.sqrt(3.0) * h
        n_cand = len(cells)
        if li == len(levels) - 1:
            keep = _chunked(lambda c: classify_finest(views, c, half_diag, cfg), cells, level, bound, views.n)
            keep = np.zeros(0, bool) if keep is None else keep
            kept[level] = cells[keep]
            record(stats, {"level": level, "candidates": n_cand, "kept": int(keep.sum()), "interior": 0,
                           "seconds": time.perf_counter() - t0}, on_level)
            break
        res = _chunked(lambda c: classify_coarse(views, c, half_diag, cfg), cells, level, bound, views.n)
        drop, interior = res if res is not None else (np.zeros(0, bool), np.zeros(0, bool))
        kept[level] = cells[interior]
        boundary = cells[~drop & ~interior]
        # kept: boundary cells split for the next level; interior: cells kept whole
        record(stats, {"level": level, "candidates": n_cand, "kept": int(len(boundary)),
                       "interior": int(interior.sum()), "seconds": time.perf_counter() - t0}, on_level)
        cells = children(boundary)
    t0 = time.perf_counter()
    occ = OccupancyGrid.from_cells(levels[-1], bound, kept)
    record(stats, {"level": "grid", "occupied": len(occ), "seconds": time.perf_counter() - t0}, on_level)
    return occ, stats
