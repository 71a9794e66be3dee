"""`recon export`: formats, output paths, cameras.json, and exit status 2 with one line for bad input."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recon.cli import app
from recon.data.cameras import Cameras
from recon.export.ply import read_ply, write_ply
from recon.export.splat import read_splat
from recon.export.views import look_at, read_cameras_json, write_cameras_json
from recon.gaussians import Gaussians, rgb_to_sh0

runner = CliRunner()


def _have_renderer() -> bool:
    if importlib.util.find_spec("recon.render") is None:
        return False
    import recon.render

    return callable(getattr(recon.render, "rasterize", None))


needs_renderer = pytest.mark.skipif(not _have_renderer(), reason="recon.render.rasterize not available")


def blob(n: int = 400, seed: int = 0, center=(0.0, 0.0, 0.0)) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    pts = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * 0.5 + torch.tensor(center)
    cols = torch.rand(n, 3, generator=g)
    out = Gaussians.from_points(pts, cols, scale=0.06, opacity=0.9, sh_degree=1)
    out.sh[:, 0] = rgb_to_sh0(cols)
    return out


def make_out(tmp_path, with_cameras: bool = True, n_cams: int = 4):
    """A folder shaped like `recon reconstruct -o OUT`: point_cloud.ply and cameras.json."""
    out = tmp_path / "OUT"
    out.mkdir()
    g = blob(center=(1.0, 2.0, 3.0))
    write_ply(out / "point_cloud.ply", g)
    if with_cameras:
        theta = torch.arange(n_cams, dtype=torch.float64) * (2 * math.pi / n_cams)
        center = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        eyes = center + torch.stack([3 * torch.cos(theta), 3 * torch.sin(theta), torch.full_like(theta, 1.0)], 1)
        c2w = look_at(eyes, center, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        K = torch.tensor([[50.0, 0, 40], [0, 50.0, 30], [0, 0, 1]], dtype=torch.float64).repeat(n_cams, 1, 1)
        write_cameras_json(out / "cameras.json", Cameras(c2w, K, 80, 60), [f"f{i}.png" for i in range(n_cams)],
                           ["train"] * (n_cams - 1) + ["test"])
    return out, g


def read_mp4(path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames decoded by ffmpeg itself."""
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in frames])


def invoke(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def assert_user_error(result, *words):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = result.output.strip()
    assert text.startswith("error:") and len(text.splitlines()) == 1, text
    for w in words:
        assert w in text, text


# ---------------------------------------------------------------------------------------------- ply / splat


def test_export_ply_and_splat_default_paths(tmp_path):
    out, g = make_out(tmp_path)
    r = invoke(out, "--format", "ply")
    assert r.exit_code == 0, r.output
    ply = out / "export" / "gaussians.ply"
    assert str(ply) in r.stdout
    back = read_ply(ply)
    for a, b in zip(g.tensors(), back.tensors()):
        assert torch.equal(a, b)
    r = invoke(out, "-f", "splat")
    assert r.exit_code == 0, r.output
    s = read_splat(out / "export" / "gaussians.splat")
    assert len(s) == len(g)
    torch.testing.assert_close(s.means.mean(0), g.means.mean(0))  # same world frame


def test_export_to_explicit_file_and_from_a_ply_path(tmp_path):
    out, g = make_out(tmp_path, with_cameras=False)
    target = tmp_path / "elsewhere" / "model.splat"
    r = invoke(out / "point_cloud.ply", "--format", "splat", "-o", target)
    assert r.exit_code == 0, r.output
    assert target.stat().st_size == 32 * len(g)
    # A .splat input works too (e.g. from another tool), and can be written back as .ply.
    r = invoke(target, "-f", "ply", "-o", tmp_path / "from_splat.ply")
    assert r.exit_code == 0, r.output
    assert len(read_ply(tmp_path / "from_splat.ply")) == len(g)


def test_export_ply_from_gsplat_file(tmp_path):
    from gsplat.exporter import export_splats

    g = blob(n=50, seed=2)
    src = tmp_path / "gsplat.ply"
    export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:], format="ply",
                  save_to=str(src))
    r = invoke(src, "-f", "ply", "-o", tmp_path / "ours.ply")
    assert r.exit_code == 0, r.output
    back = read_ply(tmp_path / "ours.ply")
    assert torch.equal(back.sh, g.sh) and torch.equal(back.means, g.means)


