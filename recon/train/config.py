from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    iterations: int = 3000
    time_budget: float | None = None  # seconds of training; schedules follow whichever runs out first
    sh_degree: int = 3  # final SH degree; grows by one every sh_degree_every of the run
    sh_degree_every: float = 0.2  # fraction of the run between SH degree increases
    background: str = "random"  # training background behind masked/RGBA images: random | white | black
    ssim_weight: float = 0.2
    mask_weight: float = 0.1  # alpha-vs-mask loss weight (masked scenes)
    opacity_reg: float = 0.0  # mean opacity penalty (sparser, fewer floaters)
    scale_reg: float = 0.0  # penalty on scales above max_scale
    max_scale: float = 0.1  # in normalised units (the bound is [-1, 1]^3)
    # learning rates (3DGS defaults for a scene of extent ~1)
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    # densification (gsplat strategies)
    strategy: str = "default"  # default | mcmc | none
    refine_start: float = 0.05  # fraction of the run
    refine_stop: float = 0.6
    refine_every: int = 100
    grow_grad2d: float = 0.0002
    prune_opa: float = 0.005
    cap_max: int = 200_000  # MCMC budget / hard cap on the number of Gaussians
    # floater removal (masked scenes): drop Gaussians whose centre falls outside the masks
    floater_steps: list[float] | None = None  # fractions of the run, e.g. [0.3, 0.6]
    checkpoint_every: int = 500
    log_every: int = 10
