"""One call for the trainer: pairs -> repairer -> novel cameras -> PriorDistiller (or None for mode=none)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from recon.data.scene import Scene
from recon.gaussians import Gaussians
from recon.prior.config import PriorConfig, check_prior_config
from recon.prior.distill import PriorDistiller
from recon.prior.novel_cameras import sample_novel_cameras
from recon.prior.pairs import LeaveOneOutFn, RenderFn, build_pairs
from recon.prior.repair import train_repairer


def build_prior(cfg: PriorConfig, scene: Scene, gaussians: Gaussians, render: RenderFn,
                train_leave_one_out: LeaveOneOutFn | None = None, out_dir: str | Path | None = None,
                background: torch.Tensor | None = None, seed: int = 0, log: Callable[[str], None] | None = None,
                device: str | torch.device = "cpu", deadline: float | None = None) -> PriorDistiller | None:
    """`gaussians`: the current reconstruction (perturbed for pairs); `render(gaussians, cameras)`: one view;
    `background` (3,): the colour renders and real images are composited on (use the same in render_fn);
    `deadline` (time.perf_counter() value): the repair model trains at most until then, whatever the pairs took."""
    check_prior_config(cfg)
    if cfg.mode == "none":
        return None
    if cfg.mode == "pretrained":  # refuse a bad folder before spending minutes on pairs
        from recon.prior.pretrained import check_controlnet_folder, check_sd_folder

        check_sd_folder(cfg.model_path)
        if cfg.controlnet_path:
            check_controlnet_folder(cfg.controlnet_path)
    generator = torch.Generator().manual_seed(seed)
    need_pairs = cfg.mode == "repair" or cfg.lora_steps > 0
    pairs = build_pairs(scene, gaussians, render, cfg, train_leave_one_out, background, generator, log) \
        if need_pairs else None
    if log and pairs is not None:
        log(f"prior: {len(pairs)} training pairs ({', '.join(sorted(set(pairs.kinds)))})")
    if deadline is not None and cfg.mode == "repair":
        left = max(deadline - time.perf_counter(), 1.0)
        cfg = dataclasses.replace(cfg, train_time_budget=min(cfg.train_time_budget, left))
    repairer = train_repairer(cfg, pairs, out_dir, generator, log, device)
    novel = sample_novel_cameras(scene.cameras[list(scene.train_idx)], cfg.novel_views,
                                 elevation_jitter_deg=cfg.elevation_jitter_deg, max_gap_deg=cfg.max_gap_deg,
                                 generator=generator)
    return PriorDistiller(repairer, novel, cfg, out_dir, seed=seed, log=log)
