"""CPU fallbacks for the two CUDA-only helpers gsplat's MCMCStrategy calls.

``gsplat.strategy.ops`` imports ``quat_scale_to_covar_preci`` (noise injection) and
``compute_relocation`` (relocation / sample_add) from gsplat's CUDA extension, so MCMCStrategy
fails on CPU tensors. ``install()`` swaps those two names in ``gsplat.strategy.ops`` for wrappers
that call the original on CUDA tensors and a PyTorch version on CPU ones. DefaultStrategy needs
nothing: its ops are plain PyTorch.
"""
from __future__ import annotations

import torch

_installed = False


def covar_from_quat_scale(quats, scales, compute_covar=True, compute_preci=True, triu=False):
    """PyTorch twin of ``gsplat.quat_scale_to_covar_preci``."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def relocation(opacities, scales, ratios, binoms):
    """PyTorch twin of ``gsplat.relocation.compute_relocation`` (MCMC paper, equation 9).

    A Gaussian sampled n times is split into n copies with opacity 1 - (1 - o)^(1/n) and scales
    shrunk so that the summed footprint matches the original.
    """
    n_max = binoms.shape[0]
    ratios.clamp_(min=1, max=n_max)  # gsplat clamps its argument in place too
    n = ratios.to(torch.int64)
    dtype = opacities.dtype
    new_opacities = 1.0 - torch.pow(1.0 - opacities, 1.0 / n.to(dtype))
    # denominator: sum_{i=1..n} sum_{k<i} binom(i-1, k) (-1)^k / sqrt(k+1) * new_op^(k+1)
    #            = sum_k [sum_{i=k+1..n} binom(i-1, k)] (-1)^k / sqrt(k+1) * new_op^(k+1)
    b = binoms.to(dtype)
    partial = torch.cumsum(b, dim=0)  # partial[m, k] = sum_{j<=m} binom(j, k)
    coef = partial[n - 1]  # (N, n_max): sum over i-1 in [0, n-1]
    k = torch.arange(n_max, dtype=dtype, device=opacities.device)
    sign = torch.where(k.to(torch.int64) % 2 == 0, 1.0, -1.0).to(dtype)
    powers = new_opacities[:, None] ** (k + 1)
    denom = (coef * sign / torch.sqrt(k + 1) * powers).sum(dim=1)
    new_scales = (opacities / denom)[:, None] * scales
    return new_opacities, new_scales


def install() -> None:
    """Route gsplat.strategy.ops' CUDA-only helpers to PyTorch for CPU tensors (idempotent)."""
    global _installed
    if _installed:
        return
    import gsplat.strategy.ops as ops

    cuda_covar = ops.quat_scale_to_covar_preci
    cuda_relocation = ops.compute_relocation

    def quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=True, triu=False):
        if quats.is_cuda:
            return cuda_covar(quats, scales, compute_covar, compute_preci, triu)
        return covar_from_quat_scale(quats, scales, compute_covar, compute_preci, triu)

    def compute_relocation(opacities, scales, ratios, binoms):
        if opacities.is_cuda:
            return cuda_relocation(opacities, scales, ratios, binoms)
        return relocation(opacities, scales, ratios, binoms.to(opacities.device))

    ops.quat_scale_to_covar_preci = quat_scale_to_covar_preci
    ops.compute_relocation = compute_relocation
    _installed = True


__all__ = ["install", "relocation", "covar_from_quat_scale"]
