"""Entry points: `load_scene(path, cfg) -> Scene` and `scene_summary(scene) -> dict`.

Formats, tried in this order: transforms.json; Blender transforms_train/test.json; a COLMAP model
(sparse/0, sparse or the folder itself); LLFF poses_bounds.npy; else a bare folder of photos, posed with
structure from motion (recon.data.sfm).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.data.cameras import Cameras
from recon.data.colmap import distorted_camera, find_model_dir, load_colmap, undistort_image, undistorted_intrinsics
from recon.data.config import DataConfig
from recon.data.images import (
    IMAGE_EXTENSIONS,
    ImageHeader,
    list_images,
    parallel_map,
    probe_image,
    read_image,
    read_mask,
    target_size,
)
from recon.data.llff import POSES_FILE, load_llff
from recon.data.normalize import compute_normalization, lookat_point, normalize_camtoworlds, normalize_points
from recon.data.scene import Scene
from recon.data.source import CameraSpec, FrameSource, SceneSource, check_pose, relative_name
from recon.data.transforms import blender_files, load_blender, load_transforms
from recon.data.views import resolve_split, select_train_views
from recon.errors import ReconError

MIN_VIEWS = 3
_CAMERA_FILES_FIX = ("Supply cameras as a transforms.json, a COLMAP model (sparse/0) or LLFF poses_bounds.npy "
                     "beside the images, or retake photos with more overlap")


# ------------------------------------------------------------------------------------------ detection

def detect_source(path: Path) -> SceneSource | tuple[Path, list[Path]]:
    """A parsed camera format, or (root, image paths) for a bare folder of photos."""
    path = Path(path)
    if not path.exists():
        raise ReconError("scene folder not found", path=path, fix="Give the folder that holds the images")
    if path.is_file():
        if path.suffix.lower() == ".json":
            if path.name.startswith("transforms_"):
                return load_blender(path.parent)
            return load_transforms(path)
        raise ReconError("is a file, not a scene folder", path=path,
                         fix="Give the folder that holds the images (and transforms.json, sparse/ ...)")
    if (path / "transforms.json").is_file():
        return load_transforms(path / "transforms.json")
    if blender_files(path):
        return load_blender(path)
    model_dir = find_model_dir(path)
    if model_dir is not None:
        return load_colmap(path, model_dir)
    if (path / POSES_FILE).is_file():
        return load_llff(path)
    image_dir = path / "images" if (path / "images").is_dir() else path
    images = list_images(image_dir)
    if not images:
        raise ReconError("no images or camera files found", path=path,
                         fix=f"Put 3 or more photos ({', '.join(IMAGE_EXTENSIONS)}) in it, optionally with a "
                             "transforms.json, COLMAP sparse/0 or poses_bounds.npy")
    if len(images) < MIN_VIEWS:
        raise ReconError(f"only {len(images)} image(s) found, at least {MIN_VIEWS} are needed", path=image_dir,
                         fix="Add photos of the object taken from different directions")
    return path, images


# ------------------------------------------------------------------------------------------ masks

def _mask_dir(root: Path) -> Path | None:
    d = root / "masks"
    return d if d.is_dir() else None


def find_mask(image_path: Path, root: Path, mask_dir: Path) -> Path | None:
    """masks/<same relative path as under images/> with any image extension (or the full name + extension)."""
    images = root / "images"
    try:
        rel = image_path.relative_to(images)
    except ValueError:
        try:
            rel = image_path.relative_to(root)
        except ValueError:
            rel = Path(image_path.name)
    base = mask_dir / rel
    candidates = [base]
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidates += [base.with_suffix(ext), base.with_name(base.name + ext)]
    return next((c for c in candidates if c.is_file()), None)


# ------------------------------------------------------------------------------------------ pixels

@dataclass
class _Pixels:
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray | None  # (N, H, W) uint8
    Ks: np.ndarray  # (N, 3, 3) at (width, height)
    width: int
    height: int
    notes: list[str]


def _check_same_size(headers: list[ImageHeader], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """One image size for the scene (the most common); ReconError naming the first image that differs."""
    counts: dict[tuple[int, int], int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    common = max(counts, key=lambda s: (counts[s], -sizes.index(s)))
    for h, s in zip(headers, sizes):
        if s != common:
            raise ReconError(f"image is {s[0]}x{s[1]} but the scene's other images are {common[0]}x{common[1]}",
                             path=h.path, fix="Give every image of a scene the same size (resize or crop them)")
    return common


def _read_pixels(frames: list[FrameSource], root: Path, pose_file: Path, max_size: int) -> _Pixels:
    headers = parallel_map(lambda f: probe_image(f.image_path), frames)
    stated = [f.camera.stated_size() for f in frames]
    sizes = [h.size(s) for h, s in zip(headers, stated)]
    width, height = _check_same_size(headers, sizes)
    notes: list[str] = []
    for f, s in zip(frames, stated):
        if s is None or s == (width, height):
            continue
        if abs(s[0] * height - s[1] * width) > max(s[0], s[1], width, height):  # aspect off by more than ~1 px
            raise ReconError(f"frame {f.name}: the camera is for {s[0]}x{s[1]} images but the image is "
                             f"{width}x{height}", path=pose_file,
                             fix="Use the images the cameras were made for, or fix the camera's w/h")
        if not notes:
            notes.append(f"cameras are for {s[0]}x{s[1]} images, the images are {width}x{height}: intrinsics scaled")
    K_full = np.stack([f.camera.resolve(width, height, pose_file) for f in frames])
    tw, th = target_size(width, height, max_size)

    # Masks: a masks/ folder (or per-frame mask_path) wins over the images' alpha channel.
    mask_dir = _mask_dir(root)
    mask_paths: list[Path | None] = [f.mask_path for f in frames]
    if mask_dir is not None:
        for i, f in enumerate(frames):
            if mask_paths[i] is None:
                mask_paths[i] = find_mask(f.image_path, root, mask_dir)
                if mask_paths[i] is None:
                    raise ReconError(f"no mask for {f.name}", path=mask_dir,
                                     fix="Add a mask with the image's name, or remove the masks folder")
    mask_headers = parallel_map(lambda p: probe_image(p) if p is not None else None, mask_paths)
    for f, mh in zip(frames, mask_headers):
        if mh is not None and mh.size((width, height)) != (width, height):
            ms = mh.size((width, height))
            raise ReconError(f"mask is {ms[0]}x{ms[1]} but its image {f.name} is {width}x{height}", path=mh.path,
                             fix="Give each mask the size of its image")

    def load_one(i: int):
        f, h = frames[i], headers[i]
        rgb, alpha = read_image(h, (tw, th), h.use_exif(stated[i]))
        mask = alpha
        if mask_headers[i] is not None:
            mh = mask_headers[i]
            mask = read_mask(mh, (tw, th), mh.use_exif((width, height)))
        K = K_full[i].copy()
        K[0] *= tw / width
        K[1] *= th / height
        if f.camera.distortion is not None:
            model, extra = f.camera.distortion
            cam = distorted_camera(model, extra, K, tw, th)
            K = undistorted_intrinsics(cam)
            rgb = undistort_image(rgb, cam, K)
            if mask is not None:
                mask = undistort_image(mask, cam, K)
        return rgb, mask, K

    out = parallel_map(load_one, range(len(frames)))
    images = np.stack([o[0] for o in out])
    Ks = np.stack([o[2] for o in out])
    has_mask = [o[1] is not None and (mask_headers[i] is not None or o[1].min() < 255) for i, o in enumerate(out)]
    masks = None
    if any(has_mask):
        masks = np.full(images.shape[:3], 255, dtype=np.uint8)
        for i, o in enumerate(out):
            if has_mask[i]:
                masks[i] = o[1]
        if not all(has_mask):
            notes.append(f"{len(has_mask) - sum(has_mask)} frame(s) without alpha treated as fully opaque")
    if (tw, th) != (width, height):
        notes.append(f"images downsized from {width}x{height} to {tw}x{th} (max_size {max_size})")
    return _Pixels(images, masks, Ks, tw, th, notes)


# ------------------------------------------------------------------------------------------ SfM

def _pose_bare_images(root: Path, image_paths: list[Path], max_size: int) -> tuple[SceneSource, _Pixels]:
    """Check the photos, then estimate their poses; keep the registered ones (at least 3)."""
    placeholder = [FrameSource(relative_name(p, root), p, np.eye(4), CameraSpec(fx=1.0)) for p in image_paths]
    pixels = _read_pixels(placeholder, root, root, max_size)  # size/readability errors before the slow part
    try:
        from recon.data.sfm import estimate_poses
    except ImportError as e:
        raise ReconError(f"no camera file found and pose estimation is unavailable ({e})", path=root,
                         fix=_CAMERA_FILES_FIX) from None
    result = estimate_poses(list(image_paths))
    registered = [int(i) for i in result.registered]
    if len(registered) < MIN_VIEWS:
        raise ReconError(f"structure from motion registered only {len(registered)} of {len(image_paths)} images",
                         path=root, fix=_CAMERA_FILES_FIX)
    if abs(result.width * pixels.height - result.height * pixels.width) > max(result.width, result.height):
        # A broken contract between the modules, not a user mistake: fail loudly.
        raise RuntimeError(f"estimate_poses returned cameras for {result.width}x{result.height} images, "
                           f"the images are {pixels.width}x{pixels.height} after EXIF orientation")
    sx, sy = pixels.width / float(result.width), pixels.height / float(result.height)
    c2ws = np.asarray(result.camtoworlds, dtype=np.float64)
    Ks = np.asarray(result.Ks, dtype=np.float64).copy()
    Ks[:, 0] *= sx
    Ks[:, 1] *= sy
    frames = []
    for j, i in enumerate(registered):
        c2w = check_pose(c2ws[j], root, f"estimated pose of {placeholder[i].name}")
        frames.append(FrameSource(placeholder[i].name, image_paths[i], c2w, CameraSpec()))
    notes = ["cameras estimated with structure from motion"]
    dropped = [placeholder[i].name for i in range(len(image_paths)) if i not in set(registered)]
    if dropped:
        notes.append(f"{len(dropped)} image(s) could not be posed and were dropped: {', '.join(dropped)}")
    points = None if result.points is None else np.asarray(result.points, dtype=np.float64)
    colors = None if result.point_colors is None else np.asarray(result.point_colors, dtype=np.uint8)
    source = SceneSource("images", root, root, frames, points=points, point_colors=colors, notes=notes)
    keep = np.array(registered)
    kept = _Pixels(pixels.images[keep], None if pixels.masks is None else pixels.masks[keep], Ks,
                   pixels.width, pixels.height, pixels.notes)
    return source, kept


# ------------------------------------------------------------------------------------------ entry points

def load_scene(path: Path, cfg: DataConfig | None = None) -> Scene:
    """Load a scene folder into a Scene: all frames (train and test), cameras in the normalised frame."""
    cfg = cfg or DataConfig()
    found = detect_source(Path(path))
    if isinstance(found, tuple):
        source, pixels = _pose_bare_images(found[0], found[1], cfg.max_size)
    else:
        source = found
        _check_unique_names(source)
        pixels = _read_pixels(source.frames, source.root, source.pose_file, cfg.max_size)
    names = [f.name for f in source.frames]
    c2w_world = np.stack([f.c2w for f in source.frames])

    split = resolve_split(names, source.root, cfg.split, source.file_split, source.file_split_source)
    if not split.train and not cfg.train_views:
        raise ReconError(f"the split leaves no training views ({split.source})", path=source.root,
                         fix="List training views in the split file's 'train'")
    candidates_lookat = lookat_point(c2w_world[split.train, :3, 3], c2w_world[split.train, :3, 2]) \
        if split.train else None
    if candidates_lookat is None:
        candidates_lookat = c2w_world[:, :3, 3].mean(0) + c2w_world[:, :3, 2].mean(0)
    train, chosen_by = select_train_views(split, names, c2w_world[:, :3, 3], candidates_lookat,
                                          cfg.views, cfg.train_views)
    norm = compute_normalization(c2w_world[train], pixels.Ks[train], pixels.width, pixels.height, source.points,
                                 fallback_center=candidates_lookat)

    notes = list(source.notes) + pixels.notes
    if chosen_by:
        notes.append(f"training views: {chosen_by}")
    cameras = Cameras(
        torch.from_numpy(normalize_camtoworlds(c2w_world, norm)).float(),
        torch.from_numpy(pixels.Ks).float(),
        pixels.width,
        pixels.height,
    )
    points = colors = None
    if source.points is not None and len(source.points):
        points = torch.from_numpy(normalize_points(source.points, norm)).float()
        if source.point_colors is not None:
            colors = torch.from_numpy(np.ascontiguousarray(source.point_colors, dtype=np.uint8))
    return Scene(
        root=source.root,
        format=source.format,
        names=names,
        images=torch.from_numpy(pixels.images),
        masks=None if pixels.masks is None else torch.from_numpy(pixels.masks),
        cameras=cameras,
        train_idx=[int(i) for i in train],
        test_idx=[int(i) for i in split.test],
        normalization=norm,
        points=points,
        point_colors=colors,
        split_source=split.source,
        notes=notes,
    )


def _check_unique_names(source: SceneSource) -> None:
    seen: dict[str, int] = {}
    for f in source.frames:
        if f.name in seen:
            raise ReconError(f"image {f.name} is listed twice", path=source.pose_file, fix="List each image once")
        seen[f.name] = 1
    if not source.frames:
        raise ReconError("no posed images", path=source.pose_file, fix=_CAMERA_FILES_FIX)


def scene_summary(scene: Scene) -> dict:
    """What `recon info` prints: JSON-able facts about a loaded scene."""
    Ks = scene.cameras.Ks.double()
    ref = scene.train_idx[0] if scene.train_idx else 0
    K = Ks[ref]
    per_frame = bool((Ks - K).abs().max() > 1e-6 * float(K[0, 0])) if len(Ks) else False
    return {
        "format": scene.format,
        "root": str(scene.root),
        "n_frames": scene.n_frames,
        "width": scene.width,
        "height": scene.height,
        "has_masks": scene.has_masks,
        "n_train": len(scene.train_idx),
        "n_test": len(scene.test_idx),
        "intrinsics": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])},
        "per_frame_intrinsics": per_frame,
        "split_source": scene.split_source,
        "train": [scene.names[i] for i in scene.train_idx],
        "test": [scene.names[i] for i in scene.test_idx],
        "normalization": scene.normalization.to_dict(),
        "n_points": 0 if scene.points is None else int(scene.points.shape[0]),
        "notes": list(scene.notes),
    }
