import dataclasses

import pytest
import torch
from prior_fakes import blob_gaussians, one_thread, splat_render, tiny_scene  # noqa: F401 (one_thread: autouse)

from recon.prior.config import PriorConfig
from recon.prior.images import split_render
from recon.prior.pairs import PairSet, build_pairs, leave_one_out_pairs, perturb_gaussians, perturbed_pairs


def _render(g, cam):
    return splat_render(g, cam)


def test_split_render_layouts():
    rgb = torch.rand(5, 6, 3)
    a = torch.rand(5, 6, 1)
    for out in (rgb, rgb[None], (rgb[None], a[None], {"meta": 1}), (rgb, a[..., 0])):
        r, al = split_render(out)
        assert r.shape == (5, 6, 3)
        assert al is None or al.shape == (5, 6, 1)
    r, al = split_render(torch.cat([rgb, a], -1))
    assert torch.equal(r, rgb) and torch.equal(al, a)
    with pytest.raises(ValueError):
        split_render(torch.rand(2, 5, 6, 3))
    with pytest.raises(ValueError):
        split_render(torch.rand(5, 6, 2))
    with pytest.raises(TypeError):
        split_render("image")


def test_perturbation_noise_levels():
    g = blob_gaussians(200)
    same = perturb_gaussians(g, 0.0, 0.0, 0.0, 0.0)
    for a, b in zip(same.tensors(), g.tensors()):
        assert torch.equal(a, b)
    noisy = perturb_gaussians(g, 0.05, 0.3, 0.5, 0.1, torch.Generator().manual_seed(0))
    assert abs(float((noisy.means - g.means).std()) - 0.05) < 0.01
    assert abs(float((noisy.log_scales - g.log_scales).std()) - 0.3) < 0.05
    assert abs(float((noisy.opacity_logits - g.opacity_logits).std()) - 0.5) < 0.1
    assert torch.equal(noisy.quats, g.quats) and torch.equal(noisy.sh[:, 1:], g.sh[:, 1:])
    # The colour noise is given in RGB units; the DC coefficient carries it divided by SH_C0.
    from recon.gaussians import sh0_to_rgb

    assert abs(float((sh0_to_rgb(noisy.sh[:, 0]) - sh0_to_rgb(g.sh[:, 0])).std()) - 0.1) < 0.02


def test_perturbed_pairs_are_damaged_renders_of_every_view():
    scene, truth = tiny_scene(3, 24)
    cfg = PriorConfig(mode="repair", perturb_per_view=2, perturb_means=0.08, perturb_opacity=1.0)
    pairs = perturbed_pairs(scene, truth, _render, cfg, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 6 and pairs.kinds == ["perturbed"] * 6 and pairs.views == [0, 0, 1, 1, 2, 2]
    assert pairs.degraded.shape == (6, 24, 24, 3) and pairs.alpha.shape == (6, 24, 24, 1)
    for k, v in enumerate(pairs.views):
        assert torch.allclose(pairs.clean[k], scene.image_float(v))
        # truth renders view v (up to 8-bit rounding); the perturbed copy does not.
        assert (pairs.degraded[k] - pairs.clean[k]).abs().mean() > 5e-3
    assert not torch.equal(pairs.degraded[0], pairs.degraded[1])  # two different perturbations


def test_leave_one_out_pairs_hold_out_each_view():
    scene, truth = tiny_scene(4, 24)
    calls = []

    def train_without(sc, idx, iterations):
        calls.append((list(idx), iterations))
        return truth.subset(torch.arange(len(truth)) % 4 != len(calls))  # a visibly worse reconstruction

    pairs = leave_one_out_pairs(scene, _render, train_without, 7)
    assert calls == [([1, 2, 3], 7), ([0, 2, 3], 7), ([0, 1, 3], 7), ([0, 1, 2], 7)]
    assert pairs.views == [0, 1, 2, 3] and pairs.kinds == ["leave_one_out"] * 4
    assert torch.allclose(pairs.clean[2], scene.image_float(2))
    assert len(leave_one_out_pairs(scene, _render, train_without, 7, train_idx=[1])) == 0  # nothing to hold out


def test_build_pairs_concatenates_both_kinds():
    scene, truth = tiny_scene(3, 16)
    cfg = PriorConfig(mode="repair", perturb_per_view=1, loo_iterations=5)
    pairs = build_pairs(scene, truth, _render, cfg, lambda s, idx, it: truth, generator=torch.Generator().manual_seed(0))
    assert pairs.kinds == ["leave_one_out"] * 3 + ["perturbed"] * 3 + ["current"] * 3
    # The truth renders the training views exactly (up to 8-bit rounding): "current" pairs are near-identity.
    assert (pairs.degraded[-3:] - pairs.clean[-3:]).abs().max() <= 0.5 / 255 + 1e-6
    only_perturbed = build_pairs(scene, truth, _render, dataclasses.replace(cfg, current_pairs=False), None)
    assert len(only_perturbed) == 3 and only_perturbed.kinds == ["perturbed"] * 3
    empty = PairSet.concat([PairSet.empty(16, 16)])
    assert len(empty) == 0


def test_renderer_of_the_wrong_size_is_refused():
    scene, truth = tiny_scene(2, 16)
    with pytest.raises(ValueError, match="returned"):
        perturbed_pairs(scene, truth, lambda g, c: torch.zeros(8, 8, 3), PriorConfig(perturb_per_view=1))
