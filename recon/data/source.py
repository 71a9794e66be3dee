"""What a format parser hands to the loader: frames with poses and camera specs, before any pixel is read.

Parsers (transforms.py, colmap.py, llff.py) only read camera files; recon.data.load reads the images,
resolves intrinsics against the real image size, splits, selects views and normalises.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.errors import ReconError


@dataclass
class CameraSpec:
    """Pinhole intrinsics as a file states them; missing values are filled from the image size.

    Values are in continuous pixel coordinates of an image of size (width, height) when those are given;
    otherwise they refer to the image as found on disk. `distortion` = (COLMAP model name, its extra
    parameters) for lens models that must be undistorted, e.g. ("OPENCV", [k1, k2, p1, p2]).
    """

    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    width: int | None = None
    height: int | None = None
    angle_x: float | None = None  # Blender camera_angle_x (radians), used when fx is absent
    angle_y: float | None = None
    distortion: tuple[str, list[float]] | None = None

    def stated_size(self) -> tuple[int, int] | None:
        if self.width and self.height:
            return int(self.width), int(self.height)
        return None

    def resolve(self, width: int, height: int, where: Path) -> np.ndarray:
        """(3, 3) intrinsics for an image of exactly (width, height) pixels."""
        sx = sy = 1.0
        stated = self.stated_size()
        if stated is not None and stated != (width, height):
            sx, sy = width / stated[0], height / stated[1]
        ref_w, ref_h = stated if stated is not None else (width, height)
        fx, fy = self.fx, self.fy
        if fx is None and self.angle_x is not None:
            fx = 0.5 * ref_w / math.tan(0.5 * self.angle_x)
        if fy is None and self.angle_y is not None:
            fy = 0.5 * ref_h / math.tan(0.5 * self.angle_y)
        if fx is None and fy is not None:
            fx = fy
        if fy is None:
            fy = fx
        if fx is None:
            raise ReconError("no focal length for this camera", path=where,
                             fix="Add fl_x (pixels) or camera_angle_x (radians)")
        cx = self.cx if self.cx is not None else ref_w / 2.0
        cy = self.cy if self.cy is not None else ref_h / 2.0
        vals = [fx, fy, cx, cy]
        if not all(math.isfinite(v) for v in vals) or fx <= 0 or fy <= 0:
            raise ReconError(f"invalid intrinsics fx={fx} fy={fy} cx={cx} cy={cy}", path=where,
                             fix="Give positive, finite focal lengths in pixels")
        return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


@dataclass
class FrameSource:
    name: str  # path of the image relative to the scene root (posix), unique within the scene
    image_path: Path
    c2w: np.ndarray  # (4, 4) float64, camera-to-world, OpenCV axes
    camera: CameraSpec
    mask_path: Path | None = None


@dataclass
class SceneSource:
    format: str  # transforms | blender | colmap | llff | images
    root: Path
    pose_file: Path  # the file the poses came from (for error messages)
    frames: list[FrameSource]
    file_split: tuple[list[str], list[str]] | None = None  # (train, test) names fixed by the format (Blender)
    file_split_source: str | None = None
    points: np.ndarray | None = None  # (P, 3) float64 world points
    point_colors: np.ndarray | None = None  # (P, 3) uint8
    notes: list[str] = field(default_factory=list)


def relative_name(path: Path, root: Path) -> str:
    """Frame name: the path relative to the scene root, with forward slashes."""
    return Path(os.path.relpath(path, root)).as_posix()


def check_pose(c2w: np.ndarray, where: Path, frame: str) -> np.ndarray:
    """A finite rigid camera-to-world matrix, re-orthonormalised; ReconError otherwise."""
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ReconError(f"pose of {frame} has shape {m.shape}, not 4x4", path=where,
                         fix="Give a 4x4 (or 3x4) camera-to-world matrix")
    if not np.isfinite(m).all():
        raise ReconError(f"pose of {frame} contains NaN or infinity", path=where,
                         fix="Fix or remove that frame")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise ReconError(f"pose of {frame} has bottom row {m[3].tolist()}, not [0, 0, 0, 1]", path=where,
                         fix="Poses must be rigid camera-to-world matrices")
    R = m[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    det = np.linalg.det(R)
    if err > 1e-2 or det < 0:
        what = "a reflection" if det < 0 else f"not a rotation (|R^T R - I| = {err:.3g})"
        raise ReconError(f"pose of {frame} is {what}", path=where,
                         fix="Poses must be rigid camera-to-world matrices (rotation + translation, no scale)")
    U, _, Vt = np.linalg.svd(R)
    out = np.eye(4)
    out[:3, :3] = U @ Vt
    out[:3, 3] = m[:3, 3]
    return out
