"""Diffusion prior (GaussianObject-style repair, distilled into the Gaussians).

  setup.build_prior(cfg, scene, gaussians, render, train_leave_one_out, out_dir, background, seed)
      -> distill.PriorDistiller | None       the one call a trainer needs
  pairs          self-generated (degraded render, real image) pairs
  repair_model   the per-scene conditional UNet (diffusers UNet2DModel, DDPM training, DDIM SDEdit repair)
  train_repair   its training loop (crops, flips, colour jitter; step and time budget)
  pretrained     local Stable Diffusion (+ ControlNet) img2img, optional LoRA (lora.py); never downloads
  repair         the Repairer interface both back ends implement
  novel_cameras  cameras between and around the training cameras
  distill        refresh (render -> repair -> targets, PNGs under OUT/prior/cycle_k) and the extra loss

Nothing is imported here: diffusers takes seconds to import and most runs use prior.mode=none.
"""
from __future__ import annotations
