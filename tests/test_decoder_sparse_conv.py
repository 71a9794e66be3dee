"""The CPU sparse-conv kernel (kernels/sparse_conv_cpu.cpp via recon.decoder.sparse_conv): neighbour
tables against brute force, values and gradients against the pure-PyTorch reference (float64
gradcheck included), bad tables refused, and the U-Net on the kernel equal to the U-Net on spconv."""
from __future__ import annotations

import pytest
import torch

from recon.decoder import sparse_conv as sc
from recon.decoder.unet import SparseUNet


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _random_table(n_out: int, n_in: int, k: int, fill: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A gather table (each (input row, offset) used at most once, as in every conv of the U-Net) and its
    transpose."""
    g = torch.Generator().manual_seed(seed)
    nbr = torch.full((n_out, k), -1, dtype=torch.int32)
    for col in range(k):
        rows = torch.randperm(n_in, generator=g)[:n_out]
        keep = torch.rand(min(n_out, n_in), generator=g) < fill
        nbr[: rows.numel()][keep, col] = rows[keep].to(torch.int32)
    nbr_t = torch.full((n_in, k), -1, dtype=torch.int32)
    i, col = (nbr >= 0).nonzero(as_tuple=True)
    nbr_t[nbr[i, col].long(), col] = i.to(torch.int32)
    return nbr, nbr_t


def _case(cin, cout, k, dtype, seed=0, n_in=37, n_out=29):
    g = torch.Generator().manual_seed(seed)
    if k == 0:  # per-row layer
        nbr = nbr_t = sc.IDENTITY
        k, n_out = 1, n_in
    else:
        nbr, nbr_t = _random_table(n_out, n_in, k, 0.6, seed)
    x = torch.randn(n_in, cin, generator=g, dtype=dtype).requires_grad_(True)
    w = (torch.randn(k, cin, cout, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    b = torch.randn(cout, generator=g, dtype=dtype).requires_grad_(True)
    return x, w, b, nbr, nbr_t


# widths: multiples of 8 (whole vectors), odd ones (a partial last vector), over 64 (two panels)
SHAPES = [(5, 8, 27), (16, 16, 27), (32, 16, 8), (12, 7, 8), (8, 13, 27), (21, 73, 0), (3, 100, 8), (16, 64, 0),
          (1, 1, 1), (40, 24, 27), (9, 48, 27), (4, 41, 27)]


@pytest.mark.parametrize("cin,cout,k", SHAPES)
@pytest.mark.parametrize("slope", [0.1, None])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference_values_and_gradients(cin, cout, k, slope, threads):
    torch.set_num_threads(threads)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        x, w, b, nbr, nbr_t = _case(cin, cout, k, dtype)
        y = sc.sparse_conv(x, w, b, nbr, nbr_t, slope)
        ref = sc.reference(x, w, b, nbr, slope)
        assert y.shape == ref.shape == (nbr.shape[0] if nbr.numel() else x.shape[0], cout)
        torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
        up = torch.randn_like(y)
        ours = torch.autograd.grad(y, (x, w, b), up)
        theirs = torch.autograd.grad(ref, (x, w, b), up)
        for a, r in zip(ours, theirs):
            torch.testing.assert_close(a, r, rtol=tol, atol=tol * 10)


def test_many_rows_across_threads_match_one_thread():
    # enough rows for several parallel chunks, so per-thread weight-gradient sums are combined
    x, w, b, nbr, nbr_t = _case(16, 16, 27, torch.float32, seed=3, n_in=5000, n_out=4000)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        y = sc.sparse_conv(x, w, b, nbr, nbr_t, 0.1)
        results.append((y, *torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    ref = sc.reference(x, w, b, nbr, 0.1)
    ref_grads = torch.autograd.grad(ref, (x, w, b), torch.ones_like(ref))
    for res in results:
        for a, r in zip(res, (ref, *ref_grads)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)  # float32 sums in another order
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,k,slope", [(3, 5, 8, 0.2), (4, 9, 27, None), (2, 3, 0, 0.1)])
def test_gradcheck_float64(cin, cout, k, slope):
    x, w, b, nbr, nbr_t = _case(cin, cout, k, torch.float64, seed=1, n_in=9, n_out=7)
    # keep pre-activations away from the LeakyReLU kink, where finite differences straddle it
    with torch.no_grad():
        b += 0.05 * torch.sign(b)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: sc.sparse_conv(x_, w_, b_, nbr, nbr_t, slope), (x, w, b))


def test_no_bias_and_inputs_without_grad():
    x, w, _, nbr, nbr_t = _case(6, 8, 8, torch.float64)
    x = x.detach()
    y = sc.sparse_conv(x, w, None, nbr, nbr_t, 0.1)
    torch.testing.assert_close(y, sc.reference(x, w, None, nbr, 0.1))
    (gw,) = torch.autograd.grad(y.sum(), (w,))
    (gw_ref,) = torch.autograd.grad(sc.reference(x, w, None, nbr, 0.1).sum(), (w,))
    torch.testing.assert_close(gw, gw_ref)


@pytest.mark.parametrize("n_in,n_out,cin,cout,k", [(5, 0, 4, 8, 27), (5, 0, 4, 8, 8), (0, 6, 4, 8, 8), (6, 4, 0, 8, 8),
                                                  (6, 4, 3, 0, 8), (0, 0, 3, 5, 0)])
def test_empty_sizes(n_in, n_out, cin, cout, k):
    x = torch.randn(n_in, cin, requires_grad=True)
    w = torch.randn(max(k, 1), cin, cout, requires_grad=True)
    b = torch.randn(cout, requires_grad=True)
    if k == 0:
        nbr = nbr_t = sc.IDENTITY
    else:
        nbr = torch.full((n_out, k), -1, dtype=torch.int32)
        nbr_t = torch.full((n_in, k), -1, dtype=torch.int32)
    y = sc.sparse_conv(x, w, b, nbr, nbr_t, 0.1)
    ref = sc.reference(x, w, b, nbr, 0.1)
    torch.testing.assert_close(y, ref)
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    ref_grads = torch.autograd.grad(ref.sum(), (x, w, b), allow_unused=True, materialize_grads=True)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)


def test_gradient_of_the_input_only_and_bad_slope():
    x, w, b, nbr, nbr_t = _case(6, 16, 27, torch.float64)
    w, b = w.detach(), b.detach()
    (gx,) = torch.autograd.grad(sc.sparse_conv(x, w, b, nbr, nbr_t, 0.1).sum(), (x,))
    (gx_ref,) = torch.autograd.grad(sc.reference(x, w, b, nbr, 0.1).sum(), (x,))
    torch.testing.assert_close(gx, gx_ref)
    with pytest.raises(ValueError, match="slope"):
        sc.sparse_conv(x, w, b, nbr, nbr_t, -0.1)


def test_bad_tables_are_refused():
    x, w, b, nbr, nbr_t = _case(4, 8, 8, torch.float32)
    bad = nbr.clone()
    bad[0, 0] = x.shape[0]  # one past the last input row
    with pytest.raises(RuntimeError, match="outside"):
        sc.sparse_conv(x, w, b, bad, nbr_t, 0.1)
    bad[0, 0] = -2
    with pytest.raises(RuntimeError, match="outside"):
        sc.sparse_conv(x, w, b, bad, nbr_t, 0.1)
    with pytest.raises(RuntimeError, match="columns"):
        sc.sparse_conv(x, w, b, nbr[:, :5].contiguous(), nbr_t, 0.1)
    with pytest.raises(RuntimeError, match="int32"):
        sc.sparse_conv(x, w, b, nbr.long(), nbr_t, 0.1)
    with pytest.raises(RuntimeError, match="C_in"):
        sc.sparse_conv(x[:, :3].contiguous(), w, b, nbr, nbr_t, 0.1)
    # the backward checks the transposed table before using it
    y = sc.sparse_conv(x, w, b, nbr, nbr_t[:5].contiguous(), 0.1)
    with pytest.raises(RuntimeError, match="nbr_t"):
        y.sum().backward()


def _brute_force_cells(coords: torch.Tensor, levels: int) -> list[list[tuple]]:
    """The cells of each level: the input cells, then their parents (cell // 2) level by level."""
    out = []
    cells = [tuple(c) for c in coords.tolist()]
    for _ in range(levels):
        out.append(cells)
        cells = sorted({(a // 2, b // 2, c // 2) for a, b, c in cells})
    return out


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_tables_match_brute_force(levels):
    g = torch.Generator().manual_seed(5)
    coords = (torch.rand(11, 11, 11, generator=g) < 0.25).nonzero()
    coords = coords[torch.randperm(coords.shape[0], generator=g)].to(torch.int32)  # any input order
    tables = sc.build_tables(coords, 12, levels)
    brute = _brute_force_cells(coords, levels)
    assert len(tables) == levels
    for lvl, (t, cells) in enumerate(zip(tables, brute)):
        assert sorted(map(tuple, t.coords.tolist())) == sorted(cells)
        rows = {tuple(c): i for i, c in enumerate(t.coords.tolist())}
        for i, cell in enumerate(t.coords.tolist()):
            for k, off in enumerate(sc.SUBM_OFFSETS.tolist()):
                nb = tuple(a + o for a, o in zip(cell, off))
                assert t.subm[i, k].item() == rows.get(nb, -1)
        assert torch.equal(t.subm_t, t.subm.flip(1))
        if lvl > 0:
            fine = tables[lvl - 1]
            fine_rows = {tuple(c): j for j, c in enumerate(fine.coords.tolist())}
            for i, cell in enumerate(t.coords.tolist()):
                for k, off in enumerate(sc.CHILD_OFFSETS.tolist()):
                    j = fine_rows.get(tuple(2 * a + o for a, o in zip(cell, off)), -1)
                    assert t.children[i, k].item() == j
                    if j >= 0:
                        assert fine.parent_slot[j].tolist() == [i if q == k else -1 for q in range(8)]
            assert (fine.parent_slot >= 0).sum(1).eq(1).all()  # every fine cell has exactly one parent
        else:
            assert torch.equal(t.coords, coords.long())  # level 0 keeps the caller's rows
    with pytest.raises(ValueError, match="duplicates"):
        sc.build_tables(torch.cat([coords, coords[:1]]), 12, 2)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        sc.build_tables(torch.cat([coords, torch.tensor([[0, 12, 3]], dtype=torch.int32)]), 12, 2)


@pytest.mark.parametrize("channels,fine_convs", [([8, 16, 32], False), ([8, 16, 32], True), ([5, 12], True),
                                                 ([4, 8, 8, 16], False), ([6], True)])
def test_unet_on_the_kernel_equals_unet_on_spconv(channels, fine_convs):
    g = torch.Generator().manual_seed(2)
    coords = (torch.rand(14, 14, 14, generator=g) < 0.2).nonzero().to(torch.int32)
    torch.manual_seed(0)
    net = SparseUNet(7, channels, fine_convs=fine_convs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)  # biases too (they start at zero)
    feats = torch.randn(coords.shape[0], 7, generator=g).requires_grad_(True)
    results = []
    for backend in ("auto", "spconv"):
        net.backend = backend
        out = net(coords, feats, 14)
        up = torch.linspace(-1, 1, out.numel()).view_as(out)
        results.append((out, *torch.autograd.grad(out, [feats, *net.parameters()], up)))
    for a, b in zip(*results):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=2e-5)
    net.backend = "nonsense"
    with pytest.raises(ValueError, match="backend"):
        net(coords, feats, 14)
