"""Standard 3DGS .ply: exact round trip, files from other tools (gsplat's exporter, plyfile with
other orders/types/endianness), and one ReconError line for every kind of malformed file."""
from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from recon.data.scene import Normalization
from recon.errors import ReconError
from recon.export.ply import read_ply, transform_gaussians, write_ply
from recon.gaussians import Gaussians


def random_gaussians(n: int = 200, degree: int = 3, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) - 3.0, torch.randn(n, generator=g),
                     torch.randn(n, k, 3, generator=g) * 0.5)


def assert_same(a: Gaussians, b: Gaussians) -> None:
    for name, x, y in zip(("means", "quats", "log_scales", "opacity_logits", "sh"), a.tensors(), b.tensors()):
        assert x.shape == y.shape, name
        assert torch.equal(x, y), name


def header_of(path) -> list[str]:
    data = path.read_bytes()
    return data[:data.index(b"end_header")].decode().split("\n")


# ---------------------------------------------------------------------------------------------- smoke / shape


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = random_gaussians(degree=degree, seed=degree)
    path = write_ply(tmp_path / "g.ply", g)
    back = read_ply(path)
    assert back.sh_degree == degree and len(back) == len(g)
    assert back.means.dtype == torch.float32
    assert_same(g, back)


def test_layout_is_standard_3dgs(tmp_path):
    g = random_gaussians(n=5, degree=1)
    path = write_ply(tmp_path / "g.ply", g)
    lines = header_of(path)
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    assert "element vertex 5" in lines
    props = [line.split()[2] for line in lines if line.startswith("property float")]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(9)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert props == expected
    # Size: header + 5 rows of 26 float32.
    assert path.stat().st_size == len(path.read_bytes()[:path.read_bytes().index(b"end_header\n") + 11]) + 5 * 26 * 4
    # Channel-major f_rest: f_rest_0..2 are R coefficients 1..3, f_rest_3 is G coefficient 1.
    v = PlyData.read(str(path))["vertex"]
    assert v["f_rest_0"][2] == g.sh[2, 1, 0].item()
    assert v["f_rest_2"][2] == g.sh[2, 3, 0].item()
    assert v["f_rest_3"][2] == g.sh[2, 1, 1].item()
    assert v["f_rest_8"][2] == g.sh[2, 3, 2].item()
    assert v["rot_0"][4] == g.quats[4, 0].item()  # w first
    assert np.all(v["nx"] == 0)


def test_empty_round_trip(tmp_path):
    g = random_gaussians(n=0, degree=0)
    back = read_ply(write_ply(tmp_path / "e.ply", g))
    assert len(back) == 0 and back.sh.shape == (0, 1, 3)


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    write_ply(tmp_path / "g.ply", random_gaussians(n=3))
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]


def test_write_drops_nonfinite_rows_with_warning(tmp_path):
    g = random_gaussians(n=10, degree=0)
    g.means[3, 1] = float("nan")
    g.sh[7, 0, 2] = float("inf")
    with pytest.warns(UserWarning, match="dropped 2"):
        write_ply(tmp_path / "g.ply", g)
    back = read_ply(tmp_path / "g.ply")
    keep = [i for i in range(10) if i not in (3, 7)]
    assert_same(g.subset(keep), back)
    with pytest.raises(ValueError):
        write_ply(tmp_path / "h.ply", g, drop_nonfinite=False)
    assert not (tmp_path / "h.ply").exists()


def test_write_rejects_bad_sh_shape(tmp_path):
    g = random_gaussians(n=4, degree=0)
    g.sh = torch.zeros(4, 5, 3)
    with pytest.raises(ValueError):
        write_ply(tmp_path / "g.ply", g)


# ---------------------------------------------------------------------------------------------- other tools


