"""recon.render.rasterize: the C++ CPU splatting kernels against the dense PyTorch reference,
gradients (reference + gradcheck), gsplat's densification strategies, and gsplat on CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from recon.errors import ReconError
from recon.kernels import reference as ref
from recon.render import rasterize

W, H = 37, 23  # non-square, not a multiple of the 16-pixel tile


def look_at(eye, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """World-to-camera matrix, OpenCV axes (x right, y down, z forward)."""
    eye = torch.tensor(eye, dtype=torch.float64)
    forward = torch.tensor(target, dtype=torch.float64) - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def cameras(n_cams, w, h, dtype=torch.float32):
    views = [look_at((3 * math.sin(2 * math.pi * c / n_cams), 0.4, -3 * math.cos(2 * math.pi * c / n_cams)))
             for c in range(n_cams)]
    f = 1.1 * max(w, h)
    K = torch.tensor([[f, 0, w / 2], [0, f * 0.9, h / 2 + 0.3], [0, 0, 1.0]], dtype=torch.float64)
    return torch.stack(views).to(dtype), K.expand(n_cams, 3, 3).clone().to(dtype)


def gaussians(n, seed=0, dtype=torch.float32, scale=0.1, sh_degree=None, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    # anisotropic on purpose: elongated, rotated splats exercise the row/half-row culling
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) ** 2 * scale + 0.05 * scale
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64) * 0.4
    return [t.to(dtype) for t in (means, quats, scales, opac, colors)]


def hard_cases(dtype=torch.float32):
    """Splats behind the camera, off-screen, huge, needle-thin, too faint, and ordinary ones."""
    means, quats, scales, opac, colors = gaussians(60, seed=3, dtype=torch.float64)
    means[0] = torch.tensor([0.0, 0.0, -4.0])  # behind camera 0 (which sits at z = -3)
    means[1] = torch.tensor([0.0, 0.0, -2.995])  # just in front of the near plane
    means[2] = torch.tensor([40.0, 0.0, 0.0])  # far off-screen
    means[3] = torch.tensor([0.0, 0.1, 0.0])
    scales[3] = torch.tensor([3.0, 2.0, 2.5])  # covers the whole image
    scales[4] = torch.tensor([1e-8, 1e-8, 1e-8])  # degenerate: only the 0.3 px low-pass is left
    scales[5] = torch.tensor([0.8, 1e-7, 1e-7])  # needle
    scales[6] = torch.tensor([0.0, 0.3, 0.0])  # exactly zero scales
    opac[7] = 0.002  # below 1/255: culled
    opac[8] = 1.0  # alpha clamps at 0.999
    means[9] = torch.tensor([1.4, 1.0, 0.0])  # near the image border
    return [t.to(dtype) for t in (means, quats, scales, opac, colors)]


def run(fn, params, viewmats, Ks, w, h, seed=5, **kw):
    """Render, backpropagate a random linear loss, return images, meta and input gradients."""
    params = [p.clone().requires_grad_(True) for p in params]
    colors, alphas, meta = fn(*params, viewmats, Ks, w, h, **kw)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    loss = (colors * torch.randn(colors.shape, generator=g, dtype=colors.dtype)).sum()
    loss = loss + (alphas * torch.randn(alphas.shape, generator=g, dtype=alphas.dtype)).sum()
    loss.backward()
    return colors.detach(), alphas.detach(), meta, [p.grad for p in params]


def close(a, b, rel):
    """max |a - b| within rel of max |b| (relative error of a gradient field)."""
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() <= rel * scale + 1e-12 if a.numel() else True


# -- smoke, shapes, bad input -------------------------------------------------------------

def test_smoke_shapes_and_meta():
    params = gaussians(50)
    viewmats, Ks = cameras(3, W, H)
    colors, alphas, meta = rasterize(*params, viewmats, Ks, W, H)
    assert colors.shape == (3, H, W, 3) and alphas.shape == (3, H, W, 1)
    assert colors.dtype == torch.float32 and alphas.dtype == torch.float32
    assert meta["radii"].shape == (3, 50, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (3, 50, 2) and meta["depths"].shape == (3, 50)
    assert meta["conics"].shape == (3, 50, 3) and meta["opacities"].shape == (3, 50)
    assert (meta["width"], meta["height"], meta["n_cameras"], meta["tile_size"]) == (W, H, 3, 16)
    assert meta["isect_offsets"].shape == (3, 2, 3)
    assert meta["gaussian_ids"] is None
    assert 0.05 < alphas.mean() < 0.99
    assert torch.isfinite(colors).all()


def test_no_grad_inference_and_non_contiguous_inputs():
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(60)
    expected, _, _ = rasterize(*params, viewmats, Ks, W, H)
    strided = [torch.repeat_interleave(p, 2, dim=-1)[..., ::2] if p.dim() > 1 else p for p in params]
    assert not strided[0].is_contiguous()
    with torch.no_grad():
        colors, alphas, meta = rasterize(*strided, viewmats.transpose(1, 2).contiguous().transpose(1, 2), Ks, W, H)
    assert not colors.requires_grad
    torch.testing.assert_close(colors, expected, atol=0, rtol=0)


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("D", 1), ("ED", 1), ("RGB+D", 4), ("RGB+ED", 4)])
def test_render_mode_channels(mode, channels):
    viewmats, Ks = cameras(1, W, H)
    colors, _, _ = rasterize(*gaussians(20), viewmats, Ks, W, H, render_mode=mode)
    assert colors.shape == (1, H, W, channels)


def _bad(**change):
    params = dict(zip(["means", "quats", "scales", "opacities", "colors"], gaussians(10)))
    viewmats, Ks = cameras(2, W, H)
    args = dict(params, viewmats=viewmats, Ks=Ks, width=W, height=H)
    args.update(change)
    return args


@pytest.mark.parametrize("change, error", [
    (dict(means=torch.zeros(10, 2)), ValueError),
    (dict(quats=torch.zeros(9, 4)), ValueError),
    (dict(scales=torch.zeros(10, 3, 1)), ValueError),
    (dict(opacities=torch.zeros(10, 1)), ValueError),
    (dict(colors=torch.zeros(7, 3)), ValueError),
    (dict(viewmats=torch.eye(4)), ValueError),
    (dict(Ks=torch.eye(3)[None]), ValueError),
    (dict(width=0), ValueError),
    (dict(height=2.5), ValueError),
    (dict(render_mode="depth"), ValueError),
    (dict(sh_degree=1), ValueError),  # colors are not SH
    (dict(colors=torch.zeros(10, 4, 3), sh_degree=2), ValueError),  # too few bases
    (dict(colors=torch.zeros(10, 25, 3), sh_degree=4), ValueError),  # CPU kernels stop at degree 3
    (dict(backgrounds=torch.zeros(2, 2)), ValueError),
    (dict(means=torch.zeros(10, 3, dtype=torch.int64)), TypeError),
    (dict(means=[[0.0, 0.0, 0.0]] * 10), TypeError),
    (dict(means=torch.zeros(10, 3, dtype=torch.float16)), TypeError),
])
def test_bad_input_raises(change, error):
    args = _bad(**change)
    with pytest.raises(error):
        rasterize(args.pop("means"), args.pop("quats"), args.pop("scales"), args.pop("opacities"),
                  args.pop("colors"), args.pop("viewmats"), args.pop("Ks"), args.pop("width"),
                  args.pop("height"), **args)


# -- forward against the reference ----------------------------------------------------------

FORWARD_CASES = {
    "random-3cams": dict(params=lambda d: gaussians(150, dtype=d), cams=3, size=(W, H)),
    "hard-cases": dict(params=hard_cases, cams=2, size=(W, H)),
    "zero-gaussians": dict(params=lambda d: [t[:0] for t in gaussians(4, dtype=d)], cams=2, size=(W, H)),
    "one-pixel": dict(params=lambda d: gaussians(40, dtype=d, scale=0.4), cams=2, size=(1, 1)),
    "tall-image": dict(params=lambda d: gaussians(80, dtype=d), cams=1, size=(7, 50)),
    "dense-opaque": dict(params=lambda d: gaussians(200, seed=9, dtype=d, scale=0.6), cams=1, size=(24, 20)),
    # last tile column 13 pixels wide: a right half-row only partly inside the image
    "dense-opaque-45x30": dict(params=lambda d: gaussians(200, seed=9, dtype=d, scale=0.6), cams=1, size=(45, 30)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_matches_reference(case, dtype):
    spec = FORWARD_CASES[case]
    w, h = spec["size"]
    viewmats, Ks = cameras(spec["cams"], w, h, dtype)
    params = spec["params"](dtype)
    colors, alphas, meta = rasterize(*params, viewmats, Ks, w, h)
    with torch.no_grad():
        ref_colors, ref_alphas, ref_meta = ref.rasterize(*params, viewmats, Ks, w, h)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    if case.startswith("dense-opaque"):
        assert ((1 - alphas) < 2e-4).float().mean() > 0.1  # many pixels stop at T ~ 1e-4
    torch.testing.assert_close(colors, ref_colors, atol=tol, rtol=0)
    torch.testing.assert_close(alphas, ref_alphas, atol=tol, rtol=0)
    assert torch.equal(meta["radii"], ref_meta["radii"])
    torch.testing.assert_close(meta["means2d"], ref_meta["means2d"], atol=1e-3 if dtype == torch.float32 else 1e-9,
                               rtol=1e-5)


def test_many_splats_binned_in_parallel_chunks():
    """20k visible splats: the tile binning splits them into chunks; lists must stay depth-ordered."""
    # float64: with thousands of splats per pixel, float32 rounding can move the 1e-4 cut-off by one splat
    viewmats, Ks = cameras(1, 32, 24, torch.float64)
    params = gaussians(20000, seed=5, scale=0.05, dtype=torch.float64)
    colors, alphas, meta = rasterize(*params, viewmats, Ks, 32, 24)
    assert (meta["radii"] > 0).all(dim=-1).sum() > 16384
    with torch.no_grad():
        ref_colors, ref_alphas, _ = ref.rasterize(*params, viewmats, Ks, 32, 24)
    torch.testing.assert_close(colors, ref_colors, atol=1e-10, rtol=0)
    offsets = meta["isect_offsets"].reshape(-1).tolist() + [meta["flatten_ids"].numel()]
    depths = meta["depths"].reshape(-1)
    for t in range(len(offsets) - 1):
        ids = meta["flatten_ids"][offsets[t]:offsets[t + 1]].long()
        assert (depths[ids][1:] >= depths[ids][:-1]).all()
    assert meta["tiles_per_gauss"].sum() == meta["flatten_ids"].numel()


def _tile_pairs(meta, n):
    """(camera * n + gaussian, tile) pairs of meta's tile lists, unpacked layout."""
    offsets = meta["isect_offsets"].reshape(-1).tolist() + [meta["flatten_ids"].numel()]
    return {(int(g), t % (meta["tile_width"] * meta["tile_height"]))
            for t in range(len(offsets) - 1) for g in meta["flatten_ids"][offsets[t]:offsets[t + 1]]}


