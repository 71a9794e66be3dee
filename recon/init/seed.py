"""Gaussians seeded from surface voxels: inside the voxel, about its size, its colour, moderate opacity."""
from __future__ import annotations

import torch

from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.init.config import InitConfig
from recon.init.voxels import SparseVoxels


def seed_gaussians(voxels: SparseVoxels, cfg: InitConfig) -> Gaussians:
    """`cfg.gaussians_per_voxel` isotropic Gaussians per voxel (at most `cfg.max_gaussians` in all, voxels
    subsampled evenly at random), each centred uniformly at random inside its voxel, with sigma
    `cfg.gaussian_scale` voxel edges, the voxel's colour, opacity `cfg.gaussian_opacity` and SH degree 0."""
    if cfg.gaussians_per_voxel < 1:
        raise ReconError(f"init.gaussians_per_voxel is {cfg.gaussians_per_voxel}", fix="Use 1 or more")
    if not 0.0 < cfg.gaussian_opacity < 1.0:
        raise ReconError(f"init.gaussian_opacity is {cfg.gaussian_opacity}",
                         fix="Use a value between 0 and 1, e.g. 0.2")
    if cfg.gaussian_scale <= 0:
        raise ReconError(f"init.gaussian_scale is {cfg.gaussian_scale}",
                         fix="Use a positive number of voxel edges, e.g. 0.5")
    if cfg.max_gaussians < 1:
        raise ReconError(f"init.max_gaussians is {cfg.max_gaussians}", fix="Use a positive number")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    idx = torch.arange(len(voxels)).repeat_interleave(cfg.gaussians_per_voxel)
    if len(idx) > cfg.max_gaussians:
        idx = idx[torch.randperm(len(idx), generator=gen)[: cfg.max_gaussians]].sort().values
    h = float(voxels.voxel_size)
    centers = voxels.centers()[idx]
    jitter = (torch.rand(len(idx), 3, generator=gen) - 0.5) * h
    colors = voxels.colors[idx].clamp(0.0, 1.0)
    return Gaussians.from_points(centers + jitter, colors, scale=cfg.gaussian_scale * h,
                                 opacity=cfg.gaussian_opacity, sh_degree=0)
