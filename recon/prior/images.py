"""Image layout helpers shared by the prior: renders in, (N, H, W, 3) floats in [0, 1] out, PNGs for people."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def split_render(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A renderer's output -> (rgb (H, W, 3), alpha (H, W, 1) or None), detached from nothing.

    Accepts a tensor (H, W, 3|4) or (1, H, W, 3|4), or a tuple whose first item is the colour and whose
    second item, when it is a tensor, is the alpha (as recon.render.rasterize returns)."""
    alpha = None
    if isinstance(out, (tuple, list)):
        if len(out) >= 2 and torch.is_tensor(out[1]):
            alpha = out[1]
        out = out[0]
    if not torch.is_tensor(out):
        raise TypeError(f"a render must be a tensor or a tuple of tensors, got {type(out).__name__}")
    if out.dim() == 4:
        if out.shape[0] != 1:
            raise ValueError(f"one camera at a time: got a batch of {out.shape[0]} renders")
        out = out[0]
    if out.dim() != 3 or out.shape[-1] not in (3, 4):
        raise ValueError(f"a render must be (H, W, 3) or (H, W, 4), got {tuple(out.shape)}")
    if out.shape[-1] == 4:
        out, alpha = out[..., :3], out[..., 3:]
    if alpha is not None:
        if alpha.dim() == 4:
            alpha = alpha[0]
        if alpha.dim() == 2:
            alpha = alpha[..., None]
    return out, alpha


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) or (H, W, C) -> (N, C, H, W)."""
    if images.dim() == 3:
        images = images[None]
    return images.permute(0, 3, 1, 2).contiguous()


def to_nhwc(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 2, 3, 1).contiguous()


def resize_nchw(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def fit_size(height: int, width: int, max_size: int, multiple: int = 1) -> tuple[int, int]:
    """(h, w) with the longest side at most max_size, aspect kept, both a multiple of `multiple`."""
    s = min(1.0, max_size / max(height, width))
    h = max(multiple, int(round(height * s / multiple)) * multiple)
    w = max(multiple, int(round(width * s / multiple)) * multiple)
    return h, w


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).clamp_min(1e-12)
    return float(-10.0 * torch.log10(mse))


def save_png(path: str | Path, image: torch.Tensor) -> None:
    """Write an (H, W, 3|4) float image in [0, 1] as an 8-bit PNG, atomically."""
    import imageio.v3 as iio

    from recon.io_utils import atomic_path

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")
