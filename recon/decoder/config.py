from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecoderConfig:
    enabled: bool = False  # decode Gaussians from the sparse voxels with a sparse 3D U-Net
    # K Gaussians decoded per voxel; rasterising K per voxel costs time, and at a fixed CPU budget K=2 beat
    # K=4 on the shared scenes (held-out, 60 s runs)
    gaussians_per_voxel: int = 2
    # U-Net width per level, fine to coarse. Two levels: a third ([8, 16, 32]) cost 1.4x the decoder's time
    # (bench/bench_decoder.py) and gained nothing on held-out views (bench/quality.py, decoder row, all three
    # shared scenes within 0.2 dB); [16, 32, 64] costs ~2.4x as much again
    channels: list[int] = field(default_factory=lambda: [8, 16])
    fine_convs: bool = False  # 3x3x3 convs at the voxel level too (~1.5x the cost); else from level 1 on
    latent_dim: int = 8  # learnable per-voxel latent, concatenated to the photo-consistency features
    latent_init_std: float = 0.1
    offset_scale: float = 1.0  # Gaussian centres stay within +-offset_scale voxel sizes of the voxel centre
    init_scale: float = 0.5  # initial Gaussian scale, in voxel sizes
    scale_range: list[float] = field(default_factory=lambda: [0.02, 2.0])  # scales stay in this range, voxel sizes
    init_opacity: float = 0.2
    # Adam learning rates of the network and of the per-voxel latents: a few hundred steps is all a CPU
    # budget allows, so they are high (on the sample, 100 steps: 1e-3/1e-2 barely moves, 0.1/0.3 diverges)
    lr: float = 0.01
    latent_lr: float = 0.3
    # voxel management, every `manage_every` iterations of the structured stage (0: never)
    manage_every: int = 500
    prune_opacity: float = 0.02  # drop voxels whose Gaussians all stayed below this opacity over the window
    grow_grad: float = 2e-4  # add the empty neighbours of voxels whose mean positional gradient exceeds this
    max_voxels: int = 60000  # growing stops at this many voxels
    lr_final_factor: float = 0.1  # both learning rates decay exponentially to this fraction by the end of the run
    # bake: after bake_fraction of the training the decoded Gaussians become free Gaussians, optimised
    # (and densified by train.strategy) directly for the rest of the budget; false keeps the decoder to the end
    bake: bool = False
    bake_fraction: float = 0.5
    # decoded Gaussians below this opacity are dropped when baking and from the final output (1/255: the
    # rasterizer skips them anyway, so dropping them changes no pixel)
    bake_min_opacity: float = 1.0 / 255.0
