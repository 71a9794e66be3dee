"""Distillation of the repair into the Gaussians: render the novel cameras, repair the renders, and use the
repaired images as extra (lower-weight) targets; repeat the render -> repair cycle a few times.

The trainer owns rendering. It passes `render_fn(cameras_of_one_view)` returning the colour image (H, W, 3),
(1, H, W, 3), or a (colours, alphas, ...) tuple as recon.render.rasterize gives; it should render on one
fixed background (the repairer learnt images on the training background), and keep gradients for loss().
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from recon.data.cameras import Cameras
from recon.prior.config import PriorConfig
from recon.prior.images import save_png, split_render
from recon.prior.novel_cameras import NovelCameras

RenderViewFn = Callable[[Cameras], object]


def distance_aware_strengths(angle_to_nearest: torch.Tensor, strength: float, strength_min: float) -> list[float]:
    """Views beside a training camera need little repair; the farthest view gets the full strength."""
    if angle_to_nearest.numel() == 0:
        return []
    far = float(angle_to_nearest.max())
    if far <= 1e-9:
        return [strength_min] * angle_to_nearest.numel()
    frac = (angle_to_nearest / far).clamp(0, 1)
    return [float(strength_min + (strength - strength_min) * f) for f in frac]


class PriorDistiller:
    """Called by the trainer: refresh(render_fn) at refresh_steps(iterations); loss(render_fn, step) each step."""

    def __init__(self, repairer, novel: NovelCameras | Cameras, cfg: PriorConfig, out_dir: str | Path | None = None,
                 seed: int = 0, log: Callable[[str], None] | None = None):
        self.repairer, self.cfg, self.log = repairer, cfg, log
        if isinstance(novel, NovelCameras):
            self.cameras = novel.cameras
            self.strengths = distance_aware_strengths(novel.angle_to_nearest, cfg.strength, cfg.strength_min)
        else:
            self.cameras = novel
            self.strengths = [cfg.strength] * len(novel)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.cycle = 0  # completed refreshes
        self.renders: torch.Tensor | None = None  # (M, H, W, 3) of the last refresh
        self.targets: torch.Tensor | None = None  # (M, H, W, 3) repaired
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self.cameras)

    def refresh_steps(self, iterations: int) -> list[int]:
        """Training steps at which to call refresh(): the first at cfg.start, then evenly to the end."""
        c = self.cfg
        if c.cycles <= 0 or len(self) == 0:
            return []
        first = c.start * iterations
        span = (1.0 - c.start) * iterations / c.cycles
        return sorted({int(round(first + k * span)) for k in range(c.cycles)})

    @torch.no_grad()
    def refresh(self, render_fn: RenderViewFn) -> torch.Tensor:
        """Render every novel camera, repair the renders, keep them as targets; returns the targets."""
        rgbs, alphas = [], []
        for i in range(len(self)):
            rgb, alpha = split_render(render_fn(self.cameras[i]))
            rgbs.append(rgb.detach().float().clamp(0, 1).cpu())
            alphas.append(alpha.detach().float().cpu() if alpha is not None else None)
        if not rgbs:
            raise ValueError("no novel cameras to refresh")
        renders = torch.stack(rgbs)
        alpha = torch.stack(alphas) if all(a is not None for a in alphas) else None
        targets = self.repairer.repair(renders, self.strengths, alpha, self.generator)
        if targets.shape != renders.shape:
            raise ValueError(f"the repairer returned {tuple(targets.shape)} for renders {tuple(renders.shape)}")
        self.renders, self.targets = renders, targets
        self._order = torch.randperm(len(self), generator=self.generator).tolist()
        if self.out_dir is not None:
            folder = self.out_dir / "prior" / f"cycle_{self.cycle}"
            for i in range(len(self)):
                save_png(folder / f"view_{i:03d}_render.png", renders[i])
                save_png(folder / f"view_{i:03d}_repaired.png", targets[i])
        if self.log:
            change = float((targets - renders).abs().mean())
            self.log(f"prior: cycle {self.cycle} repaired {len(self)} novel views (mean change {change:.4f})")
        self.cycle += 1
        return targets

    def view_for_step(self, step: int) -> int:
        return self._order[step % len(self._order)]

    def loss(self, render_fn: RenderViewFn, step: int) -> torch.Tensor:
        """cfg.weight * ((1 - w) L1 + w (1 - SSIM)) between one novel view's render and its repaired target;
        zero before the first refresh."""
        from recon.train.losses import photometric_loss

        if self.targets is None or len(self) == 0:
            return torch.zeros(())
        i = self.view_for_step(step)
        rgb, _ = split_render(render_fn(self.cameras[i]))
        target = self.targets[i].to(rgb.device, rgb.dtype)
        return self.cfg.weight * photometric_loss(rgb[None], target[None], self.cfg.ssim_weight)
