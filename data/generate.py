"""Procedural sample scene: a lumpy, tilted torus with a multi-colour 3D texture, ray cast with open3d.

Writes the layout of ../shared/data (images/*.png RGBA, transforms.json, split.json) plus mesh.ply, the
ground-truth mesh in the same world frame. Same arguments, same bytes: everything derives from the seed,
camera matrices are rounded before use, hit points are recomputed in float64 from the triangle ids that
Embree reports (so float32 ray-casting noise does not reach the pixels), PNGs use fixed compression.

Regenerate the committed sample with:  recon make-sample data/sample   (the defaults below)
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

DEFAULT_SEED = 0
DEFAULT_N_VIEWS = 32
DEFAULT_SIZE = 200
SUPERSAMPLE = 2  # rays per pixel side; alpha is the covered fraction

CAMERA_RADIUS = 3.6
FOV_DEG = 38.0
POSE_DECIMALS = 9  # poses are rounded, then used as rounded: the JSON is the exact truth


# ----------------------------------------------------------------------------------------------- geometry

def _lumpy_torus(rng: np.random.Generator, n_major: int = 96, n_minor: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Closed genus-1 surface: a torus whose tube radius and ring radius wobble with seeded harmonics."""
    u = np.arange(n_major) * (2 * np.pi / n_major)  # around the ring
    v = np.arange(n_minor) * (2 * np.pi / n_minor)  # around the tube
    uu, vv = np.meshgrid(u, v, indexing="ij")
    ring = 0.62 * np.ones_like(uu)
    tube = 0.33 * np.ones_like(uu)
    for k in range(1, 4):  # low-order wobble: no symmetry left for SfM to confuse
        a, b = rng.uniform(-1, 1, 2)
        ring += 0.05 / k * (a * np.cos(k * uu) + b * np.sin(k * uu))
    for _ in range(6):  # lumps on the tube
        ku, kv = rng.integers(1, 5), rng.integers(0, 3)
        phase = rng.uniform(0, 2 * np.pi, 2)
        tube += 0.035 * np.cos(ku * uu + phase[0]) * np.cos(kv * vv + phase[1])
    lift = 0.12 * np.sin(2 * uu + rng.uniform(0, 2 * np.pi))  # saddle-like bend out of the plane
    x = (ring + tube * np.cos(vv)) * np.cos(uu)
    y = (ring + tube * np.cos(vv)) * np.sin(uu)
    z = tube * np.sin(vv) + lift
    verts = np.stack([x, y, z], -1).reshape(-1, 3)

    i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
    a = i * n_minor + j
    b = ((i + 1) % n_major) * n_minor + j
    c = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
    d = i * n_minor + (j + 1) % n_minor
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces.astype(np.int32)


