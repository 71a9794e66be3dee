"""`recon info` on every shared scene, and the bad-input table: exit status 2, one line, no traceback."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import ring_c2w, shared_data, shared_scene, texture, write_colmap_text, write_transforms_scene  # noqa: E402,E501

from recon.cli import app  # noqa: E402
from recon.data.config import DataConfig  # noqa: E402
from recon.data.load import load_scene  # noqa: E402
from recon.errors import ReconError  # noqa: E402

runner = CliRunner()

EXPECTED_INFO = {
    # scene: format, n_frames, width, height, has_masks, n_train, n_test
    "chair": ("transforms", 125, 400, 400, True, 100, 25),
    "ethiopian_head": ("transforms", 66, 400, 400, True, 57, 9),
    "mold_gold_cape": ("transforms", 119, 400, 400, True, 104, 15),
    "beer_can": ("transforms", 71, 225, 400, False, 62, 9),
    "colmap_beer_can": ("colmap", 71, 225, 400, False, 62, 9),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_INFO))
def test_info_json_on_shared_scenes(name):
    root = shared_scene(name)
    res = runner.invoke(app, ["info", str(root), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    got = tuple(d[k] for k in ("format", "n_frames", "width", "height", "has_masks", "n_train", "n_test"))
    assert got == EXPECTED_INFO[name]
    assert d["n_train"] + d["n_test"] == d["n_frames"]
    assert len(d["train"]) == d["n_train"] and len(d["test"]) == d["n_test"]
    if name != "colmap_beer_can":
        split = json.loads((root / "split.json").read_text())
        assert sorted(d["test"]) == sorted(split["test"])
        meta = json.loads((root / "transforms.json").read_text())
        assert d["intrinsics"]["fx"] == pytest.approx(meta["fl_x"], rel=1e-6)
        assert d["intrinsics"]["cx"] == pytest.approx(meta["cx"])
    else:
        assert d["n_points"] == 4414


def test_info_views_option():
    root = shared_scene("chair")
    res = runner.invoke(app, ["info", str(root), "--json", "--views", "3", "--max-size", "50"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["n_train"] == 3 and (d["width"], d["height"]) == (50, 50)
    assert d["intrinsics"]["fx"] == pytest.approx(555.5555 / 8, rel=1e-5)


# ------------------------------------------------------------------------------------------ bad inputs

def _scene(tmp_path: Path, **kw) -> Path:
    root = tmp_path / "scene"
    write_transforms_scene(root, **kw)
    return root


def _edit_transforms(root: Path, fn) -> None:
    meta = json.loads((root / "transforms.json").read_text())
    fn(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", [], "empty"


def _n_images(n):
    def make(tmp_path):
        root = tmp_path / f"only{n}"
        root.mkdir()
        for i in range(n):
            Image.fromarray(texture(8, 8, i)).save(root / f"{i}.png")
        return root, [], f"only{n}"
    return make


def _garbage_image(tmp_path):
    root = _scene(tmp_path, n=4)
    (root / "images/f002.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return root, [], "f002.png"


def _truncated_image(tmp_path):
    root = _scene(tmp_path, n=4, w=64, h=64)
    p = root / "images/f001.png"
    p.write_bytes(p.read_bytes()[:200])
    return root, [], "f001.png"


def _truncated_jpeg_bare(tmp_path):
    root = tmp_path / "bare"
    root.mkdir()
    for i in range(4):
        Image.fromarray(texture(64, 64, i)).save(root / f"{i}.jpg")
    p = root / "2.jpg"
    p.write_bytes(p.read_bytes()[:400])
    return root, [], "2.jpg"


def _different_sizes_bare(tmp_path):
    root = tmp_path / "bare"
    root.mkdir()
    for i, size in enumerate([(16, 12), (16, 12), (12, 16), (16, 12)]):
        Image.fromarray(texture(size[1], size[0], i)).save(root / f"{i}.png")
    return root, [], "2.png"


def _different_sizes_transforms(tmp_path):
    root = _scene(tmp_path, n=5, w=16, h=12)
    Image.fromarray(texture(10, 10, 9)).save(root / "images/f003.png")
    _edit_transforms(root, lambda m: [m.pop(k) for k in ("w", "h")])
    return root, [], "f003.png"


def _missing_file(tmp_path):
    root = _scene(tmp_path, n=4)
    (root / "images/f001.png").unlink()
    return root, [], "images/f001.png"


def _nan_pose(tmp_path):
    root = _scene(tmp_path, n=4)
    _edit_transforms(root, lambda m: m["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")))
    return root, [], "NaN"


def _scaled_pose(tmp_path):
    root = _scene(tmp_path, n=4)

    def scale(m):
        m["frames"][1]["transform_matrix"] = (np.array(m["frames"][1]["transform_matrix"]) * [[3], [3], [3], [1]]).tolist()
    _edit_transforms(root, scale)
    return root, [], "not a rotation"


def _fisheye_transforms(tmp_path):
    root = _scene(tmp_path, n=4)
    _edit_transforms(root, lambda m: m.update(camera_model="OPENCV_FISHEYE", k1=0.1))
    return root, [], "OPENCV_FISHEYE"


def _fisheye_colmap(tmp_path):
    root = tmp_path / "colmap"
    write_colmap_text(root, ring_c2w(4), "FOV 32 24 30 30 16 12 0.5", 32, 24)
    return root, [], "FOV"


def _mask_wrong_size(tmp_path):
    root = _scene(tmp_path, n=4, w=16, h=12)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(np.full((12, 16) if i != 2 else (6, 8), 255, np.uint8)).save(root / f"masks/f00{i}.png")
    return root, [], "f002.png"


def _mask_missing(tmp_path):
    root = _scene(tmp_path, n=4, w=16, h=12)
    (root / "masks").mkdir()
    Image.fromarray(np.full((12, 16), 255, np.uint8)).save(root / "masks/f000.png")
    return root, [], "no mask for images/f001.png"


def _split_unknown_frame(tmp_path):
    root = _scene(tmp_path, n=10)
    (root / "split.json").write_text(json.dumps({"train": ["f000", "f001", "f002"], "test": ["images/ghost.png"]}))
    return root, [], "ghost.png"


def _split_option_unknown_frame(tmp_path):
    root = _scene(tmp_path, n=10)
    (tmp_path / "mysplit.json").write_text(json.dumps({"test": ["f000", "nobody"]}))
    return root, ["--split", str(tmp_path / "mysplit.json")], "nobody"


def _malformed_transforms(tmp_path):
    root = _scene(tmp_path, n=4)
    (root / "transforms.json").write_text('{"frames": [ {"file_path": "images/f000.png",, } ]')
    return root, [], "not valid JSON"


def _malformed_split(tmp_path):
    root = _scene(tmp_path, n=10)
    (root / "split.json").write_text('{"train": [')
    return root, [], "split.json"


def _no_frames_list(tmp_path):
    root = _scene(tmp_path, n=4)
    (root / "transforms.json").write_text(json.dumps({"fl_x": 3}))
    return root, [], "frames"


def _bad_llff(tmp_path):
    root = tmp_path / "llff"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(texture(8, 8, i)).save(root / f"images/{i}.png")
    np.save(root / "poses_bounds.npy", np.zeros((3, 15)))
    return root, [], "poses_bounds.npy"


def _llff_count_mismatch(tmp_path):
    root = tmp_path / "llff"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(texture(8, 8, i)).save(root / f"images/{i}.png")
    np.save(root / "poses_bounds.npy", np.zeros((3, 17)))
    return root, [], "3 poses"


def _pickled_llff(tmp_path):
    root, _, _ = _bad_llff(tmp_path)
    np.save(root / "poses_bounds.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return root, [], "poses_bounds.npy"


def _test_view_as_train_view(tmp_path):
    root = _scene(tmp_path, n=12)
    return root, ["--train-views", "f000,f001,f002"], "held-out test view images/f000.png"


def _missing_scene(tmp_path):
    return tmp_path / "does_not_exist", [], "does_not_exist"


BAD_INPUTS = {
    "empty folder": _empty,
    "one image": _n_images(1),
    "two images": _n_images(2),
    "unreadable image": _garbage_image,
    "truncated png": _truncated_image,
    "truncated jpeg in a bare folder": _truncated_jpeg_bare,
    "different sizes, bare folder": _different_sizes_bare,
    "different sizes, transforms": _different_sizes_transforms,
    "transforms names a missing file": _missing_file,
    "NaN pose": _nan_pose,
    "non-rotation pose": _scaled_pose,
    "unsupported model, transforms": _fisheye_transforms,
    "unsupported model, COLMAP": _fisheye_colmap,
    "mask of the wrong size": _mask_wrong_size,
    "mask missing": _mask_missing,
    "split names unknown frame": _split_unknown_frame,
    "--split names unknown frame": _split_option_unknown_frame,
    "malformed transforms.json": _malformed_transforms,
    "malformed split.json": _malformed_split,
    "transforms without frames": _no_frames_list,
    "poses_bounds of the wrong shape": _bad_llff,
    "poses_bounds count mismatch": _llff_count_mismatch,
    "pickled poses_bounds": _pickled_llff,
    "test view as train view": _test_view_as_train_view,
    "scene folder missing": _missing_scene,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2(tmp_path, case):
    root, extra_args, must_mention = BAD_INPUTS[case](tmp_path)
    res = runner.invoke(app, ["info", str(root), *extra_args])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "Traceback" not in res.output
    assert must_mention in err, err
    assert str(tmp_path) in err or "--" in err  # names the file (or the option) at fault
    assert res.stdout == ""


def test_bad_input_real_process_exit_status(tmp_path):
    """The installed command, not just the app object: exit 2, one line on stderr, nothing on stdout."""
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "recon.cli", "info", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty" in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ bare folders: SfM

def _fake_sfm(monkeypatch, registered: list[int], n: int, width: int, height: int):
    """Stand-in for recon.data.sfm (tested on its own): cameras on a ring, some images not registered."""
    from dataclasses import dataclass

    @dataclass
    class SfmResult:
        camtoworlds: np.ndarray
        Ks: np.ndarray
        width: int
        height: int
        registered: list
        points: np.ndarray | None = None
        point_colors: np.ndarray | None = None

    calls = []

    def estimate_poses(image_paths):
        calls.append(list(image_paths))
        c2w = ring_c2w(n)[registered]
        K = np.array([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
        pts = np.random.default_rng(0).normal(size=(50, 3)) * 0.3
        return SfmResult(c2w, np.tile(K, (len(registered), 1, 1)), width, height, list(registered), pts,
                         np.full((50, 3), 128, np.uint8))

    mod = types.ModuleType("recon.data.sfm")
    mod.estimate_poses = estimate_poses
    mod.SfmResult = SfmResult
    monkeypatch.setitem(sys.modules, "recon.data.sfm", mod)
    return calls


def _bare_folder(tmp_path: Path, n: int, w: int = 32, h: int = 24) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(n):
        Image.fromarray(texture(h, w, i)).save(root / f"p{i}.jpg", quality=95)
    return root


def test_bare_folder_goes_on_with_registered_views(tmp_path, monkeypatch):
    root = _bare_folder(tmp_path, 5, 64, 48)
    calls = _fake_sfm(monkeypatch, [0, 1, 3, 4], 5, 64, 48)
    s = load_scene(root, DataConfig(max_size=32))
    assert calls and len(calls[0]) == 5
    assert s.format == "images" and s.n_frames == 4
    assert s.names == ["p0.jpg", "p1.jpg", "p3.jpg", "p4.jpg"]
    assert any("p2.jpg" in n and "dropped" in n for n in s.notes)
    assert (s.width, s.height) == (32, 24) and float(s.cameras.Ks[0, 0, 0]) == pytest.approx(20.0)
    assert s.points is not None and s.points.shape == (50, 3)


def test_bare_folder_too_few_registered(tmp_path, monkeypatch):
    root = _bare_folder(tmp_path, 4)
    _fake_sfm(monkeypatch, [0, 2], 4, 32, 24)
    with pytest.raises(ReconError, match="registered only 2 of 4.*transforms.json"):
        load_scene(root, DataConfig())
    res = runner.invoke(app, ["info", str(root)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_bare_folder_checks_images_before_sfm(tmp_path, monkeypatch):
    root = _bare_folder(tmp_path, 4)
    (root / "p1.jpg").write_bytes(b"garbage")
    calls = _fake_sfm(monkeypatch, [0, 1, 2, 3], 4, 32, 24)
    with pytest.raises(ReconError, match="p1.jpg"):
        load_scene(root, DataConfig())
    assert not calls  # the slow pose estimation never ran on bad input


def test_shared_data_location_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RECON_SHARED_DATA", str(tmp_path))
    assert shared_data() == tmp_path
