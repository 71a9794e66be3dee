"""The committed sample scene: reproducible bytes, correct camera convention, split format, size budget."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from recon.data.cameras import OPENGL_TO_OPENCV, Cameras
from recon.errors import ReconError
from recon.sample.generate import farthest_views, make_sample, png_bytes

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
RASTER = 4  # mask rasteriser supersampling per pixel side


def _transforms() -> dict:
    return json.loads((SAMPLE / "transforms.json").read_text())


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    v = ply["vertex"]
    verts = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    faces = np.stack(ply["face"]["vertex_indices"]).astype(np.int64)
    return verts, faces


def _cameras(tf: dict, flip_y: bool = False) -> Cameras:
    c2w = torch.tensor([f["transform_matrix"] for f in tf["frames"]], dtype=torch.float64) @ OPENGL_TO_OPENCV
    if flip_y:  # the classic convention mistake: must visibly break the mask check
        c2w = c2w @ torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    K = torch.tensor([[tf["fl_x"], 0, tf["cx"]], [0, tf["fl_y"], tf["cy"]], [0, 0, 1]], dtype=torch.float64)
    return Cameras(c2w, K.expand(len(tf["frames"]), 3, 3).clone(), tf["w"], tf["h"])


def _mesh_mask(uv: np.ndarray, faces: np.ndarray, w: int, h: int) -> np.ndarray:
    """Coverage of the projected triangles, rasterised at RASTER x RASTER samples per pixel, thresholded at 0.5."""
    img = Image.new("L", (w * RASTER, h * RASTER), 0)
    draw = ImageDraw.Draw(img)
    # PIL puts integer coordinates on sample centres; continuous pixel coords put them at +0.5.
    pts = uv * RASTER - 0.5
    for tri in pts[faces]:
        draw.polygon([tuple(p) for p in tri], fill=255)
    cover = np.asarray(img, dtype=np.float64).reshape(h, RASTER, w, RASTER).mean((1, 3)) / 255.0
    return cover > 0.5


def _mask_ious(tf: dict, cams: Cameras, views: list[int]) -> list[float]:
    verts, faces = _read_ply(SAMPLE / "mesh.ply")
    uv, depth = cams.project(torch.from_numpy(verts))
    ious = []
    for i in views:
        assert (depth[i] > 0).all()
        mesh = _mesh_mask(uv[i].numpy(), faces, tf["w"], tf["h"])
        alpha = np.asarray(Image.open(SAMPLE / tf["frames"][i]["file_path"]))[..., 3] > 127
        ious.append(float((mesh & alpha).sum() / (mesh | alpha).sum()))
    return ious


def test_sample_layout_and_shapes():
    tf = _transforms()
    n = tf["generator"]["n_views"]
    assert tf["camera_model"] == "PINHOLE" and len(tf["frames"]) == n
    assert tf["cx"] == tf["w"] / 2 and tf["cy"] == tf["h"] / 2
    names = [f["file_path"] for f in tf["frames"]]
    assert names == sorted(names) and len(set(names)) == n
    for name in names:
        im = Image.open(SAMPLE / name)
        assert im.mode == "RGBA" and im.size == (tf["w"], tf["h"])
    for f in tf["frames"]:
        m = np.array(f["transform_matrix"])
        assert m.shape == (4, 4)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-8)
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-8)
        # OpenGL axes: the camera looks down -z, at the object at the origin.
        forward = -m[:3, 2]
        to_origin = -m[:3, 3] / np.linalg.norm(m[:3, 3])
        assert forward @ to_origin > np.cos(np.deg2rad(0.01))
    verts, faces = _read_ply(SAMPLE / "mesh.ply")
    assert verts.shape[1] == 3 and faces.shape[1] == 3 and faces.max() < len(verts)


def test_sample_size_budget():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert 0 < total <= 2 * 1000 * 1000


def test_split_format():
    tf = _transforms()
    split = json.loads((SAMPLE / "split.json").read_text())
    names = [f["file_path"] for f in tf["frames"]]
    assert split["test"] == names[::8]
    assert split["train"] == [x for x in names if x not in split["test"]]
    assert set(split["sparse_train"]) == {"3", "4", "6", "8"}
    for k, subset in split["sparse_train"].items():
        assert len(subset) == int(k) == len(set(subset))
        assert set(subset) <= set(split["train"])
    # Nested: a larger subset extends the smaller one (same farthest-point sequence).
    assert split["sparse_train"]["8"][:3] == split["sparse_train"]["3"]


def test_masks_match_projected_mesh():
    tf = _transforms()
    views = list(range(0, len(tf["frames"]), 3))
    ious = _mask_ious(tf, _cameras(tf), views)
    assert min(ious) > 0.98, ious


def test_mask_check_catches_flipped_y():
    tf = _transforms()
    ious = _mask_ious(tf, _cameras(tf, flip_y=True), [1, 5, 9])
    assert max(ious) < 0.9, ious


def test_regenerates_bit_identically(tmp_path):
    gen = _transforms()["generator"]
    views = [0, 13, gen["n_views"] - 1]  # all images would take several seconds; JSON and mesh are complete
    make_sample(tmp_path, seed=gen["seed"], n_views=gen["n_views"], size=gen["size"], views=views)
    for rel in ["transforms.json", "split.json", "mesh.ply"] + [f"images/r_{i:03d}.png" for i in views]:
        assert (tmp_path / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel


def test_other_seed_differs(tmp_path):
    make_sample(tmp_path, seed=1, n_views=9, size=48, views=[0])
    a = np.asarray(Image.open(tmp_path / "images/r_000.png"))
    assert a.shape == (48, 48, 4)
    assert (a[..., 3] == 255).sum() > 100 and (a[..., 3] == 0).sum() > 100  # object and background both present
    assert (tmp_path / "mesh.ply").read_bytes() != (SAMPLE / "mesh.ply").read_bytes()


@pytest.mark.parametrize("kwargs", [{"n_views": 3}, {"size": 8}])
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ReconError):
        make_sample(tmp_path, **kwargs)


def test_png_roundtrip():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    import io

    back = np.asarray(Image.open(io.BytesIO(png_bytes(rgba))))
    np.testing.assert_array_equal(back, rgba)


def test_farthest_views_maximises_min_angle():
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(20, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    candidates = list(range(2, 20, 2))  # returned ids index dirs, not the candidate list
    picked = farthest_views(dirs, candidates, 5)
    assert len(picked) == len(set(picked)) == 5 and set(picked) <= set(candidates)
    mean = dirs[candidates].mean(0)
    assert picked[0] == max(candidates, key=lambda c: dirs[c] @ mean)
    angle = np.arccos(np.clip(dirs @ dirs.T, -1, 1))
    for step in range(1, 5):
        rest = [c for c in candidates if c not in picked[:step]]
        best = max(angle[c, picked[:step]].min() for c in rest)
        assert angle[picked[step], picked[:step]].min() == pytest.approx(best)
