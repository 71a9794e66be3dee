"""Virtual cameras (look-at, orbit, sphere, framing) and the turntable video (.mp4, .gif)."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.export.views import frame_object, look_at, orbit_cameras, sphere_cameras
from recon.gaussians import Gaussians


def _have_renderer() -> bool:
    if importlib.util.find_spec("recon.render") is None:
        return False
    import recon.render

    return callable(getattr(recon.render, "rasterize", None))


needs_renderer = pytest.mark.skipif(not _have_renderer(), reason="recon.render.rasterize not available")


def ball(n: int = 600, radius: float = 0.5, center=(0.0, 0.0, 0.0), rgb=(0.9, 0.2, 0.1), seed: int = 0) -> Gaussians:
    """Opaque Gaussians filling a ball (uniform colour)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    r = radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    pts = d * r + torch.tensor(center)
    return Gaussians.from_points(pts, torch.tensor(rgb).expand(n, 3), scale=radius * 0.15, opacity=0.95)


def read_mp4(path) -> np.ndarray:
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in frames])


# ---------------------------------------------------------------------------------------------- cameras


def test_look_at_is_an_opencv_camera_looking_at_the_target():
    eyes = torch.tensor([[3.0, 0.0, 1.0], [0.0, -2.0, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    c2w = look_at(eyes, target, up)  # the third looks straight down: degenerate up
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(3, dtype=torch.float64))  # right-handed
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]], dtype=torch.float64).repeat(3, 1, 1)
    cams = Cameras(c2w, K, 100, 80)
    uv, z = cams.project(target[None])
    torch.testing.assert_close(uv[:, 0], torch.tensor([[50.0, 40.0]] * 3, dtype=torch.float64))
    assert bool((z > 0).all())
    # World up appears up in the image (smaller v) for the non-degenerate cameras.
    uv_up, _ = cams.project(target[None] + 0.1 * up)
    assert bool((uv_up[:2, 0, 1] < 40.0).all())


def test_orbit_cameras_circle_the_centre():
    g = ball(center=(1.0, -2.0, 0.5))
    f = frame_object(g, elevation_deg=30.0)
    cams = orbit_cameras(f, 12, 64, 48)
    assert len(cams) == 12 and cams.width == 64 and cams.height == 48
    offsets = cams.centers - f.center
    torch.testing.assert_close(offsets.norm(dim=1), torch.full((12,), f.distance, dtype=torch.float64))
    sin_el = offsets @ f.up / offsets.norm(dim=1)
    torch.testing.assert_close(sin_el, torch.full((12,), math.sin(math.radians(30.0)), dtype=torch.float64))
    # Evenly spaced around the up axis: consecutive steps are all 30 degrees.
    flat = offsets - (offsets @ f.up)[:, None] * f.up
    flat = torch.nn.functional.normalize(flat, dim=1)
    cosines = (flat * flat.roll(-1, 0)).sum(1)
    torch.testing.assert_close(cosines, torch.full((12,), math.cos(math.radians(30.0)), dtype=torch.float64))
    uv, _ = cams.project(f.center[None].float().double())
    torch.testing.assert_close(uv[:, 0], torch.tensor([[32.0, 24.0]] * 12, dtype=torch.float64))


def test_framing_keeps_the_object_in_view_and_follows_capture_up():
    g = ball(radius=2.0, center=(0.0, 5.0, 0.0))
    f = frame_object(g)
    assert abs(f.radius - 2.0) < 0.3
    torch.testing.assert_close(f.center, torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64), atol=0.2, rtol=0)
    # The bounding sphere fits inside the vertical field of view.
    assert math.asin(f.radius / f.distance) < f.fov_y / 2
    # Capture cameras with -y up (a COLMAP-like frame): the orbit's up follows them.
    eyes = torch.tensor([[4.0, 5.0, 0.0], [0.0, 5.0, 4.0], [-4.0, 5.0, 0.0]], dtype=torch.float64)
    c2w = look_at(eyes, torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    K = torch.tensor([[80.0, 0, 40], [0, 80.0, 30], [0, 0, 1]], dtype=torch.float64).repeat(3, 1, 1)
    f2 = frame_object(g, Cameras(c2w, K, 80, 60))
    torch.testing.assert_close(f2.up, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    assert abs(f2.fov_y - 2 * math.atan(30 / 80)) < 1e-9
    assert abs(f2.elevation) < 0.01  # the capture was at the object's height (centre is a sample median)


def test_sphere_cameras_cover_all_directions():
    f = frame_object(ball())
    cams = sphere_cameras(f, 40, 32, 32)
    dirs = torch.nn.functional.normalize(cams.centers - f.center, dim=1)
    # Every direction on the sphere is within ~40 degrees of some camera.
    probe = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), dim=1).double()
    assert float((probe @ dirs.T).max(dim=1).values.min()) > math.cos(math.radians(40))
    with pytest.raises(ValueError):
        sphere_cameras(f, 0, 32, 32)
    with pytest.raises(ValueError):
        orbit_cameras(f, 0, 32, 32)


