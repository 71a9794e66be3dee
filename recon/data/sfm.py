"""Camera poses for a bare folder of images: pycolmap SIFT, exhaustive matching, incremental mapping (CPU).

Images are first normalised into the work folder (EXIF orientation applied, RGB 8-bit, RGBA composited on
black so only the masked object gives features, downsized to `max_size`), so COLMAP sees exactly the pixels
the loader sees. The returned intrinsics are scaled back to the original (EXIF-oriented) image size.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.errors import ReconError

MIN_REGISTERED = 3
HOW_TO_SUPPLY_CAMERAS = ("supply cameras instead: a transforms.json, a COLMAP model (sparse/0/) or an LLFF "
                         "poses_bounds.npy beside the images, or photos with more overlap and texture")


@dataclass
class SfmResult:
    """Cameras recovered by SfM for the registered images.

    camtoworlds: (R, 4, 4) float64 camera-to-world, OpenCV axes, in COLMAP's arbitrary world frame and scale.
    Ks: (R, 3, 3) float64 intrinsics for the original image size, continuous pixel coordinates.
    registered: indices into the input image list, sorted; row r of camtoworlds/Ks belongs to image registered[r].
    points / point_colors: sparse 3D points (P, 3) float64 and their colours (P, 3) uint8, or None.
    """

    camtoworlds: np.ndarray
    Ks: np.ndarray
    width: int
    height: int
    registered: list[int]
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None


@contextmanager
def _quiet_colmap():
    """Silence glog (COLMAP's logger) below errors while the pipeline runs."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # ERROR
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _prepare_images(image_paths: list[Path], out_dir: Path, max_size: int) -> tuple[int, int, float, float]:
    """Write 8-bit RGB copies (downsized) to out_dir as 00000.png, ... Returns the original size and scales."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    size = None
    scale = (1.0, 1.0)
    for i, path in enumerate(image_paths):
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise ReconError(f"cannot read image ({exc})", path=path, fix="replace or remove the file") from None
        if size is None:
            size = im.size
            longest = max(size)
            if longest > max_size:
                small = (max(1, round(size[0] * max_size / longest)), max(1, round(size[1] * max_size / longest)))
            else:
                small = size
            scale = (size[0] / small[0], size[1] / small[1])
        elif im.size != size:
            raise ReconError(f"image is {im.size[0]}x{im.size[1]} but the first image is {size[0]}x{size[1]}",
                             path=path, fix="give all images the same size (one camera)")
        rgb = _to_rgb8(im)
        if rgb.size != small:
            rgb = rgb.resize(small, Image.Resampling.LANCZOS)
        rgb.save(out_dir / f"{i:05d}.png", compress_level=1)
    return size[0], size[1], scale[0], scale[1]


def _to_rgb8(im):
    """8-bit RGB; alpha composited on black; 16-bit and float images rescaled, not clipped."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        if im.mode == "F":
            hi = max(float(a.max()), 1e-12)
        g = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    return im.convert("RGB")


def estimate_poses(image_paths: list[Path], work_dir: Path | None = None, max_size: int = 400,
                   num_threads: int = -1, seed: int = 0) -> SfmResult:
    """Recover one shared pinhole camera and the poses of `image_paths` with pycolmap on the CPU.

    Keeps the largest reconstruction. Raises ReconError when fewer than 3 images register.
    `work_dir` keeps the database, the prepared images and the COLMAP model (a temporary folder otherwise).
    """
    image_paths = [Path(p) for p in image_paths]
    if len(image_paths) < MIN_REGISTERED:
        where = image_paths[0].parent if image_paths else "(no images)"
        raise ReconError(f"pose estimation needs at least {MIN_REGISTERED} images, got {len(image_paths)}",
                         path=where, fix=HOW_TO_SUPPLY_CAMERAS)
    if max_size < 16:
        raise ReconError(f"max_size {max_size} is too small for feature matching", fix="use --max-size 100 or more")
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="recon_sfm_") as tmp:
            return _run(image_paths, Path(tmp), max_size, num_threads, seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    return _run(image_paths, work_dir, max_size, num_threads, seed)


def _run(image_paths: list[Path], work: Path, max_size: int, num_threads: int, seed: int) -> SfmResult:
    import pycolmap

    image_dir = work / "images"
    image_dir.mkdir(exist_ok=True)
    width, height, sx, sy = _prepare_images(image_paths, image_dir, max_size)
    names = [f"{i:05d}.png" for i in range(len(image_paths))]
    database = work / "database.db"
    if database.exists():
        database.unlink()  # a stale database from an earlier run would mix in its images
    model_dir = work / "sparse"
    model_dir.mkdir(exist_ok=True)

    # COLMAP's pixel thresholds are tuned for ~1000-3000 px photos; ours are downsized to a few hundred px,
    # where a 4 px homography threshold explains every pair as "planar" and the mapper never initialises.
    px = float(np.clip(max(width / sx, height / sy) / 250.0, 1.0, 4.0))

    pycolmap.set_random_seed(seed)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"  # no distortion: the result plugs straight into pinhole rendering
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.max_image_size = max_size
    extraction.sift.max_num_features = 4096
    extraction.sift.peak_threshold = 0.004  # more, weaker features: small images have few strong ones
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.max_error = px
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = num_threads
    mapping.random_seed = seed
    mapping.min_model_size = MIN_REGISTERED
    mapping.mapper.init_min_num_inliers = 50
    mapping.mapper.init_min_tri_angle = 8.0
    mapping.mapper.init_max_error = px
    mapping.mapper.abs_pose_max_error = 3.0 * px
    mapping.mapper.abs_pose_min_num_inliers = 20
    mapping.mapper.filter_max_reproj_error = px
    mapping.triangulation.merge_max_reproj_error = px
    mapping.triangulation.complete_max_reproj_error = px
    with _quiet_colmap():
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu)
        models = pycolmap.incremental_mapping(database, image_dir, model_dir, options=mapping)

    best = max(models.values(), key=lambda rec: rec.num_reg_images(), default=None)
    n_reg = best.num_reg_images() if best is not None else 0
    if n_reg < MIN_REGISTERED:
        raise ReconError(f"pose estimation registered only {n_reg} of {len(image_paths)} images",
                         path=image_paths[0].parent, fix=HOW_TO_SUPPLY_CAMERAS)

    index_of = {name: i for i, name in enumerate(names)}
    rows = []
    for image in best.images.values():
        if not image.has_pose:
            continue
        cam = best.cameras[image.camera_id]
        K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
        K[0] *= sx  # back to the original resolution (continuous pixel coordinates scale exactly)
        K[1] *= sy
        w2c = np.eye(4)
        w2c[:3, :4] = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        rows.append((index_of[image.name], np.linalg.inv(w2c), K))
    rows.sort(key=lambda r: r[0])

    points = colors = None
    if best.num_points3D() > 0:
        pts = list(best.points3D.values())
        points = np.array([p.xyz for p in pts], dtype=np.float64)
        colors = np.array([p.color for p in pts], dtype=np.uint8)
    return SfmResult(
        camtoworlds=np.stack([r[1] for r in rows]),
        Ks=np.stack([r[2] for r in rows]),
        width=width, height=height,
        registered=[r[0] for r in rows],
        points=points, point_colors=colors,
    )
