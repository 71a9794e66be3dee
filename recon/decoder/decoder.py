"""GaussianDecoder: K Gaussians per active voxel, decoded by a sparse 3D U-Net.

Input per voxel: a learnable latent (one row per voxel, `decoder.latents`) concatenated with the
voxel's photo-consistency features (colour, colour spread, number of views, ...). Output: Gaussians
in voxel-major order (Gaussian v*K + k belongs to voxel v), differentiable in the network weights
and the latents, so an image loss rendered from them trains the decoder end to end.

Every output is bounded around a seeded Gaussian, and the network starts close to it:
  means          = voxel centre + voxel_size * offset_scale * tanh(raw + b_k)   (b_k spreads the K)
  log_scales     = log(voxel_size) + log lo + (log hi - log lo) * sigmoid(raw + b)   ([lo, hi] = scale_range)
  quats          = raw + (1, 0, 0, 0)
  opacity_logits = raw + logit(init_opacity)
  sh DC          = SH of the voxel colour + raw / SH_C0 (raw in colour units), one per Gaussian
  sh degree >= 1 = a second linear layer on the U-Net features, one set per voxel shared by its K
                   Gaussians (view dependence varies smoothly within a voxel); `decode` returns it
                   per voxel, as rasterize() takes it, and the Gaussians of `forward` repeat it
The heads' weights start tiny, so the first decoded Gaussians are the seeded ones: voxel colour,
scale init_scale voxel sizes, opacity init_opacity, centres on a fixed pattern inside the voxel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from recon.decoder import sparse_conv
from recon.decoder.config import DecoderConfig
from recon.decoder.unet import SparseUNet
from recon.errors import ReconError
from recon.gaussians import SH_C0, Gaussians, num_sh_bases, rgb_to_sh0
from recon.init.voxels import SparseVoxels

COLOR_FEATURES = ("r", "g", "b")
_HEAD_INIT_STD = 1e-4  # small enough that the initial Gaussians match the seeded ones to ~1e-4
_PATTERN_EXTENT = 0.3  # the K initial centres lie within +-0.3 voxel of the centre
_PER_GAUSSIAN = 3 + 3 + 4 + 1 + 3  # head outputs per Gaussian: offset, log-scale, quat, opacity, SH DC


def _halton(index: int, base: int) -> float:
    f, r = 1.0, 0.0
    while index > 0:
        f /= base
        r += f * (index % base)
        index //= base
    return r


def initial_offsets(k: int) -> torch.Tensor:
    """(k, 3) fixed, well-spread positions in voxel units in [-0.3, 0.3]^3 (the centre when k == 1):
    distinct starting points, so the K Gaussians of a voxel do not receive identical gradients."""
    if k == 1:
        return torch.zeros(1, 3)
    pts = torch.tensor([[_halton(i + 1, b) for b in (2, 3, 5)] for i in range(k)])
    return (pts * 2.0 - 1.0) * _PATTERN_EXTENT


def check_config(cfg: DecoderConfig) -> None:
    """Raise ReconError naming the decoder setting that cannot work."""
    def bad(key, value, why):
        raise ReconError(f"decoder.{key}={value!r} {why}", fix=f"set decoder.{key} in the config or with an override")

    if cfg.gaussians_per_voxel < 1:
        bad("gaussians_per_voxel", cfg.gaussians_per_voxel, "must be at least 1")
    if not cfg.channels or any(c < 1 for c in cfg.channels):
        bad("channels", cfg.channels, "must be a non-empty list of positive widths")
    if len(cfg.channels) > 4:
        bad("channels", cfg.channels, "has more than 4 levels")
    if cfg.latent_dim < 0:
        bad("latent_dim", cfg.latent_dim, "must be 0 or more")
    if cfg.offset_scale <= 0:
        bad("offset_scale", cfg.offset_scale, "must be positive")
    if len(cfg.scale_range) != 2 or not 0 < cfg.scale_range[0] < cfg.scale_range[1]:
        bad("scale_range", cfg.scale_range, "must be [low, high] with 0 < low < high")
    if not cfg.scale_range[0] < cfg.init_scale < cfg.scale_range[1]:
        bad("init_scale", cfg.init_scale, f"must lie inside scale_range {cfg.scale_range}")
    if not 0 < cfg.init_opacity < 1:
        bad("init_opacity", cfg.init_opacity, "must be between 0 and 1")
    if cfg.lr <= 0 or cfg.latent_lr <= 0:
        bad("lr" if cfg.lr <= 0 else "latent_lr", cfg.lr if cfg.lr <= 0 else cfg.latent_lr, "must be positive")
    if cfg.manage_every < 0:
        bad("manage_every", cfg.manage_every, "must be 0 (never) or more")
    if not 0 <= cfg.prune_opacity < 1:
        bad("prune_opacity", cfg.prune_opacity, "must be in [0, 1)")
    if cfg.grow_grad < 0:
        bad("grow_grad", cfg.grow_grad, "must be 0 or more")
    if cfg.max_voxels < 1:
        bad("max_voxels", cfg.max_voxels, "must be at least 1")
    if cfg.bake_fraction is not None and not 0 <= cfg.bake_fraction <= 1:
        bad("bake_fraction", cfg.bake_fraction, "must be a fraction in [0, 1]")
    if not 0 < cfg.lr_final_factor <= 1:
        bad("lr_final_factor", cfg.lr_final_factor, "must be in (0, 1]")
    if not 0 <= cfg.bake_min_opacity < 1:
        bad("bake_min_opacity", cfg.bake_min_opacity, "must be in [0, 1)")


def check_voxels(voxels: SparseVoxels) -> None:
    if len(voxels) == 0:
        raise ReconError("no occupied voxels to decode Gaussians from",
                         fix="check the masks and cameras (carving removed everything) or lower init.mask_tolerance")
    missing = [c for c in COLOR_FEATURES if c not in voxels.feature_names]
    if missing:
        raise ReconError(f"voxel features lack {', '.join(missing)} (have {', '.join(voxels.feature_names)})",
                         fix="build the voxels with recon.init so they carry colour features")
    if voxels.coords.dim() != 2 or voxels.coords.shape[1] != 3:
        raise ValueError(f"voxel coords must be (M, 3), got {tuple(voxels.coords.shape)}")
    if voxels.features.shape[0] != len(voxels):
        raise ValueError(f"{voxels.features.shape[0]} feature rows for {len(voxels)} voxels")


class _HeadConstants:
    """What turns the head's raw output into Gaussians (see the module docstring for the formulas)."""

    def __init__(self, k, offset_extent, offset_bias, scale_bias, log_scale_base, log_scale_span, opacity_bias):
        self.k = k
        self.offset_extent, self.offset_bias = offset_extent, offset_bias  # offset_bias (k, 3)
        self.scale_bias, self.log_scale_base, self.log_scale_span = scale_bias, log_scale_base, log_scale_span
        self.opacity_bias = opacity_bias


