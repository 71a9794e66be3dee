"""Cells of the coarse-to-fine grids over the cube [-bound, bound]^3."""
from __future__ import annotations

import numpy as np
import torch

from recon.errors import ReconError

MAX_LEVEL = 512
CHUNK = 1 << 17  # cells projected at once (x views): bounds the working memory of a level


def check_levels(levels: list[int]) -> list[int]:
    levels = [int(v) for v in levels]
    fix = "Use e.g. init.levels=[32,64,128]: each level twice the previous one"
    if not levels:
        raise ReconError("init.levels is empty", fix=fix)
    if levels[0] < 2 or levels[0] & (levels[0] - 1):
        raise ReconError(f"init.levels starts at {levels[0]}, which is not a power of two >= 2", fix=fix)
    for a, b in zip(levels, levels[1:]):
        if b != 2 * a:
            raise ReconError(f"init.levels goes from {a} to {b}", fix=fix)
    if levels[-1] > MAX_LEVEL:
        raise ReconError(f"init.levels reaches {levels[-1]} cells across (at most {MAX_LEVEL})", fix=fix)
    return levels


def record(stats: list[dict], entry: dict, on_level=None) -> None:
    """Append a level's stats; tell `on_level` (e.g. a benchmark measuring memory per level)."""
    stats.append(entry)
    if on_level is not None:
        on_level(entry)


def all_cells(level: int) -> np.ndarray:
    r = np.arange(level)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)


_CHILD = np.stack(np.meshgrid(*(np.arange(2),) * 3, indexing="ij"), -1).reshape(-1, 3)


def children(cells: np.ndarray) -> np.ndarray:
    """The 8 cells of the next level inside each cell."""
    return (cells[:, None, :] * 2 + _CHILD[None]).reshape(-1, 3)


def cell_centers(cells: np.ndarray, level: int, bound: float) -> torch.Tensor:
    h = 2.0 * bound / level
    return torch.from_numpy((cells + 0.5) * h - bound).to(torch.float32)


def dilate_cells(cells: np.ndarray, level: int, radius: int) -> np.ndarray:
    """Cells within `radius` (chessboard distance) of any of `cells`, clipped to the grid."""
    if radius <= 0 or len(cells) == 0:
        return cells
    r = np.arange(-radius, radius + 1)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    out = (cells[:, None, :] + off[None]).reshape(-1, 3)
    out = out[np.all((out >= 0) & (out < level), axis=1)]
    return unique_cells(out, level)


def cell_keys(cells: np.ndarray, level: int) -> np.ndarray:
    c = cells.astype(np.int64)
    return (c[:, 0] * level + c[:, 1]) * level + c[:, 2]


def keys_to_cells(keys: np.ndarray, level: int) -> np.ndarray:
    return np.stack([keys // (level * level), (keys // level) % level, keys % level], -1)


def unique_cells(cells: np.ndarray, level: int) -> np.ndarray:
    return keys_to_cells(np.unique(cell_keys(cells, level)), level)
