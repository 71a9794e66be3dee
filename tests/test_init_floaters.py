"""Floater elimination: pieces the masks do not need go, pieces that explain mask pixels stay."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import ring_cameras  # noqa: E402

from recon.data.scene import Normalization, Scene  # noqa: E402
from recon.init.config import InitConfig  # noqa: E402
from recon.init.floaters import label_components, remove_floaters  # noqa: E402
from recon.init.metrics import silhouettes  # noqa: E402
from recon.init.occupancy import OccupancyGrid  # noqa: E402
from recon.init.views import TrainViews  # noqa: E402

LEVEL = 64


def box(lo, hi) -> np.ndarray:
    r = [np.arange(a, b) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*r, indexing="ij"), -1).reshape(-1, 3)


def shell(lo, hi, wall) -> np.ndarray:
    c = box(lo, hi)
    inner = np.all((c >= np.array(lo) + wall) & (c < np.array(hi) - wall), axis=1)
    return c[~inner]


def scene_with_masks_of(occ: OccupancyGrid, n_views: int = 8, size: int = 96) -> Scene:
    cams = ring_cameras(n_views, size=size)
    blank = Scene(Path("synthetic"), "transforms", [f"v{i}" for i in range(n_views)],
                  torch.zeros(n_views, size, size, 3, dtype=torch.uint8), None, cams, list(range(n_views)), [],
                  Normalization.identity())
    sil = silhouettes(occ, TrainViews(blank, blank.train_idx))
    return replace(blank, masks=sil.to(torch.uint8) * 255)


def test_hidden_piece_goes_and_visible_piece_stays():
    main = shell((20, 20, 20), (44, 44, 44), 4)  # a hollow box
    side = box((50, 30, 30), (56, 36, 36))  # a separate object beside it
    hidden = box((30, 30, 30), (34, 34, 34))  # inside the box's cavity: never needed to explain a mask
    truth = OccupancyGrid.from_cells(LEVEL, 1.0, {LEVEL: np.concatenate([main, side])})
    scene = scene_with_masks_of(truth)
    carved = OccupancyGrid.from_cells(LEVEL, 1.0, {LEVEL: np.concatenate([main, side, hidden])})
    labels, n = label_components(carved)
    assert n == 3
    cleaned, stats = remove_floaters(carved, TrainViews(scene, scene.train_idx), InitConfig())
    assert stats["components"] == 3 and stats["kept_components"] == 2
    assert stats["dropped_voxels"] == len(hidden) == len(carved) - len(cleaned)
    keep = set(map(tuple, cleaned.coords().tolist()))
    assert keep == set(map(tuple, np.concatenate([main, side]).tolist()))


def test_single_piece_is_untouched():
    occ = OccupancyGrid.from_cells(LEVEL, 1.0, {LEVEL: box((10, 10, 10), (20, 20, 20))})
    scene = scene_with_masks_of(occ)
    out, stats = remove_floaters(occ, TrainViews(scene, scene.train_idx), InitConfig())
    assert stats["components"] == 1 and np.array_equal(out.grid, occ.grid)


def test_without_masks_small_pieces_go_and_fragments_within_the_gap_stay():
    big = shell((10, 10, 10), (40, 40, 40), 1)
    fragment = box((41, 20, 20), (44, 23, 23))  # one empty cell away from the big piece: same object
    speck = box((55, 55, 55), (56, 57, 56))  # 2 cells far away: under 1 % of the big piece
    occ = OccupancyGrid.from_cells(LEVEL, 1.0, {LEVEL: np.concatenate([big, fragment, speck])})
    cams_scene = scene_with_masks_of(occ)
    views = TrainViews(replace(cams_scene, masks=None), cams_scene.train_idx)
    out, stats = remove_floaters(occ, views, InitConfig(floater_gap=1, floater_min_fraction=0.01))
    assert stats["components"] == 2  # big + fragment joined across one empty cell
    assert stats["dropped_voxels"] == len(speck)
    assert out.contains(occ.centers(fragment)).all() and not out.contains(occ.centers(speck)).any()
    _, stats0 = remove_floaters(occ, views, InitConfig(floater_gap=0, floater_min_fraction=0.01))
    assert stats0["components"] == 3 and stats0["dropped_voxels"] == len(speck) + len(fragment)
