"""GaussianDecoder: shapes, bounds, initial state, gradients, a tiny fit without the rasterizer, bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from recon.decoder.config import DecoderConfig
from recon.decoder.decoder import GaussianDecoder, head_linear, initial_offsets
from recon.decoder.unet import SparseUNet
from recon.errors import ReconError
from recon.gaussians import sh0_to_rgb
from recon.init.voxels import SparseVoxels

SMALL = DecoderConfig(gaussians_per_voxel=3, channels=[8, 16], latent_dim=4)


def shell_voxels(level: int = 16, r_in: float = 4.0, r_out: float = 6.0, seed: int = 0) -> SparseVoxels:
    """A hollow sphere of voxels (a surface, like carving gives) with random features."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(level)] * 3, indexing="ij"), -1).reshape(-1, 3)
    r = ((grid.float() - (level - 1) / 2) ** 2).sum(-1).sqrt()
    coords = grid[(r > r_in) & (r < r_out)].to(torch.int32)
    m = coords.shape[0]
    feats = torch.cat([torch.rand(m, 3, generator=g), torch.rand(m, 1, generator=g) * 0.2,
                       torch.randint(1, 6, (m, 1), generator=g).float()], 1)
    return SparseVoxels(coords, feats, 2.0 / level, torch.tensor([-1.0, -1.0, -1.0]), level)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Correctness does not depend on it (test_decoder_spconv_compat checks two threads); on a shared,
    # oversubscribed 2-core box thousands of tiny two-thread ops stall, so these tests run on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def voxels():
    return shell_voxels()


def test_shapes_and_cardinality(voxels):
    torch.manual_seed(0)
    dec = GaussianDecoder(DecoderConfig(gaussians_per_voxel=4), voxels, sh_degree=2)
    g = dec(voxels)
    n = len(voxels) * 4
    assert len(g) == n
    assert g.means.shape == (n, 3) and g.quats.shape == (n, 4) and g.log_scales.shape == (n, 3)
    assert g.opacity_logits.shape == (n,) and g.sh.shape == (n, 9, 3) and g.sh_degree == 2
    assert all(torch.isfinite(t).all() for t in g.tensors())
    assert torch.equal(dec.gaussian_voxel_index(), torch.arange(len(voxels)).repeat_interleave(4))
    # DC per Gaussian, higher orders shared by the K Gaussians of a voxel
    with torch.no_grad():
        dec.head.weight.normal_(std=0.5)
        dec.sh_head.weight.normal_(std=0.5)
        decoded = dec.decode(voxels)
        sh = decoded.gaussians().sh.view(len(voxels), 4, 9, 3)
    assert torch.equal(sh[:, 1:, 1:], sh[:, :1, 1:].expand(-1, 3, -1, -1)) and sh[:, :, 1:].abs().sum() > 0
    assert not torch.equal(sh[:, 1:, 0], sh[:, :1, 0].expand(-1, 3, -1))
    # decode() keeps them once per voxel
    assert decoded.sh0.shape == (n, 1, 3) and decoded.sh_rest.shape == (len(voxels), 8, 3)
    assert torch.equal(decoded.sh_rest, sh[:, 0, 1:]) and torch.equal(decoded.sh0[:, 0], sh.reshape(n, 9, 3)[:, 0])
    assert GaussianDecoder(SMALL, voxels, sh_degree=0).decode(voxels).sh_rest.shape == (len(voxels), 0, 3)


