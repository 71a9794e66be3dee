"""The U-Net's sparse convolutions on the CPU by our own kernel (kernels/sparse_conv_cpu.cpp).

spconv's CPU path does one gather, one small matmul and one scatter per kernel offset (27 for a
3x3x3 conv), which at the decoder's widths (8-32 channels) costs more than rasterising the decoded
Gaussians. Here every conv is one pass in gather form over neighbour tables built once per voxel set:

    y[i] = act(bias + sum_k x[nbr[i, k]] @ w[k])      nbr (N_out, K) int32, -1 = no neighbour

with the same weights and the same maths as spconv's SubMConv3d (3x3x3, padding 1), SparseConv3d
(kernel 2, stride 2) and SparseInverseConv3d (kernel 2) as the U-Net uses them, so a decoder trained
on the CPU decodes the same Gaussians under spconv on CUDA. `reference` is the pure-PyTorch version.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

SUBM_OFFSETS = torch.tensor([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
# kernel-2 offsets in spconv's weight order (weight[:, a, b, c, :] is offset (a, b, c))
CHILD_OFFSETS = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])

IDENTITY = torch.zeros(0, 0, dtype=torch.int32)  # "table" of a per-voxel (1x1x1) layer


def _keys(coords: torch.Tensor, size: int) -> torch.Tensor:
    """int64 key per cell; coordinates may lie one cell outside [0, size) (neighbours of border cells)."""
    c = coords.to(torch.int64) + 1
    s = size + 2
    return (c[:, 0] * s + c[:, 1]) * s + c[:, 2]


def _lookup(sorted_keys: torch.Tensor, order: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Row index of each query key among the sorted keys (original row numbers via `order`), -1 if absent."""
    pos = torch.searchsorted(sorted_keys, query).clamp(max=max(sorted_keys.numel() - 1, 0))
    found = sorted_keys[pos] == query if sorted_keys.numel() else torch.zeros_like(query, dtype=torch.bool)
    rows = order[pos] if sorted_keys.numel() else torch.zeros_like(query)
    return torch.where(found, rows, torch.full_like(rows, -1)).to(torch.int32)


@dataclass
class LevelTables:
    """Neighbour tables of one U-Net level (cell size 2^level) and of the step down from it."""
    coords: torch.Tensor  # (M, 3) cell indices at this level
    subm: torch.Tensor  # (M, 27): the neighbour at cell + SUBM_OFFSETS[k], or -1
    subm_t: torch.Tensor  # its transpose: offsets come in +-pairs, so it is subm with the columns reversed
    # (M, 8): the parent (a row of the next coarser level) in the column of this cell's offset within it,
    # -1 in the other columns; None on the coarsest level
    parent_slot: torch.Tensor | None = None
    # (M, 8): the child (a row of the next finer level) at 2 * cell + CHILD_OFFSETS[k], or -1; None on level 0
    children: torch.Tensor | None = None


def build_tables(coords: torch.Tensor, size: int, levels: int) -> list[LevelTables]:
    """Tables for `levels` levels from the finest sites `coords` (M, 3) in [0, size)^3; level l+1 holds
    the cells coords // 2 of level l (each fine site has exactly one parent), in sorted order."""
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (M, 3), got {tuple(coords.shape)}")
    coords = coords.to(torch.int64).cpu()
    if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) >= size):
        raise ValueError(f"voxel coords must lie in [0, {size}), got [{int(coords.min())}, {int(coords.max())}]")
    out: list[LevelTables] = []
    children = None
    for lvl in range(levels):
        keys = _keys(coords, size)
        sorted_keys, order = torch.sort(keys)
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            raise ValueError("voxel coords contain duplicates")
        query = _keys((coords[:, None, :] + SUBM_OFFSETS[None]).reshape(-1, 3), size)
        subm = _lookup(sorted_keys, order, query).view(-1, 27).contiguous()
        level = LevelTables(coords, subm, subm.flip(1).contiguous(), children=children)
        out.append(level)
        if lvl + 1 < levels:
            parents, parent_of = torch.unique(coords // 2, dim=0, return_inverse=True)
            slot = ((coords % 2) * torch.tensor([4, 2, 1])).sum(1)
            m = coords.shape[0]
            level.parent_slot = torch.full((m, 8), -1, dtype=torch.int32)
            level.parent_slot[torch.arange(m), slot] = parent_of.to(torch.int32)
            children = torch.full((parents.shape[0], 8), -1, dtype=torch.int32)
            children[parent_of, slot] = torch.arange(m, dtype=torch.int32)
            coords, size = parents, (size + 1) // 2
    return out


def kernel_weight(weight: torch.Tensor) -> torch.Tensor:
    """spconv weight (C_out, k, k, k, C_in) -> (k^3, C_in, C_out), differentiably."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    return weight.reshape(c_out, -1, c_in).permute(1, 2, 0).contiguous()


class _SparseConvCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, nbr, nbr_t, slope):
        from recon.kernels import load

        x = x.contiguous()
        b = bias.contiguous() if bias is not None else x.new_zeros(0)
        y = load().sparse_conv_forward(x, w, nbr, b, slope)
        # the backward reads y only for the activation's derivative
        ctx.save_for_backward(x, w, y if slope >= 0 else x.new_zeros(0), nbr, nbr_t)
        ctx.slope, ctx.has_bias = slope, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        from recon.kernels import load

        x, w, y, nbr, nbr_t = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dw, db = load().sparse_conv_backward(g.contiguous(), y, x, w, nbr, nbr_t, ctx.slope, need_x, need_w)
        return (dx if need_x else None, dw if need_w else None, db if ctx.has_bias else None, None, None, None)


def sparse_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, nbr: torch.Tensor,
                nbr_t: torch.Tensor, slope: float | None) -> torch.Tensor:
    """act(bias + sum_k x[nbr[:, k]] @ w[k]) by the CPU kernel; slope None = no activation.

    x (N_in, C_in); w (K, C_in, C_out); nbr (N_out, K) int32 (IDENTITY: a per-row linear layer, K = 1);
    nbr_t (N_in, K) its transpose (nbr_t[j, k] = i where nbr[i, k] = j), used by the backward: the kernel
    checks that both tables index inside their tensors, not that one is the other's transpose (the
    caller's part; build_tables' tables are)."""
    if slope is not None and slope < 0:
        raise ValueError(f"slope must be >= 0 (LeakyReLU) or None (no activation), got {slope}")
    return _SparseConvCPU.apply(x, w.contiguous(), bias, nbr, nbr_t, -1.0 if slope is None else float(slope))


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, nbr: torch.Tensor,
              slope: float | None) -> torch.Tensor:
    """Pure-PyTorch sparse_conv (autograd does the backward): the tests' reference."""
    if nbr.numel() == 0 and nbr.dim() == 2 and nbr.shape[1] == 0:
        y = x @ w[0]
    else:
        idx = nbr.long()
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])])  # absent neighbours (-1) read the zero row
        gathered = padded[torch.where(idx >= 0, idx, x.shape[0])]  # (N_out, K, C_in)
        y = torch.einsum("nki,kio->no", gathered, w)
    if bias is not None:
        y = y + bias
    return y if slope is None else torch.nn.functional.leaky_relu(y, slope)
