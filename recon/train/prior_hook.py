"""The diffusion prior inside a training run, as the Trainer's `extra_loss` hook.

Once training reaches `prior.start` of its budget, the hook builds the prior from the current Gaussians
(leave-one-out reconstructions at a lower resolution + perturbed renders -> repair model -> novel cameras;
recon.prior.setup.build_prior), then adds the distillation loss on every later step and re-renders/repairs
the novel views `prior.cycles` times, spread evenly over what is left of the run.

All of it happens inside Trainer.step, so the trainer's clock (state.elapsed) counts it: with a time budget
the prior competes with plain optimisation at equal wall time, and its build is held to `prior.build_share`
of that budget. Nothing of the hook is checkpointed: a resumed run past `prior.start` rebuilds the prior.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from recon.data.cameras import Cameras
from recon.data.scene import Scene
from recon.gaussians import Gaussians
from recon.prior.config import PriorConfig, check_prior_config
from recon.train.config import TrainConfig

InitFn = Callable[[Scene, list], Gaussians]  # (scene, train_idx) -> initial Gaussians of a reconstruction

# With a time budget, a build that would leave less than this share of the run for distilling is skipped.
_MIN_LEFT_TO_DISTILL = 0.1
# With a time budget, the render -> repair cycles may use this share of the time left after the build
# (the rest is for the distillation steps); fewer novel views / cycles are repaired when they would not fit.
_REFRESH_SHARE = 0.5


def check_prior_ready(cfg: PriorConfig) -> None:
    """ReconError (one line) for a prior that cannot run: bad settings or a missing/incomplete model folder.
    Cheap; call it before any training."""
    check_prior_config(cfg)
    if cfg.mode == "pretrained":
        from recon.prior.pretrained import check_controlnet_folder, check_sd_folder

        check_sd_folder(cfg.model_path)
        if cfg.controlnet_path:
            check_controlnet_folder(cfg.controlnet_path)


def downscaled_scene(scene: Scene, max_size: int) -> Scene:
    """The scene with images, masks and intrinsics resized so the longest side is at most max_size."""
    h, w = scene.height, scene.width
    if max(h, w) <= max_size:
        return scene
    s = max_size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))

    def resize(u8: torch.Tensor) -> torch.Tensor:  # (N, H, W, C) uint8
        x = u8.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    masks = resize(scene.masks[..., None])[..., 0] if scene.masks is not None else None
    return dataclasses.replace(scene, images=resize(scene.images), masks=masks, cameras=scene.cameras.rescaled(nw, nh))


def render_gaussians(g: Gaussians, cam: Cameras, background: torch.Tensor, sh_degree: int | None = None):
    """recon.render.rasterize of one camera on a fixed background -> (colours, alphas, meta)."""
    from recon.render import rasterize

    dev = g.means.device
    return rasterize(g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits), g.sh,
                     cam.viewmats.float().to(dev), cam.Ks.float().to(dev), cam.width, cam.height,
                     sh_degree=g.sh_degree if sh_degree is None else sh_degree,
                     backgrounds=background.to(dev)[None])


class _BuildInterrupted(Exception):
    pass


@contextmanager
def _interrupts_abort_build():
    """Ctrl-C / SIGTERM abort the build at once (it takes minutes) instead of waiting for it to end."""

    def handler(signum, frame):
        raise _BuildInterrupted(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class PriorHook:
    """`extra_loss(trainer, step)` for Trainer / StructuredTrainer.

    `init_fn(scene, train_idx)`: the initial Gaussians of a leave-one-out reconstruction (same method as the
    run's own); `background` (3,): the fixed colour the prior renders on and real images are composited on."""

    def __init__(self, cfg: PriorConfig, train_cfg: TrainConfig, init_fn: InitFn, background: torch.Tensor,
                 out_dir: str | Path | None = None, seed: int = 0, log: Callable[[str], None] = print,
                 train_background: str = "white"):
        check_prior_config(cfg)
        if cfg.mode == "none":
            raise ValueError("PriorHook needs prior.mode repair or pretrained")
        self.cfg, self.train_cfg, self.init_fn = cfg, train_cfg, init_fn
        self.background = background.detach().float().cpu()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed, self.log, self.train_background = seed, log, train_background
        self.built = False  # build attempted (the distiller may still be None: skipped)
        self.distiller = None
        self.refresh_at: list[float] = []  # progress fractions of the remaining render -> repair cycles
        self.build_seconds = 0.0
        self._called_at = time.perf_counter()

    # -- the hook -------------------------------------------------------------------------------
    def __call__(self, trainer, step: int) -> torch.Tensor:
        self._called_at = time.perf_counter()
        if not self.built and trainer.progress() >= self.cfg.start:
            if not self._build(trainer):
                return torch.zeros((), device=trainer.device)
        if self.distiller is None:
            return torch.zeros((), device=trainer.device)
        progress = self._progress_now(trainer)
        if self.refresh_at and progress >= self.refresh_at[0]:
            while self.refresh_at and progress >= self.refresh_at[0]:  # one refresh even if several are due
                self.refresh_at.pop(0)
            self.distiller.refresh(lambda cam: self._render_current(trainer, cam))
        return self.distiller.loss(lambda cam: self._render_current(trainer, cam), step)

    def _progress_now(self, trainer) -> float:
        """trainer.progress() counting the time already spent inside this step (the trainer adds it after)."""
        p = trainer.progress()
        if trainer.cfg.time_budget:
            p = max(p, (trainer.state.elapsed + time.perf_counter() - self._called_at) / trainer.cfg.time_budget)
        return min(p, 1.0)

    def _render_current(self, trainer, cam: Cameras):
        return render_gaussians(trainer.gaussians(), cam.to(trainer.device), self.background.to(trainer.device),
                                trainer.active_sh_degree())

    # -- building -------------------------------------------------------------------------------
    def _build_budget(self, trainer) -> float | None:
        """Seconds the build may take (None: no time budget, the prior's own step limits apply)."""
        budget = trainer.cfg.time_budget
        if not budget:
            return None
        left = (1.0 - trainer.progress()) * budget
        return min(self.cfg.build_share * budget, left - _MIN_LEFT_TO_DISTILL * budget)

    def _build(self, trainer) -> bool:
        """Build the prior now; False when interrupted (the trainer then saves and stops)."""
        from recon.prior.setup import build_prior
        from recon.train.trainer import TrainingInterrupted

        budget = self._build_budget(trainer)
        if budget is not None and budget <= 0:
            return self._skip(trainer, "too little of the time budget is left")
        per_view = None  # seconds one novel-view repair takes
        if budget is not None and self.cfg.mode == "repair":
            # an untrained model repairs as fast as a trained one: find out before spending the build
            per_view = self._time_one_repair(trainer, self._untrained_repairer(), trainer.scene.cameras[0])
            left = (1.0 - self._progress_now(trainer)) * trainer.cfg.time_budget - budget
            if _REFRESH_SHARE * left < per_view:
                return self._skip(trainer, f"one novel-view repair takes {per_view:.1f}s, more than the "
                                           f"~{max(left, 0):.0f}s left after building allow")
        cfg, loo_budget, deadline = self.cfg, None, None
        if budget is not None:
            n = max(len(trainer.train_idx), 1)
            loo_budget = budget * cfg.loo_share / n if cfg.loo_iterations > 0 and n > 1 else 0.0
            deadline = time.perf_counter() + budget  # build_prior cuts the repair model's training to it
        self.log(f"prior ({cfg.mode}): building at step {trainer.state.step} ({trainer.progress():.0%} of the run)"
                 + (f", budget {budget:.0f}s" if budget is not None else ""))
        t0 = time.perf_counter()
        loo_scene = downscaled_scene(trainer.scene, cfg.loo_max_size)

        def train_leave_one_out(scene: Scene, idx: list, iterations: int) -> Gaussians:
            return self._train_leave_one_out(loo_scene, idx, iterations, loo_budget, trainer.device)

        try:
            # the leave-one-out trainers reseed torch: keep the run's own random stream as it was
            with torch.random.fork_rng(devices=[]), _interrupts_abort_build():
                with torch.no_grad():
                    current = trainer.gaussians().detach()
                self.distiller = build_prior(
                    cfg, trainer.scene, current,
                    lambda g, cam: render_gaussians(g, cam, self.background), train_leave_one_out,
                    out_dir=self.out_dir, background=self.background, seed=self.seed, log=self.log,
                    device=trainer.device, deadline=deadline)
                if trainer.cfg.time_budget and self.distiller is not None and len(self.distiller):
                    if per_view is None:  # pretrained: time the loaded pipeline itself
                        per_view = self._time_one_repair(trainer, self.distiller.repairer, self.distiller.cameras[0])
        except (_BuildInterrupted, TrainingInterrupted) as e:
            self.distiller = None
            self.log("prior: build interrupted; --resume builds it again")
            # hand the signal to the trainer's own handler: it saves a checkpoint after this step and stops
            signum = e.args[0] if isinstance(e, _BuildInterrupted) else signal.SIGINT
            signal.raise_signal(signum)
            return False
        self.built = True
        cycles = self._fit_refreshes(trainer, per_view) if per_view is not None else cfg.cycles
        self.build_seconds = time.perf_counter() - t0
        if self.distiller is None:
            return True
        start = self._progress_now(trainer)
        # refresh_steps would place the cycles from prior.start on; the build has used part of the run
        # since, so the cycles are spread over what is left (the same steps when only iterations count)
        self.refresh_at = [start + k * (1.0 - start) / cycles for k in range(cycles)]
        self.log(f"prior: built in {self.build_seconds:.0f}s; distilling {len(self.distiller)} novel views "
                 f"from {start:.0%} of the run, {len(self.refresh_at)} render -> repair cycles")
        return True

    def _skip(self, trainer, why: str) -> bool:
        self.built, self.distiller = True, None
        self.log(f"prior: skipped at step {trainer.state.step}: {why} (give a longer --time-budget)")
        return True

    def _untrained_repairer(self):
        from recon.prior.repair import DiffusionRepairer
        from recon.prior.repair_model import RepairModel

        with torch.random.fork_rng(devices=[]):
            return DiffusionRepairer(RepairModel.from_config(self.cfg), self.cfg)

    def _time_one_repair(self, trainer, repairer, cam: Cameras) -> float:
        """Seconds `repairer` takes for one render of the current Gaussians at `cam`, at the full strength."""
        from recon.prior.images import split_render

        t = time.perf_counter()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            rgb, alpha = split_render(self._render_current(trainer, cam))
            alpha = alpha[None].float().cpu() if alpha is not None else None
            repairer.repair(rgb[None].float().clamp(0, 1).cpu(), [self.cfg.strength], alpha,
                            torch.Generator().manual_seed(self.seed))
        return time.perf_counter() - t

    def _fit_refreshes(self, trainer, per_view: float) -> int:
        """Keep as many novel views (spread evenly) and cycles as fit in _REFRESH_SHARE of the time left at
        `per_view` seconds a repair; drops the distiller when not even one fits. Returns the number of cycles."""
        d = self.distiller
        if d is None or len(d) == 0 or self.cfg.cycles == 0:
            return self.cfg.cycles
        left = (1.0 - self._progress_now(trainer)) * trainer.cfg.time_budget
        affordable = int(_REFRESH_SHARE * left / max(per_view, 1e-6))
        if affordable < 1:
            self._skip(trainer, f"one novel-view repair takes {per_view:.1f}s, more than the {left:.0f}s left allow")
            return 0
        views = min(len(d), max(1, affordable // self.cfg.cycles))
        cycles = min(self.cfg.cycles, max(1, affordable // views))
        if views < len(d):
            keep = torch.linspace(0, len(d) - 1, views).round().long().unique().tolist()
            d.cameras, d.strengths = d.cameras[keep], [d.strengths[i] for i in keep]
            self.log(f"prior: a repair takes {per_view:.1f}s; {len(keep)} of {self.cfg.novel_views} novel views "
                     f"x {cycles} cycles fit the time budget")
        return cycles

    def _train_leave_one_out(self, scene: Scene, idx: list, iterations: int, time_budget: float | None,
                             device) -> Gaussians:
        """A fresh Trainer on `idx` with the run's settings, `iterations` steps (and `time_budget` s)."""
        from recon.train.trainer import Trainer

        cfg = dataclasses.replace(self.train_cfg, iterations=iterations, time_budget=time_budget or None,
                                  checkpoint_every=0, log_every=10**9)
        t = Trainer(scene, idx, self.init_fn(scene, idx), cfg, out_dir=None, device=device,
                    seed=self.seed + 1 + min(idx), background=self.train_background, log=lambda msg: None)
        return t.train().detach()


def make_prior_hook(cfg, scene: Scene, out_dir: Path | None, log: Callable[[str], None]):
    """The PriorHook for a run's ReconConfig, or None when cfg.prior.mode is none."""
    if cfg.prior.mode == "none":
        return None
    from recon.pipeline import initial_gaussians
    from recon.train.evaluate import eval_background

    def init_fn(s: Scene, idx: list) -> Gaussians:
        return initial_gaussians(s, idx, cfg, lambda msg: None)[1]

    return PriorHook(cfg.prior, cfg.train, init_fn, eval_background(scene, cfg.data.background), out_dir=out_dir,
                     seed=cfg.seed, log=log, train_background=cfg.data.background)
