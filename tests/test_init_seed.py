"""Gaussians seeded from surface voxels."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from recon.errors import ReconError
from recon.gaussians import sh0_to_rgb
from recon.init.config import InitConfig
from recon.init.seed import seed_gaussians
from recon.init.voxels import DEFAULT_FEATURES, SparseVoxels


def voxels(n: int = 50, level: int = 32) -> SparseVoxels:
    g = torch.Generator().manual_seed(0)
    coords = torch.randint(0, level, (n, 3), generator=g, dtype=torch.int32)
    feats = torch.cat([torch.rand(n, 3, generator=g), torch.rand(n, 1, generator=g), torch.randint(0, 8, (n, 1), generator=g).float()], 1)
    return SparseVoxels(coords, feats, 2.0 / level, torch.full((3,), -1.0), level, list(DEFAULT_FEATURES))


def test_one_gaussian_per_voxel_inside_it_with_its_colour():
    v = voxels()
    cfg = InitConfig()
    g = seed_gaussians(v, cfg)
    assert len(g) == len(v)
    assert g.means.shape == (len(v), 3) and g.quats.shape == (len(v), 4) and g.log_scales.shape == (len(v), 3)
    assert g.opacity_logits.shape == (len(v),) and g.sh.shape == (len(v), 1, 3) and g.sh_degree == 0
    h = v.voxel_size
    assert ((g.means - v.centers()).abs() <= h / 2 + 1e-6).all()
    assert torch.allclose(g.scales, torch.full_like(g.scales, cfg.gaussian_scale * h))
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, cfg.gaussian_opacity), atol=1e-6)
    assert torch.allclose(sh0_to_rgb(g.sh[:, 0]), v.colors, atol=1e-5)
    assert torch.allclose(g.quats, torch.tensor([1.0, 0, 0, 0]).expand(len(v), 4))


def test_several_per_voxel_cap_and_determinism():
    v = voxels(40)
    g = seed_gaussians(v, InitConfig(gaussians_per_voxel=3))
    assert len(g) == 120
    capped = seed_gaussians(v, InitConfig(gaussians_per_voxel=3, max_gaussians=50, seed=7))
    again = seed_gaussians(v, InitConfig(gaussians_per_voxel=3, max_gaussians=50, seed=7))
    assert len(capped) == 50 and torch.equal(capped.means, again.means)
    other = seed_gaussians(v, InitConfig(gaussians_per_voxel=3, max_gaussians=50, seed=8))
    assert not torch.equal(capped.means, other.means)


@pytest.mark.parametrize("change", [{"gaussians_per_voxel": 0}, {"gaussian_opacity": 0.0},
                                    {"gaussian_scale": -1.0}, {"max_gaussians": 0}])
def test_bad_settings_are_user_errors(change):
    with pytest.raises(ReconError):
        seed_gaussians(voxels(), replace(InitConfig(), **change))