def test_initial_gaussians_are_the_seeded_ones(voxels):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, init_opacity=0.25, init_scale=0.5)
    dec = GaussianDecoder(cfg, voxels)
    g = dec(voxels)
    k = cfg.gaussians_per_voxel
    colors = voxels.colors.repeat_interleave(k, 0)
    torch.testing.assert_close(sh0_to_rgb(g.sh[:, 0]), colors, atol=1e-3, rtol=0)
    torch.testing.assert_close(g.opacities, torch.full_like(g.opacities, 0.25), atol=1e-3, rtol=0)
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, 0.5 * voxels.voxel_size), atol=1e-4, rtol=1e-3)
    # the K centres sit on the fixed pattern inside the voxel: distinct, not on top of each other
    rel = (g.means - voxels.centers().repeat_interleave(k, 0)) / voxels.voxel_size
    torch.testing.assert_close(rel.view(-1, k, 3), initial_offsets(k).expand(len(voxels), k, 3), atol=1e-3, rtol=0)
    assert torch.cdist(initial_offsets(k), initial_offsets(k)).add(torch.eye(k)).min() > 0.1


def test_outputs_stay_bounded_whatever_the_weights(voxels):
    torch.manual_seed(1)
    cfg = dataclasses.replace(SMALL, offset_scale=0.75, scale_range=[0.05, 1.5])
    dec = GaussianDecoder(cfg, voxels)
    with torch.no_grad():
        dec.head.weight.normal_(std=5.0)  # push the raw outputs far into saturation
        dec.latents.normal_(std=3.0)
    g = dec(voxels)
    rel = (g.means - voxels.centers().repeat_interleave(cfg.gaussians_per_voxel, 0)).abs() / voxels.voxel_size
    assert rel.max() <= 0.75 + 1e-5
    assert rel.max() > 0.5  # the bound is actually reached, not a frozen network
    s = g.scales / voxels.voxel_size
    assert s.min() >= 0.05 * (1 - 1e-5) and s.max() <= 1.5 * (1 + 1e-5)


def test_gradients_reach_network_and_latents(voxels):
    torch.manual_seed(2)
    dec = GaussianDecoder(SMALL, voxels)
    g = dec(voxels)
    target_means = g.means.detach() + 0.1 * voxels.voxel_size
    target_rgb = 1.0 - voxels.colors.repeat_interleave(SMALL.gaussians_per_voxel, 0)  # needs the input features

    def loss_of(gs):
        return (gs.means - target_means).square().mean() / voxels.voxel_size ** 2 + \
            (sh0_to_rgb(gs.sh[:, 0]) - target_rgb).square().mean()

    loss0 = loss_of(g)
    loss0.backward()
    grads = {name: p.grad for name, p in dec.named_parameters()}
    assert grads["latents"] is not None and grads["latents"].abs().sum() > 0
    assert grads["head.weight"].abs().sum() > 0
    assert "sh_head.weight" not in grads  # degree 0: no head for higher SH orders
    stem = [n for n in grads if n.startswith("unet.stem")]
    assert stem and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in stem)

    opt = torch.optim.Adam(dec.param_groups(), lr=1e-2)
    for group in opt.param_groups:
        group["lr"] = 1e-2
    for _ in range(15):
        opt.zero_grad()
        loss = loss_of(dec(voxels))
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * loss0.item()


def test_tiny_fit_without_rasterizer():
    # Fit decoded colours and opacities to a smooth target defined on the voxel centres (colour
    # from position, opaque on the upper half): the decoder must learn it from latents + features.
    torch.manual_seed(4)
    vox = shell_voxels(level=12, r_in=3.0, r_out=5.0)
    cfg = dataclasses.replace(SMALL, lr=1e-2, latent_lr=3e-2)
    dec = GaussianDecoder(cfg, vox)
    k = cfg.gaussians_per_voxel
    centers = vox.centers().repeat_interleave(k, 0)
    target_rgb = (centers * 0.5 + 0.5).clamp(0, 1)
    target_alpha = (centers[:, 2] > 0).float() * 0.8 + 0.1

    def loss_of(gs):
        return (sh0_to_rgb(gs.sh[:, 0]) - target_rgb).square().mean() + (gs.opacities - target_alpha).square().mean()

    opt = torch.optim.Adam(dec.param_groups())
    with torch.no_grad():
        loss0 = loss_of(dec(vox)).item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_of(dec(vox))
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = dec(vox)
    assert loss_of(final).item() < 0.1 * loss0
    # the opaque half really became opaque and the other half transparent
    assert final.opacities[target_alpha > 0.5].mean() > 0.6 > 0.3 > final.opacities[target_alpha < 0.5].mean()


