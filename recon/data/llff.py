"""LLFF `poses_bounds.npy`: one row of 17 numbers per image, images in file-name order.

Each row is a 3x5 matrix (row-major) followed by the near and far depth bounds. Its first three columns
are the camera axes in LLFF's [down, right, back] order, the fourth the camera centre, the fifth
[height, width, focal] of the images the poses were made for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.data.images import list_images
from recon.data.source import CameraSpec, FrameSource, SceneSource, check_pose, relative_name
from recon.errors import ReconError

POSES_FILE = "poses_bounds.npy"


def llff_to_opencv(block: np.ndarray) -> np.ndarray:
    """(3, 5) LLFF block -> (4, 4) camera-to-world in OpenCV axes [right, down, forward]."""
    down, right, back, t = block[:, 0], block[:, 1], block[:, 2], block[:, 3]
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = down
    c2w[:3, 2] = -back
    c2w[:3, 3] = t
    return c2w


def load_llff(root: Path) -> SceneSource:
    path = root / POSES_FILE
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle user files
    except (ValueError, OSError, EOFError) as e:
        raise ReconError(f"cannot read this NumPy file ({str(e).splitlines()[0][:120]})", path=path,
                         fix="Write it with numpy.save as an (N, 17) float array") from None
    if arr.ndim != 2 or arr.shape[1] != 17 or not np.issubdtype(arr.dtype, np.number):
        raise ReconError(f"has shape {arr.shape} ({arr.dtype}), expected (N, 17) numbers", path=path,
                         fix="Write the LLFF poses as an (N, 17) array: 3x5 pose-hwf blocks and near/far bounds")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise ReconError("found poses_bounds.npy but no images/ folder", path=root, fix="Put the photos in images/")
    images = list_images(image_dir)
    if len(images) != len(arr):
        raise ReconError(f"has {len(arr)} poses but {image_dir} holds {len(images)} images", path=path,
                         fix="Keep exactly the posed images (in file-name order) in images/")
    frames = []
    for row, image in zip(arr.astype(np.float64), images):
        block = row[:15].reshape(3, 5)
        name = relative_name(image, root)
        if not np.isfinite(row).all():
            raise ReconError(f"pose of frame {name} contains NaN or infinity", path=path, fix="Fix or remove that frame")
        h, w, focal = block[:, 4]
        if not (h >= 1 and w >= 1 and focal > 0):
            raise ReconError(f"frame {name} has height/width/focal {h}, {w}, {focal}", path=path,
                             fix="The 5th column of each pose must hold the image height, width and focal")
        c2w = check_pose(llff_to_opencv(block), path, f"frame {name}")
        # LLFF assumes the principal point at the image centre and one focal for both axes.
        spec = CameraSpec(fx=focal, fy=focal, cx=w / 2.0, cy=h / 2.0, width=int(round(w)), height=int(round(h)))
        frames.append(FrameSource(name, image, c2w, spec))
    near, far = float(arr[:, 15].min()), float(arr[:, 16].max())
    return SceneSource("llff", root, path, frames, notes=[f"LLFF depth bounds {near:.4g} to {far:.4g}"])
