"""Self-generated (degraded render, real image) pairs, as GaussianObject makes them.

* leave-one-out: a reconstruction trained without view i renders view i badly (the kind of error an unseen
  viewpoint shows: missing or wrong geometry);
* perturbed: noise added to the Gaussians' means, scales, opacities and colours renders the training views
  badly (blur, holes, floaters, colour shifts);
* current: the reconstruction itself renders the training views almost right, which teaches the model to
  leave what is already right alone (GaussianObject gets these from its leave-one-out models' seen views).

Rendering and training are passed in as callables, so this module depends on neither:
  render(gaussians, cameras_of_one_view) -> (H, W, 3) image, (H, W, 4), or a (colours, alphas, ...) tuple;
  train_leave_one_out(scene, train_idx_without_i, iterations) -> Gaussians.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from recon.data.cameras import Cameras
from recon.data.scene import Scene
from recon.gaussians import SH_C0, Gaussians
from recon.prior.config import PriorConfig
from recon.prior.images import split_render

RenderFn = Callable[[Gaussians, Cameras], object]
LeaveOneOutFn = Callable[[Scene, list, int], Gaussians]


@dataclass
class PairSet:
    """N pairs of one image size. degraded/clean: (N, H, W, 3) float in [0, 1]; alpha: (N, H, W, 1) of the
    degraded render, or None when the renderer gave none."""

    degraded: torch.Tensor
    clean: torch.Tensor
    alpha: torch.Tensor | None = None
    views: list[int] = field(default_factory=list)  # scene frame index of each pair
    kinds: list[str] = field(default_factory=list)  # "leave_one_out" | "perturbed" | ...

    def __post_init__(self):
        if self.degraded.shape != self.clean.shape or self.degraded.dim() != 4 or self.degraded.shape[-1] != 3:
            raise ValueError(f"degraded {tuple(self.degraded.shape)} and clean {tuple(self.clean.shape)} "
                             "must both be (N, H, W, 3)")
        if self.alpha is not None and self.alpha.shape != self.degraded.shape[:-1] + (1,):
            raise ValueError(f"alpha {tuple(self.alpha.shape)} must be (N, H, W, 1)")
        n = len(self)
        if len(self.views) != n or len(self.kinds) != n:
            raise ValueError(f"{n} pairs but {len(self.views)} views and {len(self.kinds)} kinds")

    def __len__(self) -> int:
        return self.degraded.shape[0]

    @staticmethod
    def empty(height: int, width: int) -> "PairSet":
        z = torch.zeros(0, height, width, 3)
        return PairSet(z, z.clone(), None, [], [])

    @staticmethod
    def concat(sets: list["PairSet"]) -> "PairSet":
        sets = [s for s in sets if len(s)] or sets[:1]
        if not sets:
            raise ValueError("nothing to concatenate")
        alpha = None
        if all(s.alpha is not None for s in sets):
            alpha = torch.cat([s.alpha for s in sets])
        return PairSet(torch.cat([s.degraded for s in sets]), torch.cat([s.clean for s in sets]), alpha,
                       [v for s in sets for v in s.views], [k for s in sets for k in s.kinds])


def _stack(degraded: list, clean: list, alphas: list, views: list, kinds: list, h: int, w: int) -> PairSet:
    if not degraded:
        return PairSet.empty(h, w)
    alpha = torch.stack(alphas) if all(a is not None for a in alphas) else None
    return PairSet(torch.stack(degraded), torch.stack(clean), alpha, views, kinds)


def _render_one(render: RenderFn, g: Gaussians, cam: Cameras, h: int, w: int):
    with torch.no_grad():
        rgb, alpha = split_render(render(g, cam))
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"the renderer returned {tuple(rgb.shape[:2])} for a {h}x{w} camera")
    rgb = rgb.detach().float().clamp(0, 1).cpu()
    return rgb, (alpha.detach().float().clamp(0, 1).cpu() if alpha is not None else None)


def leave_one_out_pairs(scene: Scene, render: RenderFn, train_leave_one_out: LeaveOneOutFn, iterations: int,
                        background: torch.Tensor | None = None, train_idx: list[int] | None = None,
                        log: Callable[[str], None] | None = None) -> PairSet:
    """For every training view i: reconstruct without it, render view i, pair with the real image i."""
    idx = list(scene.train_idx if train_idx is None else train_idx)
    h, w = scene.height, scene.width
    deg, cln, alp, views = [], [], [], []
    if len(idx) < 2:  # nothing is left to reconstruct from
        return PairSet.empty(h, w)
    for i in idx:
        others = [j for j in idx if j != i]
        if log:
            log(f"prior pairs: leave-one-out reconstruction without view {i} ({iterations} iterations)")
        g = train_leave_one_out(scene, others, iterations)
        rgb, alpha = _render_one(render, g, scene.cameras[i], h, w)
        deg.append(rgb)
        alp.append(alpha)
        cln.append(scene.image_float(i, background))
        views.append(i)
    return _stack(deg, cln, alp, views, ["leave_one_out"] * len(views), h, w)


def perturb_gaussians(g: Gaussians, means_std: float, log_scales_std: float, opacity_std: float,
                      color_std: float, generator: torch.Generator | None = None) -> Gaussians:
    """A noisy copy of `g`: Gaussian noise on positions, log-scales, opacity logits and the DC colour."""

    def noise(t: torch.Tensor, std: float) -> torch.Tensor:
        if std <= 0:
            return torch.zeros_like(t)
        return torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * std

    g = g.detach()
    sh = g.sh.clone()
    sh[:, 0] = sh[:, 0] + noise(sh[:, 0], color_std / SH_C0)
    return Gaussians(g.means + noise(g.means, means_std), g.quats.clone(),
                     g.log_scales + noise(g.log_scales, log_scales_std),
                     g.opacity_logits + noise(g.opacity_logits, opacity_std), sh)


def perturbed_pairs(scene: Scene, gaussians: Gaussians, render: RenderFn, cfg: PriorConfig,
                    background: torch.Tensor | None = None, train_idx: list[int] | None = None,
                    generator: torch.Generator | None = None) -> PairSet:
    """`cfg.perturb_per_view` renders of noise-perturbed Gaussians per training view, each at a random
    severity (0.5x to 1.5x the configured noise) so the model sees mild and strong damage."""
    idx = list(scene.train_idx if train_idx is None else train_idx)
    h, w = scene.height, scene.width
    deg, cln, alp, views = [], [], [], []
    for i in idx:
        clean = scene.image_float(i, background)
        for _ in range(cfg.perturb_per_view):
            s = 0.5 + float(torch.rand((), generator=generator))
            g = perturb_gaussians(gaussians, cfg.perturb_means * s, cfg.perturb_log_scales * s,
                                  cfg.perturb_opacity * s, cfg.perturb_color * s, generator)
            rgb, alpha = _render_one(render, g, scene.cameras[i], h, w)
            deg.append(rgb)
            alp.append(alpha)
            cln.append(clean)
            views.append(i)
    return _stack(deg, cln, alp, views, ["perturbed"] * len(views), h, w)


def current_pairs(scene: Scene, gaussians: Gaussians, render: RenderFn, background: torch.Tensor | None = None,
                  train_idx: list[int] | None = None) -> PairSet:
    """The reconstruction's own renders of the training views, paired with the real images."""
    idx = list(scene.train_idx if train_idx is None else train_idx)
    h, w = scene.height, scene.width
    deg, cln, alp = [], [], []
    for i in idx:
        rgb, alpha = _render_one(render, gaussians, scene.cameras[i], h, w)
        deg.append(rgb)
        alp.append(alpha)
        cln.append(scene.image_float(i, background))
    return _stack(deg, cln, alp, idx, ["current"] * len(idx), h, w)


def build_pairs(scene: Scene, gaussians: Gaussians, render: RenderFn, cfg: PriorConfig,
                train_leave_one_out: LeaveOneOutFn | None = None, background: torch.Tensor | None = None,
                generator: torch.Generator | None = None, log: Callable[[str], None] | None = None) -> PairSet:
    """Leave-one-out pairs (when a trainer callable is given) + perturbed pairs + the reconstruction's own
    renders of the training views (cfg.current_pairs)."""
    sets = []
    if train_leave_one_out is not None and cfg.loo_iterations > 0:
        sets.append(leave_one_out_pairs(scene, render, train_leave_one_out, cfg.loo_iterations, background, log=log))
    if cfg.perturb_per_view > 0:
        sets.append(perturbed_pairs(scene, gaussians, render, cfg, background, generator=generator))
    if cfg.current_pairs:
        sets.append(current_pairs(scene, gaussians, render, background))
    if not sets:
        return PairSet.empty(scene.height, scene.width)
    return PairSet.concat(sets)
