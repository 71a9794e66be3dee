"""Sparse-convolution Gaussian decoder (spconv U-Net over the carved voxels).

Public API (imported lazily: `recon.decoder.config` is read by every CLI start, spconv is heavy):
  GaussianDecoder(cfg, voxels, sh_degree) -> module; decoder(voxels) -> Gaussians (K per voxel, voxel-major);
  decoder.decode(voxels) -> DecodedGaussians (the higher SH orders once per voxel, as training renders them)
  VoxelStats, manage_voxels / prune_voxels / grow_voxels -> VoxelUpdate, bake(decoder, voxels) -> Gaussians
"""
from __future__ import annotations

_EXPORTS = {
    "GaussianDecoder": "recon.decoder.decoder",
    "DecodedGaussians": "recon.decoder.decoder",
    "SparseUNet": "recon.decoder.unet",
    "VoxelStats": "recon.decoder.voxel_management",
    "VoxelUpdate": "recon.decoder.voxel_management",
    "prune_voxels": "recon.decoder.voxel_management",
    "grow_voxels": "recon.decoder.voxel_management",
    "manage_voxels": "recon.decoder.voxel_management",
    "bake": "recon.decoder.voxel_management",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
