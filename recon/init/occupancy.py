"""The carved solid at the finest level: a dense bool grid over the bounding box of its occupied cells."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# 6-neighbour offsets
FACE_OFFSETS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


@dataclass
class OccupancyGrid:
    """grid[i, j, k] tells whether cell offset + (i, j, k) of a `level`-cells-across grid over
    [-bound, bound]^3 is occupied. Memory follows the occupied bounding box, not the whole bound."""

    grid: np.ndarray  # bool (X, Y, Z)
    offset: np.ndarray  # (3,) int64
    level: int
    bound: float

    @property
    def voxel_size(self) -> float:
        return 2.0 * self.bound / self.level

    @property
    def origin(self) -> np.ndarray:
        return np.full(3, -self.bound)

    def __len__(self) -> int:
        return int(self.grid.sum())

    def coords(self) -> np.ndarray:
        """(M, 3) int64 indices of the occupied cells."""
        return np.argwhere(self.grid) + self.offset

    def centers(self, coords: np.ndarray) -> np.ndarray:
        return self.origin + (coords + 0.5) * self.voxel_size

    def surface_grid(self) -> np.ndarray:
        """Occupied cells with at least one empty 6-neighbour (cells beyond the box are empty)."""
        g = np.pad(self.grid, 1)
        inner = g[2:, 1:-1, 1:-1] & g[:-2, 1:-1, 1:-1] & g[1:-1, 2:, 1:-1] & g[1:-1, :-2, 1:-1] \
            & g[1:-1, 1:-1, 2:] & g[1:-1, 1:-1, :-2]
        return self.grid & ~inner

    def surface_coords(self) -> np.ndarray:
        return np.argwhere(self.surface_grid()) + self.offset

    def contains(self, points: torch.Tensor | np.ndarray) -> np.ndarray:
        """(P,) whether each point (normalised frame) lies in an occupied cell."""
        p = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points, dtype=np.float64)
        idx = np.floor((p - self.origin) / self.voxel_size).astype(np.int64) - self.offset
        ok = np.all((idx >= 0) & (idx < np.array(self.grid.shape)), axis=1)
        out = np.zeros(len(p), dtype=bool)
        out[ok] = self.grid[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out

    def with_grid(self, grid: np.ndarray) -> "OccupancyGrid":
        return OccupancyGrid(grid, self.offset.copy(), self.level, self.bound)

    @staticmethod
    def empty(level: int, bound: float) -> "OccupancyGrid":
        return OccupancyGrid(np.zeros((0, 0, 0), dtype=bool), np.zeros(3, dtype=np.int64), level, bound)

    @staticmethod
    def from_cells(level: int, bound: float, cells: dict[int, np.ndarray]) -> "OccupancyGrid":
        """Union of occupied cells given per level ({cells across: (M, 3) indices}); every level must divide
        `level` by a power of two."""
        boxes = []
        for lv, c in cells.items():
            if len(c) == 0:
                continue
            f = level // lv
            boxes.append((c.min(0) * f, (c.max(0) + 1) * f))
        if not boxes:
            return OccupancyGrid.empty(level, bound)
        lo = np.min([b[0] for b in boxes], axis=0).astype(np.int64)
        hi = np.max([b[1] for b in boxes], axis=0).astype(np.int64)
        grid = np.zeros(tuple(hi - lo), dtype=bool)
        for lv, c in cells.items():
            if len(c) == 0:
                continue
            f = level // lv
            base = c.astype(np.int64) * f - lo
            if f == 1:
                grid[base[:, 0], base[:, 1], base[:, 2]] = True
                continue
            # mark every fine cell of each coarse cell
            sub = np.stack(np.meshgrid(*(np.arange(f),) * 3, indexing="ij"), -1).reshape(-1, 3)
            for chunk in np.array_split(base, max(1, len(base) * len(sub) // 4_000_000 + 1)):
                fine = (chunk[:, None, :] + sub[None]).reshape(-1, 3)
                grid[fine[:, 0], fine[:, 1], fine[:, 2]] = True
        return OccupancyGrid(grid, lo, level, bound)
