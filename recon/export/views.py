"""Where to look from when exporting: cameras.json I/O, object framing and virtual cameras
(turntable orbits for video, a sphere of views for mesh fusion)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.io_utils import atomic_write_json


@dataclass
class CameraSet:
    """Cameras read from OUT/cameras.json, with their frame names and split ("train" | "test")."""

    cameras: Cameras
    names: list[str]
    splits: list[str]


def write_cameras_json(path: str | Path, cameras: Cameras, names: list[str], splits: list[str]) -> Path:
    """Write cameras.json: {"width","height","frames":[{"name","split","camtoworld","K"}]} (atomic)."""
    if not (len(names) == len(splits) == len(cameras)):
        raise ValueError("names, splits and cameras must have the same length")
    frames = [{"name": n, "split": s, "camtoworld": c.tolist(), "K": k.tolist()}
              for n, s, c, k in zip(names, splits, cameras.camtoworlds.double(), cameras.Ks.double())]
    atomic_write_json(path, {"width": int(cameras.width), "height": int(cameras.height), "frames": frames})
    return Path(path)


def read_cameras_json(path: str | Path) -> CameraSet:
    path = Path(path)
    fix = "re-run `recon reconstruct` or fix the file (keys: width, height, frames[name, split, camtoworld 4x4, K 3x3])"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReconError("file not found", path=path, fix="pass a reconstruction output folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReconError(f"not valid JSON ({e})", path=path, fix=fix) from None
    try:
        width, height = int(obj["width"]), int(obj["height"])
        frames = obj["frames"]
        if width <= 0 or height <= 0 or not isinstance(frames, list) or not frames:
            raise ValueError("width/height must be positive and frames non-empty")
        c2w = torch.tensor([f["camtoworld"] for f in frames], dtype=torch.float64)
        Ks = torch.tensor([f["K"] for f in frames], dtype=torch.float64)
        names = [str(f.get("name", i)) for i, f in enumerate(frames)]
        splits = [str(f.get("split", "train")) for f in frames]
    except (KeyError, TypeError, ValueError) as e:
        raise ReconError(f"malformed cameras file ({e})", path=path, fix=fix) from None
    if c2w.shape[1:] != (4, 4) or Ks.shape[1:] != (3, 3):
        raise ReconError(f"camtoworld must be 4x4 and K 3x3, got {tuple(c2w.shape[1:])} and {tuple(Ks.shape[1:])}",
                         path=path, fix=fix)
    if not (torch.isfinite(c2w).all() and torch.isfinite(Ks).all()):
        raise ReconError("non-finite camera values", path=path, fix=fix)
    if bool((Ks[:, 0, 0] <= 0).any() or (Ks[:, 1, 1] <= 0).any()):
        raise ReconError("focal lengths must be positive", path=path, fix=fix)
    return CameraSet(Cameras(c2w, Ks, width, height), names, splits)


@dataclass
class Framing:
    """How to frame the object: look-at centre, object radius, up direction, camera distance,
    vertical field of view (radians) and orbit elevation (radians)."""

    center: torch.Tensor  # (3,) float64
    radius: float
    up: torch.Tensor  # (3,) float64 unit
    distance: float
    fov_y: float
    elevation: float


def object_bounds(g: Gaussians, min_opacity: float = 0.05, quantile: float = 0.98) -> tuple[torch.Tensor, float]:
    """Robust centre (median of visible means) and radius (quantile of distances, so stray floaters
    do not blow up the frame)."""
    with torch.no_grad():
        means = g.means.detach().double().cpu()
        if len(g) == 0:
            return torch.zeros(3, dtype=torch.float64), 1.0
        vis = torch.sigmoid(g.opacity_logits.detach().double().cpu()) >= min_opacity
        pts = means[vis] if int(vis.sum()) >= 4 else means
        center = pts.median(dim=0).values
        d = (pts - center).norm(dim=1)
        radius = float(torch.quantile(d, quantile)) if len(d) > 1 else 0.0
        if not math.isfinite(radius) or radius <= 0:
            radius = 1.0
    return center, radius


def frame_object(g: Gaussians, cameras: Cameras | None = None, up=None, fov_y_deg: float = 40.0,
                 elevation_deg: float | None = None) -> Framing:
    """Framing from the Gaussians' bounds: the object fills the view with a margin. Cameras (when
    given) set the up direction, field of view and elevation so the orbit looks like the capture."""
    center, radius = object_bounds(g)
    if up is not None:
        up_t = torch.as_tensor(up, dtype=torch.float64).reshape(3)
    elif cameras is not None:
        # OpenCV camera y points down; the capture's average -y is the world up.
        up_t = -cameras.camtoworlds[:, :3, 1].double().mean(dim=0)
    else:
        up_t = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    if up_t.norm() < 1e-8:
        up_t = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    up_t = up_t / up_t.norm()
    if cameras is not None:
        offsets = cameras.centers.double() - center
        fov_y = float(2 * torch.atan(cameras.height / (2 * cameras.Ks[:, 1, 1].double())).median())
        sin_el = (offsets @ up_t) / offsets.norm(dim=1).clamp_min(1e-12)
        elevation = float(torch.asin(sin_el.clamp(-1, 1)).median())
    else:
        fov_y = math.radians(fov_y_deg)
        elevation = math.radians(20.0)
    # Fill the frame with the object (with a margin), whatever the capture distance was.
    distance = 1.15 * radius / math.sin(fov_y / 2)
    if elevation_deg is not None:
        elevation = math.radians(elevation_deg)
    return Framing(center, radius, up_t, distance, fov_y, elevation)


def look_at(eyes: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4) camera-to-world, OpenCV axes (x right, y down, z forward), looking at target."""
    eyes = eyes.double()
    fwd = target.double()[None] - eyes
    fwd = fwd / fwd.norm(dim=1, keepdim=True)
    up = up.double().expand_as(fwd)
    right = torch.linalg.cross(fwd, up, dim=1)
    # Looking straight along up: pick any perpendicular right vector.
    degenerate = right.norm(dim=1) < 1e-6
    if bool(degenerate.any()):
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(up[0] @ alt)) > 0.9:
            alt = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        right[degenerate] = torch.linalg.cross(fwd[degenerate], alt.expand_as(fwd[degenerate]), dim=1)
    right = right / right.norm(dim=1, keepdim=True)
    down = torch.linalg.cross(fwd, right, dim=1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(eyes), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, fwd, eyes
    return c2w


def _intrinsics(n: int, width: int, height: int, fov_y: float) -> torch.Tensor:
    f = height / (2 * math.tan(fov_y / 2))
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K.repeat(n, 1, 1)


def _tangent_basis(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(up @ a)) > 0.9:
        a = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = a - (a @ up) * up
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(up, e1, dim=0)


def orbit_cameras(framing: Framing, n_frames: int, width: int, height: int) -> Cameras:
    """n_frames cameras on a full circle around framing.up at the framing's elevation and distance."""
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    e1, e2 = _tangent_basis(framing.up)
    theta = torch.arange(n_frames, dtype=torch.float64) * (2 * math.pi / n_frames)
    ce, se = math.cos(framing.elevation), math.sin(framing.elevation)
    dirs = ce * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2) + se * framing.up
    eyes = framing.center + framing.distance * dirs
    return Cameras(look_at(eyes, framing.center, framing.up), _intrinsics(n_frames, width, height, framing.fov_y),
                   width, height)