def test_locality_of_the_structural_prior():
    # A change at one voxel reaches its neighbours (shared convolutions) but not a far-away cluster.
    torch.manual_seed(5)
    level = 64
    a = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([a + 2, a + 56]).to(torch.int32)
    feats = torch.cat([torch.rand(len(coords), 3), torch.zeros(len(coords), 1), torch.ones(len(coords), 1)], 1)
    vox = SparseVoxels(coords, feats, 2.0 / level, torch.tensor([-1.0, -1.0, -1.0]), level)
    dec = GaussianDecoder(SMALL, vox).eval()
    with torch.no_grad():
        dec.head.weight.normal_(std=0.5)
        before = dec(vox).means.view(len(vox), -1)
        dec.latents[0] += 1.0  # voxel (2,2,2)
        after = dec(vox).means.view(len(vox), -1)
    changed = (after - before).abs().amax(1) > 1e-6
    assert changed[1:27].any()  # neighbours in the same cluster
    assert not changed[27:].any()  # the cluster 54 cells away


@pytest.mark.parametrize("fine_convs", [False, True])
def test_eval_mode_and_determinism(voxels, fine_convs):
    torch.manual_seed(6)
    dec = GaussianDecoder(dataclasses.replace(SMALL, fine_convs=fine_convs), voxels).eval()
    with torch.no_grad():
        a, b = dec(voxels), dec(voxels)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


def test_empty_voxels_raise_recon_error(voxels):
    empty = voxels.subset(torch.zeros(len(voxels), dtype=torch.bool))
    with pytest.raises(ReconError, match="no occupied voxels"):
        GaussianDecoder(SMALL, empty)
    dec = GaussianDecoder(SMALL, voxels)
    with pytest.raises(ReconError, match="no occupied voxels"):
        dec(empty)


def test_bad_features_and_config_raise(voxels):
    no_colour = SparseVoxels(voxels.coords, voxels.features[:, 3:], voxels.voxel_size, voxels.origin,
                             voxels.level, ["spread", "n_views"])
    with pytest.raises(ReconError, match="lack r, g, b"):
        GaussianDecoder(SMALL, no_colour)
    for bad in (dict(gaussians_per_voxel=0), dict(channels=[]), dict(init_opacity=1.0),
                dict(scale_range=[1.0, 0.5]), dict(init_scale=5.0), dict(offset_scale=0.0),
                dict(latent_lr=0.0), dict(prune_opacity=1.0), dict(max_voxels=0), dict(bake_fraction=1.5)):
        with pytest.raises(ReconError, match="decoder\\."):
            GaussianDecoder(dataclasses.replace(SMALL, **bad), voxels)
    with pytest.raises(ReconError, match="sh_degree"):
        GaussianDecoder(SMALL, voxels, sh_degree=4)
    dec = GaussianDecoder(SMALL, voxels)
    with pytest.raises(ValueError, match="reindex"):
        dec(voxels.subset(torch.arange(len(voxels) - 1)))


@pytest.mark.parametrize("fine_convs", [False, True])
def test_unet_keeps_sites_and_order_on_odd_grids(fine_convs):
    # level 13 is not a multiple of 4: the padded grid keeps the last row of cells in the down path
    torch.manual_seed(7)
    net = SparseUNet(2, [4, 8, 8], fine_convs=fine_convs)
    coords = torch.tensor([[12, 12, 12], [0, 0, 0], [12, 11, 12], [5, 6, 7]], dtype=torch.int32)
    feats = torch.randn(4, 2, requires_grad=True)
    out = net(coords, feats, 13)
    assert out.shape == (4, 4)
    out[0].sum().backward()
    assert feats.grad[2].abs().sum() > 0  # (12,11,12) is a neighbour of (12,12,12)
    assert net.padded_shape(13) == [16, 16, 16]
    with pytest.raises(ValueError):
        SparseUNet(2, [])


