"""antimatter15 .splat: byte layout, sort order, decode within quantisation, agreement with
gsplat's own .splat writer, and ReconError for malformed files."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from recon.errors import ReconError
from recon.export.splat import SPLAT_DTYPE, read_splat, write_splat
from recon.gaussians import SH_C0, Gaussians, sh0_to_rgb


def in_range_gaussians(n: int = 500, degree: int = 0, seed: int = 0) -> Gaussians:
    """Colours inside [0, 1] (a .splat clamps the rest), positive-w quaternions."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, generator=g)
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.1
    sh[:, 0] = (rgb - 0.5) / SH_C0
    return Gaussians(torch.randn(n, 3, generator=g) * 2, torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) - 3.0, torch.randn(n, generator=g) * 2, sh)


def test_file_size_and_record_layout(tmp_path):
    g = in_range_gaussians(n=10)
    path = write_splat(tmp_path / "g.splat", g)
    data = path.read_bytes()
    assert len(data) == 32 * 10
    # Decode the first record by hand (struct, not numpy) and find its source Gaussian.
    x, y, z, sx, sy, sz = struct.unpack("<6f", data[:24])
    r, gg, b, a, q0, q1, q2, q3 = struct.unpack("8B", data[24:32])
    i = int(torch.argmin((g.means - torch.tensor([x, y, z])).norm(dim=1)))
    assert (x, y, z) == tuple(g.means[i].tolist())
    np.testing.assert_allclose([sx, sy, sz], torch.exp(g.log_scales[i]).numpy(), rtol=1e-6)
    rgb = sh0_to_rgb(g.sh[i, 0]).clamp(0, 1)
    assert [r, gg, b] == [int(round(v)) for v in (rgb * 255).tolist()]
    assert a == int(round(torch.sigmoid(g.opacity_logits[i]).item() * 255))
    qn = torch.nn.functional.normalize(g.quats[i], dim=0)
    assert [q0, q1, q2, q3] == [min(255, int(round(v * 128 + 128))) for v in qn.tolist()]  # wxyz


def test_sorted_by_size_times_opacity(tmp_path):
    g = in_range_gaussians(n=200, seed=1)
    arr = np.fromfile(write_splat(tmp_path / "g.splat", g), dtype=SPLAT_DTYPE)
    # Find each record's source Gaussian by its (exactly stored) position; keys must descend.
    src = [int(torch.argmin((g.means - torch.from_numpy(p.copy())).norm(dim=1))) for p in arr["position"]]
    assert sorted(src) == list(range(200))
    exact = torch.exp(g.log_scales.double().sum(1)) * torch.sigmoid(g.opacity_logits.double())
    key = exact[src]
    assert bool((key[1:] <= key[:-1]).all())


def test_decode_matches_within_quantisation(tmp_path):
    g = in_range_gaussians(n=500, degree=2, seed=2)
    back = read_splat(write_splat(tmp_path / "g.splat", g))
    assert len(back) == len(g) and back.sh_degree == 0
    # Match rows by position (positions are stored exactly).
    order = torch.tensor([int(torch.argmin((g.means - p).norm(dim=1))) for p in back.means])
    assert torch.equal(torch.sort(order).values, torch.arange(len(g)))
    src = g.subset(order)
    assert torch.equal(back.means, src.means)
    torch.testing.assert_close(back.log_scales, src.log_scales, rtol=0, atol=2e-6)
    step = 0.5 / 255.0 + 1e-6  # rounded 8-bit colour and alpha
    assert (sh0_to_rgb(back.sh[:, 0]) - sh0_to_rgb(src.sh[:, 0])).abs().max() <= step
    assert (back.opacities - src.opacities).abs().max() <= step
    qa = torch.nn.functional.normalize(back.quats, dim=1)
    qb = torch.nn.functional.normalize(src.quats, dim=1)
    # Components within a byte level of q*128+128 (1/128 at the clamped +1 end), then renormalised.
    assert (qa - qb).abs().max() <= 1.5 / 128
    angle = 2 * torch.acos((qa * qb).sum(1).abs().clamp(max=1))
    assert angle.max() < math.radians(2.0)


