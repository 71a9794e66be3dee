"""Optimisation of free Gaussians against the training views (3DGS recipe + sparse-view regularisers).

Densification goes through gsplat's strategies (DefaultStrategy / MCMCStrategy), which run unchanged on
the CPU because recon.render.rasterize returns gsplat's meta.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from recon.data.scene import Scene
from recon.gaussians import Gaussians
from recon.train.checkpoint import load_checkpoint, save_checkpoint
from recon.train.config import TrainConfig
from recon.train.losses import photometric_loss, psnr


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the last checkpoint is safely on disk."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"interrupted at step {step}; the last checkpoint is {checkpoint}. "
                         f"Run the same command with --resume to continue.")
        self.checkpoint = checkpoint
        self.step = step


@dataclass
class TrainState:
    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)


def _background(kind: str, device) -> torch.Tensor:
    if kind == "white":
        return torch.ones(3, device=device)
    if kind == "black":
        return torch.zeros(3, device=device)
    return torch.rand(3, device=device)


class Trainer:
    def __init__(self, scene: Scene, train_idx: list[int], init: Gaussians, cfg: TrainConfig,
                 out_dir: Path | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 background: str = "white", log: Callable[[str], None] = print, viewer=None,
                 extra_loss: Callable | None = None):
        self._setup_views(scene, train_idx, cfg, out_dir, device, seed, background, log, viewer, extra_loss)
        self.params = self._make_params(init.with_sh_degree(cfg.sh_degree))
        self.optimizers = self._make_optimizers()
        self.strategy, self.strategy_state = self._make_strategy()
        self.state = TrainState()

    # -- setup -------------------------------------------------------------------------------
    def _setup_views(self, scene, train_idx, cfg, out_dir, device, seed, background, log, viewer, extra_loss):
        """Settings, RNGs and the training views on the device (shared with StructuredTrainer)."""
        self.scene, self.cfg, self.device = scene, cfg, torch.device(device)
        self.train_idx = list(train_idx)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log, self.viewer, self.extra_loss = log, viewer, extra_loss
        self.seed = seed
        self.fixed_background = background
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)

        cams = scene.cameras[self.train_idx].to(self.device)
        self.viewmats = cams.viewmats.float()
        self.Ks = cams.Ks.float()
        self.W, self.H = cams.width, cams.height
        self.images = torch.stack([scene.image_float(i) for i in self.train_idx]).to(self.device)
        self.masks = None
        if scene.masks is not None:
            self.masks = torch.stack([scene.mask_float(i) for i in self.train_idx])[..., None].to(self.device)

    def _make_params(self, g: Gaussians) -> torch.nn.ParameterDict:
        d = {
            "means": g.means, "quats": g.quats, "scales": g.log_scales, "opacities": g.opacity_logits,
            "sh0": g.sh[:, :1], "shN": g.sh[:, 1:],
        }
        return torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.detach().to(self.device, torch.float32).contiguous()) for k, v in d.items()})

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        lrs = {"means": c.lr_means, "quats": c.lr_quats, "scales": c.lr_scales, "opacities": c.lr_opacities,
               "sh0": c.lr_sh0, "shN": c.lr_shN}
        return {k: torch.optim.Adam([{"params": self.params[k], "lr": lr, "name": k}], eps=1e-15, fused=True)
                for k, lr in lrs.items()}

    def _make_strategy(self, start: int = 0, span: int | None = None):
        """The densification strategy, its schedule (refine_start/stop fractions) laid over `span` steps
        (default: the whole run) that begin at step `start` of the run."""
        from gsplat.strategy import DefaultStrategy, MCMCStrategy

        c = self.cfg
        self.strategy_start = start
        if c.strategy == "none":
            return None, None
        at = lambda fraction: self._at(fraction, span)
        if c.strategy == "mcmc":
            s = MCMCStrategy(cap_max=c.cap_max, refine_start_iter=at(c.refine_start),
                             refine_stop_iter=at(c.refine_stop), refine_every=c.refine_every)
        else:
            s = DefaultStrategy(refine_start_iter=at(c.refine_start), refine_stop_iter=at(c.refine_stop),
                                refine_every=c.refine_every, grow_grad2d=c.grow_grad2d, prune_opa=c.prune_opa,
                                reset_every=10**9)
        s.check_sanity(self.params, self.optimizers)
        return s, s.initialize_state(scene_scale=1.0)

    def _at(self, fraction: float, span: int | None = None) -> int:
        return int(round(fraction * (self.cfg.iterations if span is None else span)))

    # -- helpers ------------------------------------------------------------------------------
    def gaussians(self) -> Gaussians:
        p = self.params
        return Gaussians(p["means"], p["quats"], p["scales"], p["opacities"], torch.cat([p["sh0"], p["shN"]], 1))

    def progress(self) -> float:
        c = self.cfg
        p = self.state.step / max(c.iterations, 1)
        if c.time_budget:
            p = max(p, self.state.elapsed / c.time_budget)
        return min(p, 1.0)

    def active_sh_degree(self) -> int:
        c = self.cfg
        if c.sh_degree_every <= 0:
            return c.sh_degree
        return min(c.sh_degree, int(self.progress() / c.sh_degree_every))

    def render(self, g: Gaussians, viewmats, Ks, background: torch.Tensor, sh_degree: int, absgrad=False):
        # g: Gaussians, or the decoder's DecodedGaussians (whose .sh is the (sh0, per-voxel rest) pair)
        return self._rasterize(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh, viewmats, Ks, background,
                               sh_degree, absgrad)

    def _rasterize(self, means, quats, log_scales, opacity_logits, sh, viewmats, Ks, background: torch.Tensor,
                   sh_degree: int, absgrad=False):
        from recon.render import rasterize

        return rasterize(means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits), sh,
                         viewmats, Ks, self.W, self.H, sh_degree=sh_degree,
                         backgrounds=background.expand(viewmats.shape[0], 3), absgrad=absgrad)

    def _update_lr(self):
        c = self.cfg
        t = self.progress()
        lr = math.exp((1 - t) * math.log(c.lr_means) + t * math.log(c.lr_means_final))
        for group in self.optimizers["means"].param_groups:
            group["lr"] = lr
        return lr

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints" / "last.pt"

    def save(self) -> Path | None:
        if self.checkpoint_path is None:
            return None
        save_checkpoint(self.checkpoint_path, self)
        return self.checkpoint_path

    def resume(self) -> bool:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        load_checkpoint(self.checkpoint_path, self)
        return True

    # -- floaters ----------------------------------------------------------------------------
    @torch.no_grad()
    def remove_floaters(self) -> int:
        """Drop Gaussians whose centre projects onto background (mask = 0) in a training view that sees it."""
        if self.masks is None:
            return 0
        from gsplat.strategy.ops import remove

        means = self.params["means"]
        outside = self.outside_masks(means)
        n = int(outside.sum())
        if 0 < n < means.shape[0]:
            state = self.strategy_state if self.strategy_state is not None else {}
            remove(self.params, self.optimizers, state, outside)
        return n

    @torch.no_grad()
    def outside_masks(self, means: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the centre projects onto background (mask = 0) in a training view that sees it."""
        cams = self.scene.cameras[self.train_idx]
        uv, z = cams.to(self.device).project(means.double())
        u = uv[..., 0].floor().long()
        v = uv[..., 1].floor().long()
        inside = (z > 0) & (u >= 0) & (u < self.W) & (v >= 0) & (v < self.H)
        m = self.masks[..., 0]
        # dilate by a few pixels so rough masks do not eat thin parts
        m = torch.nn.functional.max_pool2d(m[:, None], 5, stride=1, padding=2)[:, 0]
        vi = torch.arange(m.shape[0], device=self.device)[:, None].expand_as(u)
        val = m[vi, v.clamp(0, self.H - 1), u.clamp(0, self.W - 1)]
        return (inside & (val < 0.5)).any(0)

    # -- the loop ----------------------------------------------------------------------------
    def _next_view(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The training view of this step (each view once per epoch, shuffled), its background and target."""
        c, step = self.cfg, self.state.step
        n_views = len(self.train_idx)
        if step % n_views == 0 or not hasattr(self, "_order"):
            self._order = torch.randperm(n_views, generator=self.generator).tolist()
        vi = self._order[step % n_views]
        bg = _background(c.background if self.masks is not None else self.fixed_background, self.device)
        target = self.images[vi:vi + 1]
        if self.masks is not None:
            a = self.masks[vi:vi + 1]
            target = target * a + bg * (1 - a)
        return vi, bg, target

    def loss(self, opacity_logits: torch.Tensor, log_scales: torch.Tensor, colors: torch.Tensor,
             alphas: torch.Tensor, target: torch.Tensor, vi: int, step: int) -> torch.Tensor:
        """Photometric loss plus the mask, opacity, scale and extra terms for Gaussians (these opacities and
        scales) rendered into training view `vi` (shared with StructuredTrainer, for the decoder's output)."""
        c = self.cfg
        loss = photometric_loss(colors, target, c.ssim_weight)
        if self.masks is not None and c.mask_weight > 0:
            loss = loss + c.mask_weight * (alphas - self.masks[vi:vi + 1]).abs().mean()
        if c.opacity_reg > 0:
            loss = loss + c.opacity_reg * torch.sigmoid(opacity_logits).mean()
        if c.scale_reg > 0:
            excess = torch.relu(torch.exp(log_scales) - c.max_scale)
            loss = loss + c.scale_reg * excess.mean()
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self, step)
        return loss

    def step(self) -> dict:
        c, s = self.cfg, self.state
        step = s.step
        strategy_step = step - self.strategy_start
        vi, bg, target = self._next_view()

        p = self.params
        deg = self.active_sh_degree()
        absgrad = bool(getattr(self.strategy, "absgrad", False))
        # the SH go in as the stored (sh0, shN) pair: concatenating them every step (and splitting their
        # gradient) cost ~5% of a step at 40k Gaussians with SH degree 3 (self.gaussians() does concatenate)
        colors, alphas, meta = self._rasterize(p["means"], p["quats"], p["scales"], p["opacities"],
                                               (p["sh0"], p["shN"]), self.viewmats[vi:vi + 1], self.Ks[vi:vi + 1],
                                               bg, deg, absgrad)
        if self.strategy is not None:
            self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, strategy_step, meta)
        loss = self.loss(p["opacities"], p["scales"], colors, alphas, target, vi, step)
        loss.backward()
        lr = self._update_lr()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.strategy is not None:
            if self.cfg.strategy == "mcmc":
                self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, strategy_step,
                                                 meta, lr=lr)
            else:
                self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, strategy_step,
                                                 meta)
                self._enforce_cap()
        with torch.no_grad():
            train_psnr = float(psnr(colors.detach(), target))
        return {"loss": float(loss.detach()), "psnr": train_psnr, "n_gaussians": int(self.params["means"].shape[0]),
                "sh_degree": deg}

    def _enforce_cap(self):
        """Hard cap on the Gaussian count for DefaultStrategy: prune the most transparent beyond cap_max."""
        n = self.params["means"].shape[0]
        if n <= self.cfg.cap_max:
            return
        from gsplat.strategy.ops import remove

        opa = self.params["opacities"].detach()
        drop = torch.zeros(n, dtype=torch.bool, device=opa.device)
        drop[torch.argsort(opa)[: n - self.cfg.cap_max]] = True
        remove(self.params, self.optimizers, self.strategy_state, drop)

    def train(self, resume: bool = False, progress=None) -> Gaussians:
        """Run to the end of the iteration/time budget. Ctrl-C or SIGTERM saves a checkpoint and raises
        TrainingInterrupted. `progress(step, total, info)` is called after each step."""
        if resume and self.resume():
            self.log(f"resumed from {self.checkpoint_path} at step {self.state.step}")
        c = self.cfg
        floater_at = sorted({self._at(f) for f in (c.floater_steps or [])})
        stop = {"flag": False}

        def on_signal(signum, frame):
            stop["flag"] = True

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, on_signal)
            except ValueError:  # not in the main thread
                pass
        try:
            t_last = time.perf_counter()
            while self.progress() < 1.0:
                if self.viewer is not None:
                    while self.viewer.paused and not self.viewer.stop_requested and not stop["flag"]:
                        time.sleep(0.1)
                        t_last = time.perf_counter()
                    if self.viewer.stop_requested:
                        self.log(f"stopped from the viewer at step {self.state.step}")
                        break
                info = self.step()
                self.state.step += 1
                now = time.perf_counter()
                self.state.elapsed += now - t_last
                t_last = now
                if self.state.step in floater_at:
                    n = self.remove_floaters()
                    self.log(f"step {self.state.step}: removed {n} floaters")
                if self.state.step % c.log_every == 0 or self.progress() >= 1.0:
                    rec = {"step": self.state.step, "elapsed": round(self.state.elapsed, 2), **info}
                    self.state.history.append(rec)
                if c.checkpoint_every and self.state.step % c.checkpoint_every == 0:
                    self.save()
                if self.viewer is not None:
                    self.viewer.update(self.state.step, self.gaussians().detach(), {**info, "progress": self.progress()})
                if progress is not None:
                    progress(self.state.step, self.estimated_total(), info)
                if stop["flag"]:
                    path = self.save()
                    raise TrainingInterrupted(path, self.state.step)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.save()
        return self.gaussians().detach()

    def estimated_total(self) -> int:
        p = self.progress()
        if p <= 0:
            return self.cfg.iterations
        return max(self.state.step, int(round(self.state.step / p)))
