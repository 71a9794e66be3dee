"""Visibility-aware voxel features: colour only from the views that actually see a voxel.

Each view gets a depth buffer of the occupied surface cells; a voxel is visible in a view when its depth
is within `occlusion_tolerance` voxels of the nearest occupied depth at its pixel (so it is the front
surface there). Colours are averaged over about the voxel's footprint (an image pyramid level) and, with
masks, only where the voxel lands on the object.
"""
from __future__ import annotations

import torch

from recon.init.config import InitConfig
from recon.init.raster import cube_depth_buffer
from recon.init.threads import single_threaded
from recon.init.views import NEAR, TrainViews
from recon.init.voxels import DEFAULT_FEATURES


def visibility(views: TrainViews, centers: torch.Tensor, voxel_size: float, occluders: torch.Tensor,
               tolerance: float) -> tuple[torch.Tensor, object]:
    """(N, P) bool: voxel p is the front surface at its pixel in view n. `occluders` (Q, 3) are the cells
    that can hide others (the surface cells of the solid)."""
    zbuf = cube_depth_buffer(views, occluders, voxel_size)
    proj = views.project(centers)
    inside = (proj.z > NEAR) & views.in_image(proj.uv)
    u = proj.uv[..., 0].floor().clamp(0, views.width - 1).to(torch.int64)
    v = proj.uv[..., 1].floor().clamp(0, views.height - 1).to(torch.int64)
    front = zbuf.view(views.n, -1).gather(1, v * views.width + u)
    return inside & (proj.z <= front + tolerance * voxel_size), proj


@single_threaded
def voxel_features(views: TrainViews, centers: torch.Tensor, voxel_size: float, occluders: torch.Tensor,
                   cfg: InitConfig) -> tuple[torch.Tensor, dict]:
    """(P, 5) features in DEFAULT_FEATURES order: mean colour r, g, b in [0, 1], colour spread (RMS
    deviation across the views that see the voxel), number of views that see it."""
    if len(centers) == 0:
        return torch.zeros(0, len(DEFAULT_FEATURES)), {"no_view": 0}
    vis, proj = visibility(views, centers, voxel_size, occluders, cfg.occlusion_tolerance)
    footprint = views.f[:, None] * voxel_size / proj.z.clamp_min(NEAR)
    colors = views.sample_colors(proj.uv, footprint)  # (N, P, 3)
    weight = vis
    if views.has_masks:
        on_object = views.sample(views.masks, proj.uv)[..., 0] >= cfg.mask_threshold
        # rim voxels may miss the mask in every view: then keep what visibility alone allows
        weight = torch.where((vis & on_object).any(0, keepdim=True), vis & on_object, vis)
    # voxels no view sees (hidden in concavities): colour from every view they project into
    inside = (proj.z > NEAR) & views.in_image(proj.uv)
    unseen = ~weight.any(0)
    weight = torch.where(unseen[None], inside, weight)
    w = weight.to(torch.float32)
    count = w.sum(0)
    mean = (colors * w[..., None]).sum(0) / count.clamp_min(1.0)[:, None]
    var = (((colors - mean[None]) ** 2).mean(-1) * w).sum(0) / count.clamp_min(1.0)
    mean = torch.where(count[:, None] > 0, mean, torch.full_like(mean, 0.5))
    n_views = torch.where(unseen, torch.zeros_like(count), count)
    feats = torch.cat([mean, var.sqrt()[:, None], n_views[:, None]], dim=1)
    return feats, {"no_view": int(unseen.sum())}