@pytest.mark.parametrize("backend", ["auto", "spconv"])
@pytest.mark.parametrize("fine_convs", [False, True])
def test_unet_reuses_neighbour_tables_only_for_the_same_voxels(voxels, fine_convs, backend):
    torch.manual_seed(3)
    net = SparseUNet(5, [4, 8, 8], fine_convs=fine_convs)
    fresh = SparseUNet(5, [4, 8, 8], fine_convs=fine_convs)
    fresh.load_state_dict(net.state_dict())
    net.backend = fresh.backend = backend  # "auto" on the CPU: our kernel
    feats = torch.randn(len(voxels), 5)

    def run(module, coords, x):
        x = x.clone().requires_grad_(True)
        out = module(coords, x, voxels.level)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad

    def cached(module):
        if backend == "spconv":  # one spconv table per level with 3x3x3 convs
            return module._neighbour_tables[2]
        return dict(enumerate(module._kernel_tables[2]))  # one LevelTables per level

    first = run(net, voxels.coords, feats)
    if backend == "spconv":
        assert sorted(cached(net)) == (["subm0"] if fine_convs else []) + ["subm1", "subm2"]
    else:
        assert sorted(cached(net)) == [0, 1, 2] and net._neighbour_tables is None
    tables = dict(cached(net))
    again = run(net, voxels.coords.clone(), feats)  # same voxels, new tensor: tables reused
    assert all(cached(net)[k] is v for k, v in tables.items())
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a different voxel set (as after pruning) must rebuild them: compare with a module that never cached
    keep = torch.arange(len(voxels)) % 3 != 0
    for coords in (voxels.coords[keep], voxels.coords[keep].flip(0)):
        for a, b in zip(run(net, coords, feats[keep]), run(fresh, coords, feats[keep])):
            torch.testing.assert_close(a, b)
        fresh._neighbour_tables = fresh._kernel_tables = None


def _head_by_plain_ops(raw, centers, dc, c):
    """The decoding formulas written with slicing and torch ops (autograd does the backward)."""
    from recon.gaussians import SH_C0

    m, k = raw.shape[0], c.k
    per = raw.view(m, k, 14)
    off, log_s, quat, opa, sh_dc = per.split([3, 3, 4, 1, 3], dim=-1)
    means = centers[:, None, :] + c.offset_extent * torch.tanh(off + c.offset_bias)
    log_scales = c.log_scale_base + c.log_scale_span * torch.sigmoid(log_s + c.scale_bias)
    quats = quat + quat.new_tensor([1.0, 0.0, 0.0, 0.0])
    opacity_logits = opa.squeeze(-1) + c.opacity_bias
    sh0 = sh_dc / SH_C0 + dc[:, None, :]
    n = m * k
    return (means.reshape(n, 3), quats.reshape(n, 4), log_scales.reshape(n, 3), opacity_logits.reshape(n),
            sh0.reshape(n, 1, 3))