# ---------------------------------------------------------------------------------------------- video


@needs_renderer
def test_turntable_mp4_and_gif(tmp_path):
    import imageio.v3 as iio

    from recon.export.video import render_turntable

    g = ball()
    paths = render_turntable(g, [tmp_path / "t.mp4", tmp_path / "t.gif"], n_frames=8, fps=10, size=40)
    assert [p.name for p in paths] == ["t.mp4", "t.gif"]
    mp4 = read_mp4(tmp_path / "t.mp4")
    gif = iio.imread(tmp_path / "t.gif", index=None)
    assert mp4.shape == (8, 40, 40, 3)
    assert gif.shape[:3] == (8, 40, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gif", "t.mp4"]  # no temp files left
    # Timing: 10 fps in both; the gif loops forever.
    from PIL import Image

    import imageio_ffmpeg

    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "t.mp4")) == (8, 0.8)
    with Image.open(tmp_path / "t.gif") as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 100
    # The red ball is centred on a white background in every frame.
    centre = gif[:, 17:23, 17:23, :3].reshape(-1, 3).mean(0)
    assert centre[0] > 180 and centre[1] < 110 and centre[2] < 110, centre
    corners = gif[:, :3, :3, :3].reshape(-1, 3)
    assert corners.min() > 240
    # The mp4 (lossy) shows the same pictures as the gif.
    assert np.abs(mp4.astype(float) - gif[..., :3].astype(float)).mean() < 6.0


@needs_renderer
def test_turntable_turns(tmp_path):
    """A red ball at +x and a blue ball at -x: over the orbit each side faces the camera in turn,
    so the red ball is left of the blue one in some frames and right of it in others."""
    from recon.export.video import turntable_frames

    two = [ball(n=300, radius=0.3, center=(0.8, 0.0, 0.0), rgb=(1.0, 0.0, 0.0)),
           ball(n=300, radius=0.3, center=(-0.8, 0.0, 0.0), rgb=(0.0, 0.0, 1.0), seed=1)]
    g = Gaussians(*(torch.cat(ts) for ts in zip(*(b.tensors() for b in two))))
    frames = turntable_frames(g, n_frames=8, size=48, elevation_deg=0.0).astype(float)
    assert frames.shape == (8, 48, 48, 3)
    cols = np.arange(48)

    def mean_column(f, mask):
        w = mask.sum(0)
        return float((w * cols).sum() / max(w.sum(), 1))

    red = (frames[..., 0] > 150) & (frames[..., 2] < 100)
    blue = (frames[..., 2] > 150) & (frames[..., 0] < 100)
    side = [np.sign(mean_column(f, red[i]) - mean_column(f, blue[i])) for i, f in enumerate(frames)
            if red[i].sum() > 10 and blue[i].sum() > 10]
    assert 1.0 in side and -1.0 in side


def test_turntable_bad_input(tmp_path):
    from recon.export.video import render_turntable

    g = ball()
    with pytest.raises(ReconError, match="unsupported video"):
        render_turntable(g, tmp_path / "t.avi", n_frames=2, size=32)
    with pytest.raises(ReconError, match="at least 1 frame"):
        render_turntable(g, tmp_path / "t.gif", n_frames=0, size=32)
    assert not any(tmp_path.iterdir())
