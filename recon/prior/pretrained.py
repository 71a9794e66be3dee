"""Optional pretrained repair: a local Stable Diffusion folder (plus an optional ControlNet-tile folder) used
for img2img repair, optionally LoRA-tuned on the self-generated pairs. Never downloads anything: the hub is
switched off before diffusers/transformers load, and every load is local_files_only."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers import huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch

from recon.errors import ReconError
from recon.prior.config import PriorConfig
from recon.prior.images import fit_size, to_nchw, to_nhwc
from recon.prior.pairs import PairSet
from recon.prior.repair import repair_at_size

_WEIGHTS = ("*.safetensors", "*.bin")
_SD_FIX = ("point --prior-model at a local diffusers Stable Diffusion folder "
           "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/); nothing is ever downloaded")


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(p)) for p in _WEIGHTS)


def check_sd_folder(path: str | Path) -> Path:
    """The folder, if it holds a complete diffusers Stable Diffusion pipeline; else one ReconError line."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ReconError("Stable Diffusion folder not found", path=folder, fix=_SD_FIX)
    if not folder.is_dir():
        raise ReconError("is a file, not a Stable Diffusion folder", path=folder, fix=_SD_FIX)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ReconError("not a diffusers pipeline folder (no model_index.json)", path=folder, fix=_SD_FIX)
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReconError(f"model_index.json is not valid JSON ({e.msg if hasattr(e, 'msg') else e})",
                         path=index_path, fix="restore the file from the model's original download") from None
    missing = []
    for name, config_names, needs_weights in (("unet", ("config.json",), True), ("vae", ("config.json",), True),
                                              ("text_encoder", ("config.json",), True),
                                              ("tokenizer", ("vocab.json", "tokenizer.json"), False),
                                              ("scheduler", ("scheduler_config.json",), False)):
        sub = folder / name
        listed = index.get(name)
        if not isinstance(listed, list) or listed[0] is None:
            missing.append(f"{name} (not in model_index.json)")
        elif not sub.is_dir():
            missing.append(f"{name}/")
        elif not any((sub / c).is_file() for c in config_names):
            missing.append(f"{name}/{config_names[0]}")
        elif needs_weights and not _has_weights(sub):
            missing.append(f"{name}/ weights (*.safetensors)")
    if missing:
        raise ReconError(f"incomplete Stable Diffusion folder: missing {', '.join(missing)}", path=folder, fix=_SD_FIX)
    return folder


def check_controlnet_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    fix = "point at a local diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors)"
    if not folder.is_dir():
        raise ReconError("ControlNet folder not found", path=folder, fix=fix)
    missing = [m for m, ok in (("config.json", (folder / "config.json").is_file()),
                               ("weights (*.safetensors)", _has_weights(folder))) if not ok]
    if missing:
        raise ReconError(f"incomplete ControlNet folder: missing {', '.join(missing)}", path=folder, fix=fix)
    return folder


def load_pipeline(model_path: str | Path, controlnet_path: str | Path | None = None,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """StableDiffusionImg2ImgPipeline, or StableDiffusionControlNetImg2ImgPipeline when a ControlNet is given,
    loaded from local folders only (no safety checker: the images are renders of the user's own object)."""
    folder = check_sd_folder(model_path)
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    common = dict(local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        if controlnet_path is not None:
            from diffusers import ControlNetModel

            cn_folder = check_controlnet_folder(controlnet_path)
            controlnet = ControlNetModel.from_pretrained(cn_folder, local_files_only=True)
            pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(folder, controlnet=controlnet, **common)
        else:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, **common)
    except (OSError, ValueError) as e:  # corrupt or mismatched files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReconError(f"cannot load the pipeline ({first})", path=folder, fix=_SD_FIX) from None
    pipe.set_progress_bar_config(disable=True)
    # Cast after loading: the keyword for it moved between diffusers versions (torch_dtype -> dtype).
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)


