"""Drawing cells into views: the pixels under each cell (as a disk, or as the exact image of its cube),
coverage masks and depth buffers."""
from __future__ import annotations

import math

import torch

CULL_REACH = 3  # cubes up to this many pixels across (half) can be skipped once their window is covered
MAX_RADIUS_PX = 16.0  # a cell this close to a camera is drawn at this radius (only coarse previews get there)


def splat_pixels(uv: torch.Tensor, radius: torch.Tensor, width: int, height: int,
                 valid: torch.Tensor | None = None, chunk: int = 1 << 20):
    """Pixels whose centres lie within `radius` of each projected point, plus the pixel holding the point.

    uv (N, P, 2), radius (N, P). Yields (flat pixel index over N*H*W, point index) pairs in chunks,
    so callers can reduce them without holding everything at once."""
    n, p = uv.shape[:2]
    radius = radius.clamp(0.0, MAX_RADIUS_PX)
    if valid is None:
        valid = torch.ones(n, p, dtype=torch.bool)
    valid = valid & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    view_i, point_i = torch.nonzero(valid, as_tuple=True)
    if len(view_i) == 0:
        return
    u = uv[view_i, point_i, 0]
    v = uv[view_i, point_i, 1]
    r = radius[view_i, point_i]
    w = int(math.ceil(float(r.max()))) if len(r) else 0
    d = torch.arange(-w, w + 1)
    oy, ox = torch.meshgrid(d, d, indexing="ij")
    ox, oy = ox.reshape(-1), oy.reshape(-1)
    step = max(1, chunk // len(ox))
    for s in range(0, len(u), step):
        uc, vc, rc = u[s:s + step], v[s:s + step], r[s:s + step]
        px = uc.floor().to(torch.int64)[:, None] + ox[None]
        py = vc.floor().to(torch.int64)[:, None] + oy[None]
        dx = px.to(uc.dtype) + 0.5 - uc[:, None]
        dy = py.to(vc.dtype) + 0.5 - vc[:, None]
        inside = (dx * dx + dy * dy <= (rc * rc)[:, None]) | ((ox == 0) & (oy == 0))[None]
        inside &= (px >= 0) & (px < width) & (py >= 0) & (py < height)
        rows, cols = torch.nonzero(inside, as_tuple=True)
        flat = (view_i[s:s + step][rows] * height + py[rows, cols]) * width + px[rows, cols]
        yield flat, point_i[s:s + step][rows]


def cube_pixels(views, centers: torch.Tensor, size: float, chunk: int = 1 << 20,
                pairs: torch.Tensor | None = None):
    """Pixels whose centres fall inside the image of each axis-aligned cube (edge `size`, at `centers`
    (P, 3)) in each of `views` (a TrainViews), plus the pixel holding the projected centre.

    The image of a small cube is the hexagon spanned by the images of its three edges (a zonotope),
    exact up to the perspective change across one cube. Yields (flat pixel index over N*H*W, cube index)
    pairs in chunks, for the (view, cube) pairs where `pairs` (N, P) is true (default all). The first item
    yielded is the projection of the centres."""
    proj = views.project(centers)
    yield proj
    n, p = proj.z.shape
    front = proj.z > 1e-3
    uv = proj.uv
    if pairs is not None:
        front = front & pairs
    visible = front & (uv[..., 0] >= 0) & (uv[..., 0] < views.width) & (uv[..., 1] >= 0) & (uv[..., 1] < views.height)
    view_i, point_i = torch.nonzero(visible, as_tuple=True)
    if len(view_i) == 0:
        return
    u, v = uv[view_i, point_i, 0], uv[view_i, point_i, 1]
    z = proj.z[view_i, point_i]
    fx, fy, cx, cy = views.fx[view_i], views.fy[view_i], views.cx[view_i], views.cy[view_i]
    x, y = (u - cx) / fx, (v - cy) / fy
    R = views.R[view_i]  # (M, 3, 3): rows are camera axes in world coordinates
    s = size / z
    # images of the three world-axis edges, (M, 3 axes, 2)
    ax = (s * fx)[:, None] * (R[:, 0, :] - x[:, None] * R[:, 2, :])
    ay = (s * fy)[:, None] * (R[:, 1, :] - y[:, None] * R[:, 2, :])
    edges = torch.stack([ax, ay], -1)
    normals = torch.stack([-ay, ax], -1)  # normal k is perpendicular to edge k
    # support of the hexagon along normal k: half the sum of |normal_k . edge_i| over i (edge k gives 0)
    dots = torch.einsum("mkc,mic->mki", normals, edges).abs()
    support = 0.5 * dots.sum(-1)  # (M, 3)
    half_w = 0.5 * edges.abs().sum(1).amax(-1)  # (M,) half extent in x or y
    # windows sized per cube: a few near cubes must not make every cube test a big window
    wins = half_w.clamp(max=MAX_RADIUS_PX).ceil().to(torch.int64)
    for w in torch.unique(wins).tolist():
        sel = torch.nonzero(wins == w, as_tuple=True)[0]
        d = torch.arange(-w, w + 1)
        oy, ox = torch.meshgrid(d, d, indexing="ij")
        ox, oy = ox.reshape(-1), oy.reshape(-1)
        step = max(1, chunk // len(ox))
        for s0 in range(0, len(sel), step):
            sl = sel[s0:s0 + step]
            uc, vc = u[sl], v[sl]
            px = uc.floor().to(torch.int64)[:, None] + ox[None]
            py = vc.floor().to(torch.int64)[:, None] + oy[None]
            dx = px.to(uc.dtype) + 0.5 - uc[:, None]
            dy = py.to(vc.dtype) + 0.5 - vc[:, None]
            nk = normals[sl]
            proj_k = (nk[:, None, :, 0] * dx[..., None] + nk[:, None, :, 1] * dy[..., None]).abs()  # (m, win, 3)
            inside = (proj_k <= support[sl][:, None, :] + 1e-6).all(-1) | ((ox == 0) & (oy == 0))[None]
            inside &= (px >= 0) & (px < views.width) & (py >= 0) & (py < views.height)
            rows, cols = torch.nonzero(inside, as_tuple=True)
            flat = (view_i[sl][rows] * views.height + py[rows, cols]) * views.width + px[rows, cols]
            yield flat, point_i[sl][rows]


def cube_coverage(views, centers: torch.Tensor, size: float, rounds: int = 6) -> torch.Tensor:
    """(N, H, W) bool: pixels covered by the images of the cubes.

    Cubes are drawn in rounds (a fixed shuffle); after each round, a cube whose whole window around its
    centre pixel is already covered adds nothing and is skipped, so the inside of a silhouette is not
    drawn over and over."""
    n, hw = views.n, views.height * views.width
    out = torch.zeros(n * hw, dtype=torch.bool)
    p = centers.shape[0]
    if p == 0:
        return out.view(n, views.height, views.width)
    proj = views.project(centers)
    u = proj.uv[..., 0].floor().clamp(0, views.width - 1).to(torch.int64)
    v = proj.uv[..., 1].floor().clamp(0, views.height - 1).to(torch.int64)
    centre_pix = v * views.width + u  # (N, P)
    # the window each cube needs: its image's half extent (at most the bounding-sphere radius)
    reach = torch.ceil(views.f[:, None] * size * 0.87 / proj.z.clamp_min(1e-3)).clamp(1, MAX_RADIUS_PX).to(torch.int64)
    order = torch.randperm(p, generator=torch.Generator().manual_seed(0))
    for part in torch.chunk(order, max(1, min(rounds, p))):
        pairs = torch.zeros(n, p, dtype=torch.bool)
        pairs[:, part] = True
        if out.any():
            full = out.view(n, views.height, views.width)
            for w in range(1, CULL_REACH + 1):
                full = _erode(full)  # true where the whole (2w+1)^2 window is covered
                done = full.reshape(n, hw).gather(1, centre_pix) & (reach == w)
                pairs &= ~done
        it = cube_pixels(views, centers, size, pairs=pairs)
        next(it)
        for flat, _ in it:
            out[flat] = True
    return out.view(n, views.height, views.width)


def _erode(img: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: true where the 3x3 neighbourhood is all true (false on the border)."""
    out = torch.zeros_like(img)
    row = img[:, :, :-2] & img[:, :, 1:-1] & img[:, :, 2:]
    out[:, 1:-1, 1:-1] = row[:, :-2] & row[:, 1:-1] & row[:, 2:]
    return out


def cube_depth_buffer(views, centers: torch.Tensor, size: float) -> torch.Tensor:
    """(N, H, W) nearest depth (of the cube centres) over the pixels each cube's image covers; inf elsewhere."""
    out = torch.full((views.n * views.height * views.width,), math.inf)
    it = cube_pixels(views, centers, size)
    proj = next(it)
    p = centers.shape[0]
    flat_z = proj.z.reshape(-1)
    hw = views.height * views.width
    for flat, pi in it:
        vi = torch.div(flat, hw, rounding_mode="floor")
        out.scatter_reduce_(0, flat, flat_z[vi * p + pi], reduce="amin")
    return out.view(views.n, views.height, views.width)
