"""The live training viewer: streamed scene state, pacing, pause / stop, scene cameras."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.gaussians import Gaussians
from recon.viewer.live import LiveViewer


def blob(n: int = 300, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g) * 0.5
    return Gaussians.from_points(p, torch.rand(n, 3, generator=g), 0.05, opacity=0.8, sh_degree=3)


@pytest.fixture
def viewer():
    v = LiveViewer(port=0, update_every=10, total_steps=100, quiet=True)
    yield v
    v.close()


def world_centers(v: LiveViewer) -> np.ndarray:
    s = v.view._splats
    return np.asarray(s.position) + s.scale * s.centers.astype(np.float64)


def test_bad_arguments():
    with pytest.raises(ValueError):
        LiveViewer(port=0, update_every=0, quiet=True)
    with pytest.raises(ValueError):
        LiveViewer(port=0, max_overhead=0.0, quiet=True)


def test_stream_updates_scene_state(viewer):
    g = blob()
    for step in range(1, 10):
        viewer.update(step, g, {"loss": 0.5, "psnr": 12.0, "n_gaussians": len(g)})
    assert viewer.flush()
    assert viewer.sent_steps == [] and viewer.view._splats is None  # nothing before update_every
    viewer.update(10, g, {"loss": 0.4, "psnr": 13.0, "n_gaussians": len(g)})
    assert viewer.flush()
    assert viewer.sent_steps == [10]
    first = world_centers(viewer)
    np.testing.assert_allclose(first, g.means.numpy(), atol=1e-5)
    buf_first = viewer.view._splats.buffer.copy()

    g.means.add_(torch.tensor([0.25, 0.0, -0.1]))  # the trainer moves them in place
    time.sleep(0.05 + 10 * viewer.sender_seconds)  # past the sender's rest
    for step in range(11, 21):
        viewer.update(step, g, {"loss": 0.3, "psnr": 14.0, "n_gaussians": len(g)})
    assert viewer.flush()
    assert viewer.sent_steps[-1] == 20
    assert not np.array_equal(viewer.view._splats.buffer, buf_first)
    np.testing.assert_allclose(world_centers(viewer) - first, np.tile([0.25, 0.0, -0.1], (len(g), 1)), atol=1e-5)
    # The panel: progress from total_steps, the count, and the plot history.
    assert viewer.progress_bar.value == pytest.approx(20.0)
    assert "300" in viewer.status_md.content and "step **20**" in viewer.status_md.content
    steps, losses, psnrs = viewer.plot.data
    assert list(steps) == list(range(1, 21)) and losses[-1] == pytest.approx(0.3) and psnrs[0] == 12.0


def test_snapshot_is_a_copy(viewer):
    g = blob(50)
    viewer.update(10, g, {})
    g.means.zero_()  # the optimiser's next step must not leak into the snapshot being sent
    assert viewer.flush()
    assert np.abs(world_centers(viewer)).max() > 0.1


def test_progress_from_metrics(viewer):
    viewer.update(3, blob(20), {"progress": 0.375})
    assert viewer.flush()
    assert viewer.progress_bar.value == pytest.approx(37.5)


def test_pause_resume_and_stop(viewer):
    assert not viewer.paused and not viewer.stop_requested
    viewer._toggle_pause()  # what the Pause button does
    assert viewer.paused and viewer.pause_button.label == "Resume"
    viewer._toggle_pause()
    assert not viewer.paused and viewer.pause_button.label == "Pause"
    viewer._toggle_pause()
    viewer._request_stop()  # Stop and save wakes a paused trainer
    assert viewer.stop_requested and not viewer.paused
    assert viewer.stop_button.disabled
    viewer.wait_while_paused()  # returns at once


def test_streaming_costs_at_most_ten_percent(viewer):
    """A CPU-bound fake training loop that asks for a snapshot every step: the trainer's time in
    update() and the sender thread's busy time each stay near 10 % of the wall time."""
    viewer.update_every = 1
    g = blob(20000, seed=1)
    a = torch.randn(160, 160)
    t0 = time.perf_counter()
    step = 0
    while time.perf_counter() - t0 < 3.0:
        for _ in range(20):
            a = torch.tanh(a @ a.T / 160.0)  # ~ a few ms of "training"
        step += 1
        g.means.add_(1e-4)
        viewer.update(step, g, {"loss": 1.0 / step, "psnr": 10.0})
    wall = time.perf_counter() - t0
    assert len(viewer.sent_steps) >= 2, "the stream never sent anything"
    assert len(viewer.sent_steps) < step, "every step was sent: no pacing"
    assert viewer.update_seconds / wall <= 0.10, (viewer.update_seconds, wall)
    # Each send is followed by a 9x rest, so only the last send can push the share over 10 %.
    assert viewer.sender_seconds / wall <= 0.10 + viewer.sender_seconds / max(len(viewer.sent_steps), 1) / wall


def test_set_scene_cameras_and_hull(viewer):
    from recon.data.scene import Normalization, Scene
    from recon.export.views import look_at
    from recon.data.cameras import Cameras

    n = 3
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    eyes = torch.stack([3 * torch.cos(t), 3 * torch.sin(t), torch.zeros(n, dtype=torch.float64)], 1)
    c2w = look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]).repeat(n, 1, 1)
    images = torch.zeros(n, 24, 32, 3, dtype=torch.uint8)
    masks = torch.zeros(n, 24, 32, dtype=torch.uint8)
    masks[:, 6:18, 8:24] = 255
    scene = Scene(Path("."), "images", [f"f{i}.png" for i in range(n)], images, masks,
                  Cameras(c2w, K, 32, 24), [0, 1], [2], Normalization.identity())

    class Voxels:  # the init stage's SparseVoxels surface
        def __len__(self):
            return 8

        def centers(self):
            return torch.tensor([[x, y, z] for x in (0.0, 0.1) for y in (0.0, 0.1) for z in (0.0, 0.1)])

        colors = torch.full((8, 3), 0.5)

    class Init:
        voxels = Voxels()

    viewer.set_scene(scene, [0, 1], Init())
    v = viewer.view
    assert len(v._frustums) == 3
    assert v.camera_dropdown.options[2] == "2: f2.png (test)"
    assert v._hull is not None and v._hull.points.shape == (8, 3)
    assert v._hull.point_size == pytest.approx(0.1)
    # Masked photos are composited on white for the frustum pictures.
    img = viewer.view._views.images[0]
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[12, 16]) == (0, 0, 0)


def test_hold_keeps_serving_until_closed(viewer):
    import threading

    viewer.update(10, blob(30), {"loss": 0.1})
    threading.Timer(0.5, viewer.close).start()
    t0 = time.perf_counter()
    viewer.hold()  # what `recon reconstruct --viewer` does after training
    assert 0.4 <= time.perf_counter() - t0 < 5
    assert viewer.sent_steps == [10] and viewer.pause_button.disabled and viewer.stop_button.disabled
