"""Sparse voxel initialisation: carve -> drop floaters -> colour the surface (+ some inner) voxels -> seed Gaussians."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from recon.data.scene import Scene
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.init.config import InitConfig
from recon.init.floaters import remove_floaters
from recon.init.grid import check_levels
from recon.init.occupancy import OccupancyGrid
from recon.init.photo_consistency import carve_photo
from recon.init.seed import seed_gaussians
from recon.init.threads import single_threaded
from recon.init.views import TrainViews
from recon.init.visual_hull import carve
from recon.init.voxel_colors import voxel_features
from recon.init.voxels import DEFAULT_FEATURES, SparseVoxels

CARVE_MODES = ("auto", "hull", "photo")


@dataclass
class InitResult:
    """voxels: surface voxels of the carved solid at the finest level, with DEFAULT_FEATURES (a hull's
    cells with an empty 6-neighbour, plus `init.interior` times as many of its inner cells; every cell of a
    photo-consistent shell);
    gaussians: seeded from them; occupancy: the whole carved solid (for meshes and checks);
    stats: per stage and per level (kept voxels, seconds)."""

    voxels: SparseVoxels
    gaussians: Gaussians
    occupancy: OccupancyGrid
    mode: str  # "hull" | "photo"
    stats: dict = field(default_factory=dict)


def check_config(cfg: InitConfig, scene: Scene) -> str:
    """Validate the options; the carving mode to use."""
    check_levels(cfg.levels)
    if cfg.carve not in CARVE_MODES:
        raise ReconError(f"init.carve is {cfg.carve!r}", fix=f"Use one of {', '.join(CARVE_MODES)}")
    if cfg.bound <= 0:
        raise ReconError(f"init.bound is {cfg.bound}", fix="Use a positive half-size, e.g. 1.0")
    if cfg.mask_tolerance < 0 or cfg.min_views < 1:
        raise ReconError("init.mask_tolerance must be >= 0 and init.min_views >= 1",
                         fix="Use e.g. init.mask_tolerance=0 init.min_views=2")
    if not 0.0 < cfg.mask_threshold < 1.0:
        raise ReconError(f"init.mask_threshold is {cfg.mask_threshold}", fix="Use a value between 0 and 1, e.g. 0.5")
    if cfg.footprint < 0:
        raise ReconError(f"init.footprint is {cfg.footprint}", fix="Use a value >= 0 (1 = conservative)")
    if cfg.interior < 0:
        raise ReconError(f"init.interior is {cfg.interior}",
                         fix="Use 0 (surface only) or a positive multiple of the surface voxel count, e.g. 1")
    mode = cfg.carve
    if mode == "auto":
        mode = "hull" if scene.masks is not None else "photo"
    if mode == "hull" and scene.masks is None:
        raise ReconError("init.carve=hull needs object masks, and this scene has none", path=scene.root,
                         fix="Add masks (RGBA images or a masks/ folder) or use init.carve=photo")
    return mode


def _interior_sample(occ, n: int, seed: int) -> np.ndarray:
    """`n` of the occupied cells that are not on the surface (all of them if there are fewer), at random."""
    inner = np.argwhere(occ.grid & ~occ.surface_grid()) + occ.offset
    if n >= len(inner):
        return inner
    pick = np.random.default_rng(seed).choice(len(inner), size=n, replace=False)
    return inner[np.sort(pick)]


@single_threaded
def initialize(scene: Scene, train_idx: list[int], cfg: InitConfig, on_level=None) -> InitResult:
    """Carve the training views into sparse voxels and seed Gaussians from the surface ones (and from
    `cfg.interior` times as many inner ones).
    `on_level(stats)` is called after each carving level (benchmarks hook memory readings there)."""
    t_start = time.perf_counter()
    mode = check_config(cfg, scene)
    if len(train_idx) < cfg.min_views:
        raise ReconError(f"{len(train_idx)} training view(s), but carving needs at least {cfg.min_views}",
                         path=scene.root, fix="Use more training views or lower init.min_views")
    stats: dict = {"mode": mode}
    t0 = time.perf_counter()
    views = TrainViews(scene, train_idx, cfg.mask_threshold)
    stats["views_seconds"] = time.perf_counter() - t0

    if mode == "hull":
        occ, stats["levels"] = carve(views, cfg, on_level)
    else:
        seeds = scene.points.to(torch.float32) if scene.points is not None and len(scene.points) else None
        occ, stats["levels"] = carve_photo(views, cfg, seeds, on_level)
    if len(occ) == 0:
        fix = ("Check that the masks show the object (white = object) and that the cameras look at it; "
               "init.mask_tolerance=1 forgives one bad mask") if mode == "hull" else \
              ("Use 3 or more overlapping views of a textured object, or add object masks "
               "(RGBA images or a masks/ folder)")
        raise ReconError(f"carving ({mode}) left no voxels inside the bound [-{cfg.bound}, {cfg.bound}]^3",
                         path=scene.root, fix=fix)
    if cfg.remove_floaters:
        occ, stats["floaters"] = remove_floaters(occ, views, cfg)

    t0 = time.perf_counter()
    # a photo-consistent carving is already a shell (with holes and seeded clumps): all of it is surface
    coords = occ.surface_coords() if mode == "hull" else occ.coords()
    n_surface = len(coords)
    if mode == "hull" and cfg.interior > 0:
        coords = np.concatenate([coords, _interior_sample(occ, int(round(cfg.interior * n_surface)), cfg.seed)])
    centers = torch.from_numpy(occ.centers(coords)).to(torch.float32)
    feats, color_stats = voxel_features(views, centers, occ.voxel_size, centers, cfg)
    stats["colors"] = {**color_stats, "seconds": time.perf_counter() - t0}
    voxels = SparseVoxels(torch.from_numpy(coords.astype(np.int32)), feats.to(torch.float32), occ.voxel_size,
                          torch.full((3,), -float(cfg.bound)), occ.level, list(DEFAULT_FEATURES))

    t0 = time.perf_counter()
    gaussians = seed_gaussians(voxels, cfg)
    stats["seed"] = {"gaussians": len(gaussians), "seconds": time.perf_counter() - t0}
    stats["occupied"] = len(occ)
    stats["surface_voxels"] = n_surface
    stats["interior_voxels"] = len(voxels) - n_surface
    stats["total_seconds"] = time.perf_counter() - t_start
    return InitResult(voxels, gaussians, occ, mode, stats)
