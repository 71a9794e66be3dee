"""Gaussians <-> .ply in the standard 3DGS layout (the one SuperSplat, gsplat, nerfstudio and the
original INRIA code read and write).

Layout written: x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3, all float32,
binary little endian. f_rest is channel-major (all R coefficients, then G, then B), opacity is the
logit, scales are logs and rot is an unnormalised wxyz quaternion.

The reader validates everything before it allocates: the header's vertex count is checked against
the file size, so a corrupt or hostile header cannot ask for terabytes.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.io_utils import atomic_path

# PLY scalar type names (both spellings) -> numpy base type.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_MAX_HEADER_BYTES = 1 << 20
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
# f_rest count -> SH degree (3 channels x (K - 1) coefficients).
_REST_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}


def transform_gaussians(g: Gaussians, center, scale: float | None = None) -> Gaussians:
    """Map Gaussians through a similarity without rotation.

    transform_gaussians(g, normalization): from the trainer's normalised frame back to the input
    world frame (x -> x / n.scale + n.center, exactly `Normalization.to_world`).
    transform_gaussians(g, center, scale): x -> x * scale + center.
    Means move and log-scales shift by log(scale); orientations, opacities and SH are unchanged.
    """
    if scale is None:
        if not (hasattr(center, "center") and hasattr(center, "scale")):
            raise TypeError("pass a Normalization, or both center and scale")
        center, scale = center.center, 1.0 / float(center.scale)
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    c = torch.as_tensor(center, dtype=torch.float64).reshape(3)
    means = (g.means.double() * scale + c.to(g.means.device)).to(g.means.dtype)
    return Gaussians(means, g.quats, g.log_scales + math.log(scale), g.opacity_logits, g.sh)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, M), also for N = 0."""
    return t.flatten(1) if t.dim() > 1 else t[:, None]


def _finite_rows(g: Gaussians) -> torch.Tensor:
    ok = torch.ones(len(g), dtype=torch.bool, device=g.means.device)
    for t in g.tensors():
        ok &= torch.isfinite(_rows(t.detach())).all(dim=1)
    return ok


def gaussians_to_columns(g: Gaussians) -> tuple[list[str], np.ndarray]:
    """Property names and an (N, P) float32 array in the standard 3DGS column order."""
    n, k = len(g), g.sh.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    with torch.no_grad():
        f32 = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
        rest = f32(g.sh[:, 1:]).permute(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major
        cols = torch.cat([f32(g.means), torch.zeros(n, 3), f32(g.sh[:, 0]), rest,
                          f32(g.opacity_logits).reshape(n, 1), f32(g.log_scales), f32(g.quats)], dim=1)
    return names, cols.numpy()


def ply_bytes(g: Gaussians) -> bytes:
    names, cols = gaussians_to_columns(g)
    header = ["ply", "format binary_little_endian 1.0", "comment written by recon",
              f"element vertex {cols.shape[0]}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + cols.astype("<f4").tobytes()


def write_ply(path: str | Path, gaussians: Gaussians, drop_nonfinite: bool = True) -> Path:
    """Write `gaussians` as a standard 3DGS .ply (atomic). Rows with NaN/inf parameters are
    dropped with a warning (other viewers choke on them); pass drop_nonfinite=False to raise."""
    g = gaussians
    if g.sh.dim() != 3 or g.sh.shape[2] != 3 or g.sh.shape[1] not in (1, 4, 9, 16):
        raise ValueError(f"sh must be (N, K, 3) with K in 1, 4, 9, 16; got {tuple(g.sh.shape)}")
    ok = _finite_rows(g)
    if not bool(ok.all()):
        bad = int((~ok).sum())
        if not drop_nonfinite:
            raise ValueError(f"{bad} Gaussians have non-finite parameters")
        warnings.warn(f"write_ply: dropped {bad} Gaussians with non-finite parameters", stacklevel=2)
        g = g.subset(ok)
    path = Path(path)
    data = ply_bytes(g)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------
# Reading


class _Element:
    def __init__(self, name: str, count: int):
        self.name, self.count = name, count
        self.props: list[tuple[str, str]] = []  # (name, numpy type) for scalar properties
        self.has_list = False


def _parse_header(path: Path, head: bytes) -> tuple[str, list[_Element], int]:
    """Return (format, elements, byte offset of the body)."""
    if not head.startswith(b"ply"):
        raise ReconError("not a PLY file (it does not start with 'ply')", path=path,
                         fix="pass a .ply written by a 3DGS tool")
    end = head.find(b"end_header")
    if end < 0:
        raise ReconError("PLY header has no 'end_header' line (truncated or not a PLY)", path=path,
                         fix="re-export the file")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise ReconError("PLY header is truncated after 'end_header'", path=path, fix="re-export the file")
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ReconError("PLY header is not ASCII text", path=path, fix="re-export the file") from None
    fmt = None
    elements: list[_Element] = []
    for raw in text.replace("\r", "").split("\n")[1:]:
        parts = raw.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        key = parts[0]
        if key == "format" and len(parts) >= 2:
            fmt = parts[1]
        elif key == "element" and len(parts) == 3:
            try:
                count = int(parts[2])
            except ValueError:
                raise ReconError(f"PLY element count {parts[2]!r} is not an integer", path=path,
                                 fix="re-export the file") from None
            if count < 0:
                raise ReconError(f"PLY element '{parts[1]}' has a negative count ({count})", path=path,
                                 fix="re-export the file")
            elements.append(_Element(parts[1], count))
        elif key == "property" and elements:
            if len(parts) == 5 and parts[1] == "list":
                elements[-1].has_list = True
                elements[-1].props.append((parts[4], "list"))
            elif len(parts) == 3 and parts[1] in _PLY_TYPES:
                elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]]))
            else:
                raise ReconError(f"unsupported PLY property line {raw.strip()!r}", path=path,
                                 fix="re-export the file as a standard 3DGS .ply")
        else:
            raise ReconError(f"unexpected PLY header line {raw.strip()!r}", path=path,
                             fix="re-export the file as a standard 3DGS .ply")
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise ReconError(f"unsupported PLY format {fmt!r}", path=path,
                         fix="use binary_little_endian, binary_big_endian or ascii")
    return fmt, elements, nl + 1