class _DecodeHead(torch.autograd.Function):
    """raw head output (M, K*14) -> means, quats, log-scales, opacity logits, SH DC (N, 1, 3) of the
    N = M*K Gaussians, with one hand-written backward that fills the gradient of `raw` in place.

    Written out with slicing and torch ops, autograd would give every slice of `raw` its own
    full-size zero-filled gradient and sum them: on 20k voxels that bookkeeping cost as much as the
    rest of the head."""

    @staticmethod
    def forward(ctx, raw, centers, dc, c: _HeadConstants):
        m, k = raw.shape[0], c.k
        per = raw.view(m, k, _PER_GAUSSIAN)
        t = torch.tanh(per[..., 0:3] + c.offset_bias)
        means = torch.add(centers[:, None, :], t, alpha=c.offset_extent)
        s = torch.sigmoid(per[..., 3:6] + c.scale_bias)
        log_scales = s * c.log_scale_span + c.log_scale_base
        quats = per[..., 6:10].clone()
        quats[..., 0] += 1.0
        opacity_logits = per[..., 10] + c.opacity_bias
        sh0 = torch.add(dc[:, None, :], per[..., 11:14], alpha=1.0 / SH_C0)
        ctx.save_for_backward(t, s)
        ctx.c, ctx.m = c, m
        ctx.set_materialize_grads(False)  # outputs left out of the loss: skipped, not zero-filled
        n = m * k
        return (means.reshape(n, 3), quats.reshape(n, 4), log_scales.reshape(n, 3), opacity_logits.reshape(n),
                sh0.reshape(n, 1, 3))

    @staticmethod
    @once_differentiable
    def backward(ctx, g_means, g_quats, g_log_scales, g_opacity, g_sh0):
        t, s = ctx.saved_tensors
        c, m = ctx.c, ctx.m
        k = c.k
        g_raw = t.new_zeros(m, k * _PER_GAUSSIAN)
        per = g_raw.view(m, k, _PER_GAUSSIAN)
        if g_means is not None:
            torch.mul(g_means.view(m, k, 3), (1.0 - t * t) * c.offset_extent, out=per[..., 0:3])
        if g_log_scales is not None:
            torch.mul(g_log_scales.view(m, k, 3), s * (1.0 - s) * c.log_scale_span, out=per[..., 3:6])
        if g_quats is not None:
            per[..., 6:10] = g_quats.view(m, k, 4)
        if g_opacity is not None:
            per[..., 10] = g_opacity.view(m, k)
        if g_sh0 is not None:
            torch.mul(g_sh0.view(m, k, 3), 1.0 / SH_C0, out=per[..., 11:14])
        return g_raw, None, None, None