def test_cameras_json_round_trip(tmp_path):
    out, _ = make_out(tmp_path)
    cs = read_cameras_json(out / "cameras.json")
    assert len(cs.cameras) == 4 and cs.cameras.width == 80 and cs.cameras.height == 60
    assert cs.splits == ["train", "train", "train", "test"] and cs.names[0] == "f0.png"
    obj = json.loads((out / "cameras.json").read_text())
    np.testing.assert_allclose(cs.cameras.camtoworlds[1].numpy(), np.array(obj["frames"][1]["camtoworld"]))


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_exit_2(tmp_path):
    out, _ = make_out(tmp_path)
    assert_user_error(invoke(tmp_path / "nope"), "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke(empty), "no point_cloud.ply")
    assert_user_error(invoke(out, "--format", "gltf"), "unknown export format")
    assert_user_error(invoke(out, "--format", "splat", "-o", tmp_path / "x.ply"), "cannot be written as .ply")
    assert_user_error(invoke(out, "--format", "all", "-o", tmp_path / "x.ply"), "must be a folder")
    assert_user_error(invoke(out, "-f", "ply", "-o", out / "point_cloud.ply"), "overwrite its own input")
    assert_user_error(invoke(out, "--frames", "0", "-f", "video"), "--frames")
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    assert_user_error(invoke(txt), "cannot export from a .txt")
    assert_user_error(invoke(out, "--cameras", tmp_path / "missing.json"), "no such cameras file")


def test_malformed_ply_exits_2_and_writes_nothing(tmp_path):
    out, _ = make_out(tmp_path)
    data = (out / "point_cloud.ply").read_bytes()
    (out / "point_cloud.ply").write_bytes(data[:-10])
    assert_user_error(invoke(out, "-f", "ply"), "truncated", "point_cloud.ply")
    assert not (out / "export").exists()


def test_malformed_cameras_json_exits_2(tmp_path):
    out, _ = make_out(tmp_path)
    (out / "cameras.json").write_text("{not json")
    assert_user_error(invoke(out, "-f", "ply"), "not valid JSON")
    (out / "cameras.json").write_text(json.dumps({"width": 10, "height": 10, "frames": [{"camtoworld": [[1, 0], [0, 1]], "K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]}))
    assert_user_error(invoke(out, "-f", "ply"), "4x4")
    (out / "cameras.json").write_text(json.dumps({"width": 10, "frames": []}))
    assert_user_error(invoke(out, "-f", "ply"), "malformed cameras")


# ---------------------------------------------------------------------------------------------- mesh / video


@needs_renderer
def test_export_all_writes_every_format(tmp_path):
    import imageio.v3 as iio
    import open3d as o3d

    out, g = make_out(tmp_path)
    dest = tmp_path / "all"
    r = invoke(out, "--format", "all", "-o", dest, "--frames", "6", "--size", "48", "--mesh-views", "12",
               "--mesh-resolution", "48")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["gaussians.ply", "gaussians.splat", "mesh.ply", "turntable.gif", "turntable.mp4"]
    mesh = o3d.io.read_triangle_mesh(str(dest / "mesh.ply"))
    assert len(mesh.triangles) > 0 and mesh.has_vertex_colors()
    # The mesh sits where the Gaussians are: in the input world frame around (1, 2, 3).
    np.testing.assert_allclose(np.asarray(mesh.vertices).mean(0), [1.0, 2.0, 3.0], atol=0.1)
    assert iio.imread(dest / "turntable.gif", index=None).shape[0] == 6
    # Frames follow the capture's 4:3 aspect ratio.
    frames = read_mp4(dest / "turntable.mp4")
    assert frames.shape == (6, 48, 64, 3)


@needs_renderer
def test_export_mesh_obj_and_video_without_cameras(tmp_path):
    out, _ = make_out(tmp_path, with_cameras=False)
    r = invoke(out, "-f", "mesh", "-o", tmp_path / "m.obj", "--mesh-views", "8", "--mesh-resolution", "32")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.obj").read_text().count("\nv ") > 0
    r = invoke(out, "-f", "video", "-o", tmp_path / "t.gif", "--frames", "4", "--size", "32")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