def _rotation_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def make_mesh(seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float32 and faces (F, 3) int32 of the ground-truth object, world z up, centred near 0."""
    rng = np.random.default_rng([seed, 1])
    verts, faces = _lumpy_torus(rng)
    # Tilt the ring so cameras at moderate elevations look through the hole from some sides.
    R = _rotation_xyz(np.deg2rad(35.0) + rng.uniform(-0.1, 0.1), rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * np.pi))
    verts = verts @ R.T
    return verts.astype(np.float32), faces


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = verts.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])  # area-weighted
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ texture

class Texture:
    """Multi-colour 3D texture: Voronoi cells with dark borders, modulated by seeded stripes and blotches."""

    def __init__(self, seed: int, n_cells: int = 600, n_spots: int = 12000):
        rng = np.random.default_rng([seed, 2])
        self.sites = rng.uniform(-1.2, 1.2, (n_cells, 3))
        hue = rng.uniform(0, 1, n_cells)
        sat = rng.uniform(0.5, 1.0, n_cells)
        val = rng.uniform(0.6, 1.0, n_cells)
        self.cell_rgb = _hsv_to_rgb(hue, sat, val)
        self.stripe_dirs = _unit(rng.normal(size=(3, 3)))
        self.stripe_freq = rng.uniform(18.0, 30.0, 3)
        self.stripe_phase = rng.uniform(0, 2 * np.pi, 3)
        self.blotch_dirs = _unit(rng.normal(size=(4, 3)))
        self.blotch_freq = rng.uniform(4.0, 8.0, 4)
        self.blotch_phase = rng.uniform(0, 2 * np.pi, 4)
        self.blotch_rgb = rng.uniform(0.0, 1.0, (4, 3))
        self.spots = rng.uniform(-1.2, 1.2, (n_spots, 3))
        self.spot_rgb = _hsv_to_rgb(rng.uniform(0, 1, n_spots), rng.uniform(0.3, 1.0, n_spots),
                                    rng.choice([0.1, 1.0], n_spots))
        self.spot_radius = rng.uniform(0.025, 0.05, n_spots)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Albedo in [0, 1] at world points p (N, 3) float64."""
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(self.sites).query(p, k=2)
        rgb = self.cell_rgb[idx[:, 0]]
        border = np.clip((dist[:, 1] - dist[:, 0]) / 0.02, 0.0, 1.0)[:, None]  # 0 on a cell border
        stripes = np.sin(p @ self.stripe_dirs.T * self.stripe_freq + self.stripe_phase)  # (N, 3)
        stripe = 0.78 + 0.22 * np.sign(stripes[:, 0]) * np.abs(stripes[:, 0]) ** 0.3
        blotch = 0.5 + 0.5 * np.sin(p @ self.blotch_dirs.T * self.blotch_freq + self.blotch_phase)  # (N, 4)
        tint = blotch @ self.blotch_rgb / 2.0
        rgb = 0.75 * rgb + 0.25 * np.clip(tint, 0, 1)
        dots = (stripes[:, 1] * stripes[:, 2] > 0.7)[:, None]  # small dark checks: extra corners for SIFT
        rgb = rgb * stripe[:, None] * np.where(dots, 0.35, 1.0)
        rgb = rgb * (0.15 + 0.85 * border)
        # Round spots (dark or bright, own colour): blob-shaped features at the scale SIFT detects best.
        sdist, sidx = cKDTree(self.spots).query(p)
        inside = np.clip((self.spot_radius[sidx] - sdist) / 0.006 + 0.5, 0.0, 1.0)[:, None]
        rgb = rgb * (1 - inside) + self.spot_rgb[sidx] * inside
        return np.clip(rgb, 0.0, 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ cameras

def look_at_opengl(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world, OpenGL axes (x right, y up, looking down -z)."""
    back = _unit(eye - target)
    right = _unit(np.cross(np.asarray(up, float), back))
    true_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def make_cameras(n_views: int, seed: int) -> np.ndarray:
    """(n, 4, 4) OpenGL camera-to-world: one turn in azimuth, elevation waving between about -8 and 48 deg."""
    rng = np.random.default_rng([seed, 3])
    i = np.arange(n_views)
    azim = 2 * np.pi * i / n_views + rng.uniform(-0.08, 0.08, n_views)
    elev = np.deg2rad(20.0 + 25.0 * np.sin(2 * 2 * np.pi * i / n_views + 0.4) + rng.uniform(-3, 3, n_views))
    radius = CAMERA_RADIUS * (1.0 + rng.uniform(-0.05, 0.05, n_views))
    eyes = radius[:, None] * np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], -1)
    c2w = np.stack([look_at_opengl(e, np.zeros(3)) for e in eyes])
    return np.round(c2w, POSE_DECIMALS)


def focal_for(size: int) -> float:
    return round(0.5 * size / np.tan(np.deg2rad(FOV_DEG) / 2), 6)


# ---------------------------------------------------------------------------------------------- rendering

def render_view(scene, verts, faces, normals, texture, c2w_gl, focal, size) -> np.ndarray:
    """RGBA uint8 (size, size, 4): straight colour, alpha = covered fraction of the supersamples."""
    import open3d as o3d

    s = SUPERSAMPLE
    n = size * s
    # Sample centres in continuous pixel coordinates: pixel (0,0) spans [0,1)^2, centre (0.5, 0.5).
    coords = (np.arange(n) + 0.5) / s
    u, v = np.meshgrid(coords, coords, indexing="xy")
    c = size / 2.0
    d_cam = np.stack([(u - c) / focal, -(v - c) / focal, -np.ones_like(u)], -1).reshape(-1, 3)  # OpenGL axes
    d_world = d_cam @ c2w_gl[:3, :3].T
    origin = c2w_gl[:3, 3]
    rays = np.concatenate([np.broadcast_to(origin, d_world.shape), d_world], 1).astype(np.float32)
    hits = scene.cast_rays(o3d.core.Tensor(rays))
    prim = hits["primitive_ids"].numpy().astype(np.int64)
    hit = prim != scene.INVALID_ID

    rgb = np.zeros((n * n, 3))
    if hit.any():
        tri = faces[prim[hit]]
        p, bary = _intersect_planes(origin, d_world[hit], verts.astype(np.float64), tri)
        nrm = _unit(np.einsum("nk,nkd->nd", bary, normals[tri]))
        nrm *= np.where(np.sum(nrm * d_world[hit], 1) > 0, -1.0, 1.0)[:, None]  # face the camera
        light = _unit(np.array([0.35, -0.45, 0.82]))  # fixed in the world: shading agrees across views
        shade = 0.5 + 0.6 * np.clip(nrm @ light, 0.0, 1.0)
        rgb[hit] = texture(p) * shade[:, None]

    hit_img = hit.reshape(size, s, size, s).astype(np.float64)
    cover = hit_img.sum((1, 3))
    rgb_sum = (rgb.reshape(size, s, size, s, 3) * hit_img[..., None]).sum((1, 3))
    rgb_mean = rgb_sum / np.maximum(cover, 1.0)[..., None]
    alpha = cover / (s * s)
    out = np.concatenate([rgb_mean, alpha[..., None]], -1)
    return np.floor(out * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _intersect_planes(origin, dirs, verts, tri):
    """Exact float64 ray / triangle-plane hits for the triangles Embree chose; barycentrics clipped to the triangle."""
    a, b, c = verts[tri[:, 0]], verts[tri[:, 1]], verts[tri[:, 2]]
    e1, e2 = b - a, c - a
    pvec = np.cross(dirs, e2)
    det = np.sum(e1 * pvec, 1)
    tvec = origin - a
    bu = np.sum(tvec * pvec, 1) / det
    qvec = np.cross(tvec, e1)
    bv = np.sum(dirs * qvec, 1) / det
    t = np.sum(e2 * qvec, 1) / det
    p = origin + t[:, None] * dirs
    bary = np.clip(np.stack([1.0 - bu - bv, bu, bv], 1), 0.0, 1.0)
    return p, bary / bary.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------------- splits

def farthest_views(dirs: np.ndarray, candidates: list[int], k: int) -> list[int]:
    """Farthest-point sampling of unit viewing directions; starts from the view closest to the mean direction."""
    d = dirs[candidates]
    mean = d.mean(0)
    first = int(np.argmax(d @ _unit(mean))) if np.linalg.norm(mean) > 1e-9 else 0
    chosen = [first]
    min_angle = np.arccos(np.clip(d @ d[first], -1, 1))
    for _ in range(k - 1):
        nxt = int(np.argmax(min_angle))
        chosen.append(nxt)
        min_angle = np.minimum(min_angle, np.arccos(np.clip(d @ d[nxt], -1, 1)))
    return [candidates[i] for i in chosen]


# ----------------------------------------------------------------------------------------------- writing

def png_bytes(rgba: np.ndarray) -> bytes:
    """Minimal deterministic RGBA8 PNG (no timestamps, fixed zlib level and filter)."""
    h, w, _ = rgba.shape
    raw = b"".join(b"\x00" + rgba[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 6, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def ply_bytes(verts: np.ndarray, faces: np.ndarray) -> bytes:
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment recon sample ground-truth mesh\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    face_rec = np.zeros(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rec["n"] = 3
    face_rec["idx"] = faces
    return header + verts.astype("<f4").tobytes() + face_rec.tobytes()


def make_sample(out: str | Path, seed: int = DEFAULT_SEED, n_views: int = DEFAULT_N_VIEWS,
                size: int = DEFAULT_SIZE, views: list[int] | None = None) -> Path:
    """Render the sample scene into `out`. `views` renders only those frame indices (the JSON files are
    always complete), which lets tests check a few images cheaply."""
    import open3d as o3d

    from recon.errors import ReconError
    from recon.io_utils import atomic_write_bytes, atomic_write_json

    if n_views < 9:
        raise ReconError(f"make-sample needs at least 9 views (got {n_views})", fix="pass --n-views 9 or more")
    if size < 32:
        raise ReconError(f"make-sample needs images of at least 32 px (got {size})", fix="pass --size 32 or more")
    out = Path(out)
    verts, faces = make_mesh(seed)
    normals = vertex_normals(verts, faces)
    texture = Texture(seed)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(faces.astype(np.uint32)))

    c2ws = make_cameras(n_views, seed)
    focal = focal_for(size)
    names = [f"images/r_{i:03d}.png" for i in range(n_views)]
    for i in range(n_views) if views is None else sorted(set(views)):
        rgba = render_view(scene, verts, faces, normals, texture, c2ws[i], focal, size)
        atomic_write_bytes(out / names[i], png_bytes(rgba))
    atomic_write_bytes(out / "mesh.ply", ply_bytes(verts, faces))

    angle = 2 * float(np.arctan(0.5 * size / focal))
    atomic_write_json(out / "transforms.json", {
        "camera_model": "PINHOLE",
        "fl_x": focal, "fl_y": focal, "cx": size / 2.0, "cy": size / 2.0, "w": size, "h": size,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "camera_angle_x": round(angle, 9), "camera_angle_y": round(angle, 9),
        "scene": "sample",
        "pose_convention": "camera-to-world, OpenGL camera axes (x right, y up, -z forward)",
        "generator": {"command": f"recon make-sample OUT --seed {seed} --n-views {n_views} --size {size}",
                      "seed": seed, "n_views": n_views, "size": size},
        "frames": [{"file_path": names[i], "transform_matrix": c2ws[i].tolist()} for i in range(n_views)],
    })

    test = list(range(0, n_views, 8))
    train = [i for i in range(n_views) if i not in test]
    view_dirs = _unit(c2ws[:, :3, 3])  # direction from the look-at centre (origin) to each camera
    atomic_write_json(out / "split.json", {
        "protocol": "procedural sample: test = every 8th frame (0, 8, ...), train = the rest",
        "train": [names[i] for i in train],
        "test": [names[i] for i in test],
        "sparse_train": {str(k): [names[i] for i in farthest_views(view_dirs, train, k)] for k in (3, 4, 6, 8)},
        "sparse_train_note": "farthest-point sampling of viewing directions among train (start: most central view)",
    })
    return out