class _DecodeHeadCPU(torch.autograd.Function):
    """_DecodeHead by the C++ kernel (kernels/decode_head_cpu.cpp): one pass forward, one backward."""

    @staticmethod
    def forward(ctx, raw, centers, dc, c: _HeadConstants):
        from recon.kernels import load

        raw = raw.contiguous()
        bias = c.offset_bias.to(raw.dtype).contiguous()
        centers, dc = centers.to(raw.dtype).contiguous(), dc.to(raw.dtype).contiguous()
        *outs, t, s = load().decode_head_forward(raw, centers, dc, bias, c.k, c.offset_extent, c.scale_bias,
                                                 c.log_scale_base, c.log_scale_span, c.opacity_bias)
        ctx.save_for_backward(t, s)  # tanh(offset), sigmoid(log-scale): what the backward needs of the forward
        ctx.c = c
        ctx.set_materialize_grads(False)  # outputs left out of the loss: skipped, not zero-filled
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_means, g_quats, g_log_scales, g_opacity, g_sh0):
        from recon.kernels import load

        t, s = ctx.saved_tensors
        c = ctx.c
        none = t.new_zeros(0)
        grads = [none if g is None else g.contiguous() for g in (g_means, g_quats, g_log_scales, g_opacity, g_sh0)]
        g_raw = load().decode_head_backward(t, s, c.k, c.offset_extent, c.log_scale_span, *grads)
        return g_raw, None, None, None


def head_linear(h: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                kernel: bool) -> torch.Tensor:
    """A head's linear layer on cat([h, x]) (U-Net features, then the voxel's own input), or on h alone
    when x is None.

    kernel: the CPU sparse-conv kernel as a per-voxel layer (~2x torch's matmuls for these skinny
    shapes on the CPU); else torch products into one output, so the gradients of h and x come back
    contiguous (a cat's backward hands out narrow strided views, slow in later ops)."""
    if kernel:
        inp = h if x is None else torch.cat([h, x], dim=1)
        return sparse_conv.sparse_conv(inp, weight.t()[None], bias, sparse_conv.IDENTITY, sparse_conv.IDENTITY, None)
    if x is None:
        return torch.nn.functional.linear(h, weight, bias)
    ch = h.shape[1]
    return torch.addmm(torch.nn.functional.linear(x, weight[:, ch:], bias), h, weight[:, :ch].t())


