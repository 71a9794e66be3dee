"""One rasterize() for every device: gsplat on CUDA tensors, the C++ kernels in recon.kernels on CPU.

The CPU path reproduces ``gsplat.rasterization`` (gsplat 1.5, pinhole, classic mode): EWA
projection with the eps2d low-pass, opacity-aware 3-sigma extents, 16x16 tiles, per-tile depth
order, front-to-back compositing (alpha clamped at 0.999, splats under 1/255 skipped, a pixel stops
before its transmittance would fall to 1e-4), SH colours + 0.5 clamped at 0, and the meta fields
that gsplat's DefaultStrategy / MCMCStrategy read (``means2d`` keeps ``.grad`` and ``.absgrad``).
"""
from __future__ import annotations

import math
from typing import Any

import torch

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
TILE_SIZE = 16
_MAX_KERNEL_CHANNELS = 4  # the C++ compositor handles up to 4 channels per pass; more are chunked


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: torch.Tensor | None = None,
    render_mode: str = "RGB",
    absgrad: bool = False,
    packed: bool = False,
    radius_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render N Gaussians into C pinhole cameras.

    means (N,3); quats (N,4) wxyz, any norm; scales (N,3) and opacities (N,) already activated;
    colors (N,D) / (C,N,D) values, or SH coefficients (N,K,3) when ``sh_degree`` is set, which may also
    be the pair (sh0 (N,1,3), shN (N,K-1,3)) that trainers keep: the CPU kernels read the two parts
    where they are, with no per-step concatenation (and gradient split). shN may also have N/G rows,
    each shared by G consecutive Gaussians (a decoder's Gaussians of one voxel): its gradient is then
    the sum over the group, as if it had been expanded;
    viewmats (C,4,4) world-to-camera (OpenCV axes); Ks (C,3,3); backgrounds (C,D).
    Returns colours (C,H,W,D or D+1 with depth), alphas (C,H,W,1) and gsplat's meta dict.
    ``packed=True`` gives meta in gsplat's packed layout (nnz rows plus camera_ids/gaussian_ids);
    pass the same flag to ``DefaultStrategy.step_post_backward``.
    On CPU, gradients reach means, quats, scales, opacities, colours/SH and backgrounds, not the
    cameras (viewmats/Ks are treated as constants); SH degrees 0-3; float32 or float64.
    Meta has no ``isect_ids`` (``flatten_ids``/``isect_offsets`` describe the tile lists). On CPU a splat is
    listed only in the tiles of its bounding box where some pixel can reach alpha >= 1/255 (the others
    would composite nothing; gsplat lists them all), and ``tiles_per_gauss`` counts those tiles.
    """
    if isinstance(colors, list):
        colors = tuple(colors)
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                  backgrounds, render_mode)
    if means.is_cuda:
        if isinstance(colors, tuple):
            sh0, shn = colors
            if shn.shape[0] != sh0.shape[0]:
                shn = shn.repeat_interleave(sh0.shape[0] // shn.shape[0], dim=0)
            colors = torch.cat([sh0, shn], dim=1)
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
            sh_degree=sh_degree, packed=packed, tile_size=TILE_SIZE, backgrounds=backgrounds,
            render_mode=render_mode, absgrad=absgrad,
        )
    if sh_degree is not None and sh_degree > 3:
        raise ValueError(f"sh_degree={sh_degree}: the CPU kernels support SH degrees 0 to 3")
    if means.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the CPU kernels take float32 or float64 tensors, got {means.dtype}")
    return _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
                          sh_degree, near_plane, far_plane, eps2d, backgrounds, render_mode, absgrad,
                          packed, radius_clip)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                  backgrounds, render_mode) -> None:
    sh_pair = isinstance(colors, tuple)
    if sh_pair and (sh_degree is None or len(colors) != 2):
        raise TypeError("colors as a pair must be (sh0, shN), two SH tensors, with sh_degree set")
    parts = {"sh0": colors[0], "shN": colors[1]} if sh_pair else {"colors": colors}
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities,
               **parts, "viewmats": viewmats, "Ks": Ks}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device} but means is on {means.device}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be (N, 3), got {tuple(means.shape)}")
    n = means.shape[0]
    if quats.shape != (n, 4):
        raise ValueError(f"quats must be ({n}, 4), got {tuple(quats.shape)}")
    if scales.shape != (n, 3):
        raise ValueError(f"scales must be ({n}, 3), got {tuple(scales.shape)}")
    if opacities.shape != (n,):
        raise ValueError(f"opacities must be ({n},), got {tuple(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4) or viewmats.shape[0] < 1:
        raise ValueError(f"viewmats must be (C, 4, 4) with C >= 1, got {tuple(viewmats.shape)}")
    c = viewmats.shape[0]
    if Ks.shape != (c, 3, 3):
        raise ValueError(f"Ks must be ({c}, 3, 3), got {tuple(Ks.shape)}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or int(v) != v or int(v) < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == n) and not (colors.dim() == 3 and colors.shape[:2] == (c, n)):
            raise ValueError(f"colors must be ({n}, D) or ({c}, {n}, D) without sh_degree, got {tuple(colors.shape)}")
        channels = colors.shape[-1]
    else:
        if isinstance(sh_degree, bool) or int(sh_degree) != sh_degree or sh_degree < 0:
            raise ValueError(f"sh_degree must be a non-negative integer or None, got {sh_degree!r}")
        for name, t in parts.items():
            if t.dim() != 3 or t.shape[2] != 3:
                raise ValueError(f"SH {name} must be ({n}, K, 3), got {tuple(t.shape)}")
            shared = name == "shN" and 0 < t.shape[0] < n and n % t.shape[0] == 0  # a row per n / rows Gaussians
            if t.shape[0] != n and not shared:
                raise ValueError(f"SH {name} must be ({n}, K, 3)" + (" or have a row per group of consecutive "
                                 "Gaussians (a divisor of N rows)" if name == "shN" else "") +
                                 f", got {tuple(t.shape)}")
        bases = sum(t.shape[1] for t in parts.values())
        if (sh_degree + 1) ** 2 > bases:
            raise ValueError(f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} SH bases, colors has {bases}")
        channels = 3
    if backgrounds is not None:
        want = 1 if render_mode in ("D", "ED") else channels
        if backgrounds.shape != (c, want) and not (render_mode in ("D", "ED") and backgrounds.shape == (c, channels)):
            raise ValueError(f"backgrounds must be ({c}, {want}), got {tuple(backgrounds.shape)}")
        if backgrounds.device != means.device:
            raise ValueError(f"backgrounds is on {backgrounds.device} but means is on {means.device}")


class _Project(torch.autograd.Function):
    """Means/quats/scales (+SH) -> per-camera 2D means, depths, conics (+view-dependent colours)."""

    @staticmethod
    def forward(ctx, means, quats, scales, sh, sh_rest, opacities, viewmats, Ks, campos, sh_degree, width, height,
                eps2d, near_plane, far_plane, radius_clip):
        ops = _ops()
        radii, means2d, depths, conics, colors = ops.project_forward(
            means, quats, scales, opacities, viewmats, Ks, campos, sh, sh_rest, sh_degree, width, height,
            eps2d, near_plane, far_plane, radius_clip)
        ctx.save_for_backward(means, quats, scales, sh, sh_rest, viewmats, Ks, campos, radii)
        ctx.settings = (sh_degree, width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        ctx.set_materialize_grads(False)  # outputs without a gradient arrive as None (depths usually)
        return radii, means2d, depths, conics, colors

    @staticmethod
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_colors):
        means, quats, scales, sh, sh_rest, viewmats, Ks, campos, radii = ctx.saved_tensors
        sh_degree, width, height, eps2d = ctx.settings

        v_means2d = v_means2d.contiguous() if v_means2d is not None else radii.new_zeros(radii.shape, dtype=means.dtype)
        v_depths = v_depths.contiguous() if v_depths is not None else means.new_zeros(0)  # empty: none
        v_conics = v_conics.contiguous() if v_conics is not None else means.new_zeros(radii.shape[:2] + (3,))
        if sh_degree >= 0:
            v_colors = v_colors.contiguous() if v_colors is not None else means.new_zeros(radii.shape[:2] + (3,))
        else:
            v_colors = means.new_zeros(0)
        v_means, v_quats, v_scales, v_sh, v_sh_rest = _ops().project_backward(
            means, quats, scales, viewmats, Ks, campos, sh, sh_rest, sh_degree, width, height, eps2d, radii,
            v_means2d, v_depths, v_conics, v_colors)
        has_sh, has_rest = sh_degree >= 0, sh_degree >= 0 and sh_rest.dim() == 3
        return (v_means, v_quats, v_scales, v_sh if has_sh else None, v_sh_rest if has_rest else None,
                None, None, None, None, None, None, None, None, None, None, None)


class _Rasterize(torch.autograd.Function):
    """Projected splats -> images; entries are (C, N, ...) unpacked or (nnz, ...) packed."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, image_ids,
                n_images, width, height, absgrad):
        bg = backgrounds.contiguous() if backgrounds is not None else colors.new_zeros(0)
        (render_colors, render_alphas, trans_final, last_ids, records, tile_offsets, tile_lists, flatten_ids,
         order, tiles_per_gauss, tile_cells) = _ops().rasterize_forward(
            means2d, conics, colors, opacities, radii, depths, image_ids, bg, n_images, width, height)
        ctx.save_for_backward(means2d, colors, records, bg, tile_offsets, tile_lists, tile_cells, order, trans_final,
                              last_ids)
        ctx.settings = (n_images, width, height, absgrad, backgrounds is not None)
        ctx.opacity_shape = opacities.shape
        # the tensor whose .absgrad the densification strategies read
        ctx.absgrad_target = means2d if absgrad else None
        ctx.mark_non_differentiable(tile_offsets, flatten_ids, tiles_per_gauss)
        return render_colors, render_alphas, tile_offsets, flatten_ids, tiles_per_gauss

    @staticmethod
    def backward(ctx, v_colors, v_alphas, *_unused):
        means2d, colors, records, bg, tile_offsets, tile_lists, tile_cells, order, trans_final, last_ids = (
            ctx.saved_tensors)
        n_images, width, height, absgrad, has_bg = ctx.settings
        if v_colors is None:
            v_colors = colors.new_zeros((n_images, height, width, colors.shape[-1]))
        if v_alphas is None:
            v_alphas = colors.new_zeros((n_images, height, width, 1))
        v_colors = v_colors.contiguous()
        v_means2d, v_conics, v_cols, v_opac, v_abs = _ops().rasterize_backward(
            means2d, colors, records, bg, tile_offsets, tile_lists, tile_cells, order, trans_final, last_ids,
            v_colors, v_alphas.contiguous(), n_images, width, height, absgrad)
        if absgrad:
            ctx.absgrad_target.absgrad = v_abs
        v_bg = None
        if has_bg and ctx.needs_input_grad[4]:
            v_bg = (v_colors * trans_final[..., None]).sum(dim=(1, 2))
        # the kernel shapes the opacity gradient like means2d's leading dims; opacities may be flat
        v_opac = v_opac.view(ctx.opacity_shape)
        return v_means2d, v_conics, v_cols, v_opac, v_bg, None, None, None, None, None, None, None


