from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecoderConfig:
    enabled: bool = False  # decode Gaussians from the sparse voxels with a sparse 3D U-Net
