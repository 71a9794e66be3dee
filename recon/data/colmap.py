"""COLMAP sparse models (binary or text) through pycolmap, and undistortion of radial/OpenCV lens models.

COLMAP stores world-to-camera poses in OpenCV axes and intrinsics in continuous pixel coordinates (the
centre of pixel (0, 0) is at (0.5, 0.5)), the conventions Cameras uses, so poses only need inverting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.data.source import CameraSpec, FrameSource, SceneSource, check_pose, relative_name
from recon.errors import ReconError

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# Perspective models with lens distortion that we resample to a pinhole camera.
UNDISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
_MODEL_FIX = ("Undistort the images to a pinhole camera first (e.g. `colmap image_undistorter`); "
              f"supported models: {', '.join(PINHOLE_MODELS + UNDISTORTED_MODELS)}")


def find_model_dir(root: Path) -> Path | None:
    """The folder holding cameras/images(.bin|.txt): sparse/0, sparse, or the scene folder itself."""
    for cand in (root / "sparse" / "0", root / "sparse", root):
        if not cand.is_dir():
            continue
        for ext in (".bin", ".txt"):
            if (cand / f"cameras{ext}").is_file() and (cand / f"images{ext}").is_file():
                return cand
    return None


def read_reconstruction(model_dir: Path):
    import pycolmap

    has_points = any((model_dir / f"points3D{ext}").is_file() for ext in (".bin", ".txt"))
    rec = pycolmap.Reconstruction()
    try:
        if has_points:
            rec.read(str(model_dir))
        else:
            _read_without_points(rec, model_dir)
    except ReconError:
        raise
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on malformed files
        reason = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise ReconError(f"cannot read this COLMAP model ({reason})", path=model_dir,
                         fix="Re-export it with COLMAP (cameras, images, points3D as .bin or .txt)") from None
    return rec


def _read_without_points(rec, model_dir: Path) -> None:
    """pycolmap wants points3D beside cameras/images; give it an empty one in a temporary copy."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cameras", "images", "frames", "rigs"):
            for ext in (".bin", ".txt"):
                if (model_dir / f"{name}{ext}").is_file():
                    shutil.copy(model_dir / f"{name}{ext}", Path(tmp) / f"{name}{ext}")
        ext = ".bin" if (model_dir / "cameras.bin").is_file() else ".txt"
        if ext == ".bin":
            (Path(tmp) / "points3D.bin").write_bytes((0).to_bytes(8, "little"))
        else:
            (Path(tmp) / "points3D.txt").write_text("# no points\n")
        rec.read(tmp)


def camera_spec(cam, where: Path) -> CameraSpec:
    """CameraSpec for a pycolmap.Camera; refuses models we cannot turn into a pinhole."""
    model = cam.model.name
    p = [float(v) for v in cam.params]
    w, h = int(cam.width), int(cam.height)
    if model == "SIMPLE_PINHOLE":
        return CameraSpec(p[0], p[0], p[1], p[2], w, h)
    if model == "PINHOLE":
        return CameraSpec(p[0], p[1], p[2], p[3], w, h)
    if model in UNDISTORTED_MODELS:
        extra = [p[i] for i in cam.extra_params_idxs()]
        fx, fy = float(cam.focal_length_x), float(cam.focal_length_y)
        cx, cy = float(cam.principal_point_x), float(cam.principal_point_y)
        distortion = (model, extra) if any(v != 0.0 for v in extra) else None
        return CameraSpec(fx, fy, cx, cy, w, h, distortion=distortion)
    raise ReconError(f"camera {cam.camera_id} uses the {model} model, which is not supported", path=where,
                     fix=_MODEL_FIX)


def distorted_camera(model: str, extra: list[float], K: np.ndarray, width: int, height: int):
    """pycolmap.Camera of a distortion model with pinhole part K, for images of (width, height)."""
    import pycolmap

    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        params = [0.5 * (fx + fy), cx, cy, *extra]
    elif model in ("OPENCV", "FULL_OPENCV"):
        params = [fx, fy, cx, cy, *extra]
    else:
        raise ReconError(f"the {model} camera model is not supported", fix=_MODEL_FIX)
    cam = pycolmap.Camera(model=model, width=int(width), height=int(height), params=[float(v) for v in params])
    if not cam.verify_params():
        raise ReconError(f"wrong number of parameters for the {model} camera model: {params}", fix=_MODEL_FIX)
    return cam


