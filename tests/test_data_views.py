"""Split files, default hold-out, view selection and normalisation."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import look_at_c2w, ring_c2w, shared_scene, write_transforms_scene  # noqa: E402

from recon.data.config import DataConfig  # noqa: E402
from recon.data.load import load_scene  # noqa: E402
from recon.data.normalize import compute_normalization, lookat_point  # noqa: E402
from recon.data.source import check_pose  # noqa: E402
from recon.data.views import FrameNames, default_split, farthest_view_sampling  # noqa: E402
from recon.errors import ReconError  # noqa: E402


# ------------------------------------------------------------------------------------------ view sampling

def test_farthest_view_sampling_on_octahedron():
    d = np.array([[0, 0, 1], [0.3, 0, 1], [-0.3, 0, 1], [0, 0.3, 1], [0, -0.3, 1], [1, 0, 0.2]])
    picked = farthest_view_sampling(d, 3)
    # The outlier at +x pulls the mean direction towards +x, so the most central view is 1 (cosines to the
    # mean: .838 .850 .756 .803 .803 .325); then the farthest from it (the outlier 5), then the farthest
    # from both (2, on the other side).
    assert picked == [1, 5, 2]
    d = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, -1.0]])
    all6 = farthest_view_sampling(d, 10)
    assert sorted(all6) == list(range(6))  # clamps to what exists, no repeats


def test_farthest_view_sampling_deterministic_and_spread():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(200, 3))
    a = farthest_view_sampling(d, 8)
    assert a == farthest_view_sampling(d.copy(), 8)
    u = d[a] / np.linalg.norm(d[a], axis=1, keepdims=True)
    cos = u @ u.T
    np.fill_diagonal(cos, -1)
    # 8 points picked greedily out of 200 random directions are far apart (random 8 would not be).
    assert np.degrees(np.arccos(cos.max())) > 45


@pytest.mark.parametrize("name", ["chair", "beer_can", "ethiopian_head", "mold_gold_cape"])
def test_views_n_reproduces_shared_sparse_subsets(name):
    """--views N picks the same views as the data set's sparse_train[N] (same rule, computed independently)."""
    root = shared_scene(name)
    sparse = json.loads((root / "split.json").read_text())["sparse_train"]
    s = load_scene(root, DataConfig(views="4", max_size=50))
    assert [s.names[i] for i in s.train_idx] == sparse["4"]
    # The normalisation comes from the 4 training views only.
    assert any("farthest-point" in n for n in s.notes)


def test_views_named_subset_and_explicit_names(tmp_path):
    root = shared_scene("chair")
    s = load_scene(root, DataConfig(views="dietnerf_8", max_size=50))
    assert [s.names[i] for i in s.train_idx] == [f"images/train_r_{i}.png" for i in (26, 86, 2, 55, 75, 93, 16, 73)]
    assert len(s.test_idx) == 25
    s = load_scene(root, DataConfig(train_views=["train_r_3", "images/train_r_7.png", "train_r_9.png"], max_size=50))
    assert [s.names[i] for i in s.train_idx] == ["images/train_r_3.png", "images/train_r_7.png", "images/train_r_9.png"]


# ------------------------------------------------------------------------------------------ splits

def test_default_split_every_8th_in_name_order():
    names = [f"images/{i:03d}.png" for i in range(20)][::-1]  # order of the file does not matter
    sp = default_split(names)
    assert sorted(names[i] for i in sp.test) == ["images/000.png", "images/008.png", "images/016.png"]
    assert len(sp.train) == 17 and not set(sp.train) & set(sp.test)
    small = default_split(names[:8])
    assert small.test == [] and len(small.train) == 8


def test_frame_names_lookup():
    f = FrameNames(["images/a.png", "images/b.png", "other/b.png", "images/c.jpg"])
    assert f.find("images/a.png") == 0 and f.find("images/a") == 0 and f.find("a") == 0 and f.find("a.png") == 0
    assert f.find("./images/c.jpg") == 3 and f.find("c") == 3
    assert f.find("b.png") is None  # ambiguous basename
    assert f.find("other/b") == 2
    assert f.find("zzz") is None


def test_split_file_used_and_names_matched(tmp_path):
    write_transforms_scene(tmp_path, n=10, w=8, h=8)
    (tmp_path / "split.json").write_text(json.dumps({
        "train": ["f000", "images/f001.png", "f002.png", "f003", "f004"], "test": ["f009"],
        "sparse_train": {"mine": ["f000", "f002", "f004"]}}))
    s = load_scene(tmp_path, DataConfig())
    assert [s.names[i] for i in s.train_idx] == [f"images/f00{i}.png" for i in range(5)]
    assert [s.names[i] for i in s.test_idx] == ["images/f009.png"]
    assert s.split_source.endswith("split.json")
    s = load_scene(tmp_path, DataConfig(views="mine"))
    assert [s.names[i] for i in s.train_idx] == ["images/f000.png", "images/f002.png", "images/f004.png"]
    s = load_scene(tmp_path, DataConfig(views="3"))  # a number: farthest-point sampling among train views
    assert len(s.train_idx) == 3 and set(s.train_idx) <= set(range(5))


def test_explicit_split_file_overrides_scene_split(tmp_path):
    write_transforms_scene(tmp_path / "scene", n=10, w=8, h=8)
    other = tmp_path / "my_split.json"
    other.write_text(json.dumps({"test": ["f000", "f001"]}))
    s = load_scene(tmp_path / "scene", DataConfig(split=str(other)))
    assert len(s.test_idx) == 2 and len(s.train_idx) == 8  # train defaults to all the other frames
    assert s.split_source == str(other)


