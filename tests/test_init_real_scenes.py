"""Init on the real scenes in ../shared/data: the masked hull against held-out masks, the photo-consistent
surface against the SfM points that held-out views observe. Skipped when the data is absent."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import shared_scene  # noqa: E402

from recon.data.config import DataConfig  # noqa: E402
from recon.data.load import load_scene  # noqa: E402
from recon.init.config import InitConfig  # noqa: E402
from recon.init.floaters import remove_floaters  # noqa: E402
from recon.init.initialize import initialize  # noqa: E402
from recon.init.metrics import silhouette_iou  # noqa: E402
from recon.init.views import TrainViews  # noqa: E402
from recon.init.visual_hull import carve  # noqa: E402

pytestmark = pytest.mark.slow

# 256 cells across with a tight finest-level footprint: silhouettes within a fraction of a pixel
HULL = InitConfig(levels=[32, 64, 128, 256], footprint=0.25)


@pytest.mark.parametrize("views", ["8", "4"])
@pytest.mark.parametrize("name", ["chair", "ethiopian_head", "mold_gold_cape"])
def test_hull_explains_held_out_masks(name, views):
    scene = load_scene(shared_scene(name), DataConfig(views=views))
    assert len(scene.train_idx) == int(views) and scene.masks is not None
    # the carving stages of initialize() (colours and Gaussians do not change the hull)
    views_ = TrainViews(scene, scene.train_idx, HULL.mask_threshold)
    t0 = time.perf_counter()
    hull, _ = carve(views_, HULL)
    hull, floaters = remove_floaters(hull, views_, HULL)
    seconds = time.perf_counter() - t0
    ious = silhouette_iou(hull, TrainViews(scene, scene.test_idx))
    print(f"{name} {views} views: held-out mask IoU mean {np.mean(ious):.3f} (min {np.min(ious):.3f}, "
          f"{len(ious)} views); {len(hull)} occupied cells, {floaters['components'] - floaters['kept_components']} "
          f"floaters dropped, carving {seconds:.1f}s")
    assert np.mean(ious) >= 0.8


def held_out_sfm_points(scene) -> np.ndarray:
    """COLMAP points (normalised frame) observed by the scene's test views, from the COLMAP copy of the
    scene (same world frame, same frame names), inside the carving bound."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(shared_scene("colmap_beer_can") / "sparse" / "0"))
    test_names = {Path(scene.names[i]).stem for i in scene.test_idx}
    test_ids = {i for i, im in rec.images.items() if Path(im.name).stem in test_names}
    assert len(test_ids) == len(scene.test_idx)
    xyz = np.array([p.xyz for p in rec.points3D.values() if any(e.image_id in test_ids for e in p.track.elements)])
    pts = scene.normalization.to_normalized(torch.from_numpy(xyz)).numpy()
    return pts[np.all(np.abs(pts) < 1.0, axis=1)]


def test_photo_surface_lies_on_held_out_sfm_points():
    # the transforms.json copy has no SfM points, so nothing seeds the carving: photo-consistency alone
    scene = load_scene(shared_scene("beer_can"), DataConfig(views="8"))
    assert scene.masks is None and scene.points is None
    res = initialize(scene, scene.train_idx, InitConfig())
    assert res.mode == "photo"
    pts = held_out_sfm_points(scene)
    d, _ = cKDTree(res.voxels.centers().numpy()).query(pts)
    h = res.voxels.voxel_size
    within = float(np.mean(d <= 2 * h))
    print(f"beer_can 8 views: {within:.3f} of {len(pts)} held-out SfM points within 2 voxels of the carved surface "
          f"({len(res.voxels)} surface voxels, {res.voxels.level} cells across, init {res.stats['total_seconds']:.1f}s)")
    assert len(pts) > 500
    assert within >= 0.8
