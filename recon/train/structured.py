"""Structured stage: train the sparse-convolution decoder (network + per-voxel latents) end to end
through the rasterizer, instead of free Gaussians.

Every step decodes K Gaussians per voxel, renders one training view and applies Trainer's losses. Every
`decoder.manage_every` steps the voxel set is pruned (voxels whose Gaussians stayed transparent) and grown
(next to voxels with a high screen-space gradient). With `decoder.bake`, after `decoder.bake_fraction`
of the run the decoded Gaussians become free Gaussians and the rest of the budget is Trainer's loop
(densification strategy included, its schedule laid over the remaining steps).

The training loop itself (budget, progress, signals, checkpoint cadence, floater steps, viewer) is
Trainer.train: this class changes what a step optimises and what a checkpoint holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from recon.data.scene import Scene
from recon.decoder.config import DecoderConfig
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.init.voxels import SparseVoxels
from recon.train.checkpoint import (FORMAT, checkpoint_state, read_checkpoint, restore_free_gaussians,
                                    restore_state, write_checkpoint)
from recon.train.config import TrainConfig
from recon.train.losses import psnr
from recon.train.trainer import Trainer, TrainState

DECODER = "decoder"  # phase: the decoder's parameters are optimised
BAKED = "baked"  # phase: free Gaussians (baked from the decoder) are optimised


def _voxels_to_dict(v: SparseVoxels) -> dict:
    return {"coords": v.coords.detach().cpu(), "features": v.features.detach().cpu(), "voxel_size": float(v.voxel_size),
            "origin": v.origin.detach().cpu(), "level": int(v.level), "feature_names": list(v.feature_names)}


def _voxels_from_dict(d: dict, device) -> SparseVoxels:
    return SparseVoxels(d["coords"].to(device), d["features"].to(device), float(d["voxel_size"]),
                        d["origin"].to(device), int(d["level"]), list(d["feature_names"]))


class StructuredTrainer(Trainer):
    """Trainer whose model is a GaussianDecoder over `voxels` (then, with decoder.bake, free Gaussians).

    Same arguments as Trainer, except `voxels` (the carved SparseVoxels, with colour features) instead of
    initial Gaussians, and `decoder_cfg`. `train()` returns free Gaussians: the baked ones, or the final
    decode without the Gaussians too transparent to change any pixel."""

    def __init__(self, scene: Scene, train_idx: list[int], voxels: SparseVoxels, cfg: TrainConfig,
                 decoder_cfg: DecoderConfig, out_dir: Path | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, background: str = "white", log: Callable[[str], None] = print, viewer=None,
                 extra_loss: Callable | None = None):
        from recon.decoder.decoder import GaussianDecoder
        from recon.decoder.voxel_management import VoxelStats

        self._setup_views(scene, train_idx, cfg, out_dir, device, seed, background, log, viewer, extra_loss)
        self.decoder_cfg = decoder_cfg
        self.voxels = _voxels_from_dict(_voxels_to_dict(voxels), self.device)
        self.decoder = GaussianDecoder(decoder_cfg, self.voxels, sh_degree=cfg.sh_degree).to(self.device)
        self.decoder_optimizer = self._make_decoder_optimizer()
        self.voxel_stats = VoxelStats.zeros(len(self.voxels), self.device)
        self.phase = DECODER
        self.bake_step: int | None = None
        # free-Gaussian state, filled in when baking
        self.params = None
        self.optimizers = {}
        self.strategy, self.strategy_state, self.strategy_start, self.strategy_span = None, None, 0, None
        self.state = TrainState()

    def _make_decoder_optimizer(self) -> torch.optim.Optimizer:
        groups = self.decoder.param_groups()
        for g in groups:
            g["initial_lr"] = g["lr"]
        # fused: one pass per parameter instead of a dozen foreach ops (~1 ms a step at 20k voxels, 2 threads)
        return torch.optim.Adam(groups, eps=1e-15, fused=True)

    # -- model --------------------------------------------------------------------------------
    def gaussians(self) -> Gaussians:
        if self.phase == BAKED:
            return super().gaussians()
        return self.decoder(self.voxels)

    def _update_decoder_lr(self) -> None:
        factor = self.decoder_cfg.lr_final_factor ** self.progress()
        for group in self.decoder_optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _bake_due(self) -> bool:
        c = self.decoder_cfg
        return self.phase == DECODER and c.bake and self.progress() >= c.bake_fraction

    @torch.no_grad()
    def bake(self) -> None:
        """Switch to free Gaussians: decode once, then Trainer's parameters, optimizers and strategy,
        the strategy's refine window laid over the steps the budget has left."""
        from recon.decoder.voxel_management import bake

        g = bake(self.decoder, self.voxels, min_opacity=self.decoder_cfg.bake_min_opacity)
        if len(g) == 0:  # nothing visible survived: keep every Gaussian rather than none
            g = bake(self.decoder, self.voxels)
        step = self.state.step
        self.params = self._make_params(g)
        self.optimizers = self._make_optimizers()
        self.strategy_span = max(self.estimated_total() - step, 1)
        self.strategy, self.strategy_state = self._make_strategy(start=step, span=self.strategy_span)
        self.phase, self.bake_step = BAKED, step
        n_vox = len(self.voxels)
        self.decoder = self.decoder_optimizer = self.voxel_stats = None
        self.log(f"step {step}: baked {n_vox} voxels into {len(g)} free Gaussians; "
                 f"densification over the remaining ~{self.strategy_span} steps")

    # -- the loop -----------------------------------------------------------------------------
    def step(self) -> dict:
        if self._bake_due():
            self.bake()
        if self.phase == BAKED:
            return super().step()

        step = self.state.step
        vi, bg, target = self._next_view()
        # the higher SH orders go to the rasterizer once per voxel, not repeated for each of its K Gaussians
        g = self.decoder.decode(self.voxels)
        deg = self.active_sh_degree()
        colors, alphas, meta = self.render(g, self.viewmats[vi:vi + 1], self.Ks[vi:vi + 1], bg, deg)
        means2d = meta["means2d"]
        if means2d.requires_grad:
            means2d.retain_grad()  # the screen-space gradient drives voxel growing
        loss = self.loss(g.opacity_logits, g.log_scales, colors, alphas, target, vi, step)
        loss.backward()
        self._update_decoder_lr()
        self.decoder_optimizer.step()
        self.decoder_optimizer.zero_grad(set_to_none=True)
        self._gather_stats(g, meta)

        every = self.decoder_cfg.manage_every
        if every and (step + 1) % every == 0:
            self.manage_voxels()
        with torch.no_grad():
            train_psnr = float(psnr(colors.detach(), target))
        return {"loss": float(loss.detach()), "psnr": train_psnr, "n_gaussians": int(g.means.shape[0]),
                "n_voxels": len(self.voxels), "sh_degree": deg}

    @torch.no_grad()
    def _gather_stats(self, g, meta: dict) -> None:
        """Per-voxel window statistics: max opacity, and the screen-space mean gradient normalised as
        gsplat's DefaultStrategy does (so decoder.grow_grad reads like train.grow_grad2d)."""
        radii, means2d = meta["radii"], meta["means2d"]
        visible = (radii > 0).all(-1) if radii.dim() == 3 else radii > 0  # (C, N)
        grads = None
        if means2d.grad is not None:
            gr = means2d.grad
            n_cams = gr.shape[0]
            grads = torch.hypot(gr[..., 0] * (self.W / 2.0 * n_cams), gr[..., 1] * (self.H / 2.0 * n_cams)).amax(0)
        self.voxel_stats.update(g.opacities, grads, visible.any(0))

    @torch.no_grad()
    def manage_voxels(self) -> None:
        """Prune and grow the voxels from this window's statistics; the decoder's latents (and their
        optimizer moments) follow the voxels."""
        from recon.decoder.voxel_management import VoxelStats, manage_voxels

        update = manage_voxels(self.voxels, self.voxel_stats, self.decoder_cfg)
        self._apply_voxel_update(update.voxels, update.source, update.grown)
        if update.n_pruned or update.n_grown:
            self.log(f"step {self.state.step + 1}: voxels -{update.n_pruned} +{update.n_grown} -> {len(self.voxels)}")
        self.voxel_stats = VoxelStats.zeros(len(self.voxels), self.device)

    def _apply_voxel_update(self, voxels: SparseVoxels, source: torch.Tensor, grown: torch.Tensor | None) -> None:
        self.decoder.reindex(source, fresh=grown, optimizer=self.decoder_optimizer)
        self.voxels = voxels

    @torch.no_grad()
    def remove_floaters(self) -> int:
        """Decoder phase: drop the voxels all of whose Gaussians project onto background (mask = 0) in
        some training view that sees them; baked phase: Trainer's per-Gaussian removal."""
        if self.phase == BAKED:
            return super().remove_floaters()
        if self.masks is None:
            return 0
        from recon.decoder.voxel_management import VoxelStats

        g = self.decoder(self.voxels)
        k = self.decoder.k
        outside = self.outside_masks(g.means).reshape(len(self.voxels), k).all(1)
        n = int(outside.sum())
        if 0 < n < len(self.voxels):
            keep = (~outside).nonzero().squeeze(1)
            stats = self.voxel_stats.subset(keep)
            self._apply_voxel_update(self.voxels.subset(keep), keep.cpu(), None)
            self.voxel_stats = VoxelStats(stats.max_opacity.clone(), stats.grad_sum.clone(), stats.grad_count.clone())
            return n * k
        return 0

    def train(self, resume: bool = False, progress=None) -> Gaussians:
        g = super().train(resume=resume, progress=progress)
        if self.phase == BAKED:
            return g
        from recon.decoder.voxel_management import bake

        out = bake(self.decoder, self.voxels, min_opacity=self.decoder_cfg.bake_min_opacity)
        return out if len(out) else g

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path | None:
        if self.checkpoint_path is None:
            return None
        if self.phase == BAKED:
            ckpt = checkpoint_state(self)
            ckpt.update(stage=BAKED, bake_step=self.bake_step, strategy_span=self.strategy_span)
        else:
            s = self.voxel_stats
            ckpt = {
                "format": FORMAT, "stage": DECODER,
                "step": self.state.step, "elapsed": self.state.elapsed, "history": self.state.history,
                "decoder": {k: v.detach().cpu() for k, v in self.decoder.state_dict().items()},
                "decoder_optimizer": self.decoder_optimizer.state_dict(),
                "voxels": _voxels_to_dict(self.voxels),
                "voxel_stats": {"max_opacity": s.max_opacity.cpu(), "grad_sum": s.grad_sum.cpu(),
                                "grad_count": s.grad_count.cpu()},
                "rng": torch.get_rng_state(), "generator": self.generator.get_state(),
            }
        write_checkpoint(self.checkpoint_path, ckpt)
        return self.checkpoint_path

    def resume(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        ckpt = read_checkpoint(path)
        stage = ckpt.get("stage")
        if stage not in (DECODER, BAKED):
            raise ReconError("the checkpoint was written without the decoder (decoder.enabled=false)", path=path,
                             fix="resume with decoder.enabled=false, or delete it and start without --resume")
        saved = ckpt.get("decoder") if stage == DECODER else None
        if isinstance(saved, dict) and "head.weight" in saved and "sh_head.weight" not in saved \
                and self.decoder is not None and self.decoder.sh_head is not None:
            raise ReconError("the checkpoint's decoder was written by an older recon (its head also decoded the "
                             "higher SH orders, now a separate layer): it cannot be resumed", path=path,
                             fix="delete it and start without --resume")
        try:
            if stage == DECODER:
                self._restore_decoder(ckpt)
            else:
                self._restore_baked(ckpt)
        except (KeyError, RuntimeError, ValueError) as e:  # settings changed since the checkpoint was written
            # load_state_dict's first line is only a header: the next one names the mismatch
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = " ".join(lines[1:2] if len(lines) > 1 and lines[0].endswith(":") else lines[:1])
            raise ReconError(f"the checkpoint does not fit the current decoder/train settings "
                             f"({type(e).__name__}: {detail[:160]})", path=path,
                             fix="resume with the settings it was written with, or delete it and start without --resume")
        restore_state(ckpt, self)
        return True

    def _restore_decoder(self, ckpt: dict) -> None:
        from recon.decoder.voxel_management import VoxelStats

        if self.phase != DECODER:
            raise ValueError("cannot go back from baked Gaussians to the decoder")
        voxels = _voxels_from_dict(ckpt["voxels"], self.device)
        state = ckpt["decoder"]
        self.decoder.latents = torch.nn.Parameter(torch.zeros_like(state["latents"], device=self.device))
        self.decoder.load_state_dict(state)
        self.voxels = voxels
        self.decoder_optimizer = self._make_decoder_optimizer()
        self.decoder_optimizer.load_state_dict(ckpt["decoder_optimizer"])
        s = ckpt["voxel_stats"]
        self.voxel_stats = VoxelStats(s["max_opacity"].to(self.device), s["grad_sum"].to(self.device),
                                      s["grad_count"].to(self.device))
        if len(self.voxel_stats) != len(voxels) or self.decoder.num_voxels != len(voxels):
            raise ValueError("voxels, latents and statistics disagree in length")

    def _restore_baked(self, ckpt: dict) -> None:
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.to(self.device)) for k, v in ckpt["params"].items()})
        self.optimizers = self._make_optimizers()
        self.strategy_span = int(ckpt["strategy_span"])
        self.strategy, self.strategy_state = self._make_strategy(start=int(ckpt["bake_step"]), span=self.strategy_span)
        restore_free_gaussians(ckpt, self)
        self.phase, self.bake_step = BAKED, int(ckpt["bake_step"])
        self.decoder = self.decoder_optimizer = self.voxel_stats = None
