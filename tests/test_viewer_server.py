"""`recon view` without a browser: loading an output folder, the HTTP page, panel actions, CLI errors."""
from __future__ import annotations

import inspect
import json
import math
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians


def sphere_gaussians(n: int = 400, seed: int = 0) -> Gaussians:
    """Coloured Gaussians on the unit sphere; even rows opaque (0.9), odd rows faint (0.05)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    out = Gaussians.from_points(p, p * 0.5 + 0.5, 0.08, opacity=0.9, sh_degree=1)
    out.opacity_logits[1::2] = math.log(0.05 / 0.95)
    return out


def ring_cameras(n: int = 4, radius: float = 4.0) -> Cameras:
    from recon.export.views import look_at

    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    eyes = torch.stack([radius * torch.cos(t), radius * torch.sin(t), torch.full_like(t, 1.0)], 1)
    c2w = look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)
    return Cameras(c2w, K, 64, 48)


def make_out_dir(root: Path, n_cams: int = 4) -> Path:
    """A reconstruction folder as `recon reconstruct` leaves it, plus the scene photos it names."""
    import imageio.v3 as iio
    from plyfile import PlyData, PlyElement

    from recon.export.ply import write_ply
    from recon.export.views import write_cameras_json

    out, scene = root / "out", root / "scene"
    write_ply(out / "point_cloud.ply", sphere_gaussians())
    names = [f"images/r_{i:03d}.png" for i in range(n_cams)]
    write_cameras_json(out / "cameras.json", ring_cameras(n_cams), names, ["train"] * (n_cams - 1) + ["test"])
    obj = json.loads((out / "cameras.json").read_text())
    obj["scene"] = str(scene)
    (out / "cameras.json").write_text(json.dumps(obj))
    for i, name in enumerate(names[:-1]):  # the last photo is missing: its frustum has no picture
        img = np.zeros((48, 64, 3), np.uint8)
        img[..., i % 3] = 200
        (scene / name).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(scene / name, img)
    ijk = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    vox = np.empty(len(ijk), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vox["x"], vox["y"], vox["z"] = (ijk * 0.25 - 0.5).T
    vox["red"], vox["green"], vox["blue"] = 200, 100, 50
    (out / "init").mkdir()
    PlyData([PlyElement.describe(vox, "vertex")]).write(str(out / "init" / "voxels.ply"))
    return out


@contextmanager
def running(path, **kw):
    from recon.viewer.server import serve

    h = serve(path, port=0, block=False, quiet=True, **kw)
    try:
        yield h
    finally:
        h.stop()


def test_load_content_of_output_folder(tmp_path):
    from recon.viewer.content import load_content

    out = make_out_dir(tmp_path)
    c = load_content(out)
    assert len(c.gaussians) == 400 and c.source == out / "point_cloud.ply"
    assert c.cameras is not None and c.cameras.names[0] == "images/r_000.png"
    assert c.cameras.splits == ["train", "train", "train", "test"]
    assert c.cameras.images[0].shape == (48, 64, 3) and c.cameras.images[0][0, 0, 0] == 200
    assert c.cameras.images[3] is None
    assert c.hull_points.shape == (125, 3) and tuple(c.hull_colors[0]) == (200, 100, 50)


def test_load_content_plain_ply_has_no_cameras(tmp_path):
    from recon.export.ply import write_ply
    from recon.viewer.content import load_content

    write_ply(tmp_path / "x.ply", sphere_gaussians(10))
    c = load_content(tmp_path / "x.ply")
    assert len(c.gaussians) == 10 and c.cameras is None and c.hull_points is None


@pytest.mark.parametrize("content, what", [
    (b"", "not a PLY"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nend_header\n", "missing"),
    (b"hello world", "not a PLY"),
])
def test_bad_ply_raises_recon_error(tmp_path, content, what):
    from recon.viewer.content import load_content

    p = tmp_path / "bad.ply"
    p.write_bytes(content)
    with pytest.raises(ReconError, match=what):
        load_content(p)


def test_folder_without_gaussians(tmp_path):
    from recon.viewer.content import load_content

    with pytest.raises(ReconError, match="no point_cloud.ply"):
        load_content(tmp_path)


def test_cli_bad_ply_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from recon.cli import app

    p = tmp_path / "broken.ply"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\n" + b"property float x\n" * 3
                  + b"end_header\n")
    res = CliRunner().invoke(app, ["view", str(p), "--port", "0"])
    assert res.exit_code == 2
    text = res.output.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:") and "broken.ply" in text
    assert "Traceback" not in text


def test_default_host_is_loopback(tmp_path):
    from recon.commands import view as view_cmd
    from recon.viewer.live import LiveViewer
    from recon.viewer.server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(LiveViewer).parameters["host"].default == "127.0.0.1"
    assert '"127.0.0.1"' in inspect.getsource(view_cmd)
    from recon.export.ply import write_ply

    write_ply(tmp_path / "g.ply", sphere_gaussians(20))
    with running(tmp_path / "g.ply") as h:
        assert h.host == "127.0.0.1" and h.url.startswith("http://127.0.0.1:")


def test_page_served_and_panel_actions(tmp_path):
    out = make_out_dir(tmp_path)
    with running(out) as h:
        with urllib.request.urlopen(h.url + "/", timeout=10) as r:
            assert r.status == 200
            assert b"<html" in r.read(4096).lower()
        v = h.view
        assert v.shown_count == 400
        assert v.camera_dropdown.options[3] == "3: images/r_003.png (test)"
        # Opacity threshold: the 200 faint Gaussians (0.05) go, the opaque ones (0.9) stay.
        v.opacity_slider.value = 0.5
        v.refresh()
        assert v.shown_count == 200 and len(v._splats.buffer) == 200
        v.opacity_slider.value = 0.95
        v.refresh()
        assert v.shown_count == 0 and v._splats.visible is False
        # Downloads: the original .ply bytes, and a .splat of 32 bytes per Gaussian.
        assert v.ply_bytes() == (out / "point_cloud.ply").read_bytes()
        assert len(v.splat_bytes()) == 32 * 400
        assert v._hull is not None and len(v._frustums) == 4


def test_splats_sent_in_node_frame(tmp_path):
    """Centres are shipped relative to the object's centre and radius (float16 covariances need
    unit-sized numbers); the node transform maps them back to the world."""
    from recon.export.ply import write_ply

    g = sphere_gaussians(50)
    g.means.mul_(0.01).add_(torch.tensor([5.0, -2.0, 1.0]))
    g.log_scales.add_(math.log(0.01))
    write_ply(tmp_path / "small.ply", g)
    with running(tmp_path / "small.ply") as h:
        s = h.view._splats
        world = np.asarray(s.position) + s.scale * s.centers
        np.testing.assert_allclose(world, g.means.numpy(), atol=1e-5)
        cov_world = s.covariances.astype(np.float64) * s.scale ** 2
        ref = np.exp(2 * g.log_scales.double().numpy())[:, 0]
        np.testing.assert_allclose(np.trace(cov_world, axis1=1, axis2=2) / 3, ref, rtol=0.02)


class _FakeCamera:
    fov = position = look_at = up_direction = None


class _FakeClient:
    def __init__(self):
        self.camera = _FakeCamera()

    @contextmanager
    def atomic(self):
        yield


def test_goto_camera_puts_view_on_input_camera(tmp_path):
    out = make_out_dir(tmp_path)
    with running(out) as h:
        client = _FakeClient()
        h.view.goto_camera(client, 1)
        cams = ring_cameras(4)
        c2w = cams.camtoworlds[1].numpy()
        np.testing.assert_allclose(client.camera.position, c2w[:3, 3])
        d = client.camera.look_at - client.camera.position
        np.testing.assert_allclose(d / np.linalg.norm(d), c2w[:3, 2], atol=1e-9)
        np.testing.assert_allclose(client.camera.up_direction, -c2w[:3, 1])
        assert client.camera.fov == pytest.approx(2 * math.atan(48 / (2 * 60.0)))
        h.view.goto_camera(client, 99)  # out of range: ignored
        np.testing.assert_allclose(client.camera.position, c2w[:3, 3])


def test_sh_degree_colours_from_the_viewer_camera(tmp_path):
    from recon.export.ply import write_ply
    from recon.viewer.splats import SH_C1

    g = sphere_gaussians(40)
    g.opacity_logits.fill_(3.0)
    g.sh[:, 0] = 0.0  # DC grey 0.5
    g.sh[:, 1:] = 0.0
    g.sh[:, 1] = 0.4  # y band only: colour = 0.5 - C1 * 0.4 * dir_y
    write_ply(tmp_path / "sh.ply", g)
    with running(tmp_path / "sh.ply") as h:
        v = h.view
        assert v.sh_slider.max == 1 and not v.sh_slider.disabled
        dc = v._splats.rgbs.astype(int)
        assert np.all(np.abs(dc - 128) <= 1)  # degree 0: the DC colour only
        v._eye = np.array([0.0, -10.0, 0.0], dtype=np.float32)  # what a client's camera reports
        v.sh_slider.value = 1
        pushes = v.pushes
        v._recolour_wanted.set()  # a camera move
        deadline = time.monotonic() + 5
        while v.pushes == pushes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert v.pushes > pushes
        dirs = g.means.numpy() - v._eye
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        expect = np.clip(0.5 - SH_C1 * 0.4 * dirs[:, 1], 0, 1) * 255
        np.testing.assert_allclose(v._splats.rgbs[:, 0].astype(float), expect, atol=1.5)
