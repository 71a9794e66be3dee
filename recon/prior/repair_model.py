"""The offline repair model: a small conditional denoising diffusion model (diffusers UNet2DModel).

The UNet sees the noisy image and, as extra input channels, the degraded render (and optionally its alpha).
Training uses DDPMScheduler's forward process; repair is SDEdit-style DDIM sampling that starts from the
*render* noised to strength*T, so the result stays close to the render where the render is right.

With prediction_type "sample" (the default) the UNet predicts the clean image as render + correction: an
untrained or unsure model returns the render unchanged (DDIM then retraces the very noise it added), which
makes a few CPU minutes of training safe. "epsilon" and "v_prediction" are the textbook alternatives.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from recon.errors import ReconError
from recon.prior.config import PriorConfig

BETA_SCHEDULE = "squaredcos_cap_v2"  # a cosine schedule: strength 0.5 keeps about half the render's signal
_MODEL_FILE = "repair.json"


def _norm_groups(channels: list[int]) -> int:
    for g in (8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


class RepairModel(torch.nn.Module):
    """Conditional denoiser. Images are (B, 3, H, W) in [0, 1]; internally in [-1, 1]."""

    def __init__(self, unet, prediction_type: str = "sample", num_train_timesteps: int = 1000,
                 use_alpha: bool = False):
        super().__init__()
        from diffusers import DDIMScheduler, DDPMScheduler

        expected = 3 + 3 + (1 if use_alpha else 0)
        if unet.config.in_channels != expected:
            raise ValueError(f"the UNet takes {unet.config.in_channels} channels, the repair model feeds {expected}")
        self.unet = unet
        self.use_alpha = use_alpha
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.train_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE,
                                             prediction_type=prediction_type, clip_sample=False)
        # "trailing" spacing lets strength 1.0 start at the last timestep (pure noise) as SDEdit intends.
        self.sample_scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=BETA_SCHEDULE,
                                              prediction_type=prediction_type, clip_sample=True,
                                              set_alpha_to_one=True, timestep_spacing="trailing")
        self.multiple = 2 ** (len(unet.config.block_out_channels) - 1)

    # -- construction ----------------------------------------------------------------------------
    @staticmethod
    def from_config(cfg: PriorConfig) -> "RepairModel":
        from diffusers import UNet2DModel

        chans = [int(c) for c in cfg.block_out_channels]
        n = len(chans)
        unet = UNet2DModel(
            in_channels=6 + (1 if cfg.use_alpha else 0), out_channels=3,
            block_out_channels=tuple(chans), layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            add_attention=False,  # attention is slow on CPU and brings little at 64-128 px crops
            norm_num_groups=_norm_groups(chans),
        )
        if cfg.prediction_type == "sample":  # start as the identity: render in, render out
            torch.nn.init.zeros_(unet.conv_out.weight)
            torch.nn.init.zeros_(unet.conv_out.bias)
        return RepairModel(unet, cfg.prediction_type, cfg.num_train_timesteps, cfg.use_alpha)

    def save(self, folder: str | Path) -> None:
        """unet/ (diffusers safetensors) + repair.json; written beside, then renamed into place."""
        import shutil
        import tempfile

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            (tmp / _MODEL_FILE).write_text(json.dumps({
                "prediction_type": self.prediction_type, "num_train_timesteps": self.num_train_timesteps,
                "use_alpha": self.use_alpha, "beta_schedule": BETA_SCHEDULE}, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    @staticmethod
    def load(folder: str | Path) -> "RepairModel":
        from diffusers import UNet2DModel

        folder = Path(folder)
        meta_path = folder / _MODEL_FILE
        if not meta_path.is_file() or not (folder / "unet" / "config.json").is_file():
            raise ReconError("not a saved repair model (repair.json and unet/ are missing)", path=folder,
                             fix="point at a folder written by RepairModel.save (OUT/prior/repair_model)")
        meta = json.loads(meta_path.read_text())
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True)
        return RepairModel(unet, meta["prediction_type"], int(meta["num_train_timesteps"]), bool(meta["use_alpha"]))

    # -- internals ---------------------------------------------------------------------------------
    def _inputs(self, noisy: torch.Tensor, degraded: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
        parts = [noisy, degraded * 2 - 1]
        if self.use_alpha:
            if alpha is None:  # no alpha known: treat the whole render as covered
                alpha = torch.ones_like(degraded[:, :1])
            parts.append(alpha * 2 - 1)
        return torch.cat(parts, 1)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, (h, w)

    def _predict(self, noisy, degraded, alpha, t) -> torch.Tensor:
        out = self.unet(self._inputs(noisy, degraded, alpha), t).sample
        if self.prediction_type == "sample":  # x0 = render + correction
            out = out + (degraded * 2 - 1)
        return out

    # -- training ----------------------------------------------------------------------------------
    def training_loss(self, clean: torch.Tensor, degraded: torch.Tensor, alpha: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, max_strength: float = 1.0) -> torch.Tensor:
        """Denoising loss on a batch of pairs (B, 3, H, W) in [0, 1] (H, W multiples of self.multiple).
        Timesteps are drawn below max_strength*T: repair never starts higher, so capacity goes where it is used."""
        if clean.shape != degraded.shape or clean.dim() != 4 or clean.shape[1] != 3:
            raise ValueError(f"clean {tuple(clean.shape)} and degraded {tuple(degraded.shape)} must both be (B, 3, H, W)")
        x0 = clean * 2 - 1
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t_end = max(1, min(self.num_train_timesteps, int(math.ceil(max_strength * self.num_train_timesteps))))
        t = torch.randint(0, t_end, (b,), generator=generator).to(x0.device)
        noisy = self.train_scheduler.add_noise(x0, noise, t)
        pred = self._predict(noisy, degraded, alpha, t)
        if self.prediction_type == "sample":
            target = x0
        elif self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.train_scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target)

    # -- repair ------------------------------------------------------------------------------------
    @torch.no_grad()
    def repair(self, degraded: torch.Tensor, strength: float = 0.5, steps: int = 10,
               alpha: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """SDEdit repair of renders (B, 3, H, W) in [0, 1]: noise them to strength*T, denoise with DDIM."""
        if degraded.dim() != 4 or degraded.shape[1] != 3:
            raise ValueError(f"degraded must be (B, 3, H, W), got {tuple(degraded.shape)}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if strength == 0.0:
            return degraded.clone()
        cond, (h, w) = self._pad(degraded.float())
        a = self._pad(alpha.float())[0] if alpha is not None else None
        sched = self.sample_scheduler
        # As img2img pipelines do: a schedule of steps/strength steps, of which the last `steps` are run.
        total = min(self.num_train_timesteps, max(steps, int(math.ceil(steps / strength))))
        sched.set_timesteps(total, device=cond.device)
        n_run = min(total, max(1, int(round(total * strength))))
        timesteps = sched.timesteps[total - n_run:]
        noise = torch.randn(cond.shape, generator=generator, dtype=cond.dtype).to(cond.device)
        x = sched.add_noise(cond * 2 - 1, noise, timesteps[:1].repeat(cond.shape[0]))
        for t in timesteps:
            x = sched.step(self._predict(x, cond, a, t), t, x).prev_sample
        return ((x[..., :h, :w] + 1) / 2).clamp(0, 1)
