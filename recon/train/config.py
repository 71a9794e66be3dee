from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    iterations: int = 3000
    time_budget: float | None = None  # seconds; training stops when it runs out
    sh_degree: int = 3
