"""What `recon view` shows, read from a reconstruction folder or a single Gaussians file.

OUT_DIR/point_cloud.ply   the Gaussians (required; any one top-level .ply/.splat also works)
OUT_DIR/cameras.json      input cameras (optional); their photos come from the scene folder named
                          in it (or --scene), else from OUT_DIR/renders/test/<frame>.png
OUT_DIR/init/voxels.ply   the carved voxel hull as a coloured point cloud (optional)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians

GAUSSIAN_NAMES = ("point_cloud.ply", "gaussians.ply", "point_cloud.splat")
THUMBNAIL_SIDE = 256  # frustum images are shrunk to this: the page stays light with many cameras


@dataclass
class CameraViews:
    """Input cameras with frame names, splits ("train" | "test") and optional thumbnails (H, W, 3) uint8."""

    cameras: Cameras
    names: list[str]
    splits: list[str]
    images: list[np.ndarray | None] = field(default_factory=list)


@dataclass
class ViewerContent:
    gaussians: Gaussians
    source: Path | None = None  # the file the Gaussians came from (served as the .ply download)
    cameras: CameraViews | None = None
    hull_points: np.ndarray | None = None  # (P, 3) float32
    hull_colors: np.ndarray | None = None  # (P, 3) uint8
    notes: list[str] = field(default_factory=list)


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Shrink (H, W, C) uint8 so its longest side is at most `side` (nearest neighbour: cheap)."""
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / side)))
    out = image[::step, ::step]
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out[..., :3])


def _read_image(path: Path) -> np.ndarray | None:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception:  # an unreadable photo only costs its frustum picture
        return None
    if img.dtype != np.uint8:
        top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
        img = (img.astype(np.float64) / top * 255).clip(0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        # Composite RGBA photos on white, the look of the training background.
        a = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
    return thumbnail(img)


def _frame_stem(name: str) -> str:
    # Same naming as the evaluator's renders/test/<stem>.png.
    return Path(name).with_suffix("").as_posix().replace("/", "_").removeprefix("images_")


def _find_image(name: str, out_dir: Path, scene_root: Path | None) -> Path | None:
    candidates = []
    if scene_root is not None:
        candidates += [scene_root / name, scene_root / "images" / name]
    candidates.append(out_dir / "renders" / "test" / f"{_frame_stem(name)}.png")
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_cameras(out_dir: Path, scene_root: Path | None = None, with_images: bool = True) -> CameraViews | None:
    path = out_dir / "cameras.json"
    if not path.is_file():
        return None
    from recon.export.views import read_cameras_json

    cs = read_cameras_json(path)
    if scene_root is None:
        try:
            root = json.loads(path.read_text()).get("scene")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            root = None
        scene_root = Path(root) if isinstance(root, str) and root else None
    images: list[np.ndarray | None] = []
    for name in cs.names:
        p = _find_image(name, out_dir, scene_root) if with_images else None
        images.append(_read_image(p) if p is not None else None)
    return CameraViews(cs.cameras, cs.names, cs.splits, images)


def read_point_cloud(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A coloured point cloud .ply -> points (P, 3) float32, colours (P, 3) uint8 (grey if none)."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
        pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    except Exception as e:
        raise ReconError(f"cannot read the voxel point cloud ({type(e).__name__}: {e})".replace("\n", " "),
                         path=path, fix="re-run `recon reconstruct --stop-after init` or delete the file") from None
    names = v.dtype.names or ()
    if all(c in names for c in ("red", "green", "blue")):
        cols = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if cols.dtype.kind == "f":
            cols = (np.clip(cols, 0, 1) * 255 + 0.5)
        cols = cols.astype(np.uint8)
    else:
        cols = np.full((len(pts), 3), 160, dtype=np.uint8)
    ok = np.isfinite(pts).all(axis=1)
    return pts[ok], cols[ok]


def find_gaussians_file(out_dir: Path) -> Path:
    for name in GAUSSIAN_NAMES:
        if (out_dir / name).is_file():
            return out_dir / name
    found = sorted(p for p in out_dir.iterdir() if p.suffix.lower() in (".ply", ".splat") and p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise ReconError(f"several Gaussians files here ({', '.join(p.name for p in found)})", path=out_dir,
                         fix="pass the one to show, e.g. `recon view OUT/point_cloud.ply`")
    raise ReconError("no point_cloud.ply in this folder", path=out_dir,
                     fix="pass a `recon reconstruct` output folder or a 3DGS .ply file")


def load_content(path: str | Path, scene_root: str | Path | None = None, with_images: bool = True) -> ViewerContent:
    """Read everything there is to show for `path` (an output folder, a .ply or a .splat)."""
    from recon.export import load_gaussians

    path = Path(path)
    if not path.exists():
        raise ReconError("not found", path=path, fix="pass a `recon reconstruct` output folder or a .ply file")
    out_dir = path if path.is_dir() else path.parent
    gfile = find_gaussians_file(path) if path.is_dir() else path
    g = load_gaussians(gfile)
    if len(g) == 0:
        raise ReconError("the file holds no Gaussians", path=gfile, fix="pass a non-empty .ply")
    content = ViewerContent(g, gfile)
    # Cameras and hull only belong to a reconstruction folder: beside a loose .ply they may be unrelated.
    if path.is_dir() or (out_dir / "cameras.json").is_file() and gfile.name in GAUSSIAN_NAMES:
        root = Path(scene_root) if scene_root is not None else None
        try:
            content.cameras = load_cameras(out_dir, root, with_images)
        except ReconError as e:
            content.notes.append(f"cameras not shown: {e}")
        hull = out_dir / "init" / "voxels.ply"
        if hull.is_file():
            try:
                content.hull_points, content.hull_colors = read_point_cloud(hull)
            except ReconError as e:
                content.notes.append(f"voxel hull not shown: {e}")
    return content
