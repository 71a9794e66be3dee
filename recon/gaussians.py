"""Gaussians as parameter tensors (raw, pre-activation), the one representation every stage shares."""
from __future__ import annotations

from dataclasses import dataclass

import torch

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass
class Gaussians:
    """means (N,3); quats (N,4) wxyz, unnormalised; log_scales (N,3); opacity_logits (N,);
    sh (N, K, 3) with K = (degree+1)^2 (sh[:, 0] is the DC term)."""

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    def detach(self) -> "Gaussians":
        return Gaussians(*(t.detach() for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.means, self.quats, self.log_scales, self.opacity_logits, self.sh)

    def subset(self, idx) -> "Gaussians":
        return Gaussians(*(t[idx] for t in self.tensors()))

    def with_sh_degree(self, degree: int) -> "Gaussians":
        k = num_sh_bases(degree)
        sh = self.sh
        if sh.shape[1] >= k:
            sh = sh[:, :k]
        else:
            sh = torch.cat([sh, sh.new_zeros(sh.shape[0], k - sh.shape[1], 3)], dim=1)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    @staticmethod
    def from_points(points: torch.Tensor, colors: torch.Tensor, scale: torch.Tensor | float,
                    opacity: float = 0.1, sh_degree: int = 0) -> "Gaussians":
        """Isotropic Gaussians at `points` with `colors` in [0, 1]."""
        n = points.shape[0]
        scale_t = torch.as_tensor(scale, dtype=points.dtype).expand(n) if not torch.is_tensor(scale) or scale.dim() == 0 else scale
        quats = torch.zeros(n, 4, dtype=points.dtype)
        quats[:, 0] = 1.0
        sh = torch.zeros(n, num_sh_bases(sh_degree), 3, dtype=points.dtype)
        sh[:, 0] = rgb_to_sh0(colors.to(points.dtype))
        logit = torch.logit(torch.tensor(opacity, dtype=points.dtype))
        return Gaussians(points.clone(), quats, torch.log(scale_t)[:, None].repeat(1, 3).clone(),
                         logit.expand(n).clone(), sh)