def _plyfile_vertex(g: Gaussians, order: list[str] | None = None, dtype: str = "f4", extra: bool = True):
    n, k1 = len(g), g.sh.shape[1] - 1
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    cols.update({f"f_dc_{c}": g.sh[:, 0, c] for c in range(3)})
    rest = g.sh[:, 1:].permute(0, 2, 1).reshape(n, -1)
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(3 * k1)})
    cols["opacity"] = g.opacity_logits
    cols.update({f"scale_{i}": g.log_scales[:, i] for i in range(3)})
    cols.update({f"rot_{i}": g.quats[:, i] for i in range(4)})
    if extra:
        cols["red"] = torch.full((n,), 7.0)
        cols["nx"] = torch.ones(n)
    names = order or list(cols)
    arr = np.empty(n, dtype=[(name, "u1" if name == "red" else dtype) for name in names])
    for name in names:
        arr[name] = cols[name].numpy()
    return arr


def test_reads_other_orders_types_endianness_and_ascii(tmp_path):
    g = random_gaussians(n=30, degree=2, seed=3)
    arr = _plyfile_vertex(g)
    names = list(arr.dtype.names)
    shuffled = names[::-1]
    cases = {
        "le_shuffled.ply": (_plyfile_vertex(g, order=shuffled), dict(byte_order="<")),
        "be.ply": (arr, dict(byte_order=">")),
        "double.ply": (_plyfile_vertex(g, dtype="f8"), dict(byte_order="<")),
        "ascii.ply": (arr, dict(text=True)),
    }
    for name, (a, kw) in cases.items():
        path = tmp_path / name
        # A face element after the vertices (meshes do this) must not disturb reading.
        faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
        PlyData([PlyElement.describe(a, "vertex"), PlyElement.describe(faces, "face")],
                text=kw.get("text", False), byte_order=kw.get("byte_order", "=")).write(str(path))
        back = read_ply(path)
        assert back.sh_degree == 2, name
        if name == "ascii.ply":  # text keeps ~8 significant digits
            for x, y in zip(g.tensors(), back.tensors()):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        else:
            assert_same(g, back)


def test_element_before_vertex_is_skipped(tmp_path):
    g = random_gaussians(n=12, degree=0, seed=4)
    meta = np.array([(1.5, 2)], dtype=[("a", "f4"), ("b", "i2")])
    path = tmp_path / "pre.ply"
    PlyData([PlyElement.describe(meta, "meta"), PlyElement.describe(_plyfile_vertex(g), "vertex")],
            byte_order="<").write(str(path))
    assert_same(g, read_ply(path))


def test_reads_gsplat_exporter_output_exactly(tmp_path):
    from gsplat.exporter import export_splats

    for degree in (0, 3):
        g = random_gaussians(n=64, degree=degree, seed=10 + degree)
        path = tmp_path / f"gsplat_{degree}.ply"
        export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:],
                      format="ply", save_to=str(path))
        back = read_ply(path)
        assert_same(g, back)


def _have_renderer() -> bool:
    if importlib.util.find_spec("recon.render") is None:
        return False
    import recon.render

    return callable(getattr(recon.render, "rasterize", None))


@pytest.mark.skipif(not _have_renderer(), reason="recon.render.rasterize not available")
def test_gsplat_exported_ply_renders_the_same_image(tmp_path):
    from gsplat.exporter import export_splats

    from recon.data.cameras import Cameras
    from recon.export.views import look_at, render_views

    gen = torch.Generator().manual_seed(5)
    n = 300
    # A blob of small, fairly opaque Gaussians with view-dependent colour.
    g = Gaussians(torch.randn(n, 3, generator=gen) * 0.3, torch.randn(n, 4, generator=gen),
                  torch.full((n, 3), math.log(0.05)) + 0.3 * torch.randn(n, 3, generator=gen),
                  torch.randn(n, generator=gen) + 1.0, torch.randn(n, 4, 3, generator=gen) * 0.3)
    path = tmp_path / "gsplat.ply"
    export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:],
                  format="ply", save_to=str(path))
    loaded = read_ply(path)
    eyes = torch.tensor([[0.0, -3.0, 0.5], [2.5, 1.0, -1.0]], dtype=torch.float64)
    c2w = look_at(eyes, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]], dtype=torch.float64).repeat(2, 1, 1)
    cams = Cameras(c2w, K, 64, 64)
    ref, ref_alpha = render_views(g, cams, background=(1.0, 1.0, 1.0))
    out, out_alpha = render_views(loaded, cams, background=(1.0, 1.0, 1.0))
    assert ref_alpha.mean() > 0.1  # the views really see the Gaussians
    assert torch.equal(ref, out) and torch.equal(ref_alpha, out_alpha)