def undistorted_intrinsics(cam) -> np.ndarray:
    """Pinhole K (same size and principal point) whose image lies entirely inside the distorted image.

    The focal length is scaled so that no output pixel samples outside the photo (no blank borders), as
    COLMAP's undistorter does.
    """
    w, h = int(cam.width), int(cam.height)
    fx, fy = float(cam.focal_length_x), float(cam.focal_length_y)
    cx, cy = float(cam.principal_point_x), float(cam.principal_point_y)
    n = 64
    t_x = np.linspace(0.0, w, n)
    t_y = np.linspace(0.0, h, n)
    edges = {
        "left": np.stack([np.zeros(n), t_y], 1), "right": np.stack([np.full(n, float(w)), t_y], 1),
        "top": np.stack([t_x, np.zeros(n)], 1), "bottom": np.stack([t_x, np.full(n, float(h))], 1),
    }
    ideal = {k: np.asarray(cam.cam_from_img(v)) for k, v in edges.items()}  # normalised coordinates
    left = ideal["left"][:, 0].max()
    right = ideal["right"][:, 0].min()
    top = ideal["top"][:, 1].max()
    bottom = ideal["bottom"][:, 1].min()
    if not (left < 0 < right and top < 0 < bottom) or not np.isfinite([left, right, top, bottom]).all():
        raise ReconError(f"the {cam.model.name} distortion ({list(cam.params)}) is too strong to undistort",
                         fix=_MODEL_FIX)
    # Output covers x in [-cx/f'x, (w-cx)/f'x]: need -cx/f'x >= left and (w-cx)/f'x <= right.
    need_fx = max(cx / -left, (w - cx) / right)
    need_fy = max(cy / -top, (h - cy) / bottom)
    s = max(need_fx / fx, need_fy / fy)
    return np.array([[fx * s, 0.0, cx], [0.0, fy * s, cy], [0.0, 0.0, 1.0]])


def undistort_image(arr: np.ndarray, cam, K: np.ndarray) -> np.ndarray:
    """Resample a distorted image (h, w[, c]) uint8 taken with `cam` to the pinhole camera K (same size)."""
    h, w = arr.shape[:2]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1)
    src = np.asarray(cam.img_from_cam(rays, check_cheirality=False)) - 0.5  # to array-index coordinates
    out = bilinear_sample(arr, src[:, 0], src[:, 1])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(arr.shape)


def bilinear_sample(arr: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (h, w[, c]) at array coordinates x, y (P,) with bilinear weights, clamping at the border.
    Returns (P, c) float32."""
    from scipy import ndimage

    h, w = arr.shape[:2]
    flat = arr.reshape(h, w, -1)
    coords = [np.nan_to_num(y), np.nan_to_num(x)]
    return np.stack([ndimage.map_coordinates(flat[..., c].astype(np.float32), coords, order=1, mode="nearest")
                     for c in range(flat.shape[2])], axis=-1)


def load_colmap(root: Path, model_dir: Path) -> SceneSource:
    rec = read_reconstruction(model_dir)
    image_dir = root / "images" if (root / "images").is_dir() else root
    cams_file = next((model_dir / f"cameras{e}" for e in (".bin", ".txt") if (model_dir / f"cameras{e}").is_file()))
    imgs_file = next((model_dir / f"images{e}" for e in (".bin", ".txt") if (model_dir / f"images{e}").is_file()))
    specs = {cid: camera_spec(cam, cams_file) for cid, cam in rec.cameras.items()}
    frames: list[FrameSource] = []
    unposed: list[str] = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            unposed.append(image.name)
            continue
        path = image_dir / image.name
        if not path.is_file():
            raise ReconError(f"image {image.name} listed in the model is missing from {image_dir}", path=imgs_file,
                             fix="Put the photos in the images/ folder beside sparse/")
        if image.camera_id not in specs:
            raise ReconError(f"image {image.name} uses camera {image.camera_id}, which is not in the model",
                             path=imgs_file, fix="Re-export the model with COLMAP")
        w2c = np.eye(4)
        w2c[:3, :] = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        if not np.isfinite(w2c).all():
            raise ReconError(f"pose of image {image.name} contains NaN or infinity", path=imgs_file,
                             fix="Fix or remove that image")
        c2w = check_pose(np.linalg.inv(w2c), imgs_file, f"image {image.name}")
        frames.append(FrameSource(relative_name(path, root), path, c2w, specs[image.camera_id]))
    notes = []
    if unposed:
        notes.append(f"{len(unposed)} image(s) without a pose in the COLMAP model skipped: {', '.join(unposed[:10])}")
    if model_dir.parent.name == "sparse" and any(
        p.is_dir() and p.name != model_dir.name for p in model_dir.parent.iterdir()
    ):
        notes.append(f"several COLMAP models under {model_dir.parent}; using {model_dir.name}")
    points = colors = None
    if rec.num_points3D() > 0:
        pts = sorted(rec.points3D.items())
        points = np.array([p.xyz for _, p in pts], dtype=np.float64)
        colors = np.array([p.color for _, p in pts], dtype=np.uint8)
    if any(s.distortion is not None for s in specs.values()):
        models = sorted({s.distortion[0] for s in specs.values() if s.distortion is not None})
        notes.append(f"images undistorted from COLMAP model(s) {', '.join(models)} to pinhole cameras")
    return SceneSource("colmap", root, imgs_file, frames, points=points, point_colors=colors, notes=notes)
