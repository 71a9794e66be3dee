import math

import pytest
import torch
from prior_fakes import one_thread, ring_cameras  # noqa: F401 (one_thread: autouse fixture)

from recon.prior.novel_cameras import axes_center, look_at, sample_novel_cameras


def _azimuth(p: torch.Tensor) -> torch.Tensor:
    return torch.atan2(p[..., 1], p[..., 0])


def test_look_at_is_a_rotation_facing_the_target():
    pos = torch.tensor([[3.0, 0.5, 1.0], [-2.0, 2.0, -1.0]], dtype=torch.float64)
    c2w = look_at(pos, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    r = c2w[:, :3, :3]
    assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(r[:, :, 2], -pos / pos.norm(dim=-1, keepdim=True), atol=1e-12)
    assert (r[:, 2, 1] < 0).all()  # OpenCV y points down: its world z is negative for an upright camera


def test_axes_center_recovers_the_look_at_point():
    cams = ring_cameras(5, center=(0.3, -0.2, 0.1))
    assert torch.allclose(axes_center(cams), torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("n", [0, 1, 7, 16])
def test_count_and_intrinsics(n):
    train = ring_cameras(4, size=40)
    novel = sample_novel_cameras(train, n, generator=torch.Generator().manual_seed(0))
    assert len(novel.cameras) == n and novel.cameras.width == 40 and novel.cameras.height == 40
    assert novel.neighbours.shape == (n, 2) and novel.t.shape == (n,) and novel.angle_to_nearest.shape == (n,)
    if n:
        assert torch.allclose(novel.cameras.Ks, train.Ks[:1].expand(n, 3, 3))


def test_novel_cameras_look_at_the_centre_between_neighbours_at_their_distance():
    radii = [3.5, 4.0, 4.5, 3.8, 4.2, 3.6]
    center = torch.tensor([0.2, 0.1, -0.1], dtype=torch.float64)
    train = ring_cameras(6, radius=radii, elevation_deg=15.0, center=tuple(center.tolist()))
    novel = sample_novel_cameras(train, 24, elevation_jitter_deg=8.0, generator=torch.Generator().manual_seed(1))
    c2w = novel.cameras.camtoworlds
    pos = c2w[:, :3, 3]
    assert torch.allclose(novel.center.double(), center, atol=1e-9)
    to_center = torch.nn.functional.normalize(center[None] - pos, dim=-1)
    assert torch.allclose(c2w[:, :3, 2], to_center, atol=1e-9)  # they look at the centre
    r = (pos - center).norm(dim=-1)
    ra = torch.tensor(radii, dtype=torch.float64)[novel.neighbours]
    assert (r >= ra.min(1).values - 1e-9).all() and (r <= ra.max(1).values + 1e-9).all()  # distance-aware
    # Azimuth strictly between the two neighbours (60 degree steps), elevation within the jitter of theirs.
    az = _azimuth(pos - center)
    train_az = _azimuth(train.centers - center)
    a0, a1 = train_az[novel.neighbours[:, 0]], train_az[novel.neighbours[:, 1]]
    span = (a1 - a0) % (2 * math.pi)
    offset = (az - a0) % (2 * math.pi)
    assert (offset > 0).all() and (offset < span).all()
    elev = torch.rad2deg(torch.asin((pos - center)[:, 2] / r))
    assert (elev > 15.0 - 8.0 - 1e-6).all() and (elev < 15.0 + 8.0 + 1e-6).all()
    # Never on top of a training camera, and every arc gets its share.
    assert (novel.angle_to_nearest > math.radians(1.0)).all()
    assert len({tuple(p) for p in novel.neighbours.tolist()}) == 6


def test_wide_gaps_are_not_bridged():
    # A frontal capture over 90 degrees: the 270-degree gap behind the object gets no camera.
    train = ring_cameras(4, azimuth_span_deg=90.0, elevation_deg=0.0)
    novel = sample_novel_cameras(train, 12, elevation_jitter_deg=0.0, max_gap_deg=150.0)
    az = torch.rad2deg(_azimuth(novel.cameras.centers))
    assert (az > 0).all() and (az < 90).all()


def test_needs_two_training_cameras():
    with pytest.raises(ValueError, match="at least 2"):
        sample_novel_cameras(ring_cameras(1), 4)
    with pytest.raises(ValueError):
        sample_novel_cameras(ring_cameras(3), -1)


def test_two_cameras_take_the_short_way():
    train = ring_cameras(4, elevation_deg=0.0)[[0, 3]]  # azimuths 0 and 270 degrees
    novel = sample_novel_cameras(train, 5, elevation_jitter_deg=0.0)
    az = torch.rad2deg(_azimuth(novel.cameras.centers))
    assert (az < 0).all() and (az > -90).all()