# ---------------------------------------------------------------------------------------------- malformed input


def _good_bytes(n: int = 8, degree: int = 1) -> tuple[bytes, bytes]:
    from recon.export.ply import ply_bytes

    data = ply_bytes(random_gaussians(n=n, degree=degree))
    cut = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:cut], data[cut:]


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _raises(path, match):
    with pytest.raises(ReconError, match=match) as info:
        read_ply(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_malformed_not_a_ply(tmp_path):
    _raises(_write(tmp_path, "a.ply", b"hello world\n"), "not a PLY")
    _raises(_write(tmp_path, "b.ply", b""), "not a PLY")
    _raises(_write(tmp_path, "c.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n"), "end_header")
    with pytest.raises(ReconError, match="not found"):
        read_ply(tmp_path / "missing.ply")


def test_malformed_header_lines(tmp_path):
    head, body = _good_bytes()
    _raises(_write(tmp_path, "fmt.ply", head.replace(b"binary_little_endian", b"binary_middle_endian") + body),
            "unsupported PLY format")
    _raises(_write(tmp_path, "count.ply", head.replace(b"element vertex 8", b"element vertex eight") + body),
            "not an integer")
    _raises(_write(tmp_path, "neg.ply", head.replace(b"element vertex 8", b"element vertex -8") + body), "negative")
    _raises(_write(tmp_path, "type.ply", head.replace(b"property float opacity", b"property float16 opacity") + body),
            "unsupported PLY property")
    _raises(_write(tmp_path, "junk.ply", head.replace(b"end_header", b"banana\nend_header") + body), "unexpected")
    _raises(_write(tmp_path, "dup.ply", head.replace(b"property float nx", b"property float x") + body), "repeats")


def test_malformed_missing_properties(tmp_path):
    head, body = _good_bytes()
    msg = _raises(_write(tmp_path, "m.ply", head.replace(b"property float opacity", b"property float alpha") + body),
                  "missing properties")
    assert "opacity" in msg
    # A plain coloured point cloud is not Gaussians.
    pts = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    p = tmp_path / "points.ply"
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(p))
    _raises(p, "not a 3DGS point cloud")
    # No vertex element at all.
    p2 = tmp_path / "novertex.ply"
    PlyData([PlyElement.describe(np.zeros(2, dtype=[("a", "f4")]), "thing")]).write(str(p2))
    _raises(p2, "no 'vertex' element")


def test_malformed_sh_count(tmp_path):
    head, body = _good_bytes(degree=1)  # 9 f_rest
    bad = head.replace(b"property float f_rest_8\n", b"property float f_rest_9\n")
    _raises(_write(tmp_path, "gap.ply", bad + body), "f_rest")
    bad = head.replace(b"property float f_rest_8\n", b"")
    _raises(_write(tmp_path, "eight.ply", bad + body), "8 f_rest")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_malformed_nonfinite(tmp_path, value):
    head, body = _good_bytes(n=8, degree=0)
    arr = np.frombuffer(body, dtype="<f4").copy().reshape(8, -1)
    arr[5, 10] = value  # column 10 = scale_0 in degree-0 layout (x y z nx ny nz dc0 dc1 dc2 opacity scale_0)
    msg = _raises(_write(tmp_path, "nan.ply", head + arr.tobytes()), "non-finite")
    assert "scale" in msg and "vertex 5" in msg


def test_malformed_zero_quaternion(tmp_path):
    head, body = _good_bytes(n=8, degree=0)
    arr = np.frombuffer(body, dtype="<f4").copy().reshape(8, -1)
    arr[2, -4:] = 0
    _raises(_write(tmp_path, "q.ply", head + arr.tobytes()), "all-zero rotation")


