"""The Scene every stage of the pipeline reads: images, masks, cameras, split and normalisation."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from recon.data.cameras import Cameras


@dataclass
class Normalization:
    """world_normalised = (world - center) * scale. Every output is mapped back with `to_world`."""

    center: torch.Tensor  # (3,) float64
    scale: float

    def to_normalized(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.center.to(points)) * self.scale

    def to_world(self, points: torch.Tensor) -> torch.Tensor:
        return points / self.scale + self.center.to(points)

    def camtoworlds_to_world(self, c2w: torch.Tensor) -> torch.Tensor:
        out = c2w.clone()
        out[..., :3, 3] = self.to_world(c2w[..., :3, 3])
        return out

    def to_dict(self) -> dict:
        return {"center": [float(v) for v in self.center], "scale": float(self.scale)}

    @staticmethod
    def identity() -> "Normalization":
        return Normalization(torch.zeros(3, dtype=torch.float64), 1.0)


@dataclass
class Scene:
    """A loaded multi-view scene, with cameras in the normalised frame (object near the unit sphere).

    images: (N, H, W, 3) uint8, straight (not premultiplied) colour.
    masks: (N, H, W) uint8 object masks (255 = object) or None.
    """

    root: Path
    format: str  # "transforms" | "blender" | "colmap" | "llff" | "images"
    names: list[str]  # frame names, unique (file path relative to the scene root, or COLMAP image name)
    images: torch.Tensor
    masks: torch.Tensor | None
    cameras: Cameras
    train_idx: list[int]
    test_idx: list[int]
    normalization: Normalization
    points: torch.Tensor | None = None  # (P, 3) SfM points in the normalised frame
    point_colors: torch.Tensor | None = None  # (P, 3) uint8
    split_source: str | None = None  # where the split came from (file path, or "all")
    notes: list[str] = field(default_factory=list)  # things the user should know (dropped frames, ...)

    @property
    def n_frames(self) -> int:
        return len(self.names)

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def image_float(self, idx: int, background: torch.Tensor | None = None) -> torch.Tensor:
        """(H, W, 3) float image in [0, 1]; composited on `background` (3,) when masks exist and it is given."""
        rgb = self.images[idx].float() / 255.0
        if background is not None and self.masks is not None:
            a = self.masks[idx].float()[..., None] / 255.0
            rgb = rgb * a + background.to(rgb) * (1.0 - a)
        return rgb

    def mask_float(self, idx: int) -> torch.Tensor | None:
        return None if self.masks is None else self.masks[idx].float() / 255.0
