"""Visibility-aware voxel colours and features."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import sphere_scene  # noqa: E402

from recon.init.config import InitConfig  # noqa: E402
from recon.init.initialize import initialize  # noqa: E402
from recon.init.views import TrainViews  # noqa: E402
from recon.init.voxel_colors import visibility, voxel_features  # noqa: E402

RED = np.array([0.9, 0.1, 0.1])
BLUE = np.array([0.1, 0.1, 0.9])


def test_colours_come_from_the_side_each_view_sees():
    """A sphere red on x > 0 and blue on x < 0: every view sees both halves somewhere, so only
    visibility keeps the far half's colour out of each voxel."""
    scene = sphere_scene(8, size=96)
    res = initialize(scene, scene.train_idx, InitConfig(levels=[16, 32, 64]))
    c = res.voxels.centers().numpy()
    col = res.voxels.colors.numpy()
    seen = res.voxels.feature("n_views").numpy() > 0
    red, blue = (c[:, 0] > 0.1) & seen, (c[:, 0] < -0.1) & seen
    assert red.sum() > 100 and blue.sum() > 100
    err_red = np.abs(col[red] - RED).max(1)
    err_blue = np.abs(col[blue] - BLUE).max(1)
    print(f"colour error: red side median {np.median(err_red):.3f}, blue side median {np.median(err_blue):.3f}")
    assert np.median(err_red) < 0.05 and np.median(err_blue) < 0.05
    assert np.quantile(err_red, 0.9) < 0.25 and np.quantile(err_blue, 0.9) < 0.25
    # uniform colour on each side: little spread across the views that see a voxel
    spread = res.voxels.feature("spread").numpy()
    assert np.median(spread[red | blue]) < 0.05
    # every surface voxel on the camera ring's equator band is seen by some view
    band = np.abs(c[:, 2]) < 0.1
    assert seen[band].mean() > 0.95


def test_visibility_respects_occluders():
    scene = sphere_scene(2, size=64)
    views = TrainViews(scene, [0])
    cam = views.R[0].T @ -views.t[0]  # camera centre
    d = -cam / cam.norm()
    h = 0.05
    target = torch.zeros(1, 3)
    wall = torch.stack([target[0] - d * 0.5 + torch.tensor([dx, dy, dz]) * h
                        for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)])
    hidden, _ = visibility(views, target, h, torch.cat([target, wall]), 2.0)
    alone, _ = visibility(views, target, h, target, 2.0)
    assert not bool(hidden[0, 0]) and bool(alone[0, 0])
    # a voxel just behind the front one, within the tolerance, still counts as visible
    near, _ = visibility(views, target, h, torch.cat([target, target - d * h]), 2.0)
    assert bool(near[0, 0])


def test_features_shape_and_ranges():
    scene = sphere_scene(4, size=64)
    views = TrainViews(scene, scene.train_idx)
    pts = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.9]])
    feats, stats = voxel_features(views, pts, 0.05, pts, InitConfig())
    assert feats.shape == (3, 5) and torch.isfinite(feats).all()
    assert (feats[:, :3] >= 0).all() and (feats[:, :3] <= 1).all() and (feats[:, 3] >= 0).all()
    assert (feats[:, 4] == feats[:, 4].round()).all() and (feats[:, 4] <= 4).all()
    empty, _ = voxel_features(views, torch.zeros(0, 3), 0.05, torch.zeros(0, 3), InitConfig())
    assert empty.shape == (0, 5)
