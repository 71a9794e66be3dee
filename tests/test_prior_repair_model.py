import pytest
import torch
from prior_fakes import one_thread, procedural_images  # noqa: F401 (one_thread: autouse fixture)

from recon.errors import ReconError
from recon.prior.config import PriorConfig, check_prior_config
from recon.prior.pairs import PairSet
from recon.prior.repair_model import RepairModel
from recon.prior.train_repair import PairSampler, train_repair_model

TINY = dict(block_out_channels=[16, 32], train_crop=32, train_batch=8, lr=2e-3)


def _model(**kw) -> RepairModel:
    torch.manual_seed(0)
    return RepairModel.from_config(PriorConfig(mode="repair", **{**TINY, **kw}))


def _pairs(n=4, size=48, seed=0) -> PairSet:
    clean = procedural_images(n, size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    # A strong, learnable damage: washed-out contrast, a colour cast and noise.
    degraded = (0.5 * clean + 0.3 + 0.1 * torch.tensor([1.0, 0.0, -1.0]) + 0.03 * torch.randn(clean.shape, generator=g))
    return PairSet(degraded.clamp(0, 1), clean, None, list(range(n)), ["synthetic"] * n)


def test_shapes_padding_and_range():
    m = _model(use_alpha=True)
    assert m.unet.config.in_channels == 7 and m.multiple == 2
    x = torch.rand(2, 3, 21, 30)
    out = m.repair(x, strength=0.6, steps=3, alpha=torch.ones(2, 1, 21, 30), generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    loss = m.training_loss(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_untrained_sample_model_returns_the_render():
    # "sample" prediction starts as render + zero correction: DDIM retraces its own noise back to the render.
    m = _model()
    x = torch.rand(1, 3, 32, 32)
    out = m.repair(x, strength=0.7, steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, x, atol=1e-4)
    assert torch.equal(m.repair(x, strength=0.0), x)


def test_epsilon_model_at_full_strength_forgets_the_render():
    # The textbook parameterisation, untrained: from pure noise the render cannot come back.
    m = _model(prediction_type="epsilon")
    x = torch.full((1, 3, 32, 32), 0.5)
    out = m.repair(x, strength=1.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert (out - x).abs().mean() > 0.05


def test_bad_input():
    m = _model()
    with pytest.raises(ValueError):
        m.repair(torch.rand(3, 32, 32))
    with pytest.raises(ValueError):
        m.repair(torch.rand(1, 3, 32, 32), strength=1.5)
    with pytest.raises(ValueError):
        m.repair(torch.rand(1, 3, 32, 32), steps=0)
    with pytest.raises(ValueError):
        m.training_loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16))
    with pytest.raises(ReconError, match="prediction_type"):
        check_prior_config(PriorConfig(mode="repair", prediction_type="x0"))
    with pytest.raises(ReconError, match="prior.mode"):
        check_prior_config(PriorConfig(mode="dream"))
    with pytest.raises(ValueError):
        PairSet(torch.rand(2, 8, 8, 3), torch.rand(2, 8, 9, 3), None, [0, 1], ["a", "b"])


def test_sampler_augments_both_images_alike():
    pairs = PairSet(procedural_images(3, 40), procedural_images(3, 40), None, [0, 1, 2], ["x"] * 3)
    s = PairSampler(pairs, crop=33, multiple=4, flip=True, color_jitter=0.3, error_focus=0.5)
    clean, degraded, alpha = s.sample(6, torch.Generator().manual_seed(0))
    assert clean.shape == (6, 3, 32, 32) and alpha is None
    assert torch.equal(clean, degraded)  # identical pairs stay identical through crop, flip and jitter
    plain = PairSampler(pairs, crop=32, multiple=4, flip=False, color_jitter=0.0, error_focus=0.0)
    c, _, _ = plain.sample(4, torch.Generator().manual_seed(1))
    # Without augmentation every crop is a window of one of the images.
    full = pairs.clean.permute(0, 3, 1, 2)
    for crop in c:
        found = any(torch.equal(crop, full[n, :, y:y + 32, x:x + 32])
                    for n in range(3) for y in range(9) for x in range(9))
        assert found


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_training_loss_falls(prediction_type):
    m = _model(prediction_type=prediction_type)
    cfg = PriorConfig(mode="repair", prediction_type=prediction_type, train_steps=30, train_time_budget=120, **TINY)
    stats = train_repair_model(m, _pairs(), cfg, generator=torch.Generator().manual_seed(0))
    assert stats.steps == 30 and len(stats.losses) == 30 and stats.seconds > 0
    first, last = sum(stats.losses[:6]) / 6, sum(stats.losses[-6:]) / 6
    assert last < 0.7 * first


def test_time_budget_stops_training():
    m = _model()
    cfg = PriorConfig(mode="repair", train_steps=10_000, train_time_budget=1.0, **TINY)
    stats = train_repair_model(m, _pairs(2, 32), cfg, generator=torch.Generator().manual_seed(0))
    assert 1 <= stats.steps < 10_000 and stats.seconds < 30


def test_save_load_roundtrip(tmp_path):
    m = _model(prediction_type="v_prediction", use_alpha=True)
    with torch.no_grad():
        for p in m.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save(tmp_path / "repair_model")
    back = RepairModel.load(tmp_path / "repair_model")
    assert back.prediction_type == "v_prediction" and back.use_alpha
    x = torch.rand(1, 3, 16, 16)
    a = m.repair(x, 0.5, 3, generator=torch.Generator().manual_seed(0))
    b = back.repair(x, 0.5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ReconError, match="not a saved repair model"):
        RepairModel.load(tmp_path)
