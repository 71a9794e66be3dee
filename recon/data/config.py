from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    max_size: int = 400  # longest image side after loading; intrinsics are scaled to match
    background: str = "white"  # white | black | random: what RGBA input is composited on
    views: str | None = None  # N (spread-out views) or a name from split.json's sparse_train
    train_views: list[str] | None = None  # explicit training frame names
    split: str | None = None  # split file; defaults to SCENE/split.json when it exists
