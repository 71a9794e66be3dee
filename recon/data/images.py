"""Reading photos: EXIF orientation, grayscale, 16-bit, RGBA and separate masks, downsized to max_size.

Everything comes out as straight (not premultiplied) uint8 RGB plus an optional uint8 alpha/mask.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.errors import ReconError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
_UNREADABLE_FIX = "Replace it with a readable PNG or JPEG, or remove it from the scene"

T = TypeVar("T")
R = TypeVar("R")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, in name order."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Map over items with a few threads (PIL and zlib release the GIL while decoding)."""
    items = list(items)
    workers = min(8, os.cpu_count() or 1, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class ImageHeader:
    """What can be learnt from an image without decoding its pixels."""

    path: Path
    raw_size: tuple[int, int]  # (width, height) as stored
    orientation: int  # EXIF orientation tag, 1 = as stored

    @property
    def oriented_size(self) -> tuple[int, int]:
        w, h = self.raw_size
        return (h, w) if self.orientation in _SWAPS_AXES else (w, h)

    def use_exif(self, expected_size: tuple[int, int] | None = None) -> bool:
        """Apply the EXIF rotation unless the camera data was clearly made for the stored pixels.

        COLMAP and friends ignore EXIF orientation; when the camera's size matches the stored size but not
        the rotated one, the stored pixels are what the poses describe.
        """
        if self.orientation == 1:
            return False
        if expected_size is not None and tuple(expected_size) == self.raw_size != self.oriented_size:
            return False
        return True

    def size(self, expected_size: tuple[int, int] | None = None) -> tuple[int, int]:
        return self.oriented_size if self.use_exif(expected_size) else self.raw_size


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ReconError("image file not found", path=path, fix="Check the path or the scene's camera file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ReconError(f"cannot read this image ({_reason(e, path)})", path=path, fix=_UNREADABLE_FIX) from None


def _reason(e: Exception, path: Path | None = None) -> str:
    """The first line of an exception's message, without the file name (the error names it already)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(str(path), "the file")
    return text[:120]


def probe_image(path: Path) -> ImageHeader:
    """Size and EXIF orientation from the header; ReconError when the file is not an image."""
    with _open(path) as img:
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a broken EXIF block should not make a readable image unusable
            orientation = 1
        if orientation not in range(1, 9):
            orientation = 1
        w, h = img.size
    if w < 1 or h < 1:
        raise ReconError("image has no pixels", path=path, fix=_UNREADABLE_FIX)
    return ImageHeader(Path(path), (w, h), orientation)


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(w, h) with the longer side at most max_size (never upsized); max_size <= 0 keeps the size."""
    longest = max(width, height)
    if max_size <= 0 or longest <= max_size:
        return width, height
    s = max_size / longest
    return max(1, round(width * s)), max(1, round(height * s))


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Any integer or float pixel array to uint8 (16-bit: divide by 257; float: [0, 1])."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    a = arr.astype(np.int64)
    if a.max(initial=0) > 255 or arr.dtype.itemsize >= 2:
        # 16-bit data (PNG "I;16", or "I" that holds 16-bit values)
        return ((np.clip(a, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def _decode(img: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """PIL image (already loaded and oriented) -> (H, W, 3) uint8 RGB and (H, W) uint8 alpha or None."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        arr = np.asarray(img)
    elif mode == "PA":
        arr = np.asarray(img.convert("RGBA"))
    elif mode in ("1",):
        arr = np.asarray(img.convert("L"))
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB"))
    elif mode.startswith("I") or mode == "F":
        arr = _to_8bit(np.asarray(img))
    else:  # e.g. "RGBa" (premultiplied) or other exotic modes
        try:
            arr = np.asarray(img.convert("RGBA"))
        except (ValueError, OSError) as e:
            raise ReconError(f"unsupported pixel format {mode} ({_reason(e)})", path=path,
                             fix="Convert it to 8-bit RGB or RGBA PNG") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2), None
    if c == 2:  # grey + alpha
        return np.repeat(arr[..., :1], 3, axis=2), np.ascontiguousarray(arr[..., 1])
    if c == 3:
        return np.ascontiguousarray(arr), None
    return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])


def _resize(arr: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    img = Image.fromarray(arr)
    return np.asarray(img.resize(size, resample=resample, reducing_gap=3.0))


def read_image(
    header: ImageHeader, size: tuple[int, int], use_exif: bool, resample=Image.Resampling.LANCZOS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode, orient and resize one image to `size` = (w, h).

    Returns straight RGB (h, w, 3) uint8 and alpha (h, w) uint8 or None. Colour and alpha are resized
    separately so that colour under transparent pixels survives (PIL would premultiply RGBA).
    """
    path = header.path
    with _open(path) as img:
        try:
            if img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still at least the target size.
                w, h = size
                raw_target = (h, w) if (use_exif and header.orientation in _SWAPS_AXES) else (w, h)
                img.draft(img.mode, raw_target)
            img.load()
            if use_exif:
                img = ImageOps.exif_transpose(img)
            rgb, alpha = _decode(img, path)
        except ReconError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise ReconError(f"cannot decode this image, it may be truncated ({_reason(e, path)})", path=path,
                             fix=_UNREADABLE_FIX) from None
    rgb = _resize(rgb, size, resample)
    if alpha is not None:
        alpha = _resize(alpha, size, Image.Resampling.BOX)
    return rgb, alpha


def read_mask(header: ImageHeader, size: tuple[int, int], use_exif: bool) -> np.ndarray:
    """A mask image (grey, RGB or RGBA: the alpha if it has one, else the grey level) as (h, w) uint8."""
    # Area averaging keeps the mask in [0, 255] without ringing and anti-aliases its edges.
    rgb, alpha = read_image(header, size, use_exif, resample=Image.Resampling.BOX)
    if alpha is not None and alpha.min() < 255:
        return alpha
    # Luma of the colour image; for grey masks all three channels are equal.
    return np.asarray(Image.fromarray(rgb).convert("L"))
