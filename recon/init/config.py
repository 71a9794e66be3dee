from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InitConfig:
    levels: list[int] = field(default_factory=lambda: [32, 64, 128])  # cells across the scene bound, coarse to fine
    mask_tolerance: int = 0  # views a voxel may fall outside the mask in and still survive
