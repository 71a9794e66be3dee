"""Shared helpers for the tests/test_data_*.py files: tiny synthetic scenes and the shared-data location."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def shared_data() -> Path:
    env = os.environ.get("RECON_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_scene(name: str) -> Path:
    """Path of a scene in ../shared/data; skips the test when it is absent."""
    p = shared_data() / name
    if not p.is_dir():
        pytest.skip(f"shared scene {name} not found at {p}")
    return p


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world in OpenCV axes (x right, y down, z forward) looking from eye at target."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-8:
        x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def ring_c2w(n: int, radius: float = 4.0, center=(0.0, 0.0, 0.0), elevation: float = 0.4) -> np.ndarray:
    """(n, 4, 4) OpenCV camera-to-world on a tilted ring, all looking at `center`."""
    center = np.asarray(center, float)
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        e = elevation * (1 if i % 2 == 0 else 0.5)
        eye = center + radius * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
        out.append(look_at_c2w(eye, center))
    return np.stack(out)


def texture(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA), written by hand: PIL cannot write 16-bit colour."""
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def write_transforms_scene(
    root: Path, n: int = 6, w: int = 32, h: int = 24, rgba: bool = False, fx: float = 30.0,
    c2w: np.ndarray | None = None, ext: str = ".png", extra_top: dict | None = None,
) -> dict:
    """A tiny transforms.json scene (random texture images); returns the JSON written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    c2w = ring_c2w(n) if c2w is None else c2w
    frames = []
    for i in range(len(c2w)):
        name = f"images/f{i:03d}{ext}"
        img = texture(h, w, seed=i, channels=4 if rgba else 3)
        if rgba:
            img[..., 3] = 0
            img[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 3] = 255
        Image.fromarray(img).save(root / name)
        frames.append({"file_path": name, "transform_matrix": (c2w[i] @ GL_TO_CV).tolist()})
    meta = {"camera_model": "PINHOLE", "fl_x": fx, "fl_y": fx, "cx": w / 2, "cy": h / 2, "w": w, "h": h,
            "frames": frames, **(extra_top or {})}
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta


def write_colmap_text(root: Path, c2w: np.ndarray, camera_line: str, w: int, h: int) -> list[str]:
    """A COLMAP text model in root/sparse/0 (one shared camera given as 'MODEL W H params...') with
    random-texture images in root/images; returns the image names."""
    from scipy.spatial.transform import Rotation

    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (root / "images").mkdir()
    (model_dir / "cameras.txt").write_text(f"1 {camera_line}\n")
    lines, names = [], []
    for i, m in enumerate(c2w):
        w2c = np.linalg.inv(m)
        x, y, z, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        name = f"im{i:02d}.png"
        lines += [f"{i + 1} {qw} {x} {y} {z} {t[0]} {t[1]} {t[2]} 1 {name}", ""]
        Image.fromarray(texture(h, w, seed=100 + i)).save(root / "images" / name)
        names.append(name)
    (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
    (model_dir / "points3D.txt").write_text("")
    return names
