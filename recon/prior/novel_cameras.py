"""Novel cameras between and around the training cameras, for the prior to repair and distil.

Positions are interpolated on the sphere around the object centre between neighbouring training cameras
(neighbours in azimuth about the mean up direction; azimuth and elevation interpolated), elevation jittered, and their distance to the
centre interpolated from the two neighbours' (distance-aware, as GaussianObject), so novel renders show the
object at the scale the training views do. Every novel camera looks at the centre.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recon.data.cameras import Cameras


@dataclass
class NovelCameras:
    cameras: Cameras
    neighbours: torch.Tensor  # (M, 2) indices into the training cameras the view lies between
    t: torch.Tensor  # (M,) interpolation parameter along the arc from neighbours[:, 0] to neighbours[:, 1]
    angle_to_nearest: torch.Tensor  # (M,) radians between the view and the nearest training camera (about the centre)
    center: torch.Tensor  # (3,)


def axes_center(cameras: Cameras) -> torch.Tensor:
    """The point nearest to all optical axes (least squares); the origin when the axes are near-parallel."""
    o = cameras.centers.double()
    d = torch.nn.functional.normalize(cameras.forward.double(), dim=-1)
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye[None] - d[:, :, None] * d[:, None, :]
    a = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0)[:, 0]
    if len(cameras) < 2 or torch.linalg.cond(a) > 1e6:
        return torch.zeros(3, dtype=torch.float64)
    return torch.linalg.solve(a, b)


def look_at(position: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(M, 4, 4) OpenCV camera-to-world matrices (x right, y down, z forward) at `position` (M, 3)."""
    z = torch.nn.functional.normalize(target[None] - position, dim=-1)
    x = torch.linalg.cross(z, up[None].expand_as(z))
    degenerate = x.norm(dim=-1) < 1e-6  # looking straight along `up`: pick any right vector
    if degenerate.any():
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=position.dtype)
        x[degenerate] = torch.linalg.cross(z[degenerate], alt[None].expand_as(z[degenerate]))
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=position.dtype).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, position
    return c2w


def sample_novel_cameras(train: Cameras, n: int, center: torch.Tensor | None = None,
                         elevation_jitter_deg: float = 10.0, max_gap_deg: float = 150.0,
                         generator: torch.Generator | None = None) -> NovelCameras:
    """`n` cameras spread over the arcs between azimuth-neighbouring training cameras, in proportion to
    each arc's angle (arcs wider than max_gap_deg, e.g. behind a frontal capture, are skipped)."""
    if len(train) < 2:
        raise ValueError("novel cameras are interpolated between training cameras: at least 2 are needed")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    c2w = train.camtoworlds.double()
    center = axes_center(train) if center is None else center.double()
    offsets = c2w[:, :3, 3] - center[None]
    radii = offsets.norm(dim=-1)
    if (radii < 1e-9).any():
        raise ValueError("a training camera sits at the object centre")
    dirs = offsets / radii[:, None]
    up = torch.nn.functional.normalize(-c2w[:, :3, 1].sum(0), dim=0)  # OpenCV y points down
    # Azimuths in the plane orthogonal to up.
    e1 = dirs.mean(0) - up * (dirs.mean(0) @ up)
    if e1.norm() < 1e-6:
        e1 = dirs[0] - up * (dirs[0] @ up)
    e1 = torch.nn.functional.normalize(e1, dim=0)
    e2 = torch.linalg.cross(up, e1)
    az = torch.atan2(dirs @ e2, dirs @ e1)
    elev = torch.asin(torch.clamp(dirs @ up, -1.0, 1.0))
    order = torch.argsort(az).tolist()
    def signed_gap(a: int, b: int, around: bool) -> float:
        """Azimuth step from a to b: counter-clockwise round the ring, or the short way."""
        g = float((az[b] - az[a]) % (2 * math.pi))
        return g - 2 * math.pi if (not around and g > math.pi) else g

    def angle(a: int, b: int) -> float:
        return float(torch.arccos(torch.clamp(dirs[a] @ dirs[b], -1.0, 1.0)))

    m = len(order)
    arcs = []  # (a, b, angle between the two directions, signed azimuth step)
    ring = [(order[k], order[(k + 1) % m]) for k in range(m)] if m > 2 else [(order[0], order[1])]
    for a, b in ring:
        gap = signed_gap(a, b, around=m > 2)
        if math.degrees(abs(gap)) <= max_gap_deg and angle(a, b) > 1e-4:
            arcs.append((a, b, angle(a, b), gap))
    if not arcs:  # every gap is too wide: fall back to the closest pair, the short way
        a, b = min(((a, b) for a in range(m) for b in range(a + 1, m)), key=lambda p: angle(*p))
        arcs = [(a, b, angle(a, b), signed_gap(a, b, around=False))]
    # Distribute n samples over the arcs in proportion to their angles (largest remainders).
    total = sum(arc[2] for arc in arcs)
    quota = [n * arc[2] / total for arc in arcs]
    counts = [int(q) for q in quota]
    for k in sorted(range(len(arcs)), key=lambda k: counts[k] - quota[k])[: n - sum(counts)]:
        counts[k] += 1

    positions, neighbours, ts, Ks = [], [], [], []
    jitter = math.radians(elevation_jitter_deg)
    for (a, b, _, gap), cnt in zip(arcs, counts):
        for j in range(cnt):
            # Stratified along the arc, never on a training camera itself.
            t = (j + 0.25 + 0.5 * float(torch.rand((), generator=generator))) / cnt
            # Azimuth and elevation about `up` are interpolated separately: the path follows the capture
            # ring instead of a great circle that would bulge towards the pole.
            phi = float(az[a]) + t * gap
            theta = (1 - t) * float(elev[a]) + t * float(elev[b])
            if jitter > 0:
                theta += (float(torch.rand((), generator=generator)) * 2 - 1) * jitter
            theta = min(max(theta, -math.radians(85.0)), math.radians(85.0))
            d = math.cos(theta) * (math.cos(phi) * e1 + math.sin(phi) * e2) + math.sin(theta) * up
            r = (1 - t) * radii[a] + t * radii[b]
            positions.append(center + r * d)
            neighbours.append((a, b))
            ts.append(t)
            Ks.append(train.Ks[a] if t < 0.5 else train.Ks[b])
    if not positions:
        empty = Cameras(torch.zeros(0, 4, 4, dtype=train.camtoworlds.dtype), train.Ks[:0].clone(),
                        train.width, train.height)
        return NovelCameras(empty, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0), torch.zeros(0),
                            center.to(train.camtoworlds.dtype))
    pos = torch.stack(positions)
    new_c2w = look_at(pos, center, up)
    new_dirs = torch.nn.functional.normalize(pos - center[None], dim=-1)
    nearest = torch.arccos(torch.clamp(new_dirs @ dirs.T, -1.0, 1.0)).min(dim=1).values
    cams = Cameras(new_c2w.to(train.camtoworlds.dtype), torch.stack(Ks).clone(), train.width, train.height)
    return NovelCameras(cams, torch.tensor(neighbours, dtype=torch.long), torch.tensor(ts),
                        nearest.float(), center.to(train.camtoworlds.dtype))
