"""Inspection outputs of the init stage: OUT/init/voxels.ply and OUT/init/hull_mesh.ply, in the input
world frame, written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from recon.data.scene import Scene
from recon.init.occupancy import OccupancyGrid
from recon.io_utils import atomic_path

MAX_MESH_FACES = 400_000  # quads; coarser copies of the solid are meshed above this
SMOOTH_ITERATIONS = 5  # Taubin steps: softens the staircase, keeps the volume


def write_init_outputs(res, scene: Scene, out_dir: Path) -> dict[str, Path]:
    """Write voxels.ply (the seeded voxels' centres coloured by their features, plus spread and n_views) and
    hull_mesh.ply (the boundary of the carved solid) under out_dir/init/. Returns the paths."""
    folder = Path(out_dir) / "init"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"voxels": folder / "voxels.ply", "hull_mesh": folder / "hull_mesh.ply"}
    write_voxels_ply(res.voxels, scene, paths["voxels"])
    write_hull_mesh(res.occupancy, scene, paths["hull_mesh"])
    return paths


def write_voxels_ply(voxels, scene: Scene, path: Path) -> None:
    pts = scene.normalization.to_world(voxels.centers().to(torch.float64)).numpy()
    rgb = (voxels.colors.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    v = np.empty(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1"), ("spread", "f4"), ("n_views", "f4")])
    v["x"], v["y"], v["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v["spread"] = voxels.feature("spread").numpy()
    v["n_views"] = voxels.feature("n_views").numpy()
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex")], text=False).write(str(tmp))


def box_mesh(occ: OccupancyGrid) -> tuple[np.ndarray, np.ndarray]:
    """The faces between occupied and empty cells, as (V, 3) vertices (normalised frame) and (F, 3)
    triangles wound outwards."""
    g = np.pad(occ.grid, 1)
    quads = []
    for axis in range(3):
        for step in (1, -1):
            nb = np.roll(g, -step, axis=axis)
            cells = np.argwhere(g & ~nb)  # occupied, empty neighbour at +step along axis
            if len(cells) == 0:
                continue
            quads.append(_face_corners(cells, axis, step))
    if not quads:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    corners = np.concatenate(quads)  # (Q, 4, 3) integer corner coordinates, counter-clockwise from outside
    dims = np.array(g.shape, dtype=np.int64) + 1
    keys = (corners[..., 0] * dims[1] + corners[..., 1]) * dims[2] + corners[..., 2]
    uniq, inv = np.unique(keys.reshape(-1), return_inverse=True)
    quad_idx = inv.reshape(-1, 4)
    tris = np.concatenate([quad_idx[:, [0, 1, 2]], quad_idx[:, [0, 2, 3]]])
    corner = np.stack([uniq // (dims[1] * dims[2]), (uniq // dims[2]) % dims[1], uniq % dims[2]], -1)
    verts = (corner - 1 + occ.offset) * occ.voxel_size + occ.origin  # padded index -> cell corner
    return verts, tris


def _face_corners(cells: np.ndarray, axis: int, step: int) -> np.ndarray:
    """(M, 4, 3) corners of the face of each cell on side `step` of `axis`, ordered so the face normal
    (right-hand rule) points along +step."""
    u, v = (axis + 1) % 3, (axis + 2) % 3
    base = cells.copy()
    if step > 0:
        base[:, axis] += 1
    du = np.zeros(3, dtype=np.int64)
    dv = np.zeros(3, dtype=np.int64)
    du[u] = 1
    dv[v] = 1
    order = [0 * du, du, du + dv, dv] if step > 0 else [0 * du, dv, du + dv, du]
    return base[:, None, :] + np.stack(order)[None]


def _downsample(occ: OccupancyGrid) -> OccupancyGrid:
    """The same solid on a grid half as fine (a coarse cell is occupied when any of its 8 cells is)."""
    g = occ.grid
    pad = [(o % 2, (o % 2 + s) % 2) for o, s in zip(occ.offset, g.shape)]
    g = np.pad(g, pad)
    sx, sy, sz = (d // 2 for d in g.shape)
    coarse = g.reshape(sx, 2, sy, 2, sz, 2).any(axis=(1, 3, 5))
    return OccupancyGrid(coarse, (occ.offset - np.array([p[0] for p in pad])) // 2, occ.level // 2, occ.bound)


def write_hull_mesh(occ: OccupancyGrid, scene: Scene, path: Path) -> None:
    import open3d as o3d

    while occ.level > 8 and 2 * int(occ.surface_grid().sum()) > MAX_MESH_FACES:
        occ = _downsample(occ)
    verts, tris = box_mesh(occ)
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts),
                                     o3d.utility.Vector3iVector(tris.astype(np.int32)))
    if len(tris):
        mesh = mesh.filter_smooth_taubin(number_of_iterations=SMOOTH_ITERATIONS)
    world = scene.normalization.to_world(torch.from_numpy(np.asarray(mesh.vertices))).numpy()
    mesh.vertices = o3d.utility.Vector3dVector(world)
    mesh.compute_vertex_normals()
    with atomic_path(path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False):
            raise OSError(f"open3d could not write {path}")
