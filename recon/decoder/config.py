from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecoderConfig:
    enabled: bool = False  # decode Gaussians from the sparse voxels with a sparse 3D U-Net
    gaussians_per_voxel: int = 4  # K Gaussians decoded per voxel
    # U-Net width per level, fine to coarse; [16, 32, 64] costs ~1.7x as much (bench/bench_decoder.py)
    channels: list[int] = field(default_factory=lambda: [8, 16, 32])
    fine_convs: bool = False  # 3x3x3 convs at the voxel level too (~1.5-2x the cost); else from level 1 on
    latent_dim: int = 8  # learnable per-voxel latent, concatenated to the photo-consistency features
    latent_init_std: float = 0.1
    offset_scale: float = 1.0  # Gaussian centres stay within +-offset_scale voxel sizes of the voxel centre
    init_scale: float = 0.5  # initial Gaussian scale, in voxel sizes
    scale_range: list[float] = field(default_factory=lambda: [0.02, 2.0])  # scales stay in this range, voxel sizes
    init_opacity: float = 0.2
    lr: float = 1e-3  # Adam learning rate of the network
    latent_lr: float = 1e-2  # Adam learning rate of the per-voxel latents
    # voxel management, every `manage_every` iterations of the structured stage (0: never)
    manage_every: int = 500
    prune_opacity: float = 0.02  # drop voxels whose Gaussians all stayed below this opacity over the window
    grow_grad: float = 2e-4  # add the empty neighbours of voxels whose mean positional gradient exceeds this
    max_voxels: int = 60000  # growing stops at this many voxels
    # after this fraction of the training the decoded Gaussians are baked into free Gaussians and
    # optimised (and densified) directly; null keeps the decoder to the end
    bake_fraction: float | None = None
