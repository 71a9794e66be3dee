from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    """What `recon reconstruct` writes beside point_cloud.ply (always written)."""

    splat: bool = True  # point_cloud.splat
    mesh: bool = True  # mesh.ply by TSDF fusion of rendered depth
    mesh_resolution: int = 256
    mesh_views: int = 48
    video: bool = False  # turntable.mp4 (slow on a CPU: about a minute)
