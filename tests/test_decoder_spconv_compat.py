"""spconv on CPU: the compat patch makes backward work (stream lookup) and the scatter-add thread-safe;
spconv's forward and backward then match dense torch convs (F.conv3d / F.conv_transpose3d, same weights)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import recon.decoder.spconv_compat as compat
import spconv.pytorch as spconv
from spconv.pytorch import ops

GRID = 7


def _random_grid(seed: int, channels: int, fill: float = 0.3, size: int = GRID):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(size, size, size, generator=g) < fill
    coords = occ.nonzero().to(torch.int32)
    feats = torch.randn(coords.shape[0], channels, generator=g)
    return coords, feats


def _to_sparse(coords, feats, size: int = GRID):
    batch = torch.zeros(coords.shape[0], 1, dtype=torch.int32)
    return spconv.SparseConvTensor(feats, torch.cat([batch, coords], 1), [size] * 3, 1)


def _densify(coords, feats, size: int = GRID):
    """(M, C) features at int coords -> (1, C, size, size, size), differentiable in feats."""
    c = coords.long()
    dense = feats.new_zeros(size, size, size, feats.shape[1]).index_put((c[:, 0], c[:, 1], c[:, 2]), feats)
    return dense.permute(3, 0, 1, 2)[None]


def _gather(dense, coords):
    c = coords.long()
    return dense[0].permute(1, 2, 3, 0)[c[:, 0], c[:, 1], c[:, 2]]


def _set_weights(module, seed):
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)


def _subm_vs_dense(coords, feats0, c_out, size, key, repeats=1):
    """Forward outputs and input/weight gradients of SubMConv3d (`repeats` runs) and of the dense reference."""
    conv = spconv.SubMConv3d(feats0.shape[1], c_out, 3, padding=1, bias=False, indice_key=key)
    _set_weights(conv, 1)
    upstream = torch.randn(coords.shape[0], c_out, generator=torch.Generator().manual_seed(2))
    runs = []
    for _ in range(repeats):
        conv.zero_grad()
        feats_s = feats0.clone().requires_grad_(True)
        out = conv(_to_sparse(coords, feats_s, size))
        assert torch.equal(out.indices[:, 1:], coords)  # submanifold: same sites, same order
        (out.features * upstream).sum().backward()
        runs.append((out.features.detach(), feats_s.grad, conv.weight.grad.permute(0, 4, 1, 2, 3).clone()))

    feats_d = feats0.clone().requires_grad_(True)
    w_dense = conv.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)  # (O,k,k,k,I) -> (O,I,k,k,k)
    ref = _gather(F.conv3d(_densify(coords, feats_d, size), w_dense, padding=1), coords)
    (ref * upstream).sum().backward()
    return runs, (ref.detach(), feats_d.grad, w_dense.grad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure only exists on CPU-only torch")
def test_unpatched_stream_lookup_fails_on_cpu_torch():
    # The bug the patch exists for: spconv's stream lookup raises on CPU-only torch.
    with pytest.raises((AssertionError, RuntimeError)):
        compat._original_get_current_stream()
    assert compat.PATCHED
    assert ops.get_current_stream() == 0
    assert isinstance(ops.SpconvOps, compat._SpconvOpsSafeScatter) and not ops.SPCONV_CPP_GEMM
    assert compat.apply()  # idempotent
    assert isinstance(ops.SpconvOps, compat._SpconvOpsSafeScatter)


def test_subm_conv_matches_dense_forward_and_backward():
    coords, feats = _random_grid(0, 3)
    (sparse,), dense = _subm_vs_dense(coords, feats, 5, GRID, "t_subm")
    assert sparse[0].shape == (coords.shape[0], 5)
    for s, d in zip(sparse, dense):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=0)


def test_subm_conv_is_right_with_two_threads_on_thousands_of_voxels():
    # spconv's own CPU scatter-add races between OpenMP threads at this size (errors ~0.5 on values ~1).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        coords, feats = _random_grid(7, 8, fill=0.25, size=20)
        assert coords.shape[0] > 1500
        # the first call often comes out right (threads not yet running), the later ones not
        runs, dense = _subm_vs_dense(coords, feats, 8, 20, "t_threads", repeats=3)
    finally:
        torch.set_num_threads(threads)
    for sparse in runs:
        for s, d in zip(sparse, dense):
            torch.testing.assert_close(s, d, atol=1e-4, rtol=1e-5)  # sums of ~220 float32 terms


@pytest.mark.parametrize("kernel,padding", [(3, 1), (2, 0)])
def test_strided_and_inverse_conv_match_dense(kernel, padding):
    coords, feats0 = _random_grid(3, 4)
    key = f"t_down{kernel}"
    down = spconv.SparseConv3d(4, 6, kernel, stride=2, padding=padding, bias=False, indice_key=key)
    up = spconv.SparseInverseConv3d(6, 4, kernel, indice_key=key, bias=False)
    _set_weights(down, 4)
    _set_weights(up, 5)
    g = torch.Generator().manual_seed(6)

    feats_s = feats0.clone().requires_grad_(True)
    mid = down(_to_sparse(coords, feats_s))
    fine = up(mid)
    assert torch.equal(fine.indices[:, 1:], coords)  # the inverse conv restores the input sites
    up_mid = torch.randn(mid.features.shape, generator=g)
    up_fine = torch.randn(fine.features.shape, generator=g)
    ((mid.features * up_mid).sum() + (fine.features * up_fine).sum()).backward()

    feats_d = feats0.clone().requires_grad_(True)
    w_down = down.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)
    # inverse conv weight (O,k,k,k,I) -> conv_transpose3d layout (I,O,k,k,k), no kernel flip
    w_up = up.weight.detach().permute(4, 0, 1, 2, 3).clone().requires_grad_(True)
    coarse_size = (GRID + 2 * padding - kernel) // 2 + 1
    mid_dense = F.conv3d(_densify(coords, feats_d), w_down, stride=2, padding=padding)
    assert mid_dense.shape[-1] == coarse_size == mid.spatial_shape[0]
    mid_ref = _gather(mid_dense, mid.indices[:, 1:])
    # the inverse conv reads only the active coarse sites
    mid_active = _densify(mid.indices[:, 1:], mid_ref, coarse_size)
    out_pad = GRID - ((coarse_size - 1) * 2 - 2 * padding + kernel)
    fine_ref = _gather(F.conv_transpose3d(mid_active, w_up, stride=2, padding=padding, output_padding=out_pad), coords)
    ((mid_ref * up_mid).sum() + (fine_ref * up_fine).sum()).backward()

    # every coarse cell the dense conv reaches is active in spconv, and nothing else
    assert torch.allclose(_densify(mid.indices[:, 1:], mid_ref, coarse_size), mid_dense, atol=1e-6)
    torch.testing.assert_close(mid.features, mid_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fine.features, fine_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats_s.grad, feats_d.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(down.weight.grad.permute(0, 4, 1, 2, 3), w_down.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(up.weight.grad.permute(4, 0, 1, 2, 3), w_up.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["subm", "down", "inverse"])
def test_sparse_conv_gradcheck(kind):
    # Finite differences through spconv's CPU backward, weights included. float32 because spconv's CPU
    # kernels are checked here at the precision the decoder uses; the convs are linear, so a large eps
    # is exact up to rounding.
    coords, feats = _random_grid(7, 2, fill=0.12)
    key = f"t_gc_{kind}"
    down = spconv.SparseConv3d(2, 2, 3, stride=2, padding=1, bias=False, indice_key=key)
    if kind == "subm":
        conv = spconv.SubMConv3d(2, 2, 3, padding=1, bias=False, indice_key=key)
    elif kind == "down":
        conv = down
    else:
        conv = spconv.SparseInverseConv3d(2, 2, 3, indice_key=key, bias=False)
    feats = feats.requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)

    def fn(f, w):
        x = _to_sparse(coords, f)
        if kind == "inverse":
            x = down(x)
        return torch.func.functional_call(conv, {"weight": w}, (x,)).features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not double precision"
        assert torch.autograd.gradcheck(fn, (feats, weight), eps=1e-2, atol=2e-3, rtol=1e-2, fast_mode=True)


def test_inverse_conv_without_its_forward_key_fails():
    coords, feats = _random_grid(0, 2)
    with pytest.raises(AssertionError):
        spconv.SparseInverseConv3d(2, 2, 3, indice_key="t_missing")(_to_sparse(coords, feats))
