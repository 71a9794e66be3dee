"""Image losses and metrics: L1, SSIM (Gaussian window, as in 3DGS), PSNR."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Gaussian window of the SSIM (as in 3DGS)


@functools.lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), 'valid' padding like the reference SSIM."""
    g = _gauss_1d(size, sigma, x.dtype).to(x.device)
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM map of images (B, H, W, C) in [0, 1] (11x11 window, sigma 1.5, valid region)."""
    a = a.permute(0, 3, 1, 2)
    b = b.permute(0, 3, 1, 2)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _blur(a), _blur(b)
    saa = _blur(a * a) - mu_a**2
    sbb = _blur(b * b) - mu_b**2
    sab = _blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


class _FusedSSIM(torch.autograd.Function):
    """Mean SSIM of (B, H, W, C) images by the C++ kernel (recon.kernels, ssim_cpu.cpp); gradient for `a`
    (first order only: training never differentiates the loss twice)."""

    @staticmethod
    def forward(ctx, a, b):
        from recon.kernels import load

        window = _gauss_1d(SSIM_WINDOW, SSIM_SIGMA, a.dtype)
        total, moments = load().ssim_forward(a, b, window)
        ctx.save_for_backward(a, b, window, moments)
        ctx.count = moments[:, 0].numel()
        return (total / ctx.count).to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        from recon.kernels import load

        a, b, window, moments = ctx.saved_tensors
        return load().ssim_backward(a, b, window, moments, float(grad) / ctx.count), None


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, H, W, C) images: the fused CPU kernel where it applies (CPU, float, `b` a
    constant target), else ssim_map (the pure-PyTorch reference)."""
    if (a.device.type == "cpu" and b.device.type == "cpu" and a.dtype in (torch.float32, torch.float64)
            and b.dtype == a.dtype and not b.requires_grad and a.dim() == 4 and a.shape == b.shape
            and min(a.shape[1:3]) >= SSIM_WINDOW):
        return _FusedSSIM.apply(a.contiguous(), b.contiguous())
    return ssim_map(a, b).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = torch.mean((a - b) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """(1 - w) * L1 + w * (1 - SSIM), on (B, H, W, 3)."""
    l1 = (render - target).abs().mean()
    if ssim_weight <= 0 or min(render.shape[1:3]) < SSIM_WINDOW:
        return l1
    return (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(render, target))