class PretrainedRepairer:
    """img2img repair with a local Stable Diffusion (+ ControlNet tile, fed the render itself)."""

    def __init__(self, pipe, cfg: PriorConfig):
        self.pipe, self.cfg = pipe, cfg
        self.has_controlnet = hasattr(pipe, "controlnet") and pipe.controlnet is not None
        self.vae_multiple = getattr(pipe, "vae_scale_factor", 8)

    @staticmethod
    def from_config(cfg: PriorConfig, pairs: PairSet | None = None, generator: torch.Generator | None = None,
                    log: Callable[[str], None] | None = None, device: str | torch.device = "cpu") -> "PretrainedRepairer":
        if not cfg.model_path:
            raise ReconError("prior.mode=pretrained needs a local Stable Diffusion folder", fix=_SD_FIX)
        pipe = load_pipeline(cfg.model_path, cfg.controlnet_path, device)
        repairer = PretrainedRepairer(pipe, cfg)
        if cfg.lora_steps > 0 and pairs is not None and len(pairs):
            losses = repairer.fit_lora(pairs, cfg.lora_steps, generator)
            if log:
                log(f"prior: LoRA rank {cfg.lora_rank}, {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        return repairer

    def _size(self, h: int, w: int) -> tuple[int, int]:
        return fit_size(h, w, self.cfg.pretrained_size, self.vae_multiple)

    @torch.no_grad()
    def _prompt_embeds(self, batch: int) -> torch.Tensor:
        pipe = self.pipe
        ids = pipe.tokenizer([self.cfg.prompt] * batch, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids.to(pipe.device))[0]

    def fit_lora(self, pairs: PairSet, steps: int, generator: torch.Generator | None = None) -> list[float]:
        """LoRA on the UNet's attention projections, trained with the pipeline's own noise objective to
        produce the real images (conditioned, through the ControlNet when there is one, on the renders);
        merged back into the UNet afterwards. Returns the loss of each step."""
        from recon.prior.lora import add_lora, merge_lora

        pipe, cfg = self.pipe, self.cfg
        unet, sched = pipe.unet, pipe.scheduler
        params = add_lora(unet, cfg.lora_rank)
        opt = torch.optim.AdamW(params, lr=cfg.lora_lr)
        clean_all, degraded_all = to_nchw(pairs.clean), to_nchw(pairs.degraded)
        h, w = self._size(*clean_all.shape[-2:])
        clean_all = torch.nn.functional.interpolate(clean_all, size=(h, w), mode="bilinear", antialias=True)
        degraded_all = torch.nn.functional.interpolate(degraded_all, size=(h, w), mode="bilinear", antialias=True)
        embeds = self._prompt_embeds(1)
        dev, dtype = pipe.device, unet.dtype
        t_max = max(1, int(sched.config.num_train_timesteps * cfg.strength))
        losses = []
        unet.train()
        for _ in range(steps):
            n = int(torch.randint(0, clean_all.shape[0], (), generator=generator))
            clean, degraded = clean_all[n:n + 1], degraded_all[n:n + 1]
            if float(torch.rand((), generator=generator)) < 0.5:
                clean, degraded = clean.flip(-1), degraded.flip(-1)
            with torch.no_grad():
                dist = pipe.vae.encode((clean * 2 - 1).to(dev, dtype)).latent_dist
                latents = dist.sample(generator) * pipe.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(dev)
            t = torch.randint(0, t_max, (1,), generator=generator).to(dev)  # the range repair samples from
            noisy = sched.add_noise(latents, noise, t)
            extra = {}
            if self.has_controlnet:
                with torch.no_grad():
                    down, mid = pipe.controlnet(noisy, t, encoder_hidden_states=embeds,
                                                controlnet_cond=degraded.to(dev, dtype),
                                                conditioning_scale=cfg.controlnet_scale, return_dict=False)
                extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            pred = unet(noisy, t, encoder_hidden_states=embeds, **extra).sample
            kind = sched.config.prediction_type
            target = noise if kind == "epsilon" else sched.get_velocity(latents, noise, t)
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        unet.eval()
        merge_lora(unet)
        for p in unet.parameters():
            p.requires_grad_(False)
        return losses

    @torch.no_grad()
    def repair(self, images: torch.Tensor, strengths: Sequence[float], alphas: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
        if len(strengths) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(strengths)} strengths")
        x = to_nchw(images.float())
        h, w = self._size(*x.shape[-2:])
        dev = self.pipe.device
        out = []
        for n, s in enumerate(strengths):
            def one(img, _alpha, s=float(s)):
                if s <= 0:
                    return img
                kwargs = dict(prompt=self.cfg.prompt, image=img.to(dev), strength=s,
                              num_inference_steps=max(1, int(round(self.cfg.sample_steps / s))),
                              guidance_scale=self.cfg.guidance_scale, generator=generator, output_type="pt",
                              height=img.shape[-2], width=img.shape[-1])
                if self.has_controlnet:
                    kwargs.update(control_image=img.to(dev), controlnet_conditioning_scale=self.cfg.controlnet_scale)
                else:
                    kwargs.pop("height"), kwargs.pop("width")
                return self.pipe(**kwargs).images.float().cpu().clamp(0, 1)
            out.append(repair_at_size(one, x[n:n + 1], None, h, w))
        return to_nhwc(torch.cat(out))