@dataclass
class DecodedGaussians:
    """One decode: K Gaussians per voxel (voxel-major, N = M*K) with the SH DC per Gaussian, sh0 (N, 1, 3),
    and the higher SH orders per voxel, sh_rest (M, B-1, 3), shared by the voxel's K Gaussians. The
    training step renders this directly (rasterize takes (sh0, sh_rest) with its rows shared);
    `gaussians()` repeats sh_rest per Gaussian."""

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh0: torch.Tensor
    sh_rest: torch.Tensor
    k: int

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The SH as the pair rasterize() takes."""
        return self.sh0, self.sh_rest

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.means, self.quats, self.log_scales, self.opacity_logits, self.sh0, self.sh_rest)

    def gaussians(self) -> Gaussians:
        sh = torch.cat([self.sh0, self.sh_rest.repeat_interleave(self.k, dim=0)], dim=1)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)


class GaussianDecoder(nn.Module):
    """Sparse U-Net decoder: SparseVoxels -> Gaussians (K per voxel, voxel-major).

    `cfg` sets K, widths and bounds; `voxels` fixes the feature columns, their normalisation and the
    number of latent rows (call `reindex` after pruning/growing); `sh_degree` the SH degree decoded."""

    def __init__(self, cfg: DecoderConfig, voxels: SparseVoxels, sh_degree: int = 0):
        super().__init__()
        check_config(cfg)
        check_voxels(voxels)
        if not 0 <= sh_degree <= 3:
            raise ReconError(f"sh_degree={sh_degree} is not supported", fix="use an SH degree from 0 to 3")
        self.cfg = cfg
        self.k = cfg.gaussians_per_voxel
        self.sh_degree = sh_degree
        self.feature_names = list(voxels.feature_names)
        self.num_bases = num_sh_bases(sh_degree)
        # per Gaussian: offset 3, log-scale 3, quat 4, opacity 1, SH DC 3; per voxel (shared by its K
        # Gaussians: view dependence varies smoothly within a voxel): the higher SH orders
        self.params_per_gaussian = _PER_GAUSSIAN
        self.params_per_voxel = 3 * (self.num_bases - 1)

        scale, shift = self._feature_normalisation(voxels)
        self.register_buffer("feature_scale", scale)
        self.register_buffer("feature_shift", shift)
        self.latents = nn.Parameter(torch.randn(len(voxels), cfg.latent_dim) * cfg.latent_init_std)
        in_channels = cfg.latent_dim + len(self.feature_names)
        self.unet = SparseUNet(in_channels, cfg.channels, fine_convs=cfg.fine_convs)
        # the head also sees the voxel's own input, so per-voxel corrections need not pass the U-Net
        self.head = nn.Linear(cfg.channels[0] + in_channels, self.k * self.params_per_gaussian)
        # the view-dependent colour from the U-Net features alone: 45 outputs at degree 3, 2.6x cheaper
        # than from the features and the input (the voxel's input reaches them through the U-Net's skips)
        self.sh_head = nn.Linear(cfg.channels[0], self.params_per_voxel) if self.params_per_voxel else None
        for layer in (self.head, self.sh_head):
            if layer is not None:
                nn.init.normal_(layer.weight, std=_HEAD_INIT_STD)
                nn.init.zeros_(layer.bias)

        # fixed biases that put the raw-zero output on the seeded Gaussians
        pattern = initial_offsets(self.k) * min(1.0, cfg.offset_scale)
        self.register_buffer("offset_bias", torch.atanh(pattern / cfg.offset_scale))
        lo, hi = cfg.scale_range
        self.log_scale_lo, self.log_scale_hi = math.log(lo), math.log(hi)
        frac = (math.log(cfg.init_scale) - self.log_scale_lo) / (self.log_scale_hi - self.log_scale_lo)
        self.scale_bias = math.log(frac / (1.0 - frac))
        self.opacity_bias = math.log(cfg.init_opacity / (1.0 - cfg.init_opacity))
        self._inputs_cache = None  # see _voxel_inputs

    def _feature_normalisation(self, voxels: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours [0,1] -> [-1,1]; every other column divided by its largest magnitude now (fixed
        afterwards, so voxels grown later are normalised the same way)."""
        feats = voxels.features.detach().to(torch.float32).cpu()
        scale = torch.ones(feats.shape[1])
        shift = torch.zeros(feats.shape[1])
        for i, name in enumerate(self.feature_names):
            if name in COLOR_FEATURES:
                scale[i], shift[i] = 2.0, -1.0
            else:
                peak = feats[:, i].abs().max().item()
                scale[i] = 1.0 / peak if peak > 1e-8 else 1.0
        return scale, shift

    @property
    def num_voxels(self) -> int:
        return self.latents.shape[0]

    def gaussian_voxel_index(self) -> torch.Tensor:
        """(num_voxels * K,) voxel index of every decoded Gaussian."""
        return torch.arange(self.num_voxels, device=self.latents.device).repeat_interleave(self.k)

    def forward(self, voxels: SparseVoxels) -> Gaussians:
        """The decoded Gaussians, SH repeated per Gaussian (for export, baking, evaluation)."""
        return self.decode(voxels).gaussians()

    def decode(self, voxels: SparseVoxels) -> DecodedGaussians:
        """The decoded Gaussians with the higher SH orders once per voxel (what a training step renders)."""
        check_voxels(voxels)
        if len(voxels) != self.num_voxels:
            raise ValueError(f"decoder holds {self.num_voxels} latents but got {len(voxels)} voxels; "
                             "call reindex() after changing the voxels")
        if list(voxels.feature_names) != self.feature_names:
            raise ValueError(f"voxel features {voxels.feature_names} differ from {self.feature_names}")
        device = self.latents.device
        feats, centers, dc = self._voxel_inputs(voxels)
        x = torch.cat([self.latents, feats], dim=1)
        h = self.unet(voxels.coords.to(device), x, voxels.level)
        on_cpu = h.device.type == "cpu"
        raw = head_linear(h, x, self.head.weight, self.head.bias, kernel=on_cpu)
        m = raw.shape[0]
        if self.sh_head is not None:
            sh_rest = head_linear(h, None, self.sh_head.weight, self.sh_head.bias, kernel=on_cpu).view(m, -1, 3)
        else:
            sh_rest = raw.new_zeros(m, 0, 3)
        vs = float(voxels.voxel_size)
        const = _HeadConstants(self.k, vs * self.cfg.offset_scale, self.offset_bias, self.scale_bias,
                               math.log(vs) + self.log_scale_lo, self.log_scale_hi - self.log_scale_lo,
                               self.opacity_bias)
        decode = _DecodeHeadCPU if on_cpu else _DecodeHead
        return DecodedGaussians(*decode.apply(raw, centers, dc, const), sh_rest, self.k)

    def _voxel_inputs(self, voxels: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised features, centres and SH DC of the voxel colours: fixed while the voxel set is (training
        decodes the same voxels every step), so kept until the voxels' tensors change."""
        # tensors by identity and in-place version (load_state_dict copies into the buffers in place)
        key = (voxels.features, voxels.features._version, voxels.coords, voxels.coords._version,
               float(voxels.voxel_size), tuple(voxels.origin.tolist()), self.feature_scale,
               self.feature_scale._version, self.feature_shift, self.feature_shift._version, self.latents.device)
        cached = self._inputs_cache
        if cached is not None and len(cached[0]) == len(key) and all(
                a is b if torch.is_tensor(a) else a == b for a, b in zip(cached[0], key)):
            return cached[1]
        device = self.latents.device
        feats = voxels.features.to(device=device, dtype=torch.float32)
        inputs = (feats * self.feature_scale + self.feature_shift,
                  voxels.centers().to(device=device, dtype=torch.float32),
                  rgb_to_sh0(voxels.colors.to(device=device, dtype=torch.float32)))
        self._inputs_cache = (key, inputs)
        return inputs

    def param_groups(self) -> list[dict]:
        """Adam parameter groups: the network at cfg.lr, the latents at cfg.latent_lr."""
        network = [p for name, p in self.named_parameters() if name != "latents"]
        return [{"params": network, "lr": self.cfg.lr, "name": "decoder"},
                {"params": [self.latents], "lr": self.cfg.latent_lr, "name": "decoder_latents"}]

    @torch.no_grad()
    def reindex(self, source: torch.Tensor, fresh: torch.Tensor | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Follow a change of the voxel set: new voxel i takes the latent of old voxel source[i].

        fresh (bool, per new voxel) marks grown voxels: they copy their parent's latent but start with
        empty optimizer moments. With `optimizer`, its latent parameter and per-row state are
        carried over (state tensors shaped like the latents are indexed the same way)."""
        source = source.to(device=self.latents.device, dtype=torch.long)
        if source.dim() != 1 or (source.numel() and (source.min() < 0 or source.max() >= self.num_voxels)):
            raise ValueError("source must be a 1-D index into the current voxels")
        old = self.latents
        new = nn.Parameter(old.detach()[source].clone())
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            state = optimizer.state.pop(old, None)
            if state:
                moved = {}
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == old.shape:
                        value = value[source].clone()
                        if fresh is not None:
                            value[fresh.to(value.device)] = 0
                    moved[key] = value
                optimizer.state[new] = moved
        self.latents = new
