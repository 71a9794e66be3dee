"""Gaussians <-> antimatter15 .splat (the web viewer format).

32 bytes per Gaussian, little endian, no header:
  3 float32 position | 3 float32 scale (activated, not log) | 4 uint8 RGBA | 4 uint8 quaternion.
RGB is the SH DC colour (view-dependent SH is dropped), A = sigmoid(opacity), each x255;
the quaternion is normalised wxyz mapped to bytes as q*128+128. Splats are sorted by descending
volume x opacity, as antimatter15's converter does, so viewers that stream the file show the
biggest, most opaque splats first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError
from recon.export.ply import _finite_rows
from recon.gaussians import Gaussians, rgb_to_sh0, sh0_to_rgb
from recon.io_utils import atomic_path

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32


def splat_bytes(g: Gaussians) -> bytes:
    with torch.no_grad():
        f = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        log_scales, opac = f(g.log_scales), f(g.opacity_logits)
        alpha = torch.sigmoid(opac)
        order = torch.argsort(-(torch.exp(log_scales.sum(dim=1)) * alpha), stable=True)
        rgb = sh0_to_rgb(f(g.sh[:, 0]))
        rgba = torch.cat([rgb, alpha[:, None]], dim=1)
        q = f(g.quats)
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out = np.empty(len(g), dtype=SPLAT_DTYPE)
        out["position"] = f(g.means)[order].numpy()
        out["scale"] = torch.exp(log_scales)[order].numpy()
        # Round to the nearest level (not truncate) to halve the quantisation error.
        out["rgba"] = (rgba[order] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        out["rot"] = (q[order] * 128.0 + 128.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out.tobytes()


def write_splat(path: str | Path, gaussians: Gaussians) -> Path:
    """Write `gaussians` as an antimatter15 .splat (atomic). Non-finite rows are dropped."""
    g = gaussians
    ok = _finite_rows(g) & (g.quats.detach().abs().sum(dim=1) > 0)
    if not bool(ok.all()):
        g = g.subset(ok)
    path = Path(path)
    data = splat_bytes(g)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_splat(path: str | Path) -> Gaussians:
    """Read an antimatter15 .splat into Gaussians (SH degree 0). ReconError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise ReconError("file not found", path=path, fix="pass the path of a .splat file")
    size = path.stat().st_size
    if size == 0 or size % SPLAT_DTYPE.itemsize:
        raise ReconError(f"not a .splat file: size {size} bytes is not a positive multiple of 32",
                         path=path, fix="re-export or re-download the file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"ply"):
        raise ReconError("this is a PLY file with a .splat name", path=path, fix="rename it to .ply")
    data = np.fromfile(path, dtype=SPLAT_DTYPE)
    pos = torch.from_numpy(data["position"].astype(np.float32))
    scale = torch.from_numpy(data["scale"].astype(np.float32))
    if not bool(torch.isfinite(pos).all() & torch.isfinite(scale).all()):
        raise ReconError("non-finite (NaN/inf) positions or scales", path=path,
                         fix="re-export the Gaussians without NaN/inf")
    if bool((scale <= 0).any()):
        raise ReconError(f"{int((scale <= 0).any(dim=1).sum())} splats have non-positive scales",
                         path=path, fix="re-export the file")
    q = (torch.from_numpy(data["rot"].astype(np.float32)) - 128.0) / 128.0
    if bool((q.abs().sum(dim=1) == 0).any()):
        raise ReconError("splats with an all-zero rotation (bytes 128,128,128,128)", path=path,
                         fix="re-export the file")
    rgba = torch.from_numpy(data["rgba"].astype(np.float32)) / 255.0
    # Alpha 0 or 255 would be an infinite logit; clamp half a level inside.
    eps = 0.5 / 255.0
    alpha = rgba[:, 3].clamp(eps, 1.0 - eps)
    sh = rgb_to_sh0(rgba[:, :3])[:, None, :].contiguous()
    return Gaussians(pos, q, torch.log(scale), torch.logit(alpha), sh)

