"""Repairers: turn renders of novel views into images to supervise with. One interface, two back ends:
the per-scene repair model (mode=repair) and a local pretrained Stable Diffusion (mode=pretrained)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from recon.prior.config import PriorConfig
from recon.prior.images import fit_size, resize_nchw, to_nchw, to_nhwc
from recon.prior.pairs import PairSet
from recon.prior.repair_model import RepairModel


class Repairer(Protocol):
    def repair(self, images: torch.Tensor, strengths: Sequence[float], alphas: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (N, H, W, 3) in [0, 1], one strength per image -> repaired (N, H, W, 3) in [0, 1]."""
        ...


def repair_at_size(repair_one: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], image: torch.Tensor,
                   alpha: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Run `repair_one` on (1, 3, h, w) at (height, width); at a lower resolution only the change the repair
    makes is upsampled and added back, so the render's own fine detail survives."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return repair_one(image, alpha)
    small = resize_nchw(image, height, width)
    small_alpha = resize_nchw(alpha, height, width) if alpha is not None else None
    change = repair_one(small, small_alpha) - small
    return (image + resize_nchw(change, h, w)).clamp(0, 1)


class DiffusionRepairer:
    """The per-scene RepairModel with SDEdit sampling."""

    def __init__(self, model: RepairModel, cfg: PriorConfig):
        self.model, self.cfg = model, cfg

    def repair(self, images: torch.Tensor, strengths: Sequence[float], alphas: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
        if len(strengths) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(strengths)} strengths")
        device = next(self.model.unet.parameters()).device
        x = to_nchw(images.float()).to(device)
        a = to_nchw(alphas.float()).to(device) if alphas is not None and self.model.use_alpha else None
        h, w = fit_size(x.shape[-2], x.shape[-1], self.cfg.repair_max_size, self.model.multiple)
        out = []
        for n, s in enumerate(strengths):
            def one(img, alpha, s=float(s)):
                return self.model.repair(img, s, self.cfg.sample_steps, alpha, generator)
            out.append(repair_at_size(one, x[n:n + 1], a[n:n + 1] if a is not None else None, h, w))
        return to_nhwc(torch.cat(out)).cpu()


def train_repairer(cfg: PriorConfig, pairs: PairSet, out_dir: str | Path | None = None,
                   generator: torch.Generator | None = None, log: Callable[[str], None] | None = None,
                   device: str | torch.device = "cpu"):
    """The repairer for cfg.mode: a freshly trained per-scene RepairModel (saved to OUT/prior/repair_model),
    or the local pretrained pipeline, optionally LoRA-tuned on the pairs."""
    if cfg.mode == "pretrained":
        from recon.prior.pretrained import PretrainedRepairer

        return PretrainedRepairer.from_config(cfg, pairs=pairs, generator=generator, log=log, device=device)
    if cfg.mode != "repair":
        raise ValueError(f"no repairer for prior mode {cfg.mode!r}")
    from recon.prior.train_repair import train_repair_model

    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator)) if generator is not None else 0
    with torch.random.fork_rng(devices=[]):  # seed the UNet's init without touching the caller's RNG
        torch.manual_seed(seed)
        model = RepairModel.from_config(cfg).to(device)
    stats = train_repair_model(model, pairs, cfg, generator=generator, log=log)
    if log:
        log(f"repair model: {stats.steps} steps in {stats.seconds:.0f} s "
            f"({stats.seconds_per_step:.2f} s/step), final loss {sum(stats.losses[-20:]) / max(len(stats.losses[-20:]), 1):.4f}")
    if out_dir is not None:
        model.save(Path(out_dir) / "prior" / "repair_model")
    return DiffusionRepairer(model, cfg)
