"""Carving without masks: photo-consistency on a textured sphere, SfM seeds, the patch cost."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import smooth_texture, sphere_scene  # noqa: E402

from recon.errors import ReconError  # noqa: E402
from recon.init.config import InitConfig  # noqa: E402
from recon.init.initialize import initialize  # noqa: E402
from recon.init.photo_consistency import patch_costs, ray_picks  # noqa: E402

LEVELS = [16, 32, 64]


@pytest.fixture(scope="module")
def textured():
    return sphere_scene(8, size=96, with_masks=False, colors=lambda p: smooth_texture(p, freq=25.0),
                        background=(0.6, 0.6, 0.6))


def sphere_points(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return 0.5 * p / np.linalg.norm(p, axis=1, keepdims=True)


def test_textured_sphere_surface_is_found(textured):
    res = initialize(textured, textured.train_idx, InitConfig(levels=LEVELS))
    assert res.mode == "photo"
    c = res.voxels.centers().numpy()
    h = res.voxels.voxel_size
    near_surface = np.abs(np.linalg.norm(c, axis=1) - 0.5) <= 2 * h
    d, _ = cKDTree(c).query(sphere_points(3000))
    recall = np.mean(d <= 2 * h)
    print(f"textured sphere: {len(c)} voxels, {near_surface.mean():.3f} within 2 voxels of the surface; "
          f"surface recall {recall:.3f}")
    assert len(c) > 500
    assert near_surface.mean() >= 0.5
    assert recall >= 0.8
    # the uniform background gives nothing to match: hardly any voxel far outside the sphere
    assert np.mean(np.linalg.norm(c, axis=1) > 0.5 + 8 * h) < 0.02


def test_sfm_points_seed_the_carving(textured):
    pts = torch.from_numpy(sphere_points(200, seed=3)).to(torch.float32)
    seeded = replace(textured, points=pts)
    res = initialize(seeded, seeded.train_idx, InitConfig(levels=LEVELS, seed_radius=1, remove_floaters=False))
    assert res.stats["levels"][-2]["seeded"] > 0
    assert res.occupancy.contains(pts.numpy()).all()


def test_hull_without_masks_and_textureless_views_are_user_errors(textured):
    with pytest.raises(ReconError, match="masks"):
        initialize(textured, textured.train_idx, InitConfig(levels=LEVELS, carve="hull"))
    flat = replace(textured, images=torch.full_like(textured.images, 128))
    with pytest.raises(ReconError, match="no voxels"):
        initialize(flat, flat.train_idx, InitConfig(levels=LEVELS))


def test_patch_cost_values():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 5, 9, 3, generator=g)
    # view 1: same patches brighter and with more contrast (ZNCC ignores both); view 2: unrelated patches
    views = torch.cat([base, 0.2 + 1.5 * base, torch.rand(1, 5, 9, 3, generator=g)])
    usable = torch.ones(3, 5, dtype=torch.bool)
    cost = patch_costs(views, usable, k=1)
    assert cost.shape == (3, 5)
    assert torch.allclose(cost[0], torch.zeros(5), atol=1e-5) and torch.allclose(cost[1], torch.zeros(5), atol=1e-5)
    assert (cost[2] > 0.05).all() and (cost <= 1.0).all()
    # with two matches required, view 0 must also count the unrelated view
    assert (patch_costs(views, usable, k=2)[0] > 0.02).all()
    usable[2] = False
    assert torch.isinf(patch_costs(views, usable, k=2)).all()  # only one other usable view


def test_ray_picks_take_clear_minima_only():
    # one view, two rays (bins 0 and 1); ray 0 has a clear minimum, ray 1 is flat (textureless)
    costs = torch.tensor([[0.5, 0.05, 0.6, 0.3, 0.31, 0.3]])
    bins = torch.tensor([[0, 0, 0, 1, 1, 1]])
    picks = ray_picks(costs, bins, n_bins=2, distinct=0.5)
    assert picks.tolist() == [0, 1, 0, 0, 0, 0]