_NO_IDS = torch.zeros(0, dtype=torch.int32)


def _per_camera(x: torch.Tensor, c: int) -> torch.Tensor:
    """x repeated for c cameras as a leading dim; one camera is a view (its backward costs no sum)."""
    return x[None] if c == 1 else x.expand(c, *x.shape)


def _ops():
    from recon.kernels import load

    return load()


def _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                   near_plane, far_plane, eps2d, backgrounds, render_mode, absgrad, packed, radius_clip):
    dtype = means.dtype
    n, c = means.shape[0], viewmats.shape[0]
    viewmats = viewmats.detach().to(dtype).contiguous()
    Ks = Ks.detach().to(dtype).contiguous()
    quats, scales, opacities = quats.to(dtype), scales.to(dtype), opacities.to(dtype)
    sh_rest = means.new_zeros(0)
    if sh_degree is not None:
        if isinstance(colors, tuple):
            sh, sh_rest = (t.to(dtype).contiguous() for t in colors)
        else:
            sh = colors.to(dtype).contiguous()
        campos = torch.inverse(viewmats)[:, :3, 3].contiguous()
        degree = int(sh_degree)
    else:
        sh = means.new_zeros(0)
        campos = means.new_zeros((c, 3))
        degree = -1

    radii, means2d, depths, conics, sh_colors = _Project.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(), sh, sh_rest, opacities.detach().contiguous(),
        viewmats, Ks, campos, degree, width, height, float(eps2d), float(near_plane), float(far_plane),
        float(radius_clip))

    # one camera, unpacked: the kernels read entries flat, so (N, D) colours and (N,) opacities go
    # in as they are (no camera dim, whose backward would be a graph node more)
    flat = c == 1 and not packed
    if sh_degree is not None:
        point_colors = sh_colors  # (C, N, 3)
    elif colors.dim() == 2:
        point_colors = colors.to(dtype) if flat else _per_camera(colors.to(dtype), c)
    else:
        point_colors = colors.to(dtype)
    if render_mode in ("RGB+D", "RGB+ED"):
        point_colors = torch.cat([point_colors, depths.reshape(*point_colors.shape[:-1], 1)], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds.to(dtype), backgrounds.new_zeros((c, 1), dtype=dtype)], dim=-1)
    elif render_mode in ("D", "ED"):
        point_colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = means.new_zeros((c, 1))
    if backgrounds is not None:
        backgrounds = backgrounds.to(dtype)
    point_opacities = _per_camera(opacities, c)  # meta's (C, N)

    meta: dict[str, Any] = {"batch_ids": None, "camera_ids": None, "gaussian_ids": None}
    if packed:
        visible = (radii > 0).all(dim=-1)
        camera_ids, gaussian_ids = torch.nonzero(visible, as_tuple=True)
        radii, means2d, depths, conics = radii[visible], means2d[visible], depths[visible], conics[visible]
        point_colors, point_opacities = point_colors[visible], point_opacities[visible]
        image_ids = camera_ids.to(torch.int32)
        meta.update(camera_ids=camera_ids, gaussian_ids=gaussian_ids)
    else:
        image_ids = _NO_IDS  # the kernel reads (C, N) entries as image i // N
    meta.update(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=point_opacities)
    kernel_opacities = opacities if flat else point_opacities

    sort_depths = depths.detach().contiguous()
    if point_colors.shape[-1] <= _MAX_KERNEL_CHANNELS:  # one pass; split()'s backward would cost a cat
        chunks, bg_chunks = [point_colors], [backgrounds]
    else:
        chunks = point_colors.split(_MAX_KERNEL_CHANNELS, dim=-1)
        bg_chunks = (backgrounds.split(_MAX_KERNEL_CHANNELS, dim=-1) if backgrounds is not None
                     else [None] * len(chunks))
    outputs = []
    for chunk, bg_chunk in zip(chunks, bg_chunks):
        outputs.append(_Rasterize.apply(
            means2d, conics.contiguous(), chunk.contiguous(), kernel_opacities.contiguous(), bg_chunk, radii,
            sort_depths, image_ids, c, width, height, absgrad))
    render_colors = outputs[0][0] if len(outputs) == 1 else torch.cat([o[0] for o in outputs], dim=-1)
    render_alphas, tile_offsets, flatten_ids, tiles_per_gauss = outputs[0][1:]

    if render_mode in ("ED", "RGB+ED"):
        # accumulated depth -> expected depth
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)

    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    meta.update(
        tile_width=tiles_x, tile_height=tiles_y, tile_size=TILE_SIZE,
        tiles_per_gauss=tiles_per_gauss if packed else tiles_per_gauss.view(c, n),
        flatten_ids=flatten_ids, isect_offsets=tile_offsets[:-1].view(c, tiles_y, tiles_x),
        width=width, height=height, n_batches=1, n_cameras=c,
    )
    return render_colors, render_alphas, meta
