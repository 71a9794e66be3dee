from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PriorConfig:
    mode: str = "none"  # none | repair | pretrained
    model_path: str | None = None  # local Stable Diffusion folder for mode=pretrained
    controlnet_path: str | None = None  # optional local ControlNet (tile) folder for mode=pretrained

    # -- repair model (mode=repair): a small conditional UNet trained per scene on the CPU
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    use_alpha: bool = False  # feed the render's alpha as an extra conditioning channel
    prediction_type: str = "sample"  # sample (render + correction) | epsilon | v_prediction
    num_train_timesteps: int = 1000
    train_crop: int = 64  # px; random crops of the pairs
    train_batch: int = 8
    train_steps: int = 800  # upper bound; train_time_budget usually stops it first on a CPU
    train_time_budget: float = 150.0  # seconds of repair-model training per scene
    lr: float = 1e-3
    flip: bool = True  # random horizontal flips of both images of a pair
    color_jitter: float = 0.1  # brightness/contrast/saturation/channel-gain jitter, same for both images
    error_focus: float = 0.5  # share of crops centred where render and image differ most
    strength: float = 0.5  # SDEdit strength: the render is noised to strength*T, then denoised
    strength_min: float = 0.25  # distance-aware: strength for novel views right beside a training view
    sample_steps: int = 10  # DDIM steps from strength*T down to 0
    repair_max_size: int = 256  # longest side the repair runs at; finer detail is kept from the render

    # -- self-generated pairs (GaussianObject): leave-one-out renders + renders of perturbed Gaussians
    loo_iterations: int = 300  # training iterations of each leave-one-out reconstruction
    perturb_per_view: int = 4  # perturbed renders per training view (rendering is cheap)
    perturb_means: float = 0.01  # std of the position noise, normalised units (object ~ unit sphere)
    perturb_log_scales: float = 0.3
    perturb_opacity: float = 0.7  # std of the opacity-logit noise
    perturb_color: float = 0.08  # std of the colour noise, in RGB units
    current_pairs: bool = True  # also pair the reconstruction's own renders of the training views (near-identity)

    # -- novel cameras (between and around the training cameras)
    novel_views: int = 16
    elevation_jitter_deg: float = 10.0
    max_gap_deg: float = 150.0  # wider gaps between neighbouring training cameras are not bridged

    # -- distillation into the Gaussians
    weight: float = 0.3  # weight of the repaired-view loss relative to the real views (1.0)
    ssim_weight: float = 0.2
    cycles: int = 3  # render -> repair -> supervise cycles
    start: float = 0.5  # fraction of training at which the prior is built (the first cycle follows at once)
    # -- cost inside a training run (recon.train.prior_hook); the build counts against the time budget
    build_share: float = 0.3  # with train.time_budget: the build may use at most this share of it
    loo_share: float = 0.3  # of the build's time, the share for the leave-one-out reconstructions
    loo_max_size: int = 200  # px; longest side the leave-one-out reconstructions train at

    # -- pretrained img2img (mode=pretrained)
    prompt: str = "a high quality photo of an object"
    guidance_scale: float = 1.0  # 1.0 = no classifier-free guidance (half the UNet passes)
    pretrained_size: int = 512  # px; renders are resized to this for Stable Diffusion
    controlnet_scale: float = 1.0
    lora_rank: int = 4
    lora_steps: int = 0  # LoRA fine-tuning steps on the pairs; 0 = use the model as it is
    lora_lr: float = 1e-4


PRIOR_MODES = ("none", "repair", "pretrained")


def check_prior_config(cfg: PriorConfig) -> None:
    """Raise ReconError (one line) for settings that cannot work."""
    from recon.errors import ReconError

    if cfg.mode not in PRIOR_MODES:
        raise ReconError(f"prior.mode {cfg.mode!r} is unknown", fix=f"choose one of {', '.join(PRIOR_MODES)}")
    if cfg.mode == "pretrained" and not cfg.model_path:
        raise ReconError("prior.mode=pretrained needs a local Stable Diffusion folder",
                         fix="pass --prior-model PATH (a diffusers folder with model_index.json)")
    if cfg.prediction_type not in ("sample", "epsilon", "v_prediction"):
        raise ReconError(f"prior.prediction_type {cfg.prediction_type!r} is unknown",
                         fix="use sample, epsilon or v_prediction")
    if not (0.0 < cfg.strength <= 1.0) or not (0.0 <= cfg.strength_min <= cfg.strength):
        raise ReconError(f"prior.strength={cfg.strength} / prior.strength_min={cfg.strength_min} are out of range",
                         fix="use 0 <= strength_min <= strength <= 1 and strength > 0")
    if cfg.sample_steps < 1 or cfg.train_crop < 16 or cfg.train_batch < 1 or cfg.novel_views < 0 or cfg.cycles < 0:
        raise ReconError("prior.sample_steps, train_crop (>= 16), train_batch, novel_views or cycles is out of range")
    if not (0.0 <= cfg.start < 1.0):
        raise ReconError(f"prior.start={cfg.start} is out of range", fix="use a fraction of training in [0, 1)")
    if not (0.0 < cfg.build_share and cfg.start + cfg.build_share < 1.0) or not (0.0 <= cfg.loo_share < 1.0):
        raise ReconError(f"prior.build_share={cfg.build_share} / loo_share={cfg.loo_share} are out of range",
                         fix="use build_share > 0 with start + build_share < 1, and 0 <= loo_share < 1")
    if cfg.loo_max_size < 16:
        raise ReconError(f"prior.loo_max_size={cfg.loo_max_size} is too small", fix="use 16 px or more")
    if any(c < 8 for c in cfg.block_out_channels) or not cfg.block_out_channels:
        raise ReconError("prior.block_out_channels needs one or more widths of at least 8")
