"""The training views as the carver sees them: projection, images, and mask distance fields."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from recon.data.scene import Scene
from recon.errors import ReconError

NEAR = 1e-3  # points closer to a camera than this (normalised units) are treated as not seen
BORDER_TOUCH = 0.05  # a mask reaching this coverage on the image border means the object may go on outside


@dataclass
class Projection:
    """Centres projected into every view: uv (N, P, 2) continuous pixels, z (N, P) depth,
    stretch (N, P) >= 1, how much a small sphere's image grows off the optical axis (1 / cos of the angle)."""

    uv: torch.Tensor
    z: torch.Tensor
    stretch: torch.Tensor


class TrainViews:
    """Training views of a scene, ready for carving and colouring.

    With masks, `object_distance` / `background_distance` give the distance (pixels) from image points to
    the mask region / the background, at sub-pixel precision from the anti-aliased mask edges. A view whose
    mask stays clear of the image border is `closed`: the object lies inside its frame, so whatever
    projects outside the image is background. Otherwise the outside of the image counts as possibly
    object (a view cannot carve what it does not see)."""

    def __init__(self, scene: Scene, idx: list[int], mask_threshold: float = 0.5):
        if len(idx) == 0:
            raise ReconError("no training views to carve from", path=scene.root,
                             fix="Choose at least two training views")
        n_frames = scene.images.shape[0]
        bad = [i for i in idx if not 0 <= int(i) < n_frames]
        if bad:
            raise ReconError(f"training view index {bad[0]} is out of range (scene has {n_frames} frames)",
                             path=scene.root)
        idx = [int(i) for i in idx]
        cams = scene.cameras[idx]
        w2c = torch.linalg.inv(cams.camtoworlds.to(torch.float64))
        self.R = w2c[:, :3, :3].to(torch.float32)
        self.t = w2c[:, :3, 3].to(torch.float32)
        K = cams.Ks.to(torch.float32)
        self.fx, self.fy, self.cx, self.cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
        self.f = torch.maximum(self.fx, self.fy)
        self.width, self.height = int(cams.width), int(cams.height)
        self.n = len(idx)
        self.images = scene.images[idx].permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (N, 3, H, W)
        self.masks = None
        self.dist_to_object = self.dist_to_background = None
        self.closed = self.border_dist = None
        if scene.masks is not None:
            m = scene.masks[idx].to(torch.float32) / 255.0
            self.masks = m[:, None]
            # coverage relative to the threshold: 0.5 at the threshold, so the edge model below applies
            cover = _relative_coverage(m.numpy(), mask_threshold)
            border = np.concatenate([cover[:, 0], cover[:, -1], cover[:, :, 0], cover[:, :, -1]], axis=1)
            self.closed = torch.from_numpy(~np.any(border > BORDER_TOUCH, axis=1))
            outside = [0.0 if c else 1.0 for c in self.closed.tolist()]
            self.dist_to_object = torch.from_numpy(
                np.stack([_edge_distance(c, o) for c, o in zip(cover, outside)]))[:, None]
            self.dist_to_background = torch.from_numpy(
                np.stack([_edge_distance(1.0 - c, 1.0 - o) for c, o in zip(cover, outside)]))[:, None]
            d = self.dist_to_object[:, 0]
            # nearest the object comes to the image border (0 where it touches it)
            border_min = torch.stack([torch.cat([x[0], x[-1], x[:, 0], x[:, -1]]).min() for x in d])
            self.border_dist = (border_min - 0.5).clamp_min(0)
        self._pyramid: list[torch.Tensor] | None = None

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def _outside_distance(self, uv: torch.Tensor) -> torch.Tensor:
        """(N, P) distance from uv to the image rectangle (0 inside)."""
        du = torch.clamp(-uv[..., 0], min=0) + torch.clamp(uv[..., 0] - self.width, min=0)
        dv = torch.clamp(-uv[..., 1], min=0) + torch.clamp(uv[..., 1] - self.height, min=0)
        return torch.sqrt(du * du + dv * dv)

    def object_distance(self, uv: torch.Tensor) -> torch.Tensor:
        """(N, P) distance (pixels, >= 0) from uv to the mask region, never more than the truth: outside
        the image it is 0 for open views and distance-to-image + the object's distance to the border for
        closed ones."""
        d = self.sample(self.dist_to_object, uv)[..., 0].clamp_min(0.0)
        out = self._outside_distance(uv)
        beyond = out > 0
        if beyond.any():
            closed = self.closed[:, None].expand_as(d)
            far = torch.where(closed, out + self.border_dist[:, None], torch.zeros_like(d))
            d = torch.where(beyond, far, d)
        return d

    def background_distance(self, uv: torch.Tensor) -> torch.Tensor:
        """(N, P) distance (pixels, >= 0) from uv to the background, never more than the truth (0 outside
        the image of a closed view, whose outside is background; outside an open view it is 0 too, which
        only makes a cell look less surely inside)."""
        d = self.sample(self.dist_to_background, uv)[..., 0].clamp_min(0.0)
        return torch.where(self._outside_distance(uv) > 0, torch.zeros_like(d), d)

    def seen(self, proj: Projection, radius: torch.Tensor | float = 0.0) -> torch.Tensor:
        """(N, P) whether the view can judge (some of) the disk of `radius` around each projection: closed
        views judge everything in front of them, open ones only what falls in the image."""
        front = proj.z > NEAR
        if self.masks is None:
            return front & self.in_image(proj.uv, -radius)
        return front & (self.closed[:, None] | self.in_image(proj.uv, -radius))

    def project(self, points: torch.Tensor) -> Projection:
        cam = torch.einsum("nij,pj->npi", self.R, points.to(torch.float32)) + self.t[:, None, :]
        z = cam[..., 2]
        zc = z.clamp_min(NEAR)
        x, y = cam[..., 0] / zc, cam[..., 1] / zc
        uv = torch.stack([self.fx[:, None] * x + self.cx[:, None], self.fy[:, None] * y + self.cy[:, None]], dim=-1)
        stretch = torch.sqrt(1.0 + x * x + y * y)
        return Projection(uv, z, stretch)

    def in_image(self, uv: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
        """(N, P) whether the disk of radius `margin` around uv lies inside the image (negative margin:
        whether it overlaps the image)."""
        u, v = uv[..., 0], uv[..., 1]
        return (u >= margin) & (u <= self.width - margin) & (v >= margin) & (v <= self.height - margin)

    def sample(self, field: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear samples (N, P, C) of per-view images `field` (N, C, H', W') at pixel coords uv (N, P, 2)
        of the full-size image (a smaller field is sampled at the matching place)."""
        gx = uv[..., 0] * (2.0 / self.width) - 1.0
        gy = uv[..., 1] * (2.0 / self.height) - 1.0
        grid = torch.stack([gx, gy], dim=-1)[:, :, None, :]
        out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[:, :, :, 0].permute(0, 2, 1)

    def pyramid(self) -> list[torch.Tensor]:
        """Images box-filtered by 1, 2, 4, ... pixels (level j has pixels 2^j wide)."""
        if self._pyramid is None:
            levels = [self.images]
            while min(levels[-1].shape[-2:]) >= 8 and len(levels) < 7:
                levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
            self._pyramid = levels
        return self._pyramid

    def sample_patches(self, uv: torch.Tensor, footprint_px: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """(N, P, S, 3) colours at uv + offsets[s] * footprint (offsets (S, 2) in footprints), each averaged
        over about one footprint (the pyramid level of the footprint at the patch centre)."""
        pyr = self.pyramid()
        n, p = uv.shape[:2]
        s = offsets.shape[0]
        pts = (uv[:, :, None, :] + offsets[None, None] * footprint_px[..., None, None]).reshape(n, p * s, 2)
        level = torch.log2(footprint_px.clamp_min(1.0)).floor().clamp(0, len(pyr) - 1).to(torch.int64)
        lo, hi = int(level.min()), int(level.max())
        if lo == hi:
            return self.sample(pyr[lo], pts).view(n, p, s, 3)
        out = torch.empty(n, p, s, 3)
        for j in range(lo, hi + 1):
            sel = level == j
            if sel.any():
                out[sel] = self.sample(pyr[j], pts).view(n, p, s, 3)[sel]
        return out

    def sample_colors(self, uv: torch.Tensor, footprint_px: torch.Tensor) -> torch.Tensor:
        """(N, P, 3) colours averaged over about `footprint_px` (N, P) pixels around uv."""
        pyr = self.pyramid()
        level = torch.log2(footprint_px.clamp_min(1.0)).floor().clamp(0, len(pyr) - 1).to(torch.int64)
        lo, hi = int(level.min()), int(level.max())
        if lo == hi:
            return self.sample(pyr[lo], uv)
        out = torch.empty(*uv.shape[:2], 3)
        for j in range(lo, hi + 1):
            sel = level == j
            if sel.any():
                out[sel] = self.sample(pyr[j], uv)[sel]
        return out


def _relative_coverage(mask: np.ndarray, threshold: float) -> np.ndarray:
    """Map mask values so that `threshold` lands on 0.5 (piecewise linear, 0 -> 0, 1 -> 1)."""
    t = min(max(threshold, 1e-3), 1 - 1e-3)
    return np.where(mask < t, 0.5 * mask / t, 0.5 + 0.5 * (mask - t) / (1 - t)).astype(np.float32)


def _edge_distance(cover: np.ndarray, outside: float) -> np.ndarray:
    """Signed distance (pixels) from each pixel centre to the region's edge, positive outside it.

    `cover` is the fraction of each pixel the region covers (anti-aliased masks carry where the edge
    runs inside a pixel): a straight edge through a pixel with coverage c runs 0.5 - c from its centre.
    Away from the edge, the distance to the nearest touched pixel's centre is added. The ring of pixels
    just outside the image gets coverage `outside`. Where nothing is covered the distance is huge."""
    padded = np.pad(cover, 1, constant_values=outside)
    touched = padded > 0
    if not touched.any():
        return np.full(cover.shape, 1e6, dtype=np.float32)
    d, (iy, ix) = ndimage.distance_transform_edt(~touched, return_indices=True)
    out = d + 0.5 - padded[iy, ix]
    return out[1:-1, 1:-1].astype(np.float32)
