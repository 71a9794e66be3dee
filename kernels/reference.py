"""Dense pure-PyTorch reference of the CPU rasterizer, for tests only.

Every pixel meets every Gaussian (memory O(C * H * W * N)), so keep scenes tiny. The camera
projection reuses gsplat's own PyTorch pieces (``gsplat.cuda._torch_impl``), which makes it an
independent check of the C++ projection; culling, opacity-aware radii, tile membership and the
compositing rules follow gsplat's CUDA kernels. Gradients come from autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import (
    _eval_sh_bases_fast,
    _persp_proj,
    _quat_scale_to_covar_preci,
    _world_to_cam,
)

# gsplat's kernels use these as float32 constants; the same values keep float64 runs comparable
ALPHA_THRESHOLD = float(torch.tensor(1.0 / 255.0, dtype=torch.float32))
ALPHA_MAX = float(torch.tensor(0.999, dtype=torch.float32))
TRANSMITTANCE_MIN = float(torch.tensor(1e-4, dtype=torch.float32))
TILE = 16


def project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
            far_plane=1e10, radius_clip=0.0):
    """-> radii (C,N,2) int32, means2d (C,N,2), depths (C,N), conics (C,N,3); zeros where culled."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    z = means_c[..., 2]
    z_ok = (z >= near_plane) & (z <= far_plane)
    # keep culled points finite so masked gradients stay zero, not NaN
    safe_means_c = torch.where(z_ok[..., None], means_c, torch.ones_like(means_c))
    means2d, cov2d = _persp_proj(safe_means_c, covars_c, Ks, width, height)
    cov2d = cov2d + torch.eye(2, dtype=means.dtype) * eps2d
    c00, c11 = cov2d[..., 0, 0], cov2d[..., 1, 1]
    c01 = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = c00 * c11 - c01 * c01
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)

    with torch.no_grad():
        op = opacities.detach()[None].expand_as(z)
        op_ok = op >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        rx = torch.ceil(extend * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c11.detach().clamp_min(0)))
        m2 = means2d.detach()
        inside = (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        valid = z_ok & det_ok & op_ok & ~((rx <= radius_clip) & (ry <= radius_clip)) & inside
        radii = torch.where(valid[..., None], torch.stack([rx, ry], dim=-1), torch.zeros_like(m2)).to(torch.int32)

    zero = torch.zeros((), dtype=means.dtype)
    means2d = torch.where(valid[..., None], means2d, zero)
    depths = torch.where(valid, z, zero)
    conics = torch.where(valid[..., None], conics, zero)
    return radii, means2d, depths, conics


def sh_colors(sh_degree, means, sh, viewmats, radii=None):
    """View-dependent colours (C,N,3): SH at (mean - camera centre), + 0.5, clamped at 0."""
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = F.normalize(means[None] - campos[:, None], dim=-1)
    n_bases = (sh_degree + 1) ** 2
    bases = _eval_sh_bases_fast(n_bases, dirs)  # (C,N,n_bases)
    colors = (bases[..., None] * sh[None, :, :n_bases]).sum(dim=-2)
    return torch.clamp_min(colors + 0.5, 0.0)


def tile_rects(means2d, radii, width, height):
    """gsplat's tile range per splat: [x0, x1) x [y0, y1) in tile units."""
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    t = means2d.detach() / TILE
    r = radii.to(means2d.dtype) / TILE
    x0 = torch.floor(t[..., 0] - r[..., 0]).clamp(0, tiles_x)
    y0 = torch.floor(t[..., 1] - r[..., 1]).clamp(0, tiles_y)
    x1 = torch.ceil(t[..., 0] + r[..., 0]).clamp(0, tiles_x)
    y1 = torch.ceil(t[..., 1] + r[..., 1]).clamp(0, tiles_y)
    return x0, y0, x1, y1


def composite(means2d, conics, colors, opacities, radii, depths, width, height, backgrounds=None):
    """Dense front-to-back compositing of (C,N) splats.

    -> colours (C,H,W,D), alphas (C,H,W,1), and the per-pixel view of means2d (C,P,N,2), whose
    retained gradient gives the per-pixel contributions behind ``absgrad``.
    """
    n_cams, n = depths.shape
    dtype = means2d.dtype
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).to(dtype) + 0.5  # (P,2)
    pix_tile = torch.div(pix - 0.5, TILE, rounding_mode="floor")
    x0, y0, x1, y1 = tile_rects(means2d, radii, width, height)
    renders, alphas, per_pixel = [], [], []
    for c in range(n_cams):
        order = torch.sort(depths[c].detach(), stable=True).indices
        m2 = means2d[c][order][None].expand(pix.shape[0], n, 2)  # (P,N,2)
        if m2.requires_grad:
            m2.retain_grad()
        per_pixel.append((m2, order))
        con = conics[c][order]
        op = opacities[c][order] if opacities.dim() == 2 else opacities[order]
        col = colors[c][order]
        with torch.no_grad():
            vis = (radii[c][order] > 0).all(dim=-1)
            in_tile = ((pix_tile[:, None, 0] >= x0[c][order]) & (pix_tile[:, None, 0] < x1[c][order])
                       & (pix_tile[:, None, 1] >= y0[c][order]) & (pix_tile[:, None, 1] < y1[c][order]))
        d = m2 - pix[:, None, :]
        sigma = 0.5 * (con[:, 0] * d[..., 0] ** 2 + con[:, 2] * d[..., 1] ** 2) + con[:, 1] * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(op * torch.exp(-sigma), ALPHA_MAX)
        with torch.no_grad():
            ok = vis & in_tile & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        a_eff = torch.where(ok, alpha, torch.zeros((), dtype=dtype))
        with torch.no_grad():
            # the splat that would take T to 1e-4 and everything behind it are dropped
            keep = torch.cumprod(1.0 - a_eff, dim=1) > TRANSMITTANCE_MIN
        a_fin = torch.where(keep, a_eff, torch.zeros((), dtype=dtype))
        trans = torch.cumprod(1.0 - a_fin, dim=1)
        t_before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
        weights = a_fin * t_before
        t_final = trans[:, -1] if n > 0 else torch.ones(pix.shape[0], dtype=dtype)
        img = (weights[..., None] * col[None]).sum(dim=1)
        if backgrounds is not None:
            img = img + t_final[:, None] * backgrounds[c]
        renders.append(img.reshape(height, width, -1))
        alphas.append((1.0 - t_final).reshape(height, width, 1))
    return torch.stack(renders), torch.stack(alphas), per_pixel


def rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, sh_degree=None,
              near_plane=0.01, far_plane=1e10, eps2d=0.3, backgrounds=None, render_mode="RGB",
              radius_clip=0.0):
    """Same contract as ``recon.render.rasterize`` (unpacked meta) for small CPU scenes."""
    n_cams, n = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics = project(means, quats, scales, opacities, viewmats, Ks, width, height,
                                             eps2d, near_plane, far_plane, radius_clip)
    if sh_degree is not None:
        point_colors = sh_colors(sh_degree, means, colors, viewmats)
    elif colors.dim() == 2:
        point_colors = colors.expand(n_cams, n, colors.shape[-1])
    else:
        point_colors = colors
    if render_mode in ("RGB+D", "RGB+ED"):
        point_colors = torch.cat([point_colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        point_colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = torch.zeros_like(backgrounds[:, :1])
    render_colors, render_alphas, per_pixel = composite(
        means2d, conics, point_colors, opacities, radii, depths, width, height, backgrounds)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)
    meta = {"radii": radii, "means2d": means2d, "depths": depths, "conics": conics,
            "per_pixel_means2d": per_pixel, "width": width, "height": height, "n_cameras": n_cams}
    return render_colors, render_alphas, meta


def absgrad_from_meta(meta) -> torch.Tensor:
    """Sum over pixels of |dL/d means2d| per (camera, Gaussian), after ``loss.backward()``."""
    out = torch.zeros_like(meta["means2d"])
    for c, (m2, order) in enumerate(meta["per_pixel_means2d"]):
        if m2.grad is not None:
            out[c, order] = m2.grad.abs().sum(dim=0)
    return out
