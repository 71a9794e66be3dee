"""Image reading: formats, EXIF orientation, bit depths, alpha, masks, resizing with intrinsics."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_helpers import texture, write_png16, write_transforms_scene  # noqa: E402

from recon.data.config import DataConfig  # noqa: E402
from recon.data.images import list_images, probe_image, read_image, read_mask, target_size  # noqa: E402
from recon.data.load import load_scene  # noqa: E402
from recon.errors import ReconError  # noqa: E402


def _read(path: Path, size=None):
    h = probe_image(path)
    return read_image(h, size or h.size(), h.use_exif())


def test_rgb_png_roundtrip(tmp_path):
    img = texture(12, 20, seed=1)
    Image.fromarray(img).save(tmp_path / "a.png")
    rgb, alpha = _read(tmp_path / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 20, 3)
    assert alpha is None
    np.testing.assert_array_equal(rgb, img)


def test_grayscale_becomes_rgb(tmp_path):
    g = texture(10, 14, seed=2, channels=1)[..., 0]
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    rgb, alpha = _read(tmp_path / "g.png")
    assert rgb.shape == (10, 14, 3) and alpha is None
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], g)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_scaled_to_8bit(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a16 = rng.integers(0, 65536, size=(9, 11, channels), dtype=np.uint16)
    write_png16(tmp_path / "d.png", a16)
    rgb, alpha = _read(tmp_path / "d.png")
    expect = a16.astype(np.float64) / 257.0
    colour = expect[..., :1].repeat(3, axis=2) if channels <= 2 else expect[..., :3]
    assert np.abs(rgb - colour).max() <= 1.0  # PIL keeps the high byte of 16-bit colour: at most 1 level off
    if channels in (2, 4):
        assert alpha is not None and np.abs(alpha - expect[..., -1]).max() <= 1.0
    else:
        assert alpha is None


def test_rgba_and_palette_alpha(tmp_path):
    img = texture(8, 8, seed=3, channels=4)
    Image.fromarray(img, mode="RGBA").save(tmp_path / "a.png")
    rgb, alpha = _read(tmp_path / "a.png")
    np.testing.assert_array_equal(rgb, img[..., :3])
    np.testing.assert_array_equal(alpha, img[..., 3])
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    rgb, alpha = _read(tmp_path / "p.png")
    assert alpha[0, 0] == 0 and alpha[1, 1] == 255
    assert tuple(rgb[1, 1]) == (255, 0, 0)


def test_resize_keeps_colour_under_transparent_pixels(tmp_path):
    img = np.zeros((40, 40, 4), np.uint8)
    img[..., 0] = 200  # red everywhere, also where alpha is 0
    img[:, 20:, 3] = 255
    Image.fromarray(img, mode="RGBA").save(tmp_path / "a.png")
    h = probe_image(tmp_path / "a.png")
    rgb, alpha = read_image(h, (20, 20), False)
    assert rgb.shape == (20, 20, 3) and alpha.shape == (20, 20)
    assert np.abs(rgb[..., 0].astype(int) - 200).max() <= 1  # not premultiplied to black
    assert alpha[:, :9].max() == 0 and alpha[:, 11:].min() == 255


def test_exif_orientation_applied(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red, right half blue
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(raw).save(tmp_path / "r.jpg", exif=exif, quality=95)
    h = probe_image(tmp_path / "r.jpg")
    assert h.raw_size == (40, 20) and h.oriented_size == (20, 40) and h.use_exif()
    rgb, _ = read_image(h, h.size(), h.use_exif())
    assert rgb.shape == (40, 20, 3)
    # PIL's transpose for orientation 6 equals numpy's clockwise rotation: red on top, blue below.
    # (rows next to the colour edge are left out: JPEG chroma subsampling blurs them)
    expect = np.rot90(raw, k=-1).astype(float)
    np.testing.assert_allclose(rgb[:16].astype(float), expect[:16], atol=12)
    np.testing.assert_allclose(rgb[24:].astype(float), expect[24:], atol=12)
    # Camera data made for the stored pixels (COLMAP ignores EXIF): keep them as stored.
    assert not h.use_exif(expected_size=(40, 20))
    assert h.use_exif(expected_size=(20, 40))


def test_large_jpeg_downsized_like_a_plain_resize(tmp_path):
    yy, xx = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([xx / 1600 * 255, yy / 1200 * 255, (xx + yy) / 2800 * 255], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    h = probe_image(tmp_path / "big.jpg")
    size = target_size(*h.size(), 400)
    assert size == (400, 300)
    rgb, _ = read_image(h, size, False)
    ref = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize(size, Image.Resampling.LANCZOS))
    assert rgb.shape == (300, 400, 3)
    assert np.abs(rgb.astype(int) - ref.astype(int)).mean() < 2.0


def test_target_size():
    assert target_size(800, 600, 400) == (400, 300)
    assert target_size(225, 400, 400) == (225, 400)
    assert target_size(100, 50, 400) == (100, 50)  # never upsized
    assert target_size(1280, 720, 0) == (1280, 720)
    assert target_size(1281, 721, 400) == (400, 225)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_image_raises(tmp_path, content):
    p = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(texture(64, 64, seed=4)).save(p)
        p.write_bytes(p.read_bytes()[:300])
    else:
        p.write_bytes(content)
    with pytest.raises(ReconError, match="bad.png"):
        _read(p)


def test_read_mask_from_grey_and_alpha(tmp_path):
    m = np.zeros((10, 10), np.uint8)
    m[2:8, 3:9] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    Image.fromarray(np.dstack([m, m, m])).save(tmp_path / "m_rgb.jpg", quality=100)
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = m
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m_a.png")
    for name in ("m.png", "m_a.png"):
        h = probe_image(tmp_path / name)
        np.testing.assert_array_equal(read_mask(h, (10, 10), False), m)
    h = probe_image(tmp_path / "m_rgb.jpg")
    assert np.abs(read_mask(h, (10, 10), False).astype(int) - m).max() < 40


def test_list_images_ignores_other_files(tmp_path):
    for n in ("b.png", "a.JPG", "c.txt", ".hidden.png"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]


def test_scene_resize_scales_intrinsics_and_keeps_projections(tmp_path):
    """Downsizing by 2 halves K exactly; a 3D point lands at half its pixel coordinates."""
    write_transforms_scene(tmp_path, n=5, w=64, h=48, fx=50.0)
    full = load_scene(tmp_path, DataConfig(max_size=0))
    half = load_scene(tmp_path, DataConfig(max_size=32))
    assert (full.width, full.height) == (64, 48) and (half.width, half.height) == (32, 24)
    assert half.images.shape == (5, 24, 32, 3)
    torch.testing.assert_close(half.cameras.Ks[:, :2], full.cameras.Ks[:, :2] / 2)
    X = torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float64)
    uv_full, _ = full.cameras.project(full.normalization.to_normalized(X))
    uv_half, _ = half.cameras.project(half.normalization.to_normalized(X))
    torch.testing.assert_close(uv_half, uv_full / 2, atol=1e-4, rtol=1e-5)
    # The pixels are the area-averaged originals.
    ref = np.asarray(Image.open(tmp_path / "images/f000.png").resize((32, 24), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(half.images[0].numpy(), ref)


def test_scene_masks_from_masks_folder(tmp_path):
    write_transforms_scene(tmp_path, n=4, w=16, h=12)
    (tmp_path / "masks").mkdir()
    for i in range(4):
        m = np.zeros((12, 16), np.uint8)
        m[i: i + 5, 2:10] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"f{i:03d}.png")
    s = load_scene(tmp_path, DataConfig())
    assert s.has_masks and s.masks.shape == (4, 12, 16) and s.masks.dtype == torch.uint8
    assert int(s.masks[2, 2, 2]) == 255 and int(s.masks[2, 0, 0]) == 0


def test_scene_rgba_alpha_is_the_mask(tmp_path):
    write_transforms_scene(tmp_path, n=4, w=16, h=12, rgba=True)
    s = load_scene(tmp_path, DataConfig())
    assert s.has_masks
    src = np.asarray(Image.open(tmp_path / "images/f001.png"))
    np.testing.assert_array_equal(s.masks[1].numpy(), src[..., 3])
    np.testing.assert_array_equal(s.images[1].numpy(), src[..., :3])  # straight colour, not composited


def test_opaque_alpha_means_no_masks(tmp_path):
    write_transforms_scene(tmp_path, n=3, w=8, h=8)
    for p in sorted((tmp_path / "images").iterdir()):
        Image.open(p).convert("RGBA").save(p)  # alpha 255 everywhere
    assert not load_scene(tmp_path, DataConfig()).has_masks


def test_loading_a_scene_folder_uses_exif_orientation(tmp_path):
    """A transforms.json without w/h on EXIF-rotated photos: the frame size is the displayed one."""
    meta = write_transforms_scene(tmp_path, n=3, w=20, h=30, ext=".jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    for fr in meta["frames"]:
        p = tmp_path / fr["file_path"]
        Image.open(p).transpose(Image.Transpose.ROTATE_270).save(p, exif=exif)  # stored 30x20, shown 20x30
    s = load_scene(tmp_path, DataConfig())
    assert (s.width, s.height) == (20, 30)
