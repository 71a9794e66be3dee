"""Voxel management for the structured stage: prune voxels whose Gaussians stay transparent, grow
voxels next to high-gradient ones, and bake the decoder's output into free Gaussians.

Usage in a trainer (Gaussians are voxel-major: Gaussian v*K + k belongs to voxel v):

    stats = VoxelStats.zeros(len(voxels))
    ...every iteration, after backward (grad_norms: per-Gaussian norm of the screen-space mean
    gradient, e.g. meta["means2d"].grad.norm(dim=-1).amax(0); visible: e.g. (meta["radii"] > 0) per Gaussian):
    stats.update(gaussians.opacities, grad_norms, visible)
    ...every cfg.manage_every iterations:
    update = manage_voxels(voxels, stats, cfg)
    voxels = update.voxels
    decoder.reindex(update.source, fresh=update.grown, optimizer=optimizer)
    stats = VoxelStats.zeros(len(voxels))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.decoder.config import DecoderConfig
from recon.gaussians import Gaussians
from recon.init.voxels import SparseVoxels

_FACE_OFFSETS = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
_ALL_OFFSETS = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]


@dataclass
class VoxelStats:
    """Per-voxel statistics gathered over a management window.

    max_opacity: the largest opacity any of the voxel's Gaussians reached;
    grad_sum / grad_count: the summed (over iterations where the voxel was visible) mean positional
    gradient norm of its visible Gaussians, and how many such iterations there were."""

    max_opacity: torch.Tensor
    grad_sum: torch.Tensor
    grad_count: torch.Tensor

    @classmethod
    def zeros(cls, num_voxels: int, device: torch.device | str = "cpu") -> "VoxelStats":
        z = torch.zeros(num_voxels, device=device)
        return cls(z.clone(), z.clone(), z.clone())

    def __len__(self) -> int:
        return self.max_opacity.shape[0]

    @torch.no_grad()
    def update(self, opacities: torch.Tensor, grad_norms: torch.Tensor | None = None,
               visible: torch.Tensor | None = None) -> None:
        """opacities, grad_norms, visible: (M*K,) per decoded Gaussian, in the decoder's order."""
        m = len(self)
        if opacities.numel() % max(m, 1) or opacities.numel() == 0:
            raise ValueError(f"{opacities.numel()} Gaussians do not split over {m} voxels")
        k = opacities.numel() // m
        op = opacities.detach().reshape(m, k).to(self.max_opacity)
        torch.maximum(self.max_opacity, op.amax(1), out=self.max_opacity)
        if grad_norms is None:
            return
        g = grad_norms.detach().reshape(m, k).to(self.grad_sum)
        vis = (visible.reshape(m, k).to(g) if visible is not None else torch.ones_like(g))
        n_vis = vis.sum(1)
        # selects, not boolean indexing: this runs every training step, and a mask index costs a nonzero
        # and a scatter per tensor
        self.grad_sum += torch.where(vis > 0, g, 0).sum(1) / n_vis.clamp(min=1)
        self.grad_count += n_vis > 0

    def mean_grad(self) -> torch.Tensor:
        return self.grad_sum / self.grad_count.clamp(min=1)

    def subset(self, index: torch.Tensor) -> "VoxelStats":
        return VoxelStats(self.max_opacity[index], self.grad_sum[index], self.grad_count[index])


@dataclass
class VoxelUpdate:
    """A new voxel set and how it maps onto the old one.

    source[i]: the old voxel whose latent (and, for grown voxels, features) new voxel i inherits;
    grown[i]: True where voxel i was added by growing (its parent is source[i])."""

    voxels: SparseVoxels
    source: torch.Tensor
    grown: torch.Tensor
    n_pruned: int = 0
    n_grown: int = 0


def prune_voxels(voxels: SparseVoxels, stats: VoxelStats, min_opacity: float) -> VoxelUpdate:
    """Drop voxels whose Gaussians all stayed below `min_opacity` over the window.

    The most opaque voxel is always kept, so the set never becomes empty."""
    _check_stats(voxels, stats)
    keep = stats.max_opacity >= min_opacity
    if not bool(keep.any()):
        keep[stats.max_opacity.argmax()] = True
    source = keep.nonzero().squeeze(1).cpu()
    return VoxelUpdate(voxels.subset(source), source, torch.zeros(source.numel(), dtype=torch.bool),
                       n_pruned=len(voxels) - source.numel())


