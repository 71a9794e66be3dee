"""Gaussians -> coloured triangle mesh: render depth and colour from a sphere of virtual cameras,
fuse them into a TSDF volume (open3d), extract the zero level set, optionally re-mesh with
screened Poisson, and drop small floating pieces."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.data.cameras import Cameras
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.io_utils import atomic_path
from recon.export.views import frame_object, render_views, sphere_cameras

MESH_SUFFIXES = (".ply", ".obj")


def _o3d():
    import open3d as o3d  # heavy import, only for meshing

    return o3d


def fuse_tsdf(depths: np.ndarray, colors: np.ndarray, cameras: Cameras, voxel_size: float,
              sdf_trunc: float, depth_trunc: float):
    """Integrate (C, H, W) z-depths (0 = no data) and (C, H, W, 3) float colours in [0, 1] into an
    open3d VoxelBlockGrid TSDF and return its legacy triangle mesh with vertex colours.

    (The legacy ScalableTSDFVolume integrates nothing in the open3d 0.20 CPU wheel; the tensor
    VoxelBlockGrid works and grows its hash map as needed.)"""
    o3d = _o3d()
    o3c = o3d.core
    cpu = o3c.Device("CPU:0")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)), voxel_size=float(voxel_size), block_resolution=8,
        block_count=4096, device=cpu)
    trunc_mult = float(sdf_trunc) / float(voxel_size)
    Ks = cameras.Ks.double().cpu().numpy().copy()
    Ks[:, 0, 2] -= 0.5  # our K puts pixel centres at +0.5; open3d puts them at integers
    Ks[:, 1, 2] -= 0.5
    viewmats = cameras.viewmats.double().cpu().numpy()  # open3d uses OpenCV camera axes too
    integrated = 0
    for i in range(len(cameras)):
        if not np.any(depths[i] > 0):
            continue
        integrated += 1
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depths[i], dtype=np.float32)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(colors[i], dtype=np.float32)))
        K = o3c.Tensor(Ks[i])
        E = o3c.Tensor(np.ascontiguousarray(viewmats[i]))
        blocks = grid.compute_unique_block_coordinates(depth, K, E, 1.0, float(depth_trunc),
                                                       trunc_voxel_multiplier=trunc_mult)
        grid.integrate(blocks, depth, color, K, K, E, 1.0, float(depth_trunc), trunc_voxel_multiplier=trunc_mult)
    if integrated == 0:
        return o3d.geometry.TriangleMesh()
    return grid.extract_triangle_mesh(weight_threshold=1.0).to_legacy()


def _distance_to(mesh, points: np.ndarray) -> np.ndarray:
    o3d = _o3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return scene.compute_distance(o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))).numpy()


def _poisson(mesh, depth: int, max_distance: float):
    """Screened-Poisson re-mesh of the TSDF surface (smoother, closes small holes). Poisson also
    invents surface where nothing was seen; vertices farther than max_distance from the fused
    surface are removed."""
    o3d = _o3d()
    mesh.compute_vertex_normals()
    pcd = o3d.geometry.PointCloud(mesh.vertices)
    pcd.colors = mesh.vertex_colors
    pcd.normals = mesh.vertex_normals
    out, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth)
    far = _distance_to(mesh, np.asarray(out.vertices)) > max_distance
    out.remove_vertices_by_mask(far)
    return out


def _drop_small_components(mesh, min_fraction: float):
    if min_fraction <= 0 or len(mesh.triangles) == 0:
        return mesh
    clusters, counts, _ = mesh.cluster_connected_triangles()
    clusters, counts = np.asarray(clusters), np.asarray(counts)
    small = counts[clusters] < min_fraction * len(clusters)
    mesh.remove_triangles_by_mask(small)
    mesh.remove_unreferenced_vertices()
    return mesh


def extract_mesh(gaussians: Gaussians, path: str | Path | None = None, cameras: Cameras | None = None, *,
                 n_views: int = 48, resolution: int = 256, voxel_size: float | None = None,
                 sdf_trunc: float | None = None, alpha_threshold: float = 0.5, poisson: bool = False,
                 poisson_depth: int = 7, min_component_fraction: float = 0.01, batch: int = 8):
    """Fuse rendered depth and colour into a mesh; write it to `path` (.ply or .obj, vertex colours)
    when given. Returns an open3d TriangleMesh.

    cameras (the capture's, optional) only set the virtual cameras' field of view and up direction;
    the views themselves cover the whole sphere around the object. voxel_size defaults to
    1/128 of the object's diameter (or one rendered pixel at the object if coarser), sdf_trunc to
    4 voxels. Pixels whose accumulated alpha is below alpha_threshold count as empty space.
    """
    if path is not None and Path(path).suffix.lower() not in MESH_SUFFIXES:
        raise ReconError(f"unsupported mesh file type {Path(path).suffix!r}", path=path,
                         fix="use a .ply or .obj output path")
    if len(gaussians) == 0:
        raise ReconError("there are no Gaussians to mesh", fix="check the reconstruction output")
    framing = frame_object(gaussians, cameras)
    views = sphere_cameras(framing, n_views, resolution, resolution)
    images, alphas = render_views(gaussians, views, render_mode="RGB+ED", batch=batch)
    alpha = alphas[..., 0]
    hit = alpha >= alpha_threshold
    depth = torch.where(hit, images[..., 3], torch.zeros_like(alpha))
    rgb = images[..., :3] / alpha.clamp_min(1e-6)[..., None]  # un-premultiply (black background)
    if voxel_size is None:
        # 1/128 of the diameter, but never finer than a rendered pixel at the object (holes).
        pixel = framing.distance * 2 * np.tan(framing.fov_y / 2) / resolution
        voxel_size = max(2.0 * framing.radius / 128.0, pixel)
    if sdf_trunc is None:
        sdf_trunc = 4.0 * voxel_size
    depth_trunc = framing.distance + 4.0 * framing.radius
    mesh = fuse_tsdf(depth.numpy(), rgb.clamp(0, 1).numpy(), views, voxel_size, sdf_trunc, depth_trunc)
    if len(mesh.triangles) == 0:
        raise ReconError("mesh extraction found no surface (renders are empty or too transparent)",
                         fix="check that the Gaussians render (try `recon export SRC --format video`)")
    if poisson:
        mesh = _poisson(mesh, poisson_depth, max_distance=2.0 * voxel_size)
    mesh = _drop_small_components(mesh, min_component_fraction)
    # Poisson cropping can leave vertices no triangle uses; .obj readers drop them, so do it here
    mesh.remove_unreferenced_vertices()
    if path is not None:
        write_mesh(path, mesh)
    return mesh


def write_mesh(path: str | Path, mesh) -> Path:
    """Write an open3d mesh with vertex colours as .ply (binary) or .obj (atomic)."""
    o3d = _o3d()
    path = Path(path)
    with atomic_path(path) as tmp:
        ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False, write_vertex_colors=True,
                                        write_vertex_normals=False, write_triangle_uvs=False, print_progress=False)
        if not ok:
            raise ReconError("open3d could not write the mesh", path=path, fix="check the folder is writable")
    return path
