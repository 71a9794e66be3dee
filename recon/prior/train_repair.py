"""Per-scene training of the repair model on a PairSet: random crops, flips and colour jitter, applied
identically to both images of a pair, under a step and wall-time budget."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from recon.prior.config import PriorConfig
from recon.prior.pairs import PairSet
from recon.prior.repair_model import RepairModel

_FOCUS_CELL = 8  # px; resolution of the error map that picks crop centres


@dataclass
class RepairTrainStats:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


class PairSampler:
    """Draws augmented crops (B, 3, c, c) of clean, degraded (and alpha) from a PairSet."""

    def __init__(self, pairs: PairSet, crop: int, multiple: int = 4, flip: bool = True, color_jitter: float = 0.1,
                 error_focus: float = 0.5):
        if len(pairs) == 0:
            raise ValueError("no pairs to train the repair model on")
        h, w = pairs.clean.shape[1:3]
        c = min(crop, h, w) // multiple * multiple
        if c < multiple:
            raise ValueError(f"images of {h}x{w} are too small for the repair model")
        self.crop, self.flip, self.jitter, self.focus = c, flip, color_jitter, error_focus
        self.clean = pairs.clean.permute(0, 3, 1, 2).contiguous()
        self.degraded = pairs.degraded.permute(0, 3, 1, 2).contiguous()
        self.alpha = pairs.alpha.permute(0, 3, 1, 2).contiguous() if pairs.alpha is not None else None
        # Where render and image differ is where the repair is learned: centre some crops there.
        err = (self.clean - self.degraded).abs().mean(1, keepdim=True)
        self.error_cells = F.avg_pool2d(err, _FOCUS_CELL, ceil_mode=True).flatten(1) + 1e-6
        self.cells_w = math.ceil(w / _FOCUS_CELL)

    def _corner(self, n: int, g: torch.Generator | None) -> tuple[int, int]:
        h, w = self.clean.shape[-2:]
        c = self.crop
        if self.focus > 0 and float(torch.rand((), generator=g)) < self.focus:
            cell = int(torch.multinomial(self.error_cells[n], 1, generator=g))
            cy = (cell // self.cells_w) * _FOCUS_CELL + _FOCUS_CELL // 2
            cx = (cell % self.cells_w) * _FOCUS_CELL + _FOCUS_CELL // 2
            y0, x0 = cy - c // 2, cx - c // 2
        else:
            y0 = int(torch.randint(0, h - c + 1, (), generator=g))
            x0 = int(torch.randint(0, w - c + 1, (), generator=g))
        return min(max(y0, 0), h - c), min(max(x0, 0), w - c)

    def _jitter(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """One pointwise colour map per sample, so both images of a pair change the same way."""
        bright, contrast, sat = params[:, 0:1, None, None], params[:, 1:2, None, None], params[:, 2:3, None, None]
        gains = params[:, 3:6, None, None]
        x = x * gains
        gray = x.mean(1, keepdim=True)
        x = gray + (x - gray) * sat
        x = (x - 0.5) * contrast + 0.5 + bright
        return x.clamp(0, 1)

    def sample(self, batch: int, generator: torch.Generator | None = None):
        n_pairs = self.clean.shape[0]
        idx = torch.randint(0, n_pairs, (batch,), generator=generator).tolist()
        c = self.crop
        cl, dg, al = [], [], []
        for n in idx:
            y0, x0 = self._corner(n, generator)
            cl.append(self.clean[n, :, y0:y0 + c, x0:x0 + c])
            dg.append(self.degraded[n, :, y0:y0 + c, x0:x0 + c])
            if self.alpha is not None:
                al.append(self.alpha[n, :, y0:y0 + c, x0:x0 + c])
        clean, degraded = torch.stack(cl), torch.stack(dg)
        alpha = torch.stack(al) if al else None
        if self.flip:
            flip = torch.rand(batch, generator=generator) < 0.5
            clean[flip], degraded[flip] = clean[flip].flip(-1), degraded[flip].flip(-1)
            if alpha is not None:
                alpha[flip] = alpha[flip].flip(-1)
        if self.jitter > 0:
            j = self.jitter
            u = torch.rand(batch, 6, generator=generator) * 2 - 1
            params = torch.cat([u[:, :1] * j, 1 + u[:, 1:3] * j, 1 + u[:, 3:6] * j / 2], 1)
            clean, degraded = self._jitter(clean, params), self._jitter(degraded, params)
        return clean, degraded, alpha


def train_repair_model(model: RepairModel, pairs: PairSet, cfg: PriorConfig, steps: int | None = None,
                       time_budget: float | None = None, generator: torch.Generator | None = None,
                       log: Callable[[str], None] | None = None, log_every: int = 100) -> RepairTrainStats:
    """AdamW with a cosine decay over whichever of the step budget and the time budget runs out first."""
    steps = cfg.train_steps if steps is None else steps
    budget = cfg.train_time_budget if time_budget is None else time_budget
    sampler = PairSampler(pairs, cfg.train_crop, model.multiple, cfg.flip, cfg.color_jitter, cfg.error_focus)
    opt = torch.optim.AdamW(model.unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    device = next(model.unet.parameters()).device
    stats = RepairTrainStats()
    model.unet.train()
    t0 = time.perf_counter()
    for step in range(steps):
        elapsed = time.perf_counter() - t0
        progress = max(step / max(steps, 1), elapsed / budget if budget else 0.0)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / 20)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        clean, degraded, alpha = sampler.sample(cfg.train_batch, generator)
        alpha = alpha.to(device) if alpha is not None else None
        loss = model.training_loss(clean.to(device), degraded.to(device), alpha, generator, cfg.strength)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
        opt.step()
        stats.losses.append(float(loss.detach()))
        stats.steps = step + 1
        if log and (step + 1) % log_every == 0:
            recent = stats.losses[-log_every:]
            log(f"repair model: step {step + 1}, loss {sum(recent) / len(recent):.4f}")
    stats.seconds = time.perf_counter() - t0
    model.unet.eval()
    return stats
