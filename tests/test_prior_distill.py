import imageio.v3 as iio
import pytest
import torch
from prior_fakes import one_thread, ring_cameras, splat_render, tiny_scene  # noqa: F401 (one_thread: autouse)

from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.prior.config import PriorConfig
from recon.prior.distill import PriorDistiller, distance_aware_strengths
from recon.prior.novel_cameras import sample_novel_cameras
from recon.prior.repair import DiffusionRepairer
from recon.prior.setup import build_prior

TINY = dict(block_out_channels=[16, 32], train_crop=16, train_batch=4, train_steps=4, sample_steps=2,
            novel_views=4, perturb_per_view=1, loo_iterations=0)


class ShiftRepairer:
    """Stands in for a repair model: brightens by `strength` and records what it was asked."""

    def __init__(self):
        self.calls = []

    def repair(self, images, strengths, alphas=None, generator=None):
        self.calls.append((images.shape, list(strengths), alphas is not None))
        return (images + torch.tensor(strengths)[:, None, None, None] * 0.1).clamp(0, 1)


def _trainable(truth: Gaussians) -> Gaussians:
    return Gaussians(*(t.clone().requires_grad_(True) for t in truth.tensors()))


def test_distance_aware_strengths():
    s = distance_aware_strengths(torch.tensor([0.0, 0.1, 0.2, 0.4]), 0.6, 0.2)
    assert s == pytest.approx([0.2, 0.3, 0.4, 0.6])
    assert distance_aware_strengths(torch.zeros(2), 0.6, 0.2) == [0.2, 0.2]
    assert distance_aware_strengths(torch.zeros(0), 0.6, 0.2) == []


def test_refresh_repairs_every_novel_view_and_saves_pngs(tmp_path):
    scene, truth = tiny_scene(4, 24)
    novel = sample_novel_cameras(scene.cameras, 5, generator=torch.Generator().manual_seed(0))
    rep = ShiftRepairer()
    d = PriorDistiller(rep, novel, PriorConfig(mode="repair", strength=0.5, strength_min=0.1), out_dir=tmp_path)
    assert d.loss(lambda c: splat_render(truth, c), 0).item() == 0.0  # nothing to distil before a refresh
    for cycle in range(2):
        targets = d.refresh(lambda c: splat_render(truth, c))
        assert targets.shape == (5, 24, 24, 3)
        folder = tmp_path / "prior" / f"cycle_{cycle}"
        files = sorted(p.name for p in folder.glob("*.png"))
        assert len(files) == 10 and "view_000_repaired.png" in files
        png = iio.imread(folder / "view_003_repaired.png")
        assert png.shape == (24, 24, 3)
        assert abs(png.astype(float) / 255 - targets[3].numpy()).max() <= 1 / 255 + 1e-6
    assert d.cycle == 2 and len(rep.calls) == 2
    shape, strengths, has_alpha = rep.calls[0]
    assert shape == (5, 24, 24, 3) and has_alpha and min(strengths) >= 0.1 and max(strengths) == pytest.approx(0.5)


def test_loss_pulls_the_gaussians_towards_the_repaired_views():
    scene, truth = tiny_scene(4, 24)
    novel = sample_novel_cameras(scene.cameras, 3, generator=torch.Generator().manual_seed(0))
    cfg = PriorConfig(mode="repair", weight=0.3, ssim_weight=0.2)
    d = PriorDistiller(ShiftRepairer(), novel, cfg)
    d.refresh(lambda c: splat_render(truth, c))
    g = _trainable(truth)
    loss = d.loss(lambda c: splat_render(g, c), step=0)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert g.sh.grad is not None and g.sh.grad.abs().sum() > 0
    # Compare with the formula on the view that step 0 picks.
    from recon.train.losses import photometric_loss

    i = d.view_for_step(0)
    with torch.no_grad():
        ref = 0.3 * photometric_loss(splat_render(truth, novel.cameras[i])[0][None], d.targets[i][None], 0.2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert sorted(d.view_for_step(s) for s in range(3)) == [0, 1, 2]  # every view in turn
    # When the render already is the target, nothing is left to learn.
    d.targets = torch.stack([splat_render(truth, novel.cameras[k])[0].detach() for k in range(3)])
    assert d.loss(lambda c: splat_render(truth, c), 0).item() == pytest.approx(0.0, abs=1e-6)


def test_refresh_steps():
    novel = sample_novel_cameras(ring_cameras(4), 4)
    d = PriorDistiller(ShiftRepairer(), novel, PriorConfig(cycles=3, start=0.4))
    assert d.refresh_steps(1000) == [400, 600, 800]
    assert PriorDistiller(ShiftRepairer(), novel, PriorConfig(cycles=0)).refresh_steps(1000) == []


def test_build_prior_end_to_end(tmp_path):
    scene, truth = tiny_scene(3, 24)
    cfg = PriorConfig(mode="repair", **{**TINY, "loo_iterations": 3})
    seen = []

    def train_without(sc, idx, iterations):
        seen.append(tuple(idx))
        return truth.subset(torch.arange(len(truth)) % 2 == 0)

    d = build_prior(cfg, scene, truth, splat_render, train_without, out_dir=tmp_path,
                    background=torch.ones(3), seed=0)
    assert isinstance(d.repairer, DiffusionRepairer) and len(d) == 4 and len(seen) == 3
    assert (tmp_path / "prior" / "repair_model" / "repair.json").is_file()
    g = _trainable(truth)
    d.refresh(lambda c: splat_render(g, c))
    loss = d.loss(lambda c: splat_render(g, c), 1)
    loss.backward()
    assert torch.isfinite(loss) and g.means.grad is not None
    assert len(list((tmp_path / "prior" / "cycle_0").glob("*_repaired.png"))) == 4


def test_build_prior_none_and_bad_pretrained_folder(tmp_path):
    scene, truth = tiny_scene(2, 16)
    assert build_prior(PriorConfig(mode="none"), scene, truth, splat_render) is None
    calls = []
    with pytest.raises(ReconError, match="not found"):
        build_prior(PriorConfig(mode="pretrained", model_path=str(tmp_path / "nope")), scene, truth,
                    lambda g, c: calls.append(1))
    assert calls == []  # refused before any rendering
    with pytest.raises(ReconError, match="--prior-model"):
        build_prior(PriorConfig(mode="pretrained"), scene, truth, splat_render)
