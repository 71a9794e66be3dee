"""Drawing cells into views: exact cube images, coverage culling, silhouette IoU."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import Delaunay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import sphere_scene  # noqa: E402

from recon.init.config import InitConfig  # noqa: E402
from recon.init.metrics import silhouette_iou  # noqa: E402
from recon.init.raster import cube_coverage, cube_depth_buffer  # noqa: E402
from recon.init.views import TrainViews  # noqa: E402
from recon.init.visual_hull import carve  # noqa: E402


def test_cube_image_matches_the_hull_of_its_projected_corners():
    scene = sphere_scene(3, size=96)
    views = TrainViews(scene, scene.train_idx)
    size = 0.15
    centers = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [-0.25, 0.3, -0.2]])
    cov = cube_coverage(views, centers, size, rounds=1)
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) * size
    ys, xs = np.mgrid[0:96, 0:96]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1)
    for k in range(len(centers)):
        one = cube_coverage(views, centers[k:k + 1], size, rounds=1)
        uv = views.project(centers[k] + corners).uv  # (N, 8, 2)
        for i in range(views.n):
            ref = Delaunay(uv[i].numpy()).find_simplex(pix) >= 0
            mine = one[i].numpy().ravel()
            inter, union = (ref & mine).sum(), (ref | mine).sum()
            assert ref.sum() > 50 and inter / union > 0.93
            assert (mine & ~ref).sum() <= 0.05 * ref.sum() + 2
    # the union of the three is what coverage draws
    singles = torch.stack([cube_coverage(views, centers[k:k + 1], size, rounds=1) for k in range(3)]).any(0)
    assert torch.equal(cov, singles)


def test_culled_coverage_is_exact_and_depth_buffer_is_nearest():
    scene = sphere_scene(4, size=64)
    views = TrainViews(scene, scene.train_idx)
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(3000, 3, generator=g) * 1.2 - 0.6
    assert torch.equal(cube_coverage(views, centers, 0.03, rounds=6), cube_coverage(views, centers, 0.03, rounds=1))
    zbuf = cube_depth_buffer(views, centers, 0.03)
    proj = views.project(centers)
    u, v = proj.uv[0, :, 0].long(), proj.uv[0, :, 1].long()
    ok = (u >= 0) & (u < 64) & (v >= 0) & (v < 64)
    assert (zbuf[0, v[ok], u[ok]] <= proj.z[0, ok] + 1e-6).all()  # nothing drawn behind its own pixel
    assert torch.isinf(zbuf).any() and torch.isfinite(zbuf).any()


def test_silhouette_of_a_carved_sphere_matches_its_masks():
    scene = sphere_scene(6, size=96)
    views = TrainViews(scene, scene.train_idx)
    occ, _ = carve(views, InitConfig(levels=[16, 32, 64, 128], footprint=0.0))
    ious = silhouette_iou(occ, views)
    assert len(ious) == 6 and min(ious) > 0.95
    # an empty solid explains nothing
    assert max(silhouette_iou(occ.with_grid(np.zeros_like(occ.grid)), views)) == 0.0
