"""nerfstudio / instant-ngp `transforms.json` and the Blender `transforms_{train,test}.json` layout.

Poses are camera-to-world in OpenGL camera axes (y up, looking down -z); they are turned into OpenCV axes
with `c2w @ diag(1, -1, -1, 1)`. Intrinsics may be shared (top level) or per frame.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from recon.data.colmap import PINHOLE_MODELS, UNDISTORTED_MODELS
from recon.data.images import IMAGE_EXTENSIONS
from recon.data.source import CameraSpec, FrameSource, SceneSource, check_pose, relative_name
from recon.errors import ReconError

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
BLENDER_SPLITS = ("train", "val", "test")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
                   "k1", "k2", "k3", "k4", "p1", "p2", "camera_model")


def read_json(path: Path) -> object:
    """Parsed JSON, or a ReconError that points at the line and column of the mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReconError("is not UTF-8 text", path=path, fix="Save it as UTF-8 JSON") from None
    except OSError as e:
        raise ReconError(f"cannot read this file ({e.strerror})", path=path, fix="Check that it exists and is readable") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReconError(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path=path,
                         fix="Fix the syntax") from None


def _number(value, key: str, where: Path, frame: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReconError(f"{key} of {frame} is {value!r}, not a number", path=where, fix="Write it as a number")
    if not math.isfinite(value):
        raise ReconError(f"{key} of {frame} is {value}", path=where, fix="Give a finite number")
    return float(value)


def _camera_spec(meta: dict, frame: dict, where: Path, label: str) -> CameraSpec:
    """Intrinsics of one frame: its own keys override the file's shared ones."""

    def get(key):
        return frame[key] if key in frame else meta.get(key)

    num = {k: _number(get(k), k, where, label) for k in _INTRINSIC_KEYS if k != "camera_model"}
    for k in ("w", "h"):
        if num[k] is not None and (num[k] < 1 or num[k] != int(num[k])):
            raise ReconError(f"{k} of {label} is {num[k]}, not a positive whole number of pixels", path=where,
                             fix="Give the image size in pixels")
    model = get("camera_model")
    dist = {k: num[k] or 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    distorted = any(v != 0.0 for v in dist.values())
    if model is None:
        model = "OPENCV" if distorted else "PINHOLE"
    if not isinstance(model, str):
        raise ReconError(f"camera_model of {label} is {model!r}", path=where, fix="Use PINHOLE or OPENCV")
    model = model.upper()
    distortion = None
    if model in ("OPENCV", "FULL_OPENCV", "SIMPLE_RADIAL", "RADIAL") and distorted:
        if dist["k4"] != 0.0:
            raise ReconError(f"{label} has k4 = {dist['k4']} with the {model} model, which has no k4", path=where,
                             fix="Use OPENCV_FISHEYE images undistorted to a pinhole, or drop k4")
        if dist["k3"] != 0.0:
            distortion = ("FULL_OPENCV", [dist["k1"], dist["k2"], dist["p1"], dist["p2"], dist["k3"], 0.0, 0.0, 0.0])
        else:
            distortion = ("OPENCV", [dist["k1"], dist["k2"], dist["p1"], dist["p2"]])
    elif model not in PINHOLE_MODELS + UNDISTORTED_MODELS:
        raise ReconError(f"{label} uses camera_model {model}, which is not supported", path=where,
                         fix="Undistort the images to a pinhole camera first (e.g. with COLMAP's image_undistorter) "
                             "and set camera_model to PINHOLE")
    return CameraSpec(
        fx=num["fl_x"], fy=num["fl_y"], cx=num["cx"], cy=num["cy"],
        width=int(num["w"]) if num["w"] else None, height=int(num["h"]) if num["h"] else None,
        angle_x=num["camera_angle_x"], angle_y=num["camera_angle_y"], distortion=distortion,
    )


def resolve_image_path(base: Path, file_path: str) -> Path | None:
    """The image a `file_path` names: as written, or with an image extension added (Blender omits it)."""
    p = Path(file_path)
    if not p.is_absolute():
        p = base / p
    if p.is_file():
        return p
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def _parse_frames(path: Path, root: Path, label_prefix: str = "") -> list[FrameSource]:
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ReconError("has no 'frames' list", path=path,
                         fix="Write a transforms.json with a 'frames' list of {file_path, transform_matrix}")
    frames = []
    for i, fr in enumerate(meta["frames"]):
        label = f"{label_prefix}frame {i}"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise ReconError(f"{label} lacks file_path or transform_matrix", path=path,
                             fix="Give every frame a file_path and a 4x4 transform_matrix")
        file_path = fr["file_path"]
        if not isinstance(file_path, str) or not file_path:
            raise ReconError(f"file_path of {label} is {file_path!r}", path=path, fix="Give the image path as text")
        image = resolve_image_path(path.parent, file_path)
        if image is None:
            raise ReconError(f"{label} names {file_path}, which does not exist", path=path,
                             fix="Fix its file_path or add the image")
        label = f"{label} ({file_path})"
        try:
            m = np.array(fr["transform_matrix"], dtype=np.float64)
        except (ValueError, TypeError):
            raise ReconError(f"transform_matrix of {label} is not a matrix of numbers", path=path,
                             fix="Give a 4x4 list of numbers") from None
        c2w = check_pose(m, path, label) @ OPENGL_TO_OPENCV
        mask = None
        if isinstance(fr.get("mask_path"), str):
            mask = resolve_image_path(path.parent, fr["mask_path"])
            if mask is None:
                raise ReconError(f"mask_path of {label} names {fr['mask_path']}, which does not exist", path=path,
                                 fix="Fix the mask_path or add the mask")
        frames.append(FrameSource(relative_name(image, root), image, c2w, _camera_spec(meta, fr, path, label), mask))
    if not frames:
        raise ReconError("lists no frames", path=path, fix="Add frames with file_path and transform_matrix")
    return frames


def _distortion_notes(frames: list[FrameSource]) -> list[str]:
    models = sorted({f.camera.distortion[0] for f in frames if f.camera.distortion is not None})
    return [f"images undistorted from the {', '.join(models)} lens model to pinhole cameras"] if models else []


def load_transforms(path: Path) -> SceneSource:
    """A nerfstudio / instant-ngp transforms.json; the scene root is its folder."""
    root = path.parent
    frames = _parse_frames(path, root)
    return SceneSource("transforms", root, path, frames, notes=_distortion_notes(frames))


def blender_files(root: Path) -> dict[str, Path]:
    return {s: root / f"transforms_{s}.json" for s in BLENDER_SPLITS if (root / f"transforms_{s}.json").is_file()}


def load_blender(root: Path) -> SceneSource:
    """The NeRF-synthetic layout: the train/test split comes from the files; val views are not loaded."""
    files = blender_files(root)
    if "train" not in files:
        raise ReconError("found Blender transforms files but no transforms_train.json", path=root,
                         fix="Add transforms_train.json (the training cameras)")
    frames: list[FrameSource] = []
    split: dict[str, list[str]] = {"train": [], "test": []}
    for s in ("train", "test"):
        if s in files:
            part = _parse_frames(files[s], root, label_prefix=f"{s} ")
            frames += part
            split[s] = [f.name for f in part]
    notes = _distortion_notes(frames)
    if "val" in files:
        notes.append("transforms_val.json ignored (Blender validation views are neither trained on nor tested)")
    source = ", ".join(str(files[s]) for s in ("train", "test") if s in files)
    return SceneSource("blender", root, files["train"], frames, file_split=(split["train"], split["test"]),
                       file_split_source=source, notes=notes)
