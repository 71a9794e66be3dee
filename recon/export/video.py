"""Turntable video: a full orbit around the object rendered with our rasterizer, as .mp4 and/or .gif."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.io_utils import atomic_path
from recon.export.views import frame_object, orbit_cameras, render_views

VIDEO_SUFFIXES = (".mp4", ".gif")


def turntable_frames(gaussians: Gaussians, cameras: Cameras | None = None, *, n_frames: int = 60,
                     size: int = 512, background=(1.0, 1.0, 1.0), elevation_deg: float | None = None,
                     up=None, batch: int = 8) -> np.ndarray:
    """(n_frames, H, W, 3) uint8 frames of one orbit around the Gaussians' bounding sphere, which
    fills the frame. The capture cameras (optional) set the up direction, field of view and
    elevation (otherwise +z up, 40 degrees, 20 degrees). H = size and W follows the capture's
    aspect ratio, both even (video encoders need it)."""
    if n_frames < 1 or size < 16:
        raise ReconError(f"need at least 1 frame and 16 pixels (got {n_frames} frames, size {size})",
                         fix="pass --frames >= 1 and --size >= 16")
    height = size - size % 2
    width = height if cameras is None else int(round(height * cameras.width / cameras.height))
    width -= width % 2
    framing = frame_object(gaussians, cameras, up=up, elevation_deg=elevation_deg)
    # A portrait frame is narrower than it is tall: fit the object in the narrower field of view.
    fov_x = 2 * math.atan(math.tan(framing.fov_y / 2) * width / height)
    framing.distance = max(framing.distance, 1.15 * framing.radius / math.sin(min(fov_x, framing.fov_y) / 2))
    views = orbit_cameras(framing, n_frames, width, height)
    images, _ = render_views(gaussians, views, render_mode="RGB", background=background, batch=batch)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_video(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """Write uint8 frames (F, H, W, 3) as .mp4 (H.264, yuv420p) or .gif (looping), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ReconError(f"unsupported video file type {path.suffix!r}", path=path, fix="use .mp4 or .gif")
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            # macro_block_size=2 keeps our even sizes instead of resizing to multiples of 16.
            with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=2) as writer:
                for frame in frames:
                    writer.append_data(frame)
        else:
            imageio.mimsave(tmp, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return path


def render_turntable(gaussians: Gaussians, paths: str | Path | Sequence[str | Path],
                     cameras: Cameras | None = None, *, n_frames: int = 60, fps: int = 30, size: int = 512,
                     background=(1.0, 1.0, 1.0), elevation_deg: float | None = None, up=None) -> list[Path]:
    """Render one orbit and write it to each path (.mp4 and/or .gif); returns the paths written."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for p in paths:
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise ReconError(f"unsupported video file type {p.suffix!r}", path=p, fix="use .mp4 or .gif")
    frames = turntable_frames(gaussians, cameras, n_frames=n_frames, size=size, background=background,
                              elevation_deg=elevation_deg, up=up)
    return [write_video(frames, p, fps=fps) for p in paths]
