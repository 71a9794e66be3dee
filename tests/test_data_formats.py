"""Each scene format on the real scenes in ../shared/data, plus cross-checks between formats."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import GL_TO_CV, shared_scene  # noqa: E402

from recon.data.colmap import bilinear_sample  # noqa: E402
from recon.data.config import DataConfig  # noqa: E402
from recon.data.load import load_scene, scene_summary  # noqa: E402

_CACHE: dict = {}


def scene(name: str, **cfg):
    """Load a shared scene once per test session (loading is the slow part of these tests)."""
    key = (name, tuple(sorted(cfg.items())))
    if key not in _CACHE:
        _CACHE[key] = load_scene(shared_scene(name), DataConfig(**cfg))
    return _CACHE[key]


def world_c2w(s) -> np.ndarray:
    return s.normalization.camtoworlds_to_world(s.cameras.camtoworlds.double()).numpy()


def transforms_c2w(root: Path) -> dict[str, np.ndarray]:
    meta = json.loads((root / "transforms.json").read_text())
    return {f["file_path"]: np.array(f["transform_matrix"]) @ GL_TO_CV for f in meta["frames"]}


def source_lookat(root: Path) -> np.ndarray:
    m = re.search(r'"lookat_center":\s*\[([^\]]*)\]', (root / "SOURCE.md").read_text())
    return np.array([float(v) for v in m.group(1).split(",")])


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |s R src + t - dst|^2 (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / a.var(0).sum())
    return s, R, mu_d - s * R @ mu_s


# ------------------------------------------------------------------------------------------ transforms.json

def test_chair_transforms():
    root = shared_scene("chair")
    s = scene("chair")
    assert s.format == "transforms" and s.n_frames == 125
    assert (s.width, s.height) == (400, 400)
    assert s.images.shape == (125, 400, 400, 3) and s.images.dtype == torch.uint8
    assert s.masks is not None and s.masks.shape == (125, 400, 400)
    assert len(s.train_idx) == 100 and len(s.test_idx) == 25
    assert not set(s.train_idx) & set(s.test_idx)
    assert all(s.names[i].startswith("images/test_") for i in s.test_idx)
    torch.testing.assert_close(s.cameras.Ks[0].double(), torch.tensor(
        [[555.5555155968841, 0, 200], [0, 555.5555155968841, 200], [0, 0, 1]], dtype=torch.float64))
    # Poses: the file's OpenGL camera-to-world turned to OpenCV axes, recovered through the normalisation.
    ref = transforms_c2w(root)
    np.testing.assert_allclose(world_c2w(s), np.stack([ref[n] for n in s.names]), atol=1e-5)
    # Pixels are the file's straight RGBA.
    i = s.names.index("images/train_r_26.png")
    src = np.asarray(Image.open(root / s.names[i]))
    np.testing.assert_array_equal(s.images[i].numpy(), src[..., :3])
    np.testing.assert_array_equal(s.masks[i].numpy(), src[..., 3])


def test_chair_normalisation_fits_object_in_unit_cube():
    s = scene("chair")
    # The chair sits at the Blender origin: the look-at centre is ~0 and the scale puts cameras at
    # distance 1 / tan(half fov) ~ 2.78 from it.
    assert np.abs(s.normalization.center.numpy()).max() < 1e-3
    dist = s.cameras.centers.double().norm(dim=1)
    tan_half = 200.0 / 555.5555
    assert abs(float(dist[s.train_idx].median()) - 1.0 / tan_half) < 0.02
    # Every camera's +z axis (OpenCV forward) points at the centre.
    cos = (s.cameras.forward.double() * -s.cameras.centers.double() / dist[:, None]).sum(1)
    assert float(cos.min()) > 0.999


@pytest.mark.parametrize("name", ["ethiopian_head", "mold_gold_cape"])
def test_masked_real_scenes(name):
    root = shared_scene(name)
    s = scene(name)
    assert s.format == "transforms" and s.has_masks
    n_expected = {"ethiopian_head": 66, "mold_gold_cape": 119}[name]
    assert s.n_frames == n_expected and (s.width, s.height) == (400, 400)
    frac = s.masks.float().mean() / 255
    assert 0.02 < float(frac) < 0.7  # an object, not the whole image nor nothing
    # RGB is kept under the mask (real background still there).
    assert float(s.images[0][s.masks[0] == 0].float().std()) > 5
    # The look-at centre agrees with the one the data set's builder computed.
    diff = np.linalg.norm(s.normalization.center.numpy() - source_lookat(root))
    assert diff * s.normalization.scale < 0.05
    ref = transforms_c2w(root)
    np.testing.assert_allclose(world_c2w(s), np.stack([ref[n] for n in s.names]), atol=1e-4)


def test_beer_can_transforms():
    s = scene("beer_can")
    assert s.format == "transforms" and not s.has_masks
    assert (s.n_frames, s.width, s.height) == (71, 225, 400)
    assert s.images.shape == (71, 400, 225, 3)
    K = s.cameras.Ks[0].double()
    assert abs(float(K[0, 0]) - 361.794) < 1e-3 and float(K[0, 2]) == 112.5 and float(K[1, 2]) == 200.0


# ------------------------------------------------------------------------------------------ Blender layout

def _blender_copy(tmp_path: Path, with_val: bool = False) -> Path:
    """The chair as the original NeRF-synthetic layout: train/r_i.png, test/r_i.png, camera_angle_x,
    file paths without extension."""
    root = shared_scene("chair")
    meta = json.loads((root / "transforms.json").read_text())
    out = tmp_path / "chair_blender"
    parts = {"train": [], "test": []}
    for fr in meta["frames"]:
        split, idx = re.match(r"images/(train|test)_r_(\d+)\.png", fr["file_path"]).groups()
        (out / split).mkdir(parents=True, exist_ok=True)
        os.symlink(root / fr["file_path"], out / split / f"r_{idx}.png")
        parts[split].append({"file_path": f"./{split}/r_{idx}", "rotation": 0.012566370614359171,
                             "transform_matrix": fr["transform_matrix"]})
    for split, frames in parts.items():
        (out / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": meta["camera_angle_x"], "frames": frames}))
    if with_val:
        (out / "transforms_val.json").write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"],
                                                             "frames": parts["test"][:2]}))
    return out


def test_blender_layout_matches_transforms(tmp_path):
    ref = scene("chair")
    root = _blender_copy(tmp_path, with_val=True)
    s = load_scene(root, DataConfig())
    assert s.format == "blender" and s.n_frames == 125
    assert len(s.train_idx) == 100 and len(s.test_idx) == 25
    assert s.split_source is not None and "transforms_train.json" in s.split_source
    assert all(s.names[i].startswith("test/") for i in s.test_idx)
    assert s.names[0] == "train/r_0.png"  # extension found on disk
    assert any("transforms_val.json" in n for n in s.notes)
    # Same cameras as the transforms.json copy (focal from camera_angle_x).
    by_name = {n.replace("images/", "").replace("_r_", "/r_"): i for i, n in enumerate(ref.names)}
    order = [by_name[n] for n in s.names]
    np.testing.assert_allclose(world_c2w(s), world_c2w(ref)[order], atol=1e-5)
    torch.testing.assert_close(s.cameras.Ks, ref.cameras.Ks[order], atol=1e-3, rtol=1e-5)
    assert torch.equal(s.images[5], ref.images[order[5]])


# ------------------------------------------------------------------------------------------ COLMAP

def test_colmap_binary():
    s = scene("colmap_beer_can")
    assert s.format == "colmap" and not s.has_masks
    assert (s.n_frames, s.width, s.height) == (71, 225, 400)
    assert s.points is not None and s.points.shape == (4414, 3)
    assert s.point_colors is not None and s.point_colors.dtype == torch.uint8
    assert any("SIMPLE_RADIAL" in n for n in s.notes)  # distorted model, undistorted on load
    assert len(s.train_idx) == 62 and len(s.test_idx) == 9  # default hold-out: every 8th


def test_colmap_points_land_on_keypoints():
    """COLMAP 3D points projected with the loaded (undistorted) cameras land on their keypoints."""
    import pycolmap

    root = shared_scene("colmap_beer_can")
    s = scene("colmap_beer_can")
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    errors = []
    for image in rec.images.values():
        i = s.names.index(f"images/{image.name}")
        obs = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
        xy = np.array([o[0] for o in obs])
        X = np.array([rec.points3D[pid].xyz for _, pid in obs])
        uv, z = s.cameras[i].project(s.normalization.to_normalized(torch.from_numpy(X)))
        assert bool((z > 0).all())
        # The keypoints were detected on the distorted photo: undistort them onto the loaded pinhole camera.
        K = s.cameras.Ks[i].double().numpy()
        ideal = rec.cameras[image.camera_id].cam_from_img(xy) @ K[:2, :2].T + K[:2, 2]
        errors.append(np.linalg.norm(uv[0].numpy() - ideal, axis=1))
    err = np.concatenate(errors)
    assert len(err) == 30839
    assert np.median(err) < 1.0, np.median(err)
    assert np.percentile(err, 95) < 2.0


def test_colmap_points_match_loader_points():
    import pycolmap

    root = shared_scene("colmap_beer_can")
    s = scene("colmap_beer_can")
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    xyz = np.array([p.xyz for _, p in sorted(rec.points3D.items())])
    np.testing.assert_allclose(s.normalization.to_world(s.points.double()).numpy(), xyz, atol=1e-4)


def test_colmap_and_transforms_cameras_agree_up_to_similarity():
    a = scene("colmap_beer_can")
    b = scene("beer_can")
    stem = lambda n: Path(n).stem  # noqa: E731
    assert sorted(map(stem, a.names)) == sorted(map(stem, b.names))
    bi = {stem(n): i for i, n in enumerate(b.names)}
    order = [bi[stem(n)] for n in a.names]
    ca = a.cameras.centers.double().numpy()
    cb = b.cameras.centers.double().numpy()[order]
    s_, R, t = umeyama(ca, cb)
    resid = np.linalg.norm(s_ * ca @ R.T + t - cb, axis=1)
    spread = np.linalg.norm(cb - cb.mean(0), axis=1).mean()
    assert resid.max() < 1e-3 * spread, resid.max() / spread
    # Orientations agree too once the similarity's rotation is applied.
    Ra = a.cameras.camtoworlds[:, :3, :3].double().numpy()
    Rb = b.cameras.camtoworlds[:, :3, :3].double().numpy()[order]
    cos = (np.trace(np.einsum("ij,njk->nik", R, Ra) @ Rb.transpose(0, 2, 1), axis1=1, axis2=2) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 0.1


def test_colmap_undistorted_pixels_match_undistorted_copy():
    """beer_can holds the same photos undistorted by the data set's builder: our undistortion agrees."""
    a = scene("colmap_beer_can")
    b = scene("beer_can")
    bi = {Path(n).stem: i for i, n in enumerate(b.names)}
    H, W = a.height, a.width
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    for i in (0, 35, 70):
        j = bi[Path(a.names[i]).stem]
        Ka, Kb = a.cameras.Ks[i].double().numpy(), b.cameras.Ks[j].double().numpy()
        q = Kb @ np.linalg.inv(Ka) @ pix  # same rotation, different focal: a homography
        warped = bilinear_sample(b.images[j].numpy().astype(np.float32), q[0] - 0.5, q[1] - 0.5).reshape(H, W, 3)
        diff = (warped - a.images[i].numpy())[16:-16, 16:-16]
        psnr = 10 * np.log10(255.0**2 / np.mean(diff**2))
        assert psnr > 38.0, (i, psnr)


