"""Small stand-ins for the prior tests: ring cameras, a torch point splatter, a tiny scene, test images."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from recon.data.cameras import Cameras, intrinsics_matrix
from recon.data.scene import Normalization, Scene
from recon.gaussians import Gaussians, sh0_to_rgb
from recon.prior.novel_cameras import look_at

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared, busy 2-core machine two threads spend most of their time waiting
    on each other (measured 4-10x slower per UNet step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ring_cameras(n: int, size: int = 32, radius=4.0, elevation_deg: float = 20.0, azimuth_span_deg: float = 360.0,
                 center=(0.0, 0.0, 0.0), fov_deg: float = 40.0) -> Cameras:
    """n cameras on a ring about +z (world up), looking at `center`; radius may be a list (one per camera)."""
    center_t = torch.tensor(center, dtype=torch.float64)
    radii = torch.as_tensor(radius, dtype=torch.float64).expand(n) if not isinstance(radius, (list, tuple)) \
        else torch.tensor(radius, dtype=torch.float64)
    step = math.radians(azimuth_span_deg) / (n if azimuth_span_deg >= 360 else max(n - 1, 1))
    el = math.radians(elevation_deg)
    pos = torch.stack([center_t + r * torch.tensor([math.cos(el) * math.cos(k * step), math.cos(el) * math.sin(k * step),
                                                    math.sin(el)], dtype=torch.float64) for k, r in enumerate(radii)])
    c2w = look_at(pos, center_t, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    K = intrinsics_matrix(f, f, size / 2, size / 2).double()
    return Cameras(c2w, K.expand(n, 3, 3).clone(), size, size)


def splat_render(g: Gaussians, cam: Cameras, background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable isotropic point splatting (one camera): colours (H, W, 3), alpha (H, W, 1)."""
    uv, z = cam.project(g.means.double())
    uv, z = uv[0].float(), z[0].float()
    f = float(cam.Ks[0, 0, 0])
    sigma = (g.scales.mean(-1) * f / z.clamp_min(1e-3)).clamp_min(0.3)
    ys, xs = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
    d2 = ((pix - uv[None]) ** 2).sum(-1)
    w = g.opacities[None] * torch.exp(-0.5 * d2 / sigma[None] ** 2) * (z[None] > 0)
    alpha = 1 - torch.exp(-w.sum(-1, keepdim=True))  # soft union of the footprints
    rgb = (w @ sh0_to_rgb(g.sh[:, 0]).clamp(0, 1)) / w.sum(-1, keepdim=True).clamp_min(1e-8)
    img = rgb * alpha + background * (1 - alpha)
    return img.reshape(cam.height, cam.width, 3), alpha.reshape(cam.height, cam.width, 1)


def blob_gaussians(n: int = 150, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 3, generator=g) * torch.tensor([0.5, 0.35, 0.3])
    cols = torch.rand(n, 3, generator=g)
    return Gaussians.from_points(pts, cols, 0.08, opacity=0.8)


def tiny_scene(n_views: int = 4, size: int = 32, seed: int = 0) -> tuple[Scene, Gaussians]:
    """A scene whose images are splat renders of `truth` Gaussians; returns (scene, truth)."""
    truth = blob_gaussians(seed=seed)
    cams = ring_cameras(n_views, size)
    with torch.no_grad():
        imgs = torch.stack([splat_render(truth, cams[i])[0] for i in range(n_views)])
    images = (imgs * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    scene = Scene(root=Path("."), format="images", names=[f"v{i}.png" for i in range(n_views)], images=images,
                  masks=None, cameras=cams, train_idx=list(range(n_views)), test_idx=[],
                  normalization=Normalization.identity())
    return scene, truth


def procedural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, size, size, 3) textured images of one kind: stripes of random frequency plus discs."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        img = (torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25).expand(3, size, size).clone()
        for _ in range(6):
            fr = torch.rand(2, generator=g) * 12 + 2
            ph = torch.rand(1, generator=g) * 6.28
            img = img + 0.25 * (torch.rand(3, 1, 1, generator=g) - 0.5) * torch.sin(6.28 * (fr[0] * xs + fr[1] * ys) + ph)
        for _ in range(5):
            c = torch.rand(2, generator=g)
            r = torch.rand(1, generator=g) * 0.2 + 0.05
            m = (((xs - c[0]) ** 2 + (ys - c[1]) ** 2) < r ** 2).float()
            img = img * (1 - m) + m * torch.rand(3, 1, 1, generator=g)
        out.append(img.clamp(0, 1))
    return torch.stack(out).permute(0, 2, 3, 1).contiguous()


def sample_images(size: int) -> torch.Tensor | None:
    """The committed sample's views composited on white, resized to size x size; None while it is absent."""
    import imageio.v3 as iio

    files = sorted((SAMPLE_DIR / "images").glob("*.png"))
    if len(files) < 6:
        return None
    out = []
    for p in files:
        a = torch.from_numpy(iio.imread(p)).float() / 255.0
        if a.shape[-1] == 4:
            a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
        out.append(a[..., :3])
    x = torch.stack(out).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, H, W, 3) with a separable Gaussian, replicate borders."""
    k = int(3 * sigma) * 2 + 1
    t = torch.arange(k, dtype=images.dtype) - k // 2
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    x = images.permute(0, 3, 1, 2)
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"), w.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="replicate"), w.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)
    return x.permute(0, 2, 3, 1).contiguous()