def test_tile_lists_hold_the_tiles_a_splat_can_reach():
    """A splat is listed in the tiles of its bounding box where some pixel reaches alpha >= 1/255,
    and in few others (rows are tested as continuous intervals, which can fall between pixel
    centres); gsplat lists the whole box, which composites the same image."""
    viewmats, Ks = cameras(2, 70, 50, torch.float64)
    params = gaussians(300, seed=11, scale=0.15, dtype=torch.float64)
    _, _, meta = rasterize(*params, viewmats, Ks, 70, 50)
    listed = _tile_pairs(meta, 300)
    tw, th, tile = meta["tile_width"], meta["tile_height"], meta["tile_size"]
    ys, xs = torch.meshgrid(torch.arange(50, dtype=torch.float64) + 0.5, torch.arange(70, dtype=torch.float64) + 0.5,
                            indexing="ij")
    reach, box = set(), set()
    for c in range(2):
        for g in torch.nonzero((meta["radii"][c] > 0).all(dim=-1)).squeeze(1).tolist():
            mx, my = meta["means2d"][c, g].tolist()
            a, b, cc = meta["conics"][c, g].tolist()
            dx, dy = mx - xs, my - ys
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = meta["opacities"][c, g] * torch.exp(-sigma)
            rx, ry = meta["radii"][c, g].tolist()
            x0, x1 = max(0, math.floor((mx - rx) / tile)), min(tw, math.ceil((mx + rx) / tile))
            y0, y1 = max(0, math.floor((my - ry) / tile)), min(th, math.ceil((my + ry) / tile))
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    key = (c * 300 + g, ty * tw + tx)
                    box.add(key)
                    block = alpha[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
                    ok = sigma[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile] >= 0
                    if ((block >= 1 / 255) & ok).any():
                        reach.add(key)
    assert reach <= listed <= box
    assert len(listed - reach) <= 0.02 * len(listed)
    assert len(listed) < 0.9 * len(box)  # the narrowing happens in this scene
    counts = meta["tiles_per_gauss"].reshape(-1)
    per_gauss = torch.zeros_like(counts)
    for g, _ in listed:
        per_gauss[g] += 1
    assert torch.equal(counts, per_gauss)


def test_hard_cases_are_culled_as_expected():
    viewmats, Ks = cameras(2, W, H)
    _, _, meta = rasterize(*hard_cases(), viewmats, Ks, W, H)
    visible = (meta["radii"] > 0).all(dim=-1)[0]
    assert not visible[0] and not visible[1]  # behind the camera, inside the near plane
    assert not visible[2] and not visible[7]  # off-screen, below 1/255 opacity
    assert visible[3] and visible[4] and visible[5] and visible[6]
    assert (meta["radii"][0, 3] >= torch.tensor([W // 2, H // 2], dtype=torch.int32)).all()  # huge


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_spherical_harmonics_match_reference(sh_degree):
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(80, sh_degree=3)  # use the first (sh_degree+1)^2 of 16 bases
    colors, alphas, _ = rasterize(*params, viewmats, Ks, W, H, sh_degree=sh_degree)
    with torch.no_grad():
        ref_colors, ref_alphas, _ = ref.rasterize(*params, viewmats, Ks, W, H, sh_degree=sh_degree)
    torch.testing.assert_close(colors, ref_colors, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sh_degree,split", [(3, 1), (1, 1), (3, 4), (0, 1), (2, 16)])
def test_sh_pair_equals_one_sh_tensor(sh_degree, split):
    """(sh0, shN) as trainers store them gives the images and gradients of cat([sh0, shN], 1); bases
    past the degree get exactly zero gradient (the kernel writes them, nothing zero-fills first)."""
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(45, seed=2, sh_degree=3)  # 45 Gaussians: the last group of 8 lanes is partial
    whole = run(rasterize, params, viewmats, Ks, W, H, sh_degree=sh_degree)
    sh = params[4]
    head, rest = sh[:, :split].clone().requires_grad_(True), sh[:, split:].clone().requires_grad_(True)
    others = [t.clone().requires_grad_(True) for t in params[:4]]
    colors, alphas, _ = rasterize(*others, (head, rest), viewmats, Ks, W, H, sh_degree=sh_degree)
    g = torch.Generator().manual_seed(5)  # the same random loss as run()
    loss = (colors * torch.randn(colors.shape, generator=g)).sum() + (alphas * torch.randn(alphas.shape, generator=g)).sum()
    loss.backward()
    torch.testing.assert_close(colors, whole[0], atol=0, rtol=0)
    torch.testing.assert_close(alphas, whole[1], atol=0, rtol=0)
    # gradients to rounding: the tile backward's per-thread partial sums meet in any order
    for a, b in zip([t.grad for t in others], whole[3][:4]):
        assert close(a, b, 1e-5)
    full_grad = whole[3][4]
    if rest.shape[1]:
        assert close(torch.cat([head.grad, rest.grad], 1), full_grad, 1e-5)
    else:
        assert rest.grad is None or not rest.grad.any()
        assert close(head.grad, full_grad, 1e-5)
    used = (sh_degree + 1) ** 2
    assert full_grad[:, :used].abs().sum() > 0 and not full_grad[:, used:].any()


@pytest.mark.parametrize("n,group,sh_degree,threads", [(45, 3, 3, 2), (45, 5, 2, 2), (44, 44, 3, 1),
                                                       (1100, 5, 3, 2), (1030, 515, 1, 2)])
def test_sh_shared_rest_equals_expanded(n, group, sh_degree, threads):
    """shN with a row per group of G consecutive Gaussians renders as the expanded (N, K-1, 3) rest, and
    its gradient is the expanded gradient summed over each group: groups straddling 8-lane passes,
    several chunks on two threads, and groups larger than a chunk (G=515)."""
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(n, seed=3, sh_degree=3, scale=0.1 if n < 100 else 0.03)
    shared = params[4][::group, 1:].clone()  # (n / G, 15, 3)
    head = params[4][:, :1].clone()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outs = []
        for rest in (shared, shared.repeat_interleave(group, 0)):
            leaves = [t.clone().requires_grad_(True) for t in params[:4] + [head, rest]]
            colors, alphas, _ = rasterize(*leaves[:4], (leaves[4], leaves[5]), viewmats, Ks, W, H, sh_degree=sh_degree)
            g = torch.Generator().manual_seed(5)
            loss = (colors * torch.randn(colors.shape, generator=g)).sum()
            (loss + (alphas * torch.randn(alphas.shape, generator=g)).sum()).backward()
            outs.append((colors, alphas, [t.grad for t in leaves]))
    finally:
        torch.set_num_threads(before)
    (c_sh, a_sh, g_sh), (c_ex, a_ex, g_ex) = outs
    torch.testing.assert_close(c_sh, c_ex, atol=0, rtol=0)
    torch.testing.assert_close(a_sh, a_ex, atol=0, rtol=0)
    for a, b in zip(g_sh[:5], g_ex[:5]):
        assert close(a, b, 1e-5)
    summed = g_ex[5].view(n // group, group, 15, 3).sum(1)
    used = (sh_degree + 1) ** 2 - 1
    assert g_sh[5].shape == shared.shape and close(g_sh[5], summed, 1e-5)
    assert summed[:, :used].abs().sum() > 0 and not g_sh[5][:, used:].any()


def test_sh_shared_rest_gradcheck_float64():
    viewmats, Ks = cameras(2, 20, 14, torch.float64)
    params = gaussians(6, seed=12, dtype=torch.float64, scale=2.0, sh_degree=2, spread=0.5)
    params[3] = params[3] * 0.5
    head = params[4][:, :1].clone().requires_grad_(True)
    rest = params[4][::3, 1:].clone().requires_grad_(True)  # 2 rows, 3 Gaussians each
    directions = torch.randn(2 * 14 * 20 * 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def fn(means, h, r):
        colors, alphas, _ = rasterize(means, *params[1:4], (h, r), viewmats, Ks, 20, 14, sh_degree=2)
        return torch.cat([colors, alphas], dim=-1).reshape(-1) @ directions

    assert torch.autograd.gradcheck(fn, (params[0].requires_grad_(True), head, rest), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("pair", [False, True])
def test_sh_unused_bases_get_zero_gradient(pair):
    """More SH bases than the degree uses (here 20, past the kernel's 16): the rest get exactly 0, and
    the used ones the gradient of the same render with only those bases."""
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(30, seed=4, sh_degree=3)
    extra = torch.randn(30, 4, 3, generator=torch.Generator().manual_seed(1))
    sh20 = torch.cat([params[4], extra], 1).requires_grad_(True)
    colors_arg = (sh20[:, :1], sh20[:, 1:]) if pair else sh20
    others = [t.clone().requires_grad_(True) for t in params[:4]]
    colors, _, _ = rasterize(*others, colors_arg, viewmats, Ks, W, H, sh_degree=2)
    weights = torch.randn(colors.shape, generator=torch.Generator().manual_seed(2))
    (colors * weights).sum().backward()
    sh9 = params[4][:, :9].clone().requires_grad_(True)
    colors9, _, _ = rasterize(*[t.detach() for t in params[:4]], sh9, viewmats, Ks, W, H, sh_degree=2)
    (colors9 * weights).sum().backward()
    torch.testing.assert_close(colors, colors9, atol=0, rtol=0)
    assert close(sh20.grad[:, :9], sh9.grad, 1e-5) and sh9.grad.abs().sum() > 0
    assert not sh20.grad[:, 9:].any()


def test_sh_infinite_coefficient_keeps_position_gradients_finite():
    """A channel clamped at zero passes no gradient at all: a -inf coefficient there must not turn the
    position gradient into NaN (0 * inf)."""
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(20, seed=6, sh_degree=1)
    params[4][3, 0, 0] = -float("inf")  # Gaussian 3's red channel: clamped to 0 everywhere
    means = params[0].clone().requires_grad_(True)
    colors, _, meta = rasterize(means, *params[1:], viewmats, Ks, W, H, sh_degree=1)
    assert (meta["radii"][:, 3] > 0).all()  # the Gaussian is visible, so its gradient is computed
    (colors * torch.randn(colors.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.isfinite(means.grad).all() and means.grad[3].abs().sum() > 0


@pytest.mark.parametrize("pair", [False, True])
def test_sh_zero_gaussians(pair):
    viewmats, Ks = cameras(2, W, H)
    params = [t[:0].clone().requires_grad_(True) for t in gaussians(5, sh_degree=2)]
    sh = (params[4][:, :1], params[4][:, 1:]) if pair else params[4]
    colors, alphas, _ = rasterize(*params[:4], sh, viewmats, Ks, W, H, sh_degree=2,
                                  backgrounds=torch.full((2, 3), 0.25))
    assert (colors == 0.25).all() and not alphas.any()
    (colors.sum() + alphas.sum()).backward()
    assert params[0].grad.shape == (0, 3) and params[4].grad.shape == (0, 9, 3)


def test_sh_shared_rest_needs_gaussians():
    """Zero Gaussians cannot share rows: a shN with rows is refused (by the wrapper and by the kernel)."""
    viewmats, Ks = cameras(1, W, H)
    params = [t[:0] for t in gaussians(3, sh_degree=1)]
    with pytest.raises(ValueError, match="shN"):
        rasterize(*params[:4], (params[4][:, :1], torch.zeros(3, 3, 3)), viewmats, Ks, W, H, sh_degree=1)
    from recon.kernels import load

    campos = torch.inverse(viewmats)[:, :3, 3].contiguous()
    with pytest.raises(RuntimeError, match="sh_rest"):
        load().project_forward(*params[:4], viewmats, Ks, campos, params[4][:, :1].contiguous(), torch.zeros(3, 3, 3),
                               1, W, H, 0.3, 0.01, 1e10, 0.0)


def test_sh_pair_gradcheck_float64():
    viewmats, Ks = cameras(2, 20, 14, torch.float64)
    params = gaussians(4, seed=11, dtype=torch.float64, scale=2.0, sh_degree=2, spread=0.5)
    params[3] = params[3] * 0.5
    head = params[4][:, :1].clone().requires_grad_(True)
    rest = params[4][:, 1:].clone().requires_grad_(True)
    directions = torch.randn(2 * 14 * 20 * 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def fn(means, h, r):
        colors, alphas, _ = rasterize(means, *params[1:4], (h, r), viewmats, Ks, 20, 14, sh_degree=2)
        return torch.cat([colors, alphas], dim=-1).reshape(-1) @ directions

    assert torch.autograd.gradcheck(fn, (params[0].requires_grad_(True), head, rest), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("colors,sh_degree,error", [
    ((torch.zeros(10, 1, 3), torch.zeros(10, 3, 3)), None, TypeError),  # a pair is SH: needs sh_degree
    ((torch.zeros(10, 1, 3),), 0, TypeError),  # not a pair
    ((torch.zeros(10, 1, 3), torch.zeros(9, 3, 3)), 1, ValueError),  # rows differ from means
    ((torch.zeros(10, 1, 3), torch.zeros(3, 3, 3)), 1, ValueError),  # 3 rows cannot be shared by 10
    ((torch.zeros(10, 1, 3), torch.zeros(0, 3, 3)), 1, ValueError),  # no rows for 10 Gaussians
    ((torch.zeros(5, 1, 3), torch.zeros(10, 3, 3)), 1, ValueError),  # sh0 rows differ from means
    ((torch.zeros(10, 1, 3), torch.zeros(20, 3, 3)), 1, ValueError),  # more rest rows than Gaussians
    ((torch.zeros(10, 1, 3), torch.zeros(10, 3, 2)), 1, ValueError),  # not RGB
    ((torch.zeros(10, 1, 3), torch.zeros(10, 2, 3)), 2, ValueError),  # 3 bases, degree 2 needs 9
    ((torch.zeros(10, 1, 3), torch.zeros(10, 3, 3, dtype=torch.int32)), 1, TypeError),
])
def test_sh_pair_bad_input_raises(colors, sh_degree, error):
    args = _bad()
    with pytest.raises(error):
        rasterize(args["means"], args["quats"], args["scales"], args["opacities"], colors, args["viewmats"],
                  args["Ks"], args["width"], args["height"], sh_degree=sh_degree)


@pytest.mark.parametrize("mode", ["RGB", "D", "ED", "RGB+D", "RGB+ED"])
def test_backgrounds_and_depth_modes_match_reference(mode):
    viewmats, Ks = cameras(2, W, H)
    params = gaussians(100)
    backgrounds = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    colors, alphas, _ = rasterize(*params, viewmats, Ks, W, H, backgrounds=backgrounds, render_mode=mode)
    with torch.no_grad():
        ref_colors, ref_alphas, _ = ref.rasterize(*params, viewmats, Ks, W, H, backgrounds=backgrounds,
                                                  render_mode=mode)
    # expected depth divides by alpha: compare where the pixel is covered enough to be meaningful
    torch.testing.assert_close(colors, ref_colors, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alphas, ref_alphas, atol=1e-5, rtol=0)


def test_per_camera_colors_and_packed_layout():
    viewmats, Ks = cameras(2, W, H)
    means, quats, scales, opac, _ = gaussians(90)
    per_camera = torch.rand(2, 90, 3, generator=torch.Generator().manual_seed(1))
    colors, alphas, meta = rasterize(means, quats, scales, opac, per_camera, viewmats, Ks, W, H)
    colors_p, alphas_p, meta_p = rasterize(means, quats, scales, opac, per_camera, viewmats, Ks, W, H, packed=True)
    with torch.no_grad():
        ref_colors, _, _ = ref.rasterize(means, quats, scales, opac, per_camera, viewmats, Ks, W, H)
    torch.testing.assert_close(colors, ref_colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(colors_p, colors, atol=0, rtol=0)
    visible = (meta["radii"] > 0).all(dim=-1)
    cams, ids = torch.nonzero(visible, as_tuple=True)
    assert torch.equal(meta_p["camera_ids"], cams) and torch.equal(meta_p["gaussian_ids"], ids)
    assert torch.equal(meta_p["radii"], meta["radii"][visible])
    assert meta_p["means2d"].shape == (len(ids), 2)


def test_more_than_four_channels_are_chunked():
    viewmats, Ks = cameras(1, W, H)
    means, quats, scales, opac, _ = gaussians(60)
    features = torch.rand(60, 7, generator=torch.Generator().manual_seed(2))
    colors, alphas, _ = rasterize(means, quats, scales, opac, features, viewmats, Ks, W, H)
    with torch.no_grad():
        ref_colors, _, _ = ref.rasterize(means, quats, scales, opac, features, viewmats, Ks, W, H)
    assert colors.shape == (1, H, W, 7)
    torch.testing.assert_close(colors, ref_colors, atol=1e-5, rtol=0)


def test_single_gaussian_known_value():
    """An isotropic Gaussian on the optical axis: the pixel alpha follows the EWA formula."""
    f, z, s, op = 50.0, 4.0, 0.2, 0.7
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[f, 0, 10.0], [0, f, 10.0], [0, 0, 1.0]]])
    means = torch.tensor([[0.0, 0.0, z]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), s)
    colors, alphas, meta = rasterize(means, quats, scales, torch.tensor([op]), torch.tensor([[1.0, 0.5, 0.0]]),
                                     viewmats, Ks, 20, 20, backgrounds=torch.tensor([[0.0, 0.0, 1.0]]))
    var = (f * s / z) ** 2 + 0.3  # projected variance + the eps2d low-pass
    for px, py in [(10, 10), (12, 9), (9, 14)]:
        dx, dy = px + 0.5 - 10.0, py + 0.5 - 10.0
        expected = op * math.exp(-0.5 * (dx * dx + dy * dy) / var)
        assert alphas[0, py, px, 0].item() == pytest.approx(expected, rel=1e-5)
        assert colors[0, py, px, 2].item() == pytest.approx(1.0 - expected, rel=1e-5)
    extend = math.sqrt(2 * math.log(op * 255))
    assert meta["radii"][0, 0].tolist() == [math.ceil(extend * math.sqrt(var))] * 2


# -- gradients ------------------------------------------------------------------------------

GRAD_CASES = {
    "rgb": dict(kw={}, params=lambda d: gaussians(100, dtype=d)),
    "sh3": dict(kw=dict(sh_degree=3), params=lambda d: gaussians(100, dtype=d, sh_degree=3)),
    "rgb+ed+bg": dict(kw=dict(render_mode="RGB+ED", backgrounds="bg"), params=lambda d: gaussians(100, dtype=d)),
    "hard-cases": dict(kw={}, params=hard_cases),
    "dense-opaque": dict(kw={}, params=lambda d: gaussians(200, seed=9, dtype=d, scale=0.6)),
    "dense-opaque-45x30": dict(kw={}, params=lambda d: gaussians(200, seed=9, dtype=d, scale=0.6), size=(45, 30)),
    # one camera: (N, D) colours and (N,) opacities reach the kernels without a camera dim
    "rgb-one-camera": dict(kw={}, params=lambda d: gaussians(100, dtype=d), cameras=1),
    "rgb+d-one-camera": dict(kw=dict(render_mode="RGB+D"), params=lambda d: gaussians(100, dtype=d), cameras=1),
}


@pytest.mark.parametrize("absgrad", [True, False])  # the kernel has a build of its backward for each
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_match_reference(case, dtype, absgrad):
    spec = GRAD_CASES[case]
    w, h = spec.get("size", (W, H))
    viewmats, Ks = cameras(spec.get("cameras", 2), w, h, dtype)
    kw = dict(spec["kw"])
    if kw.get("backgrounds") == "bg":
        kw["backgrounds"] = torch.tensor([[0.3, 0.6, 0.1], [0.9, 0.9, 0.2]], dtype=dtype)
    params = spec["params"](dtype)
    _, _, meta, grads = run(rasterize, params, viewmats, Ks, w, h, absgrad=absgrad, **kw)
    _, _, ref_meta, ref_grads = run(ref.rasterize, params, viewmats, Ks, w, h, **kw)
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    for name, g, rg in zip(["means", "quats", "scales", "opacities", "colors"], grads, ref_grads):
        assert rg.abs().max() > 0, name
        assert close(g, rg, rel), f"{name}: {(g - rg).abs().max().item():.3g} vs {rg.abs().max().item():.3g}"
    assert close(meta["means2d"].grad, ref_meta["means2d"].grad, rel)
    if absgrad:
        assert close(meta["means2d"].absgrad, ref.absgrad_from_meta(ref_meta), rel)
    else:
        assert getattr(meta["means2d"], "absgrad", None) is None


def test_background_gradient():
    viewmats, Ks = cameras(2, W, H)
    backgrounds = torch.tensor([[0.3, 0.6, 0.1], [0.9, 0.9, 0.2]], requires_grad=True)
    colors, alphas, _ = rasterize(*gaussians(80), viewmats, Ks, W, H, backgrounds=backgrounds)
    colors.sum().backward()
    expected = (1 - alphas.detach()).sum(dim=(1, 2)).expand(2, 3)
    torch.testing.assert_close(backgrounds.grad, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_gradcheck_float64(sh_degree):
    viewmats, Ks = cameras(2, 20, 14, torch.float64)
    params = gaussians(4, seed=11, dtype=torch.float64, scale=2.0, sh_degree=sh_degree, spread=0.5)
    params[3] = params[3] * 0.5  # keep transmittance far above the 1e-4 cut-off
    params = [p.requires_grad_(True) for p in params]
    _, alphas, _ = rasterize(*params, viewmats, Ks, 20, 14, sh_degree=sh_degree)
    assert alphas.mean() > 0.1  # the splats cover a good part of both images

    # a few random projections of the images keep the analytical Jacobian cheap to build
    directions = torch.randn(2 * 14 * 20 * 5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def fn(*p):
        colors, alphas, _ = rasterize(*p, viewmats, Ks, 20, 14, sh_degree=sh_degree, render_mode="RGB+ED")
        return torch.cat([colors, alphas], dim=-1).reshape(-1) @ directions

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-4)


# -- implementation variants agree ------------------------------------------------------------

@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_portable_kernels_match_simd_kernels(isa):
    from recon.kernels import select_isa

    viewmats, Ks = cameras(2, W, H)
    params = gaussians(200)
    active = select_isa("auto")
    try:
        if select_isa(isa) != isa:
            pytest.skip(f"this CPU has no {isa}")
        fast = run(rasterize, params, viewmats, Ks, W, H, absgrad=True)
        assert select_isa("generic") == "generic"
        portable = run(rasterize, params, viewmats, Ks, W, H, absgrad=True)
    finally:
        assert select_isa("auto") == active
    torch.testing.assert_close(fast[0], portable[0], atol=1e-6, rtol=0)
    for g, pg in zip(fast[3], portable[3]):
        assert close(g, pg, 1e-5)


@pytest.mark.parametrize("isa", ["auto", "generic"])
def test_infinite_opacity_composites_as_the_clamped_alpha(isa):
    """alpha = min(opacity exp(-sigma), 0.999): an infinite opacity gives 0.999 over the splat in every
    build, with no NaN (2^x of log2(inf) must stay in range)."""
    from recon.kernels import select_isa

    viewmats, Ks = cameras(1, 16, 16)
    one = [torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), 0.05)]
    active = select_isa("auto")
    try:
        select_isa(isa)
        colors, alphas, _ = rasterize(*one, torch.tensor([math.inf]), torch.tensor([[1.0, 0.5, 0.0]]), viewmats, Ks,
                                      16, 16)
    finally:
        assert select_isa("auto") == active
    assert torch.isfinite(colors).all() and torch.isfinite(alphas).all()
    assert alphas.max() == pytest.approx(0.999, abs=1e-6)
    assert (alphas > 0.99).sum() > 4  # the whole core of the splat, not one pixel


def test_unknown_isa_variable_is_one_line_error():
    import subprocess
    import sys

    env = dict(__import__("os").environ, RECON_SPLAT_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", "from recon.kernels import load; load()"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "RECON_SPLAT_ISA='sse9'" in proc.stderr and "auto, avx512, avx2, generic" in proc.stderr


def test_isa_choice_is_capped_by_the_cpu():
    from recon.kernels import select_isa

    active = select_isa("auto")
    order = ["generic", "avx2", "avx512"]
    try:
        assert select_isa("generic") == "generic"
        assert order.index(select_isa("avx2")) <= order.index("avx2")
        assert select_isa("query") == select_isa("query")
    finally:
        assert select_isa("auto") == active
    with pytest.raises(RuntimeError, match="isa must be"):
        select_isa("sse9")


def test_thread_count_does_not_change_results():
    viewmats, Ks = cameras(3, W, H)
    params = gaussians(300, scale=0.3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(rasterize, params, viewmats, Ks, W, H)
        torch.set_num_threads(max(2, threads))
        many = run(rasterize, params, viewmats, Ks, W, H)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])  # tiles are independent
    for g, mg in zip(one[3], many[3]):
        assert close(g, mg, 1e-5)  # per-thread sums are added in a different order


# -- densification strategies on CPU ---------------------------------------------------------

def _train(strategy, steps, packed=False, absgrad=False, mcmc=False, dead=0):
    viewmats, Ks = cameras(2, 40, 32)
    means, quats, scales, opac, colors = gaussians(120, scale=0.2)
    if dead:
        opac[:dead] = 0.001  # below MCMC's min_opacity: these get relocated
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(means), "quats": torch.nn.Parameter(quats),
        "scales": torch.nn.Parameter(torch.log(scales)), "opacities": torch.nn.Parameter(torch.logit(opac)),
        "colors": torch.nn.Parameter(colors)})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    target = torch.rand(2, 32, 40, 3, generator=torch.Generator().manual_seed(0))
    history = []
    for step in range(steps):
        colors_, _, info = rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                                     torch.sigmoid(params["opacities"]), params["colors"], viewmats, Ks, 40, 32,
                                     packed=packed, absgrad=absgrad)
        if not mcmc:
            strategy.step_pre_backward(params, optimizers, state, step, info)
        (colors_ - target).abs().mean().backward()
        history.append((info, len(params["means"])))
        if mcmc:
            strategy.step_post_backward(params, optimizers, state, step, info, lr=1e-3)
        else:
            strategy.step_post_backward(params, optimizers, state, step, info, packed=packed)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
    return params, optimizers, state, history


@pytest.mark.parametrize("packed, absgrad", [(False, False), (True, False), (False, True)])
def test_default_strategy_runs_on_cpu(packed, absgrad):
    from gsplat.strategy import DefaultStrategy

    strategy = DefaultStrategy(refine_start_iter=1, refine_every=3, reset_every=100, grow_grad2d=1e-5,
                               absgrad=absgrad)
    # one step first: the accumulated image-plane gradient must be what meta carried
    params, _, state, history = _train(strategy, 1, packed=packed, absgrad=absgrad)
    info = history[0][0]
    grads = (info["means2d"].absgrad if absgrad else info["means2d"].grad).clone()
    grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
    grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
    if packed:
        expected = torch.zeros(120).index_add_(0, info["gaussian_ids"], grads.norm(dim=-1))
    else:
        visible = (info["radii"] > 0).all(dim=-1)
        expected = torch.zeros(120).index_add_(0, torch.where(visible)[1], grads[visible].norm(dim=-1))
    torch.testing.assert_close(state["grad2d"], expected)
    assert state["grad2d"].max() > 0

    params, optimizers, state, history = _train(
        DefaultStrategy(refine_start_iter=1, refine_every=3, reset_every=100, grow_grad2d=1e-5, absgrad=absgrad),
        7, packed=packed, absgrad=absgrad)
    assert len(params["means"]) > 120  # densified
    assert all(len(p) == len(params["means"]) for p in params.values())
    assert optimizers["means"].state[optimizers["means"].param_groups[0]["params"][0]]["exp_avg"].shape[0] == len(
        params["means"])


def test_mcmc_strategy_runs_on_cpu():
    from gsplat.strategy import MCMCStrategy

    strategy = MCMCStrategy(refine_start_iter=1, refine_every=2, cap_max=200, min_opacity=0.005)
    before = gaussians(120, scale=0.2)[0].clone()
    params, _, _, history = _train(strategy, 5, mcmc=True, dead=10)
    assert len(params["means"]) > 120  # sample_add grew the set
    assert (torch.sigmoid(params["opacities"][:10]) > 0.005).all()  # dead ones were relocated
    assert not torch.equal(params["means"][10:120].detach(), before[10:120])  # noise was injected


def test_mcmc_relocation_matches_formula():
    from recon.render.gsplat_cpu import relocation

    n_max = 51
    binoms = torch.zeros(n_max, n_max)
    for n in range(n_max):
        for k in range(n + 1):
            binoms[n, k] = math.comb(n, k)
    g = torch.Generator().manual_seed(0)
    opac = torch.rand(12, generator=g) * 0.9 + 0.05
    scales = torch.rand(12, 3, generator=g)
    ratios = torch.randint(1, 9, (12,), generator=g)
    new_opac, new_scales = relocation(opac, scales, ratios.clone(), binoms)
    for j in range(12):
        n, o = int(ratios[j]), float(opac[j])
        new = 1 - (1 - o) ** (1 / n)
        denom = sum(math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new ** (k + 1)
                    for i in range(1, n + 1) for k in range(i))
        assert new_opac[j].item() == pytest.approx(new, rel=1e-5)
        torch.testing.assert_close(new_scales[j], o / denom * scales[j], rtol=1e-4, atol=1e-6)


# -- build and devices --------------------------------------------------------------------------

def test_missing_compiler_is_one_line_error(monkeypatch, tmp_path):
    import recon.kernels as kernels

    monkeypatch.setattr(kernels, "_ops", None)
    monkeypatch.setenv("RECON_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_find_compiler", lambda: None)
    with pytest.raises(ReconError) as err:
        kernels.load()
    assert "no C++ compiler" in str(err.value) and "\n" not in str(err.value)
    assert kernels.cache_root() == tmp_path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_kernels_match_gsplat_cuda():
    from gsplat import rasterization

    viewmats, Ks = cameras(2, W, H)
    params = gaussians(200, sh_degree=3)
    cpu = run(rasterize, params, viewmats, Ks, W, H, sh_degree=3)
    cuda = run(lambda *a, **k: rasterization(*a, **k, packed=False),
               [p.cuda() for p in params], viewmats.cuda(), Ks.cuda(), W, H, sh_degree=3)
    torch.testing.assert_close(cpu[0], cuda[0].cpu(), atol=1e-4, rtol=0)
    torch.testing.assert_close(cpu[1], cuda[1].cpu(), atol=1e-4, rtol=0)
    assert (cpu[2]["radii"] - cuda[2]["radii"].cpu()).abs().max() <= 1  # gsplat's fast log rounds differently
    for g, cg in zip(cpu[3], cuda[3]):
        assert close(g, cg.cpu(), 1e-3)
    # and recon.render.rasterize on CUDA tensors is gsplat itself
    colors, _, _ = rasterize(*[p.cuda() for p in params], viewmats.cuda(), Ks.cuda(), W, H, sh_degree=3)
    torch.testing.assert_close(colors, cuda[0], atol=0, rtol=0)