def test_colmap_text_model(tmp_path):
    import pycolmap

    src = shared_scene("colmap_beer_can")
    rec = pycolmap.Reconstruction(str(src / "sparse" / "0"))
    out = tmp_path / "beer_text"
    (out / "sparse" / "0").mkdir(parents=True)
    rec.write_text(str(out / "sparse" / "0"))
    os.symlink(src / "images", out / "images")
    assert not list((out / "sparse" / "0").glob("*.bin"))
    s = load_scene(out, DataConfig())
    ref = scene("colmap_beer_can")
    assert s.format == "colmap" and s.names == ref.names
    torch.testing.assert_close(s.cameras.camtoworlds, ref.cameras.camtoworlds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.cameras.Ks, ref.cameras.Ks, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(s.points, ref.points, atol=1e-5, rtol=1e-5)
    assert torch.equal(s.images[3], ref.images[3])


def test_colmap_model_without_points(tmp_path):
    import shutil

    src = shared_scene("colmap_beer_can")
    out = tmp_path / "nopoints"
    (out / "sparse" / "0").mkdir(parents=True)
    for n in ("cameras.bin", "images.bin"):
        shutil.copy(src / "sparse" / "0" / n, out / "sparse" / "0" / n)
    os.symlink(src / "images", out / "images")
    s = load_scene(out, DataConfig())
    assert s.points is None and s.n_frames == 71


# ------------------------------------------------------------------------------------------ LLFF

def _llff_copy(tmp_path: Path, name: str, hwf_scale: float = 1.0) -> Path:
    """poses_bounds.npy from a shared scene's cameras, in LLFF's [down, right, back] axis order."""
    root = shared_scene(name)
    meta = json.loads((root / "transforms.json").read_text())
    frames = sorted(meta["frames"], key=lambda f: f["file_path"])
    rows = []
    for fr in frames:
        gl = np.array(fr["transform_matrix"])  # columns [right, up, back, centre]
        right, up, back, t = gl[:3, 0], gl[:3, 1], gl[:3, 2], gl[:3, 3]
        hwf = np.array([meta["h"], meta["w"], meta["fl_x"]]) * hwf_scale
        block = np.stack([-up, right, back, t, hwf], axis=1)  # [down, right, back, t, hwf]
        rows.append(np.concatenate([block.ravel(), fr.get("llff_near_far", [1.0, 10.0])]))
    out = tmp_path / f"{name}_llff"
    out.mkdir()
    np.save(out / "poses_bounds.npy", np.array(rows))
    os.symlink(root / "images", out / "images")
    return out


@pytest.mark.parametrize("hwf_scale", [1.0, 4.0])
def test_llff_matches_transforms(tmp_path, hwf_scale):
    """The same cameras through poses_bounds.npy; hwf_scale 4 = poses made for 4x larger photos."""
    ref = scene("ethiopian_head")
    s = load_scene(_llff_copy(tmp_path, "ethiopian_head", hwf_scale), DataConfig())
    assert s.format == "llff" and s.has_masks  # RGBA images carry the masks
    assert s.names == sorted(ref.names)
    order = [ref.names.index(n) for n in s.names]
    np.testing.assert_allclose(world_c2w(s), world_c2w(ref)[order], atol=1e-5)
    torch.testing.assert_close(s.cameras.Ks, ref.cameras.Ks[order], atol=1e-3, rtol=1e-5)
    assert any("LLFF depth bounds" in n for n in s.notes)


def test_llff_masks_folder(tmp_path):
    """LLFF scenes often bring masks/ beside images/: those masks are used."""
    root = _llff_copy(tmp_path, "ethiopian_head")
    (root / "masks").mkdir()
    ref = scene("ethiopian_head")
    for n in sorted(ref.names):
        m = np.zeros((400, 400), np.uint8)
        m[100:300, 150:250] = 255
        Image.fromarray(m).save(root / "masks" / (Path(n).stem + ".jpg"), quality=100)
    s = load_scene(root, DataConfig())
    assert s.has_masks
    assert int(s.masks[0, 200, 200]) > 250 and int(s.masks[0, 10, 10]) < 5


# ------------------------------------------------------------------------------------------ summary

def test_scene_summary_is_json_and_complete():
    s = scene("beer_can", views="3")
    d = scene_summary(s)
    json.dumps(d)
    for key in ("format", "n_frames", "width", "height", "has_masks", "n_train", "n_test", "intrinsics",
                "split_source", "train", "test", "normalization", "notes"):
        assert key in d
    assert d["n_train"] == 3 and d["train"] == ["images/0063.png", "images/0014.png", "images/0013.png"]
    assert set(d["intrinsics"]) == {"fx", "fy", "cx", "cy"}
    assert d["normalization"]["scale"] > 0 and len(d["normalization"]["center"]) == 3


# ------------------------------------------------------------------------------------------ synthetic cases

def _pattern(xn: np.ndarray, yn: np.ndarray) -> np.ndarray:
    """A smooth image defined on normalised camera coordinates (x/z, y/z)."""
    return 127.5 + 100.0 * np.sin(7.0 * xn + 1.0) * np.cos(5.0 * yn - 0.5)


@pytest.mark.parametrize("model,params", [
    ("SIMPLE_RADIAL", [0.08]),
    ("RADIAL", [-0.12, 0.03]),
    ("OPENCV", [-0.1, 0.02, 0.002, -0.003]),
])
def test_undistortion_against_analytic_image(model, params):
    """Render a distorted photo of a known pattern, undistort it, compare with the pattern seen by the
    pinhole camera we report."""
    from recon.data.colmap import distorted_camera, undistort_image, undistorted_intrinsics

    w, h = 120, 90
    K = np.array([[100.0, 0, 61.0], [0, 98.0, 44.0], [0, 0, 1]])
    cam = distorted_camera(model, params, K, w, h)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    ideal = np.asarray(cam.cam_from_img(np.stack([u.ravel(), v.ravel()], 1)))
    photo = _pattern(ideal[:, 0], ideal[:, 1]).reshape(h, w).round().astype(np.uint8)

    K_out = undistorted_intrinsics(cam)
    assert K_out[0, 2] == K[0, 2] and K_out[1, 2] == K[1, 2]
    single_focal = model in ("SIMPLE_RADIAL", "RADIAL")  # one focal length: the mean of fx and fy
    assert K_out[0, 0] / K_out[1, 1] == pytest.approx(1.0 if single_focal else K[0, 0] / K[1, 1])
    out = undistort_image(photo, cam, K_out)
    assert out.shape == photo.shape and out.dtype == np.uint8
    expect = _pattern((u - K_out[0, 2]) / K_out[0, 0], (v - K_out[1, 2]) / K_out[1, 1])
    err = np.abs(out.astype(float) - expect)
    # (measured: mean 0.29, 99th percentile 0.8; skipping the undistortion gives a mean of 1.2 to 2.8)
    assert err.mean() < 0.5 and np.percentile(err, 99) < 1.5, (err.mean(), np.percentile(err, 99))
    # No blank borders: every output pixel samples inside the photo.
    rays = np.stack([(u.ravel() - K_out[0, 2]) / K_out[0, 0], (v.ravel() - K_out[1, 2]) / K_out[1, 1],
                     np.ones(u.size)], 1)
    src = np.asarray(cam.img_from_cam(rays))
    assert src.min() >= -0.01 and src[:, 0].max() <= w + 0.01 and src[:, 1].max() <= h + 0.01


def test_transforms_with_opencv_distortion_undistorted(tmp_path):
    from recon.data.colmap import distorted_camera, undistorted_intrinsics
    from data_helpers import write_transforms_scene

    meta = write_transforms_scene(tmp_path, n=4, w=40, h=30, fx=35.0,
                                  extra_top={"camera_model": "OPENCV", "k1": -0.05, "k2": 0.01, "p1": 0.0, "p2": 0.0})
    s = load_scene(tmp_path, DataConfig())
    K = np.array([[35.0, 0, 20], [0, 35.0, 15], [0, 0, 1]])
    expect = undistorted_intrinsics(distorted_camera("OPENCV", [-0.05, 0.01, 0, 0], K, 40, 30))
    np.testing.assert_allclose(s.cameras.Ks[0].double().numpy(), expect, rtol=1e-6)
    assert any("undistorted" in n and "OPENCV" in n for n in s.notes)
    assert meta["k1"] == -0.05


def test_transforms_per_frame_intrinsics_and_mask_path(tmp_path):
    from data_helpers import write_transforms_scene

    write_transforms_scene(tmp_path, n=4, w=20, h=16, fx=18.0)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "cx", "cy"):
        meta.pop(k)
    (tmp_path / "my_masks").mkdir()
    for i, fr in enumerate(meta["frames"]):
        fr.update(fl_x=18.0 + i, fl_y=19.0 + i, cx=10.0 + 0.5 * i, cy=8.0)
        m = np.zeros((16, 20), np.uint8)
        m[:, : 5 + i] = 255
        Image.fromarray(m).save(tmp_path / "my_masks" / f"m{i}.png")
        fr["mask_path"] = f"my_masks/m{i}.png"
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path, DataConfig())
    for i in range(4):
        np.testing.assert_allclose(s.cameras.Ks[i].double().numpy(),
                                   [[18.0 + i, 0, 10.0 + 0.5 * i], [0, 19.0 + i, 8.0], [0, 0, 1]], rtol=1e-6)
        assert int((s.masks[i, 0] == 255).sum()) == 5 + i
    assert scene_summary(s)["per_frame_intrinsics"] is True