def _find_vertex(path: Path, elements: list[_Element]) -> _Element:
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise ReconError("PLY has no 'vertex' element", path=path, fix="pass a 3DGS point_cloud.ply")
    vertex = elements[names.index("vertex")]
    props = [p for p, _ in vertex.props]
    if "chunk" in names and "packed_position" in props:
        raise ReconError("this is a SuperSplat compressed PLY, which recon does not read", path=path,
                         fix="decompress it first (SuperSplat: export as uncompressed .ply)")
    missing = [p for p in _REQUIRED if p not in props]
    if missing:
        raise ReconError(f"PLY is not a 3DGS point cloud: missing properties {', '.join(missing)}",
                         path=path, fix="export the Gaussians with a 3DGS tool (x y z f_dc_* opacity scale_* rot_*)")
    dupes = sorted({p for p in props if props.count(p) > 1})
    if dupes:
        raise ReconError(f"PLY vertex element repeats properties {', '.join(dupes)}", path=path,
                         fix="re-export the file as a standard 3DGS .ply")
    if vertex.has_list:
        raise ReconError("PLY vertex element has list properties", path=path,
                         fix="re-export the file as a standard 3DGS .ply")
    return vertex


def _rest_count(path: Path, vertex: _Element) -> int:
    props = {p for p, _ in vertex.props}
    rest = sorted(int(p[len("f_rest_"):]) for p in props
                  if p.startswith("f_rest_") and p[len("f_rest_"):].isdigit())
    m = len(rest)
    if m not in _REST_TO_DEGREE or rest != list(range(m)):
        raise ReconError(f"PLY has {m} f_rest_* properties (expected 0, 9, 24 or 45, numbered from 0)",
                         path=path, fix="export spherical harmonics of degree 0-3")
    return m


