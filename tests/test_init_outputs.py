"""OUT/init/voxels.ply and OUT/init/hull_mesh.ply: contents, world frame, atomic writing; the box mesh."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
from plyfile import PlyData

sys.path.insert(0, str(Path(__file__).resolve().parent))
from init_scenes import sphere_scene  # noqa: E402

from recon.data.scene import Normalization  # noqa: E402
from recon.init.config import InitConfig  # noqa: E402
from recon.init.initialize import initialize  # noqa: E402
from recon.init.occupancy import OccupancyGrid  # noqa: E402
from recon.init.outputs import box_mesh, write_init_outputs  # noqa: E402


def test_box_mesh_of_one_and_two_cells():
    one = OccupancyGrid.from_cells(8, 1.0, {8: np.array([[3, 4, 5]])})
    v, f = box_mesh(one)
    assert v.shape == (8, 3) and f.shape == (12, 3)
    assert np.allclose(v.min(0), [-0.25, 0.0, 0.25]) and np.allclose(v.max(0), [0.0, 0.25, 0.5])
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
    assert mesh.is_watertight() and mesh.is_orientable()
    assert abs(mesh.get_volume() - 0.25 ** 3) < 1e-9  # positive volume: faces wound outwards
    two = OccupancyGrid.from_cells(8, 1.0, {8: np.array([[3, 4, 5], [4, 4, 5]])})
    v2, f2 = box_mesh(two)
    assert v2.shape == (12, 3) and f2.shape == (20, 3)


def test_outputs_in_the_input_world_frame(tmp_path):
    norm = Normalization(torch.tensor([10.0, -5.0, 2.0], dtype=torch.float64), 0.25)
    scene = sphere_scene(6, size=64, normalization=norm)
    res = initialize(scene, scene.train_idx, InitConfig(levels=[16, 32, 64]))
    paths = write_init_outputs(res, scene, tmp_path)
    assert paths["voxels"] == tmp_path / "init" / "voxels.ply" and paths["hull_mesh"] == tmp_path / "init" / "hull_mesh.ply"
    assert sorted(p.name for p in (tmp_path / "init").iterdir()) == ["hull_mesh.ply", "voxels.ply"]  # no temp files

    vert = PlyData.read(str(paths["voxels"]))["vertex"]
    assert len(vert) == len(res.voxels)
    xyz = np.stack([vert["x"], vert["y"], vert["z"]], -1)
    assert np.allclose(xyz, norm.to_world(res.voxels.centers().double()).numpy(), atol=1e-4)
    rgb = np.stack([vert["red"], vert["green"], vert["blue"]], -1)
    assert np.abs(rgb / 255.0 - res.voxels.colors.numpy()).max() <= 0.5 / 255 + 1e-6
    assert np.allclose(vert["n_views"], res.voxels.feature("n_views").numpy())

    mesh = o3d.io.read_triangle_mesh(str(paths["hull_mesh"]))
    assert len(mesh.triangles) > 100
    mv = np.asarray(mesh.vertices)
    # the sphere (radius 0.5 in the normalised frame) has radius 2 around (10, -5, 2) in the world
    r = np.linalg.norm(mv - [10.0, -5.0, 2.0], axis=1)
    assert 1.8 < np.median(r) < 2.4 and r.max() < 3.0


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    scene = sphere_scene(4, size=48)
    res = initialize(scene, scene.train_idx, InitConfig(levels=[8, 16, 32]))

    def dies_halfway(path, mesh, **kwargs):
        Path(path).write_bytes(b"ply\nformat binary_little_endian 1.0\n")  # a partial file, then the crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(o3d.io, "write_triangle_mesh", dies_halfway)
    try:
        write_init_outputs(res, scene, tmp_path)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the write should have failed")
    # the voxels were written whole; of the mesh, neither the file nor its temporary remains
    assert sorted(p.name for p in (tmp_path / "init").iterdir()) == ["voxels.ply"]
