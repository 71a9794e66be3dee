"""Differentiable Gaussian splatting: ``rasterize`` (gsplat on CUDA, C++ kernels on CPU).

Importing this package also lets gsplat's MCMCStrategy run on CPU tensors (see gsplat_cpu).
"""
from recon.render import gsplat_cpu
from recon.render.rasterize import RENDER_MODES, TILE_SIZE, rasterize

gsplat_cpu.install()

__all__ = ["rasterize", "RENDER_MODES", "TILE_SIZE"]
