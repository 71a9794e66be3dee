"""Gaussians -> viser splat arrays: covariances, opacities, SH colours, voxel spacing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.gaussians import Gaussians, rgb_to_sh0
from recon.viewer.splats import eval_sh, quat_to_rotmat, splat_arrays, splat_colors, voxel_spacing


def random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) * 0.5 - 2, torch.randn(n, generator=g),
                     torch.randn(n, k, 3, generator=g) * 0.3)


def test_smoke_shapes():
    a = splat_arrays(random_gaussians(50, 2))
    assert a.centers.shape == (50, 3) and a.covariances.shape == (50, 3, 3)
    assert a.opacities.shape == (50,) and a.sh.shape == (50, 9, 3)
    assert a.sh_degree == 2 and len(a) == 50
    assert all(x.dtype == np.float32 for x in (a.centers, a.covariances, a.opacities, a.sh))
    sub = a.subset(np.array([0, 3]))
    assert len(sub) == 2 and np.array_equal(sub.centers[1], a.centers[3])


def test_covariance_matches_rotated_scales():
    g = random_gaussians(20, 0, seed=1)
    a = splat_arrays(g)
    q = g.quats.double() / g.quats.double().norm(dim=1, keepdim=True)
    # Reference: rotate the axis-aligned covariance with the quaternion's rotation, column by column.
    w, x, y, z = q.unbind(1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)
    S = torch.diag_embed(torch.exp(g.log_scales.double()))
    ref = R @ S @ S @ R.transpose(1, 2)
    np.testing.assert_allclose(a.covariances, ref.numpy(), rtol=1e-5, atol=1e-9)
    # Symmetric positive definite with eigenvalues = squared scales.
    ev = np.sort(np.linalg.eigvalsh(a.covariances.astype(np.float64)), axis=1)
    np.testing.assert_allclose(ev, np.sort(np.exp(2 * g.log_scales.double().numpy()), axis=1), rtol=1e-4)
    np.testing.assert_allclose(a.opacities, torch.sigmoid(g.opacity_logits).numpy(), rtol=1e-6)


def test_quaternion_known_rotation():
    # 90 degrees about z: x -> y.
    q = np.array([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]]) * 3.0  # unnormalised on purpose
    R = quat_to_rotmat(q)[0]
    np.testing.assert_allclose(R @ np.array([1.0, 0, 0]), [0, 1, 0], atol=1e-12)


def test_nonfinite_and_zero_quaternions_dropped():
    g = random_gaussians(6, 1)
    g.means[1, 0] = float("nan")
    g.sh[2, 3, 1] = float("inf")
    g.quats[4] = 0.0
    a = splat_arrays(g)
    assert len(a) == 3
    np.testing.assert_allclose(a.centers, g.means[[0, 3, 5]].numpy())


def test_dc_colour_is_the_stored_rgb():
    rgb = torch.tensor([[0.1, 0.5, 0.9], [1.0, 0.0, 0.25]])
    g = Gaussians.from_points(torch.zeros(2, 3), rgb, 0.1, sh_degree=3)
    g.sh[:, 1:] = 0.7  # higher bands must not leak into degree 0
    a = splat_arrays(g)
    np.testing.assert_allclose(splat_colors(a, 0), rgb.numpy(), atol=1e-6)
    np.testing.assert_allclose(splat_colors(a, 3, eye=None), rgb.numpy(), atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_gsplat(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    sh = torch.randn(64, 16, 3, generator=g) * 0.2
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=1)
    ref = torch.clamp(_spherical_harmonics(degree, dirs, sh) + 0.5, 0.0, 1.0)
    ours = eval_sh(sh.numpy(), dirs.numpy(), degree)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


def test_splat_colors_view_dependent_direction():
    # Only the y-band (sh[1], basis -C1*y) set: seen from -y the colour rises, from +y it falls.
    g = Gaussians.from_points(torch.zeros(1, 3), torch.full((1, 3), 0.5), 0.1, sh_degree=1)
    g.sh[0, 1] = 0.5
    a = splat_arrays(g)
    from_below = splat_colors(a, 1, eye=np.array([0.0, -5.0, 0.0]))  # direction to the Gaussian: +y
    from_above = splat_colors(a, 1, eye=np.array([0.0, 5.0, 0.0]))
    c1 = 0.4886025119029199
    np.testing.assert_allclose(from_below, 0.5 - c1 * 0.5, atol=1e-6)
    np.testing.assert_allclose(from_above, 0.5 + c1 * 0.5, atol=1e-6)


def test_voxel_spacing_known_grid():
    ijk = np.stack(np.meshgrid(np.arange(4), np.arange(3), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    pts = (ijk * 0.037 + np.array([-1.0, 0.3, 2.0])).astype(np.float32)
    assert voxel_spacing(pts) == pytest.approx(0.037, rel=1e-3)
    assert voxel_spacing(pts[:1]) > 0


def test_rgb_to_sh0_round_trip_through_arrays():
    rgb = torch.rand(10, 3)
    g = Gaussians(torch.zeros(10, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(10, 1), torch.zeros(10, 3),
                  torch.zeros(10), rgb_to_sh0(rgb)[:, None])
    np.testing.assert_allclose(splat_colors(splat_arrays(g), 0), rgb.numpy(), atol=1e-6)
