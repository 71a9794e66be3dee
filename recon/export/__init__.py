"""Export and import: standard 3DGS .ply, antimatter15 .splat, TSDF mesh, turntable video.

Only the light readers are imported here; mesh/video (open3d, the renderer) load on use.
"""
from __future__ import annotations

from pathlib import Path

from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.export.ply import read_ply, transform_gaussians, write_ply
from recon.export.splat import read_splat, write_splat

__all__ = ["load_gaussians", "read_ply", "write_ply", "read_splat", "write_splat", "transform_gaussians"]


def load_gaussians(path: str | Path) -> Gaussians:
    """Read Gaussians from a .ply (3DGS layout) or .splat file, chosen by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".splat":
        return read_splat(path)
    raise ReconError(f"cannot read Gaussians from a {suffix or 'suffix-less'} file", path=path,
                     fix="pass a .ply or .splat file")
