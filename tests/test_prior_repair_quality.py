"""The repair model, trained briefly on crops of several images, brings a held-out blurred + noisy image
closer to the clean one. Uses the committed sample's views when they exist, procedural textures before."""
import torch
from prior_fakes import gaussian_blur, one_thread, procedural_images, sample_images  # noqa: F401 (autouse)

from recon.prior.config import PriorConfig
from recon.prior.images import psnr
from recon.prior.pairs import PairSet
from recon.prior.repair import DiffusionRepairer
from recon.prior.repair_model import RepairModel
from recon.prior.train_repair import train_repair_model

SIZE = 64


def _images() -> torch.Tensor:
    imgs = sample_images(SIZE)
    if imgs is None:
        return procedural_images(7, SIZE, seed=0)
    step = max(1, imgs.shape[0] // 7)  # spread-out views of the sample object
    return imgs[::step][:7]


def test_repair_beats_its_input_on_a_held_out_image():
    clean = _images()
    g = torch.Generator().manual_seed(0)
    degraded = (gaussian_blur(clean, 1.0) + 0.08 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    train = PairSet(degraded[:-1], clean[:-1], None, list(range(len(clean) - 1)), ["synthetic"] * (len(clean) - 1))
    cfg = PriorConfig(mode="repair", block_out_channels=[16, 32], train_crop=32, train_batch=8, train_steps=150,
                      train_time_budget=120, lr=2e-3, strength=0.4, sample_steps=5, repair_max_size=SIZE)
    torch.manual_seed(0)
    model = RepairModel.from_config(cfg)
    stats = train_repair_model(model, train, cfg, generator=torch.Generator().manual_seed(1))
    assert stats.steps >= 100  # the budget is generous: a slow machine must not turn this into a no-op
    repairer = DiffusionRepairer(model, cfg)
    test_in, test_clean = degraded[-1:], clean[-1:]
    out = repairer.repair(test_in, [cfg.strength], generator=torch.Generator().manual_seed(2))
    assert out.shape == test_in.shape
    before, after = psnr(test_in, test_clean), psnr(out, test_clean)
    assert after > before + 1.0, f"PSNR {before:.2f} -> {after:.2f} dB"
