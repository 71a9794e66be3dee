from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InitConfig:
    method: str = "voxels"  # voxels (carved sparse voxels) | random (points in the bound: vanilla baseline)
    n_random: int = 20000  # Gaussians for method=random
    carve: str = "auto"  # auto (hull with masks, photo without) | hull | photo
    # cells across the scene bound, coarse to fine, each level twice the last
    levels: list[int] = field(default_factory=lambda: [32, 64, 128])
    bound: float = 1.0  # carve the cube [-bound, bound]^3 of the normalised frame
    mask_tolerance: int = 0  # views a voxel may fall outside the mask in and still survive
    mask_threshold: float = 0.5  # mask value (0..1) above which a pixel is object
    min_views: int = 2  # a voxel must be seen by this many training views to survive
    # finest level: a voxel survives if the mask lies within footprint x (its projected bounding-sphere radius);
    # 1 = conservative (the hull holds the whole object), smaller = tighter silhouettes
    footprint: float = 0.5
    mask_margin_px: float = 0.0  # slack for mask edges: a voxel this close (pixels) to the mask counts as touching it
    # photo-consistency (no masks)
    photo_threshold: float = 0.25  # patch cost (1 - ZNCC) / 2 above which a finest voxel is inconsistent
    photo_texture: float = 0.02  # grey std (0..1) a patch needs before it can judge consistency
    photo_min_picks: int = 2  # reference views whose ray must pick a cell as the surface
    photo_distinct: float = 0.5  # a ray's pick must cost at most this fraction of the ray's mean cost
    photo_band: int = 1  # cells around each coarse-level pick kept for the next level
    seed_radius: int = 0  # cells around the cell of each SfM point that are always kept (finest level)
    # floaters
    remove_floaters: bool = True
    floater_min_pixels: int = 4  # mask pixels a component must explain alone (in some view) to stay
    floater_min_fraction: float = 0.01  # without masks: components smaller than this fraction of the largest go
    floater_gap: int = 1  # without masks: empty cells a component may bridge
    # colours and seeding
    occlusion_tolerance: float = 2.0  # voxels in front of the nearest occupied depth still count as visible
    # hull carving: inner (non-surface) voxels seeded too, as a multiple of the surface voxel count, drawn
    # at random from the inside: a visual hull from few views bulges past the object, and the true
    # surface inside the bulge needs Gaussians to start from (chair, 8 views: 21.4 -> 24.0 dB held-out)
    interior: float = 0.0
    gaussians_per_voxel: int = 1
    gaussian_scale: float = 0.5  # Gaussian sigma in voxel edges
    gaussian_opacity: float = 0.2
    max_gaussians: int = 200_000  # surface voxels are subsampled above this
    seed: int = 0
