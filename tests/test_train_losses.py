"""The fused CPU SSIM kernel (kernels/ssim_cpu.cpp) against the pure-PyTorch reference ssim_map."""
from __future__ import annotations

import pytest
import torch

from recon.train import losses


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=dtype)
    # a target near the render, like training sees, plus an unrelated one
    b = (a + 0.1 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return a.requires_grad_(True), b


# heights past 42 put windows in a second 32-row band of the kernel's forward; the kernel filters rows in
# blocks of 64 values: (1, 20, 26, 4) has window rows of exactly 64, others shorter ones or a partial last block
@pytest.mark.parametrize("shape", [(1, 40, 37, 3), (2, 23, 31, 3), (1, 11, 11, 1), (3, 12, 50, 4), (2, 75, 20, 3),
                                   (1, 90, 45, 3), (1, 20, 26, 4)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_ssim_value_and_gradient_match_reference(shape, dtype, tol):
    a, b = _pair(shape, dtype)
    ours = losses.ssim(a, b)
    ref = losses.ssim_map(a, b).mean()
    assert ours.dtype == dtype and ours.shape == ()
    assert abs(float(ours.detach()) - float(ref.detach())) < tol
    g_ours = torch.autograd.grad(ours, a)[0]
    g_ref = torch.autograd.grad(ref, a)[0]
    assert g_ours.shape == a.shape
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-7 if dtype == torch.float32 else 1e-14)


def test_fused_ssim_gradcheck_float64():
    a, b = _pair((1, 13, 14, 2), torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda x: losses.ssim(x, b), (a,))


def test_fused_ssim_is_used_and_identical_images_score_one():
    a, _ = _pair((1, 20, 20, 3), torch.float32)
    out = losses.ssim(a, a.detach())
    assert out.grad_fn is not None and "FusedSSIM" in type(out.grad_fn).__name__
    assert abs(float(out.detach()) - 1.0) < 1e-6


def test_fused_ssim_same_result_on_one_and_two_threads():
    a, b = _pair((1, 64, 48, 3), torch.float32, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        v1 = losses.ssim(a, b)
        g1 = torch.autograd.grad(v1, a)[0]
        torch.set_num_threads(2)
        v2 = losses.ssim(a, b)
        g2 = torch.autograd.grad(v2, a)[0]
    finally:
        torch.set_num_threads(threads)
    assert float(v1.detach()) == float(v2.detach())
    assert torch.equal(g1, g2)


def test_broadcast_target_uses_the_reference():
    a, _ = _pair((2, 16, 16, 3), torch.float32)
    b = torch.rand(1, 16, 16, 3)
    torch.testing.assert_close(losses.ssim(a, b), losses.ssim_map(a, b).mean())


def test_target_with_gradient_uses_the_reference_for_both():
    a, b = _pair((1, 16, 16, 3), torch.float64)
    b.requires_grad_(True)
    out = losses.ssim(a, b)
    ga, gb = torch.autograd.grad(out, (a, b))
    ra, rb = torch.autograd.grad(losses.ssim_map(a, b).mean(), (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_photometric_loss_uses_l1_only_below_the_window():
    a, b = _pair((1, 8, 30, 3), torch.float32)
    assert torch.equal(losses.photometric_loss(a, b, 0.2), (a - b).abs().mean())


def test_kernel_rejects_bad_input():
    from recon.kernels import load

    ops = load()
    w = losses._gauss_1d(11, 1.5, torch.float32)
    a = torch.rand(1, 20, 20, 3)
    with pytest.raises(RuntimeError, match="one shape"):
        ops.ssim_forward(a, torch.rand(1, 20, 21, 3), w)
    with pytest.raises(RuntimeError, match="smaller than the window"):
        ops.ssim_forward(torch.rand(1, 8, 20, 3), torch.rand(1, 8, 20, 3), w)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.ssim_forward(a, a.double(), w)
