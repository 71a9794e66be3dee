"""SparseVoxels: the occupied cells of a grid over the scene bound, with per-voxel features.

This is what the sparse-convolution decoder consumes as is (coords -> spconv indices, features -> input).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Features every carving produces, in this column order.
DEFAULT_FEATURES = ["r", "g", "b", "spread", "n_views"]


@dataclass
class SparseVoxels:
    """coords: (M, 3) int32 cell indices (i, j, k) along (x, y, z), each in [0, level).
    features: (M, F) float32, columns named by `feature_names`.
    voxel_size: cell edge length in the normalised frame; origin: (3,) corner of cell (0, 0, 0);
    level: cells across the bound."""

    coords: torch.Tensor
    features: torch.Tensor
    voxel_size: float
    origin: torch.Tensor
    level: int
    feature_names: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))

    def __len__(self) -> int:
        return self.coords.shape[0]

    def centers(self) -> torch.Tensor:
        return self.origin.to(torch.float32) + (self.coords.to(torch.float32) + 0.5) * self.voxel_size

    def feature(self, name: str) -> torch.Tensor:
        return self.features[:, self.feature_names.index(name)]

    @property
    def colors(self) -> torch.Tensor:
        """(M, 3) colours in [0, 1]."""
        return self.features[:, [self.feature_names.index(c) for c in ("r", "g", "b")]]

    def subset(self, keep: torch.Tensor) -> "SparseVoxels":
        return SparseVoxels(self.coords[keep], self.features[keep], self.voxel_size, self.origin, self.level,
                            list(self.feature_names))