def grow_voxels(voxels: SparseVoxels, stats: VoxelStats, grad_threshold: float, max_voxels: int,
                neighbourhood: int = 6) -> VoxelUpdate:
    """Add the empty neighbours (6 faces or all 26) of voxels whose mean positional gradient exceeds
    `grad_threshold`, inside the grid, at most up to `max_voxels` voxels in all (highest gradient
    first). Existing voxels keep their order; new ones are appended and copy their parent's features."""
    _check_stats(voxels, stats)
    if neighbourhood not in (6, 26):
        raise ValueError(f"neighbourhood must be 6 or 26, got {neighbourhood}")
    m = len(voxels)
    unchanged = VoxelUpdate(voxels, torch.arange(m), torch.zeros(m, dtype=torch.bool))
    grad = stats.mean_grad().cpu()
    parents = ((grad > grad_threshold) & (stats.grad_count.cpu() > 0)).nonzero().squeeze(1)
    room = max_voxels - m
    if parents.numel() == 0 or room <= 0:
        return unchanged
    parents = parents[grad[parents].argsort(descending=True, stable=True)]

    level = voxels.level
    coords = voxels.coords.cpu().long()
    offsets = torch.tensor(_FACE_OFFSETS if neighbourhood == 6 else _ALL_OFFSETS)
    cand = (coords[parents][:, None, :] + offsets[None]).reshape(-1, 3)
    cand_parent = parents.repeat_interleave(offsets.shape[0])
    inside = ((cand >= 0) & (cand < level)).all(1)
    cand, cand_parent = cand[inside], cand_parent[inside]
    key = (cand[:, 0] * level + cand[:, 1]) * level + cand[:, 2]
    existing = (coords[:, 0] * level + coords[:, 1]) * level + coords[:, 2]
    free = ~torch.isin(key, existing)
    cand, cand_parent, key = cand[free], cand_parent[free], key[free]
    if key.numel() == 0:
        return unchanged
    # one new voxel per free cell; its parent is the highest-gradient neighbour (the first candidate,
    # since candidates are listed in decreasing parent gradient)
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), key.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(key.numel()), reduce="amin")
    first = first.sort().values[:room]  # keep the cells of the strongest parents
    new_coords, new_parent = cand[first], cand_parent[first]

    source = torch.cat([torch.arange(m), new_parent])
    grown = torch.cat([torch.zeros(m, dtype=torch.bool), torch.ones(new_parent.numel(), dtype=torch.bool)])
    features = torch.cat([voxels.features, voxels.features[new_parent.to(voxels.features.device)]])
    coords_all = torch.cat([voxels.coords, new_coords.to(voxels.coords)])
    grown_voxels = SparseVoxels(coords_all, features, voxels.voxel_size, voxels.origin, voxels.level,
                                list(voxels.feature_names))
    return VoxelUpdate(grown_voxels, source, grown, n_grown=new_parent.numel())


def manage_voxels(voxels: SparseVoxels, stats: VoxelStats, cfg: DecoderConfig) -> VoxelUpdate:
    """Prune (cfg.prune_opacity), then grow (cfg.grow_grad, cfg.max_voxels); `source`/`grown` map the
    result onto the voxels passed in."""
    pruned = prune_voxels(voxels, stats, cfg.prune_opacity)
    grown = grow_voxels(pruned.voxels, stats.subset(pruned.source), cfg.grow_grad, cfg.max_voxels)
    return VoxelUpdate(grown.voxels, pruned.source[grown.source], grown.grown,
                       n_pruned=pruned.n_pruned, n_grown=grown.n_grown)


@torch.no_grad()
def bake(decoder, voxels: SparseVoxels, min_opacity: float = 0.0) -> Gaussians:
    """Decode once and return free Gaussians (detached, contiguous copies: ready to become leaf
    parameters), dropping those with opacity below `min_opacity`."""
    gaussians = decoder(voxels)
    tensors = [t.detach().contiguous().clone() for t in gaussians.tensors()]
    baked = Gaussians(*tensors)
    if min_opacity > 0:
        baked = baked.subset(baked.opacities >= min_opacity)
    return baked


def _check_stats(voxels: SparseVoxels, stats: VoxelStats) -> None:
    if len(stats) != len(voxels):
        raise ValueError(f"stats cover {len(stats)} voxels but there are {len(voxels)}")