def test_malformed_truncated(tmp_path):
    head, body = _good_bytes(n=8)
    _raises(_write(tmp_path, "t.ply", head + body[:-3]), "truncated")
    _raises(_write(tmp_path, "t0.ply", head), "truncated")


def test_absurd_count_is_rejected_before_allocating(tmp_path):
    head, body = _good_bytes(n=8)
    # 10^15 vertices of 104 bytes would be ~100 PB: must be caught from the file size, instantly.
    bad = head.replace(b"element vertex 8", b"element vertex 1000000000000000")
    msg = _raises(_write(tmp_path, "huge.ply", bad + body), "vertex count")
    assert "1000000000000000" in msg
    # The same for ascii (no fixed row size, but every value needs at least two characters).
    bad_ascii = bad.replace(b"binary_little_endian", b"ascii")
    _raises(_write(tmp_path, "huge_ascii.ply", bad_ascii + b"1 2 3\n"), "vertex count")


def test_malformed_ascii_rows(tmp_path):
    g = random_gaussians(n=3, degree=0)
    p = tmp_path / "a.ply"
    PlyData([PlyElement.describe(_plyfile_vertex(g, extra=False), "vertex")], text=True).write(str(p))
    text = p.read_bytes()
    lines = text.split(b"\n")
    i = lines.index(b"end_header")
    lines[i + 2] = b"1 2 3"
    _raises(_write(tmp_path, "short_row.ply", b"\n".join(lines)), "has 3 values")
    lines[i + 2] = b" ".join([b"abc"] * 14)
    _raises(_write(tmp_path, "text_row.ply", b"\n".join(lines)), "not numeric")


def test_supersplat_compressed_ply_is_named(tmp_path):
    from gsplat.exporter import export_splats

    g = random_gaussians(n=300, degree=0)
    path = tmp_path / "compressed.ply"
    g.opacity_logits.fill_(2.0)  # the compressed writer drops near-transparent splats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:],
                      format="ply_compressed", save_to=str(path))
    _raises(path, "compressed")


# ---------------------------------------------------------------------------------------------- frames


def test_transform_gaussians_matches_normalization():
    g = random_gaussians(n=50, degree=1, seed=7)
    norm = Normalization(torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64), 0.25)
    world = transform_gaussians(g, norm)
    torch.testing.assert_close(world.means, norm.to_world(g.means), rtol=0, atol=1e-5)
    torch.testing.assert_close(world.log_scales, g.log_scales - math.log(0.25))
    assert torch.equal(world.quats, g.quats) and torch.equal(world.sh, g.sh)
    assert torch.equal(world.opacity_logits, g.opacity_logits)
    # The explicit form and its inverse bring it back.
    back = transform_gaussians(world, -norm.center * norm.scale, norm.scale)
    torch.testing.assert_close(back.means, g.means, rtol=0, atol=1e-5)
    torch.testing.assert_close(back.log_scales, g.log_scales, rtol=0, atol=1e-6)


def test_transform_gaussians_maps_covariances():
    # A point at one standard deviation along a Gaussian's axis stays at one standard deviation.
    g = random_gaussians(n=20, degree=0, seed=8)
    s, c = 3.0, torch.tensor([1.0, 2.0, 3.0])
    t = transform_gaussians(g, c, s)
    q = torch.nn.functional.normalize(g.quats, dim=1)
    w, x, y, z = q.unbind(1)
    axis0 = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], dim=1)
    p = g.means + axis0 * g.scales[:, :1]
    p_t = p * s + c
    d = (p_t - t.means) / t.scales[:, :1]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(20), rtol=1e-4, atol=1e-4)


def test_transform_gaussians_bad_args():
    g = random_gaussians(n=2, degree=0)
    with pytest.raises(ValueError):
        transform_gaussians(g, torch.zeros(3), 0.0)
    with pytest.raises(ValueError):
        transform_gaussians(g, torch.zeros(3), float("nan"))
    with pytest.raises(TypeError):
        transform_gaussians(g, torch.zeros(3))
