"""Pose estimation for bare image folders (pycolmap on the CPU), checked against the sample's known cameras."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.data.sfm import SfmResult, _prepare_images, estimate_poses
from recon.errors import ReconError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
VIEWS = list(range(12))  # consecutive frames, ~11 deg apart: enough overlap for SIFT at 200 px


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |s R src + t - dst|^2 over corresponding points (N, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    cov = (dst - mu_d).T @ (src - mu_s) / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / ((src - mu_s) ** 2).sum(1).mean())
    return s, R, mu_d - s * R @ mu_s


def _rotation_errors_deg(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, R, t = _umeyama(est_c2w[:, :3, 3], gt_c2w[:, :3, 3])
    aligned = R[None] @ est_c2w[:, :3, :3]
    rel = np.einsum("nji,njk->nik", aligned, gt_c2w[:, :3, :3])
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    centre_err = np.linalg.norm(s * est_c2w[:, :3, 3] @ R.T + t - gt_c2w[:, :3, 3], axis=1)
    return np.degrees(np.arccos(cos)), centre_err


def test_umeyama_recovers_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    s, R, t = _umeyama(src, 2.5 * src @ q.T + np.array([1.0, -2.0, 0.5]))
    assert s == pytest.approx(2.5) and np.allclose(R, q) and np.allclose(t, [1.0, -2.0, 0.5])


@pytest.fixture(scope="module")
def sample_sfm(tmp_path_factory) -> tuple[SfmResult, dict, list[Path]]:
    tf = json.loads((SAMPLE / "transforms.json").read_text())
    paths = [SAMPLE / tf["frames"][i]["file_path"] for i in VIEWS]
    result = estimate_poses(paths, work_dir=tmp_path_factory.mktemp("sfm"))
    return result, tf, paths


def test_sfm_shapes(sample_sfm):
    result, tf, paths = sample_sfm
    r = len(result.registered)
    assert result.registered == sorted(set(result.registered)) and r >= 10
    assert all(0 <= i < len(paths) for i in result.registered)
    assert result.camtoworlds.shape == (r, 4, 4) and result.camtoworlds.dtype == np.float64
    assert result.Ks.shape == (r, 3, 3)
    assert (result.width, result.height) == (tf["w"], tf["h"])
    assert result.points.ndim == 2 and result.points.shape[1] == 3 and len(result.points) > 50
    assert result.point_colors.shape == result.points.shape and result.point_colors.dtype == np.uint8
    np.testing.assert_allclose(result.camtoworlds[:, 3], np.tile([0, 0, 0, 1.0], (r, 1)))


def test_sfm_recovers_ground_truth_cameras(sample_sfm):
    result, tf, _ = sample_sfm
    gl_to_cv = np.diag([1.0, -1.0, -1.0, 1.0])
    gt = np.array([tf["frames"][VIEWS[i]]["transform_matrix"] for i in result.registered]) @ gl_to_cv
    rot_err, centre_err = _rotation_errors_deg(result.camtoworlds, gt)
    assert rot_err.max() < 2.0, rot_err
    assert centre_err.max() < 0.05 * np.linalg.norm(gt[:, :3, 3], axis=1).mean(), centre_err
    # Shared pinhole camera, principal point at the image centre, focal close to the true one.
    assert np.allclose(result.Ks, result.Ks[0])
    assert result.Ks[0, 0, 2] == pytest.approx(tf["cx"]) and result.Ks[0, 1, 2] == pytest.approx(tf["cy"])
    assert result.Ks[0, 0, 0] == pytest.approx(tf["fl_x"], rel=0.06)
    # Sparse points lie on the object (the sample mesh fits in a ball of radius ~1.3 around the origin).
    s, R, t = _umeyama(result.camtoworlds[:, :3, 3], gt[:, :3, 3])
    pts = s * result.points @ R.T + t
    assert np.median(np.linalg.norm(pts, axis=1)) < 1.3


def test_prepare_images_downsizes_and_reports_scale(tmp_path):
    src = SAMPLE / "images" / "r_000.png"
    out = tmp_path / "prep"
    out.mkdir()
    w, h, sx, sy = _prepare_images([src, src], out, max_size=100)
    assert (w, h) == (200, 200) and sx == pytest.approx(2.0) and sy == pytest.approx(2.0)
    small = Image.open(out / "00000.png")
    assert small.mode == "RGB" and small.size == (100, 100)
    assert np.asarray(small)[0, 0].tolist() == [0, 0, 0]  # transparent background composited on black


def test_prepare_images_applies_exif_orientation(tmp_path):
    img = Image.fromarray(np.zeros((30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 deg on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    out = tmp_path / "prep"
    out.mkdir()
    w, h, _, _ = _prepare_images([path], out, max_size=400)
    assert (w, h) == (30, 50)


def test_too_few_images(tmp_path):
    with pytest.raises(ReconError, match="transforms.json"):
        estimate_poses([SAMPLE / "images" / "r_000.png", SAMPLE / "images" / "r_001.png"])
    with pytest.raises(ReconError):
        estimate_poses([])


def test_unregistrable_images_fail_with_a_fix(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):  # independent noise: features, but no consistent geometry
        path = tmp_path / f"noise_{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    with pytest.raises(ReconError, match="registered only") as info:
        estimate_poses(paths)
    assert "COLMAP model" in str(info.value) and "poses_bounds.npy" in str(info.value)


def test_mixed_sizes_and_unreadable(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.new("RGB", (40, 30)).save(a)
    Image.new("RGB", (40, 30)).save(b)
    Image.new("RGB", (30, 40)).save(c)
    with pytest.raises(ReconError, match="c.png"):
        estimate_poses([a, b, c])
    c.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ReconError, match="cannot read"):
        estimate_poses([a, b, c])