def sphere_cameras(framing: Framing, n_views: int, width: int, height: int) -> Cameras:
    """n_views cameras spread evenly over the whole sphere (Fibonacci lattice), all looking at the
    centre: every side of the object, including top and bottom, is seen for fusion."""
    if n_views < 1:
        raise ValueError("n_views must be >= 1")
    i = torch.arange(n_views, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n_views
    r = torch.sqrt((1 - z * z).clamp_min(0))
    phi = i * math.pi * (3 - math.sqrt(5))
    e1, e2 = _tangent_basis(framing.up)
    dirs = (r * torch.cos(phi))[:, None] * e1 + (r * torch.sin(phi))[:, None] * e2 + z[:, None] * framing.up
    eyes = framing.center + framing.distance * dirs
    return Cameras(look_at(eyes, framing.center, framing.up), _intrinsics(n_views, width, height, framing.fov_y),
                   width, height)


def render_views(g: Gaussians, cameras: Cameras, render_mode: str = "RGB", background=None,
                 batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Render g from every camera with recon.render.rasterize, a few cameras at a time.

    Returns (images (C, H, W, D) float32, alphas (C, H, W, 1)); D is 3 for "RGB", 4 for "RGB+ED".
    """
    from recon.render import rasterize  # the renderer is heavy; only export paths that render need it

    device = g.means.device
    with torch.no_grad():
        means, quats = g.means.detach().float(), g.quats.detach().float()
        scales, opac = g.scales.detach().float(), g.opacities.detach().float()
        sh = g.sh.detach().float()
        viewmats = cameras.viewmats.to(device, torch.float32)
        Ks = cameras.Ks.to(device, torch.float32)
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32, device=device)
        images, alphas = [], []
        for s in range(0, len(cameras), batch):
            vm, K = viewmats[s:s + batch], Ks[s:s + batch]
            bgs = None if bg is None else bg.reshape(1, -1).expand(len(vm), -1)
            img, alpha, _ = rasterize(means, quats, scales, opac, sh, vm, K, cameras.width, cameras.height,
                                      sh_degree=g.sh_degree, backgrounds=bgs, render_mode=render_mode)
            images.append(img.cpu())
            alphas.append(alpha.cpu())
    return torch.cat(images), torch.cat(alphas)
