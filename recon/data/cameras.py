"""Pinhole cameras in the OpenCV convention (x right, y down, looking down +z), as gsplat expects."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# transforms.json / Blender poses use OpenGL camera axes (y up, looking down -z).
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass
class Cameras:
    """A set of pinhole cameras sharing one image size.

    camtoworlds: (N, 4, 4) camera-to-world, OpenCV axes.
    Ks: (N, 3, 3) intrinsics in continuous pixel coordinates (pixel (0,0) centre at (0.5, 0.5)).
    """

    camtoworlds: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return self.camtoworlds.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = [idx]
        return Cameras(self.camtoworlds[idx], self.Ks[idx], self.width, self.height)

    @property
    def viewmats(self) -> torch.Tensor:
        """(N, 4, 4) world-to-camera matrices."""
        return torch.linalg.inv(self.camtoworlds)

    @property
    def centers(self) -> torch.Tensor:
        return self.camtoworlds[:, :3, 3]

    @property
    def forward(self) -> torch.Tensor:
        """(N, 3) unit viewing directions in the world."""
        return self.camtoworlds[:, :3, 2]

    def to(self, *args, **kwargs) -> "Cameras":
        return Cameras(self.camtoworlds.to(*args, **kwargs), self.Ks.to(*args, **kwargs), self.width, self.height)

    def rescaled(self, width: int, height: int) -> "Cameras":
        """The same cameras for images resized to (width, height)."""
        sx, sy = width / self.width, height / self.height
        Ks = self.Ks.clone()
        Ks[:, 0, :] *= sx
        Ks[:, 1, :] *= sy
        return Cameras(self.camtoworlds.clone(), Ks, width, height)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points (P, 3) into every camera: pixel coords (N, P, 2) and depths (N, P)."""
        w2c = self.viewmats.to(points.dtype)
        cam = torch.einsum("nij,pj->npi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        K = self.Ks.to(points.dtype)
        uv = torch.einsum("nij,npj->npi", K[:, :2, :3], cam / z.clamp_min(1e-9)[..., None].expand_as(cam))
        return uv, z


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)