def test_transforms_camera_angle_only_and_no_extension(tmp_path):
    """instant-ngp style: focal from camera_angle_x, size from the images, file_path without extension."""
    from data_helpers import write_transforms_scene

    write_transforms_scene(tmp_path, n=3, w=30, h=20, fx=25.0)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model"):
        meta.pop(k)
    meta["camera_angle_x"] = 2 * np.arctan(15.0 / 25.0)
    for fr in meta["frames"]:
        fr["file_path"] = "./" + fr["file_path"][: -len(".png")]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path, DataConfig())
    assert s.names == ["images/f000.png", "images/f001.png", "images/f002.png"]
    np.testing.assert_allclose(s.cameras.Ks[0].double().numpy(), [[25, 0, 15], [0, 25, 10], [0, 0, 1]], rtol=1e-6)


def test_transforms_stated_size_differs_from_images(tmp_path):
    """Cameras written for 2x larger photos: intrinsics follow the images; a different aspect is refused."""
    from data_helpers import write_transforms_scene
    from recon.errors import ReconError

    write_transforms_scene(tmp_path, n=3, w=30, h=20, fx=25.0)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta.update(w=60, h=40, fl_x=50.0, fl_y=50.0, cx=30.0, cy=20.0)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path, DataConfig())
    np.testing.assert_allclose(s.cameras.Ks[0].double().numpy(), [[25, 0, 15], [0, 25, 10], [0, 0, 1]], rtol=1e-6)
    meta.update(w=60, h=60)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ReconError, match="60x60"):
        load_scene(tmp_path, DataConfig())


def test_colmap_text_opencv_model_loads_undistorted(tmp_path):
    from data_helpers import ring_c2w, write_colmap_text

    c2w = ring_c2w(5)
    write_colmap_text(tmp_path, c2w, "OPENCV 64 48 50 52 32 24 -0.1 0.02 0.001 -0.002", 64, 48)
    s = load_scene(tmp_path, DataConfig())
    assert s.format == "colmap" and s.n_frames == 5 and s.points is None
    np.testing.assert_allclose(world_c2w(s), c2w, atol=1e-6)
    K = s.cameras.Ks[0].double().numpy()
    assert K[0, 2] == 32 and K[1, 2] == 24 and K[0, 0] / K[1, 1] == pytest.approx(50 / 52)
    assert any("OPENCV" in n for n in s.notes)
