"""Visual hull carving: shapes, bad input, the coarse levels' guarantee, and values against exact hulls
(analytic spheres and the embedded sample with its true mesh)."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import in_visual_hull, sphere_scene  # noqa: E402

from recon.errors import ReconError  # noqa: E402
from recon.init.config import InitConfig  # noqa: E402
from recon.init.initialize import initialize  # noqa: E402
from recon.init.views import TrainViews  # noqa: E402
from recon.init.visual_hull import carve  # noqa: E402
from recon.init.voxels import DEFAULT_FEATURES  # noqa: E402

SPHERE = ((0.0, 0.0, 0.0), 0.5)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def scene():
    return sphere_scene(8, spheres=(SPHERE,), size=160)


def sphere_points(n: int, center=(0.0, 0.0, 0.0), radius: float = 0.5, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return np.asarray(center) + radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def grid_centers(level: int) -> np.ndarray:
    r = (np.arange(level) + 0.5) / level * 2 - 1
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def to_level(occ, level: int) -> np.ndarray:
    """The carved solid on a coarser grid: a cell is occupied when at least half of its volume is."""
    g = np.zeros((occ.level,) * 3, dtype=bool)
    o, s = occ.offset, occ.grid.shape
    g[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]] = occ.grid
    f = occ.level // level
    return (g.reshape(level, f, level, f, level, f).sum((1, 3, 5)) * 2 >= f ** 3).reshape(-1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_smoke_shapes(scene):
    res = initialize(scene, scene.train_idx, InitConfig(levels=[16, 32, 64]))
    v = res.voxels
    assert res.mode == "hull"
    assert v.coords.dtype == torch.int32 and v.coords.shape[1] == 3 and len(v) > 100
    assert int(v.coords.min()) >= 0 and int(v.coords.max()) < 64 and v.level == 64
    assert v.features.shape == (len(v), len(DEFAULT_FEATURES)) and v.feature_names == DEFAULT_FEATURES
    assert v.features.dtype == torch.float32 and torch.isfinite(v.features).all()
    assert v.voxel_size == pytest.approx(2.0 / 64) and torch.allclose(v.origin, torch.full((3,), -1.0))
    # surface voxels only: every one has an empty 6-neighbour in the carved solid
    c = v.centers().numpy()
    h = v.voxel_size
    nb = np.stack([res.occupancy.contains(c + h * d) for d in np.concatenate([np.eye(3), -np.eye(3)])])
    assert (~nb).any(0).all() and res.occupancy.contains(c).all()
    assert len(res.occupancy) > len(v)  # the solid also has an inside
    levels = [s for s in res.stats["levels"] if isinstance(s["level"], int)]
    assert [s["level"] for s in levels] == [16, 32, 64] and all(s["seconds"] >= 0 for s in levels)


def test_hull_of_a_sphere_matches_the_exact_visual_hull(scene):
    cfg = InitConfig(levels=[16, 32, 64, 128, 256], footprint=1.0)
    occ, _ = carve(TrainViews(scene, scene.train_idx), cfg)
    inside = occ.contains(sphere_points(4000))
    ref = in_visual_hull(grid_centers(64), scene.cameras, [SPHERE])
    value = iou(to_level(occ, 64), ref)
    print(f"sphere: surface points inside {inside.mean():.4f}, IoU with the exact 64^3 hull {value:.4f}")
    assert inside.mean() >= 0.99
    assert value >= 0.93
    # the sphere's centre is inside, the cube's corners are not
    assert occ.contains(np.array([[0.0, 0.0, 0.0]])).all() and not occ.contains(np.array([[0.9, 0.9, 0.9]])).any()


def test_coarse_levels_never_drop_what_the_finest_level_keeps(scene):
    """Octree carving from 8 cells across must give exactly the cells a brute-force pass over the whole
    finest grid keeps (the coarse tests are conservative)."""
    views = TrainViews(scene, scene.train_idx)
    for footprint in (1.0, 0.25):
        fine, _ = carve(views, InitConfig(levels=[4, 8, 16, 32, 64], footprint=footprint))
        brute, _ = carve(views, InitConfig(levels=[64], footprint=footprint))
        a, b = set(map(tuple, fine.coords().tolist())), set(map(tuple, brute.coords().tolist()))
        assert a == b and len(a) > 10000


def test_tighter_footprint_gives_a_tighter_hull(scene):
    views = TrainViews(scene, scene.train_idx)
    loose, _ = carve(views, InitConfig(levels=[16, 32, 64], footprint=1.0))
    tight, _ = carve(views, InitConfig(levels=[16, 32, 64], footprint=0.25))
    assert len(tight) < len(loose)
    assert loose.contains(tight.centers(tight.coords())).all()


def test_mask_tolerance_forgives_one_bad_mask(scene):
    bad = scene.masks.clone()
    bad[0, :, : scene.width // 2] = 0  # half the object cut out of one mask
    broken = replace(scene, masks=bad)
    pts = sphere_points(2000)
    strict = initialize(broken, broken.train_idx, InitConfig(levels=[16, 32, 64], footprint=1.0))
    tolerant = initialize(broken, broken.train_idx, InitConfig(levels=[16, 32, 64], footprint=1.0, mask_tolerance=1))
    assert strict.occupancy.contains(pts).mean() < 0.9
    assert tolerant.occupancy.contains(pts).mean() >= 0.99


def test_interior_seeds_inner_cells_in_proportion_to_the_surface(scene):
    cfg = InitConfig(levels=[16, 32, 64])
    shell = initialize(scene, scene.train_idx, cfg)
    n_surface, inner_total = len(shell.voxels), len(shell.occupancy) - len(shell.voxels)
    assert 0 < n_surface // 2 < inner_total  # the sphere's solid has a large inside
    for ratio, expected in ((0.5, n_surface // 2), (1e6, inner_total)):
        res = initialize(scene, scene.train_idx, replace(cfg, interior=ratio))
        n_in = res.stats["interior_voxels"]
        assert res.stats["surface_voxels"] == n_surface and len(res.voxels) == n_surface + n_in
        assert abs(n_in - expected) <= 1 and len(res.gaussians) == len(res.voxels)
        torch.testing.assert_close(res.voxels.coords[:n_surface], shell.voxels.coords)
        # the added cells are inside the solid: all six neighbours occupied, none repeated
        c = res.voxels.centers().numpy()[n_surface:]
        h = res.voxels.voxel_size
        nb = np.stack([res.occupancy.contains(c + h * d) for d in np.concatenate([np.eye(3), -np.eye(3)])])
        assert nb.all() and len(np.unique(res.voxels.coords.numpy(), axis=0)) == len(res.voxels)


@pytest.mark.parametrize("change, match", [
    ({"levels": [32, 48]}, "levels"),
    ({"levels": [1024]}, "levels"),
    ({"levels": []}, "levels"),
    ({"levels": [3, 6]}, "levels"),
    ({"carve": "magic"}, "carve"),
    ({"bound": 0.0}, "bound"),
    ({"mask_threshold": 1.5}, "mask_threshold"),
    ({"footprint": -1.0}, "footprint"),
    ({"interior": -1.0}, "interior"),
    ({"gaussian_opacity": 1.0}, "opacity"),
])
def test_bad_config_is_a_user_error(scene, change, match):
    with pytest.raises(ReconError, match=match):
        initialize(scene, scene.train_idx, replace(InitConfig(levels=[16, 32]), **change))


def test_bad_views_and_masks_are_user_errors(scene):
    cfg = InitConfig(levels=[16, 32])
    with pytest.raises(ReconError, match="training view"):
        initialize(scene, [], cfg)
    with pytest.raises(ReconError, match="out of range"):
        initialize(scene, [0, 1, 99], cfg)
    with pytest.raises(ReconError, match="needs object masks"):
        initialize(replace(scene, masks=None), scene.train_idx, replace(cfg, carve="hull"))
    with pytest.raises(ReconError, match="no voxels"):
        initialize(replace(scene, masks=torch.zeros_like(scene.masks)), scene.train_idx, cfg)


def _mesh_points(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """n points uniformly on a PLY triangle mesh (area-weighted, seeded)."""
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = np.stack([ply["vertex"][k] for k in ("x", "y", "z")], -1).astype(np.float64)
    f = np.stack(ply["face"]["vertex_indices"]).astype(np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri] + (s * r2)[:, None] * c[tri]


def dense_visual_hull(scene, idx, level: int) -> np.ndarray:
    """Independent reference: cell centres whose nearest pixel is object (>= 128) in every view that sees them."""
    x = torch.from_numpy(grid_centers(level))
    uv, z = scene.cameras[list(idx)].project(x.to(torch.float64))
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = torch.ones(len(x), dtype=torch.bool)
    for k, i in enumerate(idx):
        ok = (u[k] >= 0) & (u[k] < scene.width) & (v[k] >= 0) & (v[k] < scene.height) & (z[k] > 0)
        on = torch.zeros(len(x), dtype=torch.bool)
        on[ok] = scene.masks[i][v[k][ok], u[k][ok]] >= 128
        inside &= on
    return inside.numpy()


def test_embedded_sample_hull_contains_the_true_surface():
    if not (SAMPLE / "mesh.ply").is_file():
        pytest.skip("the embedded sample is not in data/sample")
    from recon.data.config import DataConfig
    from recon.data.load import load_scene

    scene = load_scene(SAMPLE, DataConfig(views="8"))
    # footprint 1: the conservative hull, which holds the whole object
    occ, _ = carve(TrainViews(scene, scene.train_idx), InitConfig(levels=[32, 64, 128, 256], footprint=1.0))
    pts = scene.normalization.to_normalized(torch.from_numpy(_mesh_points(SAMPLE / "mesh.ply", 20000)))
    inside = occ.contains(pts).mean()
    ref = dense_visual_hull(scene, scene.train_idx, 64)
    value = iou(to_level(occ, 64), ref)
    print(f"sample: true surface points inside the hull {inside:.4f}; IoU with a dense 64^3 visual hull {value:.4f}")
    assert inside >= 0.99
    assert value >= 0.95