def _read_vertex_binary(path: Path, fmt: str, elements: list[_Element], vertex: _Element,
                        body_offset: int, file_size: int) -> np.ndarray:
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = body_offset
    for e in elements:
        if e is vertex:
            break
        if e.has_list:
            raise ReconError(f"PLY element '{e.name}' before 'vertex' has list properties", path=path,
                             fix="re-export the file with the vertex element first")
        offset += e.count * np.dtype([(f"p{i}", order + t) for i, (_, t) in enumerate(e.props)]).itemsize
    dtype = np.dtype([(name, order + t) for name, t in vertex.props])
    # Check the size the header promises against the file before reading (no giant allocation).
    need = offset + vertex.count * dtype.itemsize
    if need > file_size:
        raise ReconError(f"PLY is truncated or its vertex count is wrong: header says {vertex.count} "
                         f"vertices ({need} bytes), file has {file_size} bytes", path=path,
                         fix="re-export or re-download the file")
    with open(path, "rb") as f:
        f.seek(offset)
        buf = f.read(vertex.count * dtype.itemsize)
    if len(buf) != vertex.count * dtype.itemsize:
        raise ReconError("PLY is truncated", path=path, fix="re-export or re-download the file")
    return np.frombuffer(buf, dtype=dtype)


def _read_vertex_ascii(path: Path, elements: list[_Element], vertex: _Element, body_offset: int,
                       file_size: int) -> np.ndarray:
    # Each value needs at least one character and a separator.
    if vertex.count * len(vertex.props) * 2 > file_size - body_offset:
        raise ReconError(f"PLY is truncated or its vertex count is wrong: header says {vertex.count} "
                         f"vertices, file has {file_size} bytes", path=path, fix="re-export or re-download the file")
    skip = 0
    for e in elements:
        if e is vertex:
            break
        skip += e.count
    with open(path, "rb") as f:
        f.seek(body_offset)
        lines = f.read().decode("ascii", errors="replace").splitlines()
    rows = lines[skip:skip + vertex.count]
    if len(rows) < vertex.count:
        raise ReconError(f"PLY is truncated: header says {vertex.count} vertices, found {len(rows)}",
                         path=path, fix="re-export or re-download the file")
    out = np.empty(vertex.count, dtype=np.dtype([(name, "f8") for name, _ in vertex.props]))
    for i, row in enumerate(rows):
        vals = row.split()
        if len(vals) != len(vertex.props):
            raise ReconError(f"PLY vertex line {i} has {len(vals)} values, expected {len(vertex.props)}",
                             path=path, fix="re-export the file")
        try:
            out[i] = tuple(float(v) for v in vals)
        except ValueError:
            raise ReconError(f"PLY vertex line {i} is not numeric", path=path, fix="re-export the file") from None
    return out


def read_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS .ply (SH degree 0-3; extra properties such as normals are ignored).

    Raises ReconError (one line) for anything malformed; nothing is returned half-read.
    """
    path = Path(path)
    if not path.is_file():
        raise ReconError("file not found", path=path, fix="pass the path of a .ply file")
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    fmt, elements, body_offset = _parse_header(path, head)
    vertex = _find_vertex(path, elements)
    m = _rest_count(path, vertex)
    if fmt == "ascii":
        data = _read_vertex_ascii(path, elements, vertex, body_offset, file_size)
    else:
        data = _read_vertex_binary(path, fmt, elements, vertex, body_offset, file_size)

    def col(name: str) -> np.ndarray:
        return np.asarray(data[name], dtype=np.float32)

    def stack(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([col(n) for n in names], axis=1) if names
                                else np.zeros((vertex.count, 0), np.float32))

    n = vertex.count
    means = stack(["x", "y", "z"])
    dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = stack([f"f_rest_{i}" for i in range(m)])
    opac = torch.from_numpy(col("opacity").copy())
    log_scales = stack(["scale_0", "scale_1", "scale_2"])
    quats = stack(["rot_0", "rot_1", "rot_2", "rot_3"])
    k1 = m // 3
    sh = torch.cat([dc[:, None, :], rest.reshape(n, 3, k1).permute(0, 2, 1)], dim=1).contiguous()
    g = Gaussians(means, quats, log_scales, opac, sh)
    for name, t in zip(("position", "rotation", "scale", "opacity", "colour/SH"), g.tensors()):
        bad = ~torch.isfinite(_rows(t)).all(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ReconError(f"PLY has non-finite (NaN/inf) {name} values in {int(bad.sum())} vertices "
                             f"(first: vertex {i})", path=path, fix="re-export the Gaussians without NaN/inf")
    zero_q = (quats.abs().sum(dim=1) == 0)
    if bool(zero_q.any()):
        raise ReconError(f"PLY has {int(zero_q.sum())} vertices with an all-zero rotation quaternion "
                         f"(first: vertex {int(zero_q.nonzero()[0, 0])})", path=path,
                         fix="re-export the Gaussians with valid rot_0..rot_3")
    return g
