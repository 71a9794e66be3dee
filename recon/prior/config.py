from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PriorConfig:
    mode: str = "none"  # none | repair | pretrained
    model_path: str | None = None  # local Stable Diffusion folder for mode=pretrained
