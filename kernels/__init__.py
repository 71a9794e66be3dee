"""CPU kernels (splatting, the fused SSIM loss, the decoder's sparse convs and head): builds the C++
extension on first use and exposes its operators.

The build lands in ``~/.cache/recon/kernels/<hash of the sources>`` (``RECON_KERNEL_CACHE``
overrides the root), so a source change triggers exactly one rebuild and nothing is shared
between versions. Operators live under ``torch.ops.recon_splat``; ``recon.render.rasterize`` is
the API to use. ``RECON_SPLAT_ISA`` (``auto``, ``avx512``, ``avx2`` or ``generic``) caps the tile
kernels' instruction set; by default they use the widest the CPU has (AVX-512, AVX2, portable).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path

import torch

from recon.errors import ReconError

_SOURCE_DIR = Path(__file__).resolve().parent
_SOURCES = (
    "rasterize_cpu.cpp", "projection_cpu.cpp", "ssim_cpu.cpp", "decode_head_cpu.cpp", "sparse_conv_cpu.cpp",
    "parallel.cpp",
    "raster_tiles_generic.cpp", "raster_tiles_avx2.cpp", "raster_tiles_avx512.cpp",
)
_HEADERS = ("splat_common.h", "raster_tiles.h", "parallel.h", "vec8.h")
# No -march=native (the CPU running the build may not be the one running it later): the AVX2 and
# AVX-512 tile kernels are separate translation units chosen at run time. Threads come from our own pool.
_CFLAGS = ["-O3", "-fno-math-errno", "-Wno-psabi"]
_LDFLAGS: list[str] = []

_ISAS = ("auto", "avx512", "avx2", "generic")  # RECON_SPLAT_ISA values, widest first after auto
_lock = threading.Lock()
_ops = None


def cache_root() -> Path:
    env = os.environ.get("RECON_KERNEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recon" / "kernels"


def _cflags() -> list[str]:
    # RECON_KERNEL_CFLAGS appends flags (e.g. "-g" for profiling); they are part of the cache key
    return _CFLAGS + os.environ.get("RECON_KERNEL_CFLAGS", "").split()


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        h.update(name.encode())
        h.update((_SOURCE_DIR / name).read_bytes())
    h.update(" ".join(_cflags()).encode())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


def _find_compiler() -> str | None:
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    exe = cxx.split()[0]
    return shutil.which(exe) or shutil.which("c++") or shutil.which("g++")


def load():
    """Build (once) and load the extension; returns ``torch.ops.recon_splat``."""
    global _ops
    if _ops is not None:
        return _ops
    with _lock:
        if _ops is not None:
            return _ops
        isa = os.environ.get("RECON_SPLAT_ISA")
        if isa is not None and isa not in _ISAS:
            raise ReconError(f"RECON_SPLAT_ISA={isa!r} is not an instruction set the tile kernels know",
                             fix=f"set it to one of {', '.join(_ISAS)}, or unset it")
        digest = _source_hash()
        build_dir = cache_root() / digest
        name = f"recon_splat_{digest}"
        library = build_dir / f"{name}.so"
        if library.exists():
            torch.ops.load_library(str(library))
            _ops = torch.ops.recon_splat
            return _ops
        if _find_compiler() is None:
            raise ReconError(
                "no C++ compiler found to build the CPU splatting kernels",
                fix="install one (Debian/Ubuntu: apt-get install g++) or run on a CUDA GPU",
            )
        print("building CPU kernels (once) ...", file=sys.stderr, flush=True)
        build_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.cpp_extension import load as cpp_load

        try:
            cpp_load(
                name=name,
                sources=[str(_SOURCE_DIR / s) for s in _SOURCES],
                extra_cflags=_cflags(),
                extra_ldflags=_LDFLAGS,
                extra_include_paths=[str(_SOURCE_DIR)],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
        except (RuntimeError, OSError, FileNotFoundError) as exc:
            lines = str(exc).splitlines()
            errors = [ln.strip() for ln in lines if "error:" in ln] or [ln.strip() for ln in lines if ln.strip()]
            first = errors[0][:300] if errors else type(exc).__name__
            raise ReconError(
                f"building the CPU splatting kernels failed ({first})",
                path=build_dir,
                fix="check that g++ and ninja work (`pip install ninja`), or delete this folder and retry",
            ) from exc
        _ops = torch.ops.recon_splat
        return _ops


def select_isa(name: str = "auto") -> str:
    """Pick the tile kernels ("auto", or at most "avx512", "avx2" or "generic"); returns the instruction
    set now in use (the widest the CPU has, up to the one asked for)."""
    return load().select_isa(name)