def test_matches_gsplat_splat_writer(tmp_path):
    """gsplat writes .splat too (morton order, truncating quantiser): same Gaussians, same values
    within one quantisation level."""
    from gsplat.exporter import export_splats

    g = in_range_gaussians(n=120, seed=3)
    ours = read_splat(write_splat(tmp_path / "ours.splat", g))
    theirs_path = tmp_path / "gsplat.splat"
    export_splats(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :1], g.sh[:, 1:],
                  format="splat", save_to=str(theirs_path))
    theirs = read_splat(theirs_path)
    perm = torch.tensor([int(torch.argmin((ours.means - p).norm(dim=1))) for p in theirs.means])
    ours = ours.subset(perm)
    assert torch.equal(ours.means, theirs.means)
    torch.testing.assert_close(ours.log_scales, theirs.log_scales, rtol=0, atol=1e-6)
    assert (sh0_to_rgb(ours.sh[:, 0]) - sh0_to_rgb(theirs.sh[:, 0])).abs().max() <= 1.0 / 255 + 1e-6
    assert (ours.quats - theirs.quats).abs().max() <= 1.0 / 128 + 1e-6


def test_out_of_range_values_are_clamped(tmp_path):
    g = in_range_gaussians(n=4, seed=4)
    g.sh[0, 0] = 10.0  # rgb far above 1
    g.sh[1, 0] = -10.0
    g.opacity_logits[2] = 50.0
    g.quats[3] = torch.tensor([1.0, 0, 0, 0])  # 1*128+128 = 256 must clamp, not wrap to 0
    arr = np.fromfile(write_splat(tmp_path / "g.splat", g), dtype=SPLAT_DTYPE)
    by_pos = {tuple(p): i for i, p in enumerate(arr["position"])}
    row = lambda k: arr[by_pos[tuple(g.means[k].numpy())]]  # noqa: E731
    assert list(row(0)["rgba"][:3]) == [255, 255, 255]
    assert list(row(1)["rgba"][:3]) == [0, 0, 0]
    assert row(2)["rgba"][3] == 255
    assert list(row(3)["rot"]) == [255, 128, 128, 128]
    back = read_splat(tmp_path / "g.splat")
    assert torch.isfinite(back.opacity_logits).all()


def test_nonfinite_and_degenerate_rows_are_not_written(tmp_path):
    g = in_range_gaussians(n=6, seed=5)
    g.means[1, 0] = float("nan")
    g.quats[4] = 0.0
    assert len(read_splat(write_splat(tmp_path / "g.splat", g))) == 4


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _raises(path, match):
    with pytest.raises(ReconError, match=match) as info:
        read_splat(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _record(pos=(0.0, 0.0, 0.0), scale=(0.1, 0.1, 0.1), rgba=(1, 2, 3, 4), rot=(255, 128, 128, 128)) -> bytes:
    return struct.pack("<6f8B", *pos, *scale, *rgba, *rot)


def test_reads_hand_made_record(tmp_path):
    p = _write(tmp_path, "one.splat", _record(pos=(1.0, 2.0, 3.0), scale=(0.5, 0.25, 2.0), rgba=(255, 0, 128, 64)))
    g = read_splat(p)
    assert g.means.tolist() == [[1.0, 2.0, 3.0]]
    torch.testing.assert_close(g.scales, torch.tensor([[0.5, 0.25, 2.0]]))
    torch.testing.assert_close(sh0_to_rgb(g.sh[0, 0]), torch.tensor([1.0, 0.0, 128 / 255]))
    torch.testing.assert_close(g.opacities, torch.tensor([64 / 255]))
    torch.testing.assert_close(g.quats, torch.tensor([[127 / 128, 0.0, 0.0, 0.0]]))


def test_malformed_splat_files(tmp_path):
    _raises(_write(tmp_path, "empty.splat", b""), "multiple of 32")
    _raises(_write(tmp_path, "odd.splat", _record() + b"\x00" * 7), "multiple of 32")
    _raises(_write(tmp_path, "nan.splat", _record(pos=(float("nan"), 0, 0)) + _record()), "non-finite")
    _raises(_write(tmp_path, "inf.splat", _record(scale=(float("inf"), 1, 1))), "non-finite")
    _raises(_write(tmp_path, "neg.splat", _record(scale=(-1.0, 1, 1))), "non-positive")
    _raises(_write(tmp_path, "zq.splat", _record(rot=(128, 128, 128, 128))), "all-zero rotation")
    _raises(_write(tmp_path, "ply.splat", b"ply\n" + b"\x00" * 60), "PLY")
    with pytest.raises(ReconError, match="not found"):
        read_splat(tmp_path / "missing.splat")