@pytest.mark.parametrize("cfg,match", [
    (dict(views="99"), "more views than"),
    (dict(views="0"), "no views"),
    (dict(views="nope"), "neither a number nor a named subset"),
    (dict(train_views=["f000", "f008"]), "held-out test view"),
    (dict(train_views=["f000", "zzz"]), "zzz"),
    (dict(views="3", train_views=["f000"]), "both"),
])
def test_view_selection_errors(tmp_path, cfg, match):
    write_transforms_scene(tmp_path, n=12, w=8, h=8)  # default split: f000, f008 are test views
    with pytest.raises(ReconError, match=match):
        load_scene(tmp_path, DataConfig(**cfg))


def test_split_errors(tmp_path):
    write_transforms_scene(tmp_path, n=10, w=8, h=8)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["f000"], "test": ["f000"]}))
    with pytest.raises(ReconError, match="both 'train' and 'test'"):
        load_scene(tmp_path, DataConfig())
    split.write_text(json.dumps({"train": ["f000", "f001", "f002"], "test": ["f001"]}))
    with pytest.raises(ReconError, match="both"):
        load_scene(tmp_path, DataConfig())
    split.write_text(json.dumps({"test": ["images/missing.png"]}))
    with pytest.raises(ReconError, match=r"split\.json.*images/missing\.png"):
        load_scene(tmp_path, DataConfig())
    split.write_text(json.dumps({"train": "f000"}))
    with pytest.raises(ReconError, match="list of image names"):
        load_scene(tmp_path, DataConfig())
    with pytest.raises(ReconError, match="split file not found"):
        load_scene(tmp_path, DataConfig(split=str(tmp_path / "nope.json")))


def test_test_views_never_train(tmp_path):
    write_transforms_scene(tmp_path, n=20, w=8, h=8)
    for cfg in (DataConfig(), DataConfig(views="5")):
        s = load_scene(tmp_path, cfg)
        assert s.test_idx and not set(s.train_idx) & set(s.test_idx)
        assert len(s.train_idx) + len(s.test_idx) <= s.n_frames


# ------------------------------------------------------------------------------------------ normalisation

def test_lookat_point_recovers_target():
    target = np.array([1.0, -2.0, 0.5])
    c2w = ring_c2w(7, radius=3.0, center=target)
    np.testing.assert_allclose(lookat_point(c2w[:, :3, 3], c2w[:, :3, 2]), target, atol=1e-9)
    # Parallel axes do not define a point.
    par = np.stack([look_at_c2w(np.array([x, 0, 0.0]), np.array([x, 0, 5.0])) for x in (0.0, 1.0, 2.0)])
    assert lookat_point(par[:, :3, 3], par[:, :3, 2]) is None


def test_normalization_value():
    """scale = 1 / (median distance * tan(half the smaller fov)), centre = the look-at point."""
    target = np.array([1.0, 2.0, 3.0])
    c2w = ring_c2w(6, radius=5.0, center=target)
    w, h, fx, fy = 64, 48, 40.0, 40.0
    Ks = np.tile(np.array([[fx, 0, w / 2], [0, fy, h / 2], [0, 0, 1]]), (6, 1, 1))
    norm = compute_normalization(c2w, Ks, w, h)
    np.testing.assert_allclose(norm.center.numpy(), target, atol=1e-9)
    assert norm.scale == pytest.approx(1.0 / (5.0 * min(w / (2 * fx), h / (2 * fy))))
    # Round trip through the Normalization object.
    p = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(norm.to_world(norm.to_normalized(p)), p)


def test_normalization_parallel_cameras_use_points():
    par = np.stack([look_at_c2w(np.array([x, 0, 0.0]), np.array([x, 0, 5.0])) for x in (0.0, 1.0, 2.0)])
    Ks = np.tile(np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]), (3, 1, 1))
    pts = np.random.default_rng(0).normal(size=(100, 3)) * 0.1 + [1.0, 0.0, 4.0]
    norm = compute_normalization(par, Ks, 64, 64, points=pts)
    assert abs(float(norm.center[2]) - 4.0) < 0.1 and np.isfinite(norm.scale) and norm.scale > 0


def test_loaded_scene_is_normalised_and_maps_back(tmp_path):
    target = np.array([10.0, -5.0, 2.0])
    c2w = ring_c2w(10, radius=20.0, center=target)
    write_transforms_scene(tmp_path, n=10, w=32, h=24, fx=30.0, c2w=c2w)
    s = load_scene(tmp_path, DataConfig())
    np.testing.assert_allclose(s.normalization.center.numpy(), target, atol=1e-6)
    # The median camera sees radius 1 at the look-at depth.
    d = s.cameras.centers.double().norm(dim=1)[s.train_idx].median()
    assert float(d) * min(32 / 60, 24 / 60) == pytest.approx(1.0, rel=1e-5)
    back = s.normalization.camtoworlds_to_world(s.cameras.camtoworlds.double()).numpy()
    np.testing.assert_allclose(back, c2w, atol=1e-4)


# ------------------------------------------------------------------------------------------ poses

@pytest.mark.parametrize("bad,match", [
    (np.full((4, 4), np.nan), "NaN"),
    (np.diag([2.0, 2.0, 2.0, 1.0]), "not a rotation"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
    (np.eye(3), "shape"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "bottom row"),
])
def test_check_pose_rejects(bad, match):
    with pytest.raises(ReconError, match=match):
        check_pose(bad, Path("cams.json"), "frame 3")


def test_check_pose_reorthonormalises():
    R = np.eye(4)
    R[:3, :3] += 1e-4 * np.random.default_rng(0).normal(size=(3, 3))
    out = check_pose(R, Path("x"), "f")
    np.testing.assert_allclose(out[:3, :3].T @ out[:3, :3], np.eye(3), atol=1e-12)
