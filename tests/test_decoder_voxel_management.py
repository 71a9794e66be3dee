"""Voxel management: statistics, pruning, growing, latents carried over, baking."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from recon.decoder.config import DecoderConfig
from recon.decoder.decoder import GaussianDecoder
from recon.decoder.voxel_management import VoxelStats, bake, grow_voxels, manage_voxels, prune_voxels
from recon.gaussians import sh0_to_rgb
from recon.init.voxels import SparseVoxels

# learning rates pinned: the colour check after one Adam step assumes small steps (the defaults are tuned
# for short training runs and are larger)
SMALL = DecoderConfig(gaussians_per_voxel=2, channels=[8, 16], latent_dim=3, lr=1e-3, latent_lr=1e-2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # see test_decoder_decoder.py: correctness is checked with two threads in test_decoder_spconv_compat
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def line_voxels(n: int = 6, level: int = 10) -> SparseVoxels:
    """n voxels along x at (i, 4, 4), colour i/n, n_views i+1."""
    coords = torch.stack([torch.arange(n), torch.full((n,), 4), torch.full((n,), 4)], 1).to(torch.int32)
    i = torch.arange(n, dtype=torch.float32)
    feats = torch.stack([i / n, 1 - i / n, torch.full((n,), 0.5), torch.zeros(n), i + 1], 1)
    return SparseVoxels(coords, feats, 0.1, torch.zeros(3), level)


def labelled_decoder(voxels: SparseVoxels) -> GaussianDecoder:
    torch.manual_seed(0)
    dec = GaussianDecoder(SMALL, voxels)
    with torch.no_grad():
        dec.latents[:, 0] = torch.arange(len(voxels), dtype=torch.float32)  # a label per voxel
    return dec


def test_stats_update_values():
    stats = VoxelStats.zeros(2)
    stats.update(torch.tensor([0.1, 0.3, 0.05, 0.02]), torch.tensor([1.0, 3.0, 5.0, 7.0]),
                 visible=torch.tensor([True, True, False, True]))
    stats.update(torch.tensor([0.2, 0.1, 0.01, 0.04]), torch.tensor([2.0, 2.0, 0.0, 0.0]),
                 visible=torch.tensor([True, False, False, False]))
    torch.testing.assert_close(stats.max_opacity, torch.tensor([0.3, 0.05]))
    # voxel 0: mean over visible Gaussians (1+3)/2 then 2/1 -> 4 over 2 visits; voxel 1: 7 over 1 visit
    torch.testing.assert_close(stats.grad_sum, torch.tensor([4.0, 7.0]))
    torch.testing.assert_close(stats.mean_grad(), torch.tensor([2.0, 7.0]))
    with pytest.raises(ValueError):
        stats.update(torch.zeros(5))


def test_prune_keeps_latents_aligned():
    vox = line_voxels()
    dec = labelled_decoder(vox)
    stats = VoxelStats.zeros(len(vox))
    stats.update(torch.tensor([0.5, 0.5, 0.001, 0.002, 0.3, 0.0, 0.001, 0.001, 0.9, 0.1, 0.0, 0.0]))
    up = prune_voxels(vox, stats, min_opacity=0.01)
    assert up.n_pruned == 3 and len(up.voxels) == 3
    assert up.source.tolist() == [0, 2, 4]
    assert torch.equal(up.voxels.coords, vox.coords[[0, 2, 4]])
    assert torch.equal(up.voxels.features, vox.features[[0, 2, 4]])
    dec.reindex(up.source, fresh=up.grown)
    assert dec.latents[:, 0].tolist() == [0.0, 2.0, 4.0]
    g = dec(up.voxels)  # still decodes, K per remaining voxel, colours of the kept voxels
    assert len(g) == 6
    torch.testing.assert_close(sh0_to_rgb(g.sh[::2, 0]), vox.colors[[0, 2, 4]], atol=1e-3, rtol=0)


def test_prune_never_empties_the_set():
    vox = line_voxels(3)
    stats = VoxelStats.zeros(3)
    stats.update(torch.tensor([0.001, 0.0, 0.004, 0.0, 0.002, 0.0]))
    up = prune_voxels(vox, stats, min_opacity=0.5)
    assert up.source.tolist() == [1]


def test_grow_adds_free_face_neighbours_of_high_gradient_voxels():
    vox = line_voxels(6)
    stats = VoxelStats.zeros(6)
    grads = torch.zeros(12)
    grads[[0, 1]] = 1.0  # voxel 0 at (0,4,4): on the grid edge
    grads[[6, 7]] = 2.0  # voxel 3 at (3,4,4): the strongest
    stats.update(torch.full((12,), 0.5), grads)
    up = grow_voxels(vox, stats, grad_threshold=0.5, max_voxels=100)
    # voxel 3: 4 free faces (its x neighbours are occupied); voxel 0: 4 free faces (x-1 is outside)
    assert up.n_grown == 8 and len(up.voxels) == 14
    assert torch.equal(up.voxels.coords[:6], vox.coords) and up.source[:6].tolist() == list(range(6))
    new = {tuple(c): int(p) for c, p in zip(up.voxels.coords[6:].tolist(), up.source[6:])}
    expected = {(3, 5, 4): 3, (3, 3, 4): 3, (3, 4, 5): 3, (3, 4, 3): 3,
                (0, 5, 4): 0, (0, 3, 4): 0, (0, 4, 5): 0, (0, 4, 3): 0}
    assert new == expected
    assert up.grown.tolist() == [False] * 6 + [True] * 8
    # no duplicates, all inside the grid, features copied from the parent
    assert len(set(map(tuple, up.voxels.coords.tolist()))) == 14
    assert ((up.voxels.coords >= 0) & (up.voxels.coords < vox.level)).all()
    assert torch.equal(up.voxels.features[6:], vox.features[up.source[6:]])


def test_grow_respects_the_voxel_cap_strongest_first():
    vox = line_voxels(6)
    stats = VoxelStats.zeros(6)
    grads = torch.zeros(12)
    grads[[0, 1]] = 1.0
    grads[[6, 7]] = 2.0
    stats.update(torch.full((12,), 0.5), grads)
    up = grow_voxels(vox, stats, grad_threshold=0.5, max_voxels=9)
    assert up.n_grown == 3 and up.source[6:].tolist() == [3, 3, 3]
    assert grow_voxels(vox, stats, grad_threshold=0.5, max_voxels=6).n_grown == 0
    assert grow_voxels(vox, stats, grad_threshold=5.0, max_voxels=100).n_grown == 0
    assert grow_voxels(vox, stats, grad_threshold=0.5, max_voxels=100, neighbourhood=26).n_grown > 8


def test_manage_composes_prune_then_grow_and_decoder_follows():
    vox = line_voxels(6)
    dec = labelled_decoder(vox)
    opt = torch.optim.Adam(dec.param_groups())
    g = dec(vox)
    (g.means.sum() + g.sh.sum()).backward()
    opt.step()  # the latents now carry Adam state
    latents_before = dec.latents.detach().clone()

    stats = VoxelStats.zeros(6)
    opac = torch.full((12,), 0.5)
    opac[[2, 3]] = 0.0  # voxel 1 transparent
    grads = torch.zeros(12)
    grads[[8, 9]] = 1.0  # voxel 4 has a high gradient
    stats.update(opac, grads)
    cfg = dataclasses.replace(SMALL, prune_opacity=0.01, grow_grad=0.5, max_voxels=100)
    up = manage_voxels(vox, stats, cfg)
    assert up.n_pruned == 1 and up.n_grown == 4
    assert up.source.tolist() == [0, 2, 3, 4, 5, 4, 4, 4, 4]
    dec.reindex(up.source, fresh=up.grown, optimizer=opt)
    torch.testing.assert_close(dec.latents.detach(), latents_before[up.source])
    state = opt.state[dec.latents]
    assert state["exp_avg"].shape == dec.latents.shape
    assert (state["exp_avg"][up.grown] == 0).all() and (state["exp_avg"][~up.grown] != 0).any()
    assert any(p is dec.latents for group in opt.param_groups for p in group["params"])

    g = dec(up.voxels)  # a training step on the new set works
    assert len(g) == len(up.voxels) * SMALL.gaussians_per_voxel
    opt.zero_grad()
    (g.means.sum() + g.sh.sum()).backward()
    opt.step()
    # grown voxels start with their parent's colour
    torch.testing.assert_close(sh0_to_rgb(g.sh[::2, 0][5:]).detach(), vox.colors[[4] * 4], atol=0.05, rtol=0)


def test_reindex_rejects_bad_index():
    vox = line_voxels(3)
    dec = labelled_decoder(vox)
    with pytest.raises(ValueError):
        dec.reindex(torch.tensor([0, 3]))


def test_bake_gives_free_gaussians():
    vox = line_voxels(5)
    dec = labelled_decoder(vox)
    with torch.no_grad():
        dec.head.weight.normal_(std=0.3)
    ref = dec(vox)
    baked = bake(dec, vox)
    assert len(baked) == 10
    for t, r in zip(baked.tensors(), ref.tensors()):
        assert not t.requires_grad and t.grad_fn is None and t.is_contiguous()
        torch.testing.assert_close(t, r.detach())
    params = [torch.nn.Parameter(t) for t in baked.tensors()]  # ready to optimise directly
    assert all(p.is_leaf for p in params)
    median = float(ref.opacities.detach().median())
    some = bake(dec, vox, min_opacity=median)
    assert 0 < len(some) < len(baked)
    assert (some.opacities >= median - 1e-6).all()
