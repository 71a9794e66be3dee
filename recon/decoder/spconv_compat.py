"""Make spconv 2.3.x correct and trainable on CPU-only torch. Import it before using spconv:
`import recon.decoder.spconv_compat  # noqa: F401`. Idempotent; where CUDA is available it changes
nothing and spconv runs as shipped.

Two spconv CPU bugs, both in the sparse-conv kernels (spconv/pytorch/ops.py):

1. Backward calls `get_current_stream()` -> `torch.cuda.current_stream()` before it branches on the
   device; CPU-only torch raises "Torch not compiled with CUDA enabled". The CPU branch never uses the
   stream, so here the lookup returns 0 (the null stream).
2. The CPU scatter-add (spconv/csrc/sparse/gather.py, GatherCPU::scatter_add) keeps its row pointers
   in variables shared by all OpenMP threads. spconv's OpenMP calls end up in torch's runtime, so with
   torch.set_num_threads(2) or more the rows race and conv outputs and gradients come out wrong (errors
   the size of the values on a few thousand voxels). Here the CPU convs take spconv's Python
   gather-mm-scatter path (`SPCONV_CPP_GEMM` off: a C++ path would call the same kernel internally) and
   that path scatters with `torch.Tensor.index_add_`. The gather kernel and the indice-pair generation
   are correct and stay.
"""
from __future__ import annotations

import sys

import torch

import spconv.pytorch  # noqa: F401  (loads ops, hash, utils: the modules that bound the names)
from spconv.pytorch import cppcore, ops

_original_get_current_stream = cppcore.get_current_stream
_NativeSpconvOps = getattr(ops.SpconvOps, "native", ops.SpconvOps)


def _null_stream() -> int:
    return 0


def _torch_view(t) -> torch.Tensor:
    """A torch tensor sharing memory with a cumm tv.Tensor on the CPU."""
    return torch.from_numpy(t.numpy_view())


class _SpconvOpsSafeScatter:
    """Stands in for SpconvOps inside spconv.pytorch.ops: forwards everything to the native class
    except the racy CPU scatter-add."""

    native = _NativeSpconvOps

    def __getattr__(self, name):
        return getattr(_NativeSpconvOps, name)

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:
        index = _torch_view(inds).long()  # index_add_ is several times slower with int32 indices
        _torch_view(out).index_add_(0, index, _torch_view(inp)[: index.shape[0]])


def apply() -> bool:
    """Install both fixes. Returns True when they are in effect (CPU-only torch), False with CUDA."""
    if torch.cuda.is_available():
        return False
    for name, module in list(sys.modules.items()):
        if name.startswith("spconv.") and getattr(module, "get_current_stream", None) is _original_get_current_stream:
            module.get_current_stream = _null_stream
    ops.SPCONV_CPP_GEMM = False
    if not isinstance(ops.SpconvOps, _SpconvOpsSafeScatter):
        ops.SpconvOps = _SpconvOpsSafeScatter()
    return True


PATCHED = apply()