@pytest.mark.parametrize("impl", ["torch", "cpu_kernel"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_head_matches_plain_ops_values_gradients_gradcheck(k, impl):
    """_DecodeHead (torch ops, one backward; used on CUDA) and _DecodeHeadCPU (C++ kernel) against the
    formulas written plainly."""
    from recon.decoder import decoder as dec_module
    from recon.decoder.decoder import _HeadConstants

    _DecodeHead = dec_module._DecodeHead if impl == "torch" else dec_module._DecodeHeadCPU

    g = torch.Generator().manual_seed(k)
    m = 5
    raw = torch.randn(m, k * 14, generator=g, dtype=torch.float64, requires_grad=True)
    centers = torch.randn(m, 3, generator=g, dtype=torch.float64)
    dc = torch.randn(m, 3, generator=g, dtype=torch.float64)
    c = _HeadConstants(k, 0.07, torch.randn(k, 3, generator=g, dtype=torch.float64) * 0.3, -1.2, -3.0, 4.6, -1.4)
    ours = _DecodeHead.apply(raw, centers, dc, c)
    ref = _head_by_plain_ops(raw, centers, dc, c)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref]
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ours, weights)), raw, retain_graph=True)[0]
    g_ref = torch.autograd.grad(sum((b * w).sum() for b, w in zip(ref, weights)), raw, retain_graph=True)[0]
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    # outputs left out of the loss (None gradients) contribute nothing
    g_part = torch.autograd.grad((ours[0] * weights[0]).sum(), raw)[0]
    g_part_ref = torch.autograd.grad((ref[0] * weights[0]).sum(), raw)[0]
    torch.testing.assert_close(g_part, g_part_ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda r: _DecodeHead.apply(r, centers, dc, c), (raw,))


def test_decoder_uses_the_cpu_kernels_on_cpu(voxels):
    torch.manual_seed(0)
    dec = GaussianDecoder(SMALL, voxels, sh_degree=1)
    g = dec(voxels)
    assert "DecodeHeadCPU" in type(g.means.grad_fn).__name__
    assert "SparseConvCPU" in type(g.means.grad_fn.next_functions[0][0]).__name__  # the head's layer
    assert dec.unet._kernel_tables is not None and dec.unet._neighbour_tables is None


def test_head_linear_kernel_equals_torch_products():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(300, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(300, 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(73, 21, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(73, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(300, 73, generator=g, dtype=torch.float64)
    results = []
    for kernel in (True, False):
        raw = head_linear(h, x, w, b, kernel=kernel)
        results.append((raw, *torch.autograd.grad(raw, (h, x, w, b), up)))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    # on the U-Net features alone (the SH head)
    results = []
    for kernel in (True, False):
        raw = head_linear(h, None, w[:, :8], b, kernel=kernel)
        results.append((raw, *torch.autograd.grad(raw, (h, w, b), up)))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][0], h @ w[:, :8].t() + b, rtol=1e-12, atol=1e-12)


def test_voxel_inputs_follow_changes_of_the_voxels(voxels):
    """The per-voxel inputs kept between decodes are rebuilt when the voxels' tensors or the
    normalisation change (in place too): a decode always equals one by a fresh module."""
    torch.manual_seed(8)
    dec = GaussianDecoder(SMALL, voxels, sh_degree=1)
    fresh = GaussianDecoder(SMALL, voxels, sh_degree=1)

    def same_as_fresh(v):
        fresh.load_state_dict(dec.state_dict())
        fresh._inputs_cache = None
        with torch.no_grad():
            return all(torch.equal(a, b) for a, b in zip(dec.decode(v).tensors(), fresh.decode(v).tensors()))

    v = SparseVoxels(voxels.coords.clone(), voxels.features.clone(), voxels.voxel_size, voxels.origin, voxels.level,
                     list(voxels.feature_names))
    assert same_as_fresh(v)
    first = dec._inputs_cache[1]
    dec.decode(v)
    assert dec._inputs_cache[1] is first  # unchanged voxels: kept
    v.features[:, :3] = 1.0 - v.features[:, :3]  # colours changed in place
    assert same_as_fresh(v)
    v2 = SparseVoxels(v.coords.flip(0).contiguous(), v.features.flip(0).contiguous(), v.voxel_size, v.origin,
                      v.level, list(v.feature_names))
    assert same_as_fresh(v2)
    with torch.no_grad():
        dec.feature_scale.mul_(0.5)  # e.g. load_state_dict copying another normalisation in place
    assert same_as_fresh(v2)
