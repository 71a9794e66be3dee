"""A small sparse 3D U-Net over the active voxels (spconv).

Level l works at cell size 2^l: submanifold 3x3x3 convs keep the active sites, a stride-2 sparse conv
(kernel 2, so every fine site has exactly one coarse parent) goes down, and the matching inverse conv
comes back up onto exactly the sites of the level above, where the skip features are concatenated.

On CUDA the convs run in spconv. On the CPU they run in our kernel (recon.decoder.sparse_conv) with the
same weights and maths, several times faster than spconv's CPU path; `backend="spconv"` forces spconv.
"""
from __future__ import annotations

import torch
from torch import nn

import recon.decoder.spconv_compat  # noqa: F401  (must precede any spconv use on CPU)
import spconv.pytorch as spconv
from recon.decoder import sparse_conv


class _SparseConvAct(nn.Module):
    """A spconv conv without its own bias plus a bias and a LeakyReLU.

    spconv's CPU path refuses a conv bias in eval mode ("cpu don't support act and bias"), so the bias
    lives here and works the same in train and eval."""

    def __init__(self, conv: nn.Module, out_channels: int, act: bool = True):
        super().__init__()
        self.conv = conv
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.act = nn.LeakyReLU(0.1) if act else nn.Identity()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.conv(x)
        return x.replace_feature(self.act(x.features + self.bias))


class _PointwiseAct(nn.Module):
    """Per-voxel linear layer + LeakyReLU: a 1x1x1 conv without the neighbour bookkeeping."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return x.replace_feature(self.act(self.linear(x.features)))


def _subm(cin: int, cout: int, level: int) -> _SparseConvAct:
    return _SparseConvAct(spconv.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=f"subm{level}"), cout)


def _block(cin: int, cout: int, level: int, spatial: bool) -> nn.Module:
    return _subm(cin, cout, level) if spatial else _PointwiseAct(cin, cout)


class SparseUNet(nn.Module):
    """Features (M, in_channels) at M voxel sites -> features (M, channels[0]) at the same sites, same order.

    channels: one entry per level, fine to coarse (e.g. (8, 16, 32) for three levels).
    fine_convs: 3x3x3 convs at the finest level too; without them the finest level only has per-voxel
    layers (neighbours meet from level 1 on, at twice the cell size) and the network costs a fraction:
    most voxels, and so most of the work, are on the finest level."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] | list[int] = (8, 16, 32),
                 fine_convs: bool = False):
        super().__init__()
        channels = list(channels)
        if not channels or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.levels = len(channels)
        self.stem = _block(in_channels, channels[0], 0, fine_convs)
        self.encoders = nn.ModuleList([_subm(c, c, lvl) for lvl, c in enumerate(channels) if lvl > 0])
        self.downs = nn.ModuleList([
            _SparseConvAct(spconv.SparseConv3d(channels[lvl - 1], channels[lvl], 2, stride=2, bias=False,
                                               indice_key=f"down{lvl}"), channels[lvl])
            for lvl in range(1, self.levels)])
        self.ups = nn.ModuleList([
            _SparseConvAct(spconv.SparseInverseConv3d(channels[lvl], channels[lvl - 1], 2, bias=False,
                                                      indice_key=f"down{lvl}"), channels[lvl - 1])
            for lvl in range(1, self.levels)])
        self.decoders = nn.ModuleList([_block(2 * channels[lvl - 1], channels[lvl - 1], lvl - 1,
                                              fine_convs or lvl > 1)
                                       for lvl in range(1, self.levels)])
        # (indices, level, {indice_key: spconv IndiceData}) of the last forward's submanifold convs
        self._neighbour_tables: tuple | None = None
        # (coords, level, [sparse_conv.LevelTables]) of the last CPU-kernel forward
        self._kernel_tables: tuple | None = None
        self.backend = "auto"  # "auto": our kernel on the CPU, spconv on CUDA; "spconv": spconv everywhere

    def padded_shape(self, level: int) -> list[int]:
        """Grid shape rounded up so every down step halves it exactly (no site falls off the edge)."""
        step = 2 ** (self.levels - 1)
        size = -(-level // step) * step
        return [size, size, size]

    def forward(self, coords: torch.Tensor, features: torch.Tensor, level: int) -> torch.Tensor:
        """coords (M, 3) int cell indices in [0, level); features (M, C_in) float32."""
        if self.backend not in ("auto", "spconv"):
            raise ValueError(f"backend must be 'auto' or 'spconv', got {self.backend!r}")
        if features.device.type == "cpu" and self.backend == "auto":
            return self._forward_kernel(coords, features, level)
        return self._forward_spconv(coords, features, level)

    def _tables(self, coords: torch.Tensor, level: int) -> list[sparse_conv.LevelTables]:
        # the tables depend on the voxel set only: training calls this every iteration with the same voxels
        if self._kernel_tables is not None:
            known, known_level, tables = self._kernel_tables
            if known_level == level and known.shape == coords.shape and torch.equal(known, coords):
                return tables
        tables = sparse_conv.build_tables(coords, self.padded_shape(level)[0], self.levels)
        self._kernel_tables = (coords.clone(), level, tables)
        return tables

    @staticmethod
    def _layer(module: nn.Module, x: torch.Tensor, nbr: torch.Tensor, nbr_t: torch.Tensor) -> torch.Tensor:
        """One _SparseConvAct / _PointwiseAct by the CPU kernel over the given gather tables."""
        if isinstance(module, _PointwiseAct):
            w, bias, act = module.linear.weight.t()[None], module.linear.bias, module.act
            nbr = nbr_t = sparse_conv.IDENTITY
        else:
            w, bias, act = sparse_conv.kernel_weight(module.conv.weight), module.bias, module.act
        if not isinstance(act, (nn.LeakyReLU, nn.Identity)):
            raise TypeError(f"the CPU sparse-conv path knows LeakyReLU and no activation, not {type(act).__name__}")
        slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else None
        return sparse_conv.sparse_conv(x, w, bias, nbr, nbr_t, slope)

    def _forward_kernel(self, coords: torch.Tensor, features: torch.Tensor, level: int) -> torch.Tensor:
        t = self._tables(coords, level)
        subm = lambda lvl: (t[lvl].subm, t[lvl].subm_t)
        x = self._layer(self.stem, features, *subm(0))
        skips = []
        for lvl in range(1, self.levels):
            skips.append(x)
            x = self._layer(self.downs[lvl - 1], x, t[lvl].children, t[lvl - 1].parent_slot)
            x = self._layer(self.encoders[lvl - 1], x, *subm(lvl))
        for lvl in range(self.levels - 1, 0, -1):
            x = self._layer(self.ups[lvl - 1], x, t[lvl - 1].parent_slot, t[lvl].children)
            x = torch.cat([x, skips[lvl - 1]], dim=1)
            x = self._layer(self.decoders[lvl - 1], x, *subm(lvl - 1))
        return x

    def _forward_spconv(self, coords: torch.Tensor, features: torch.Tensor, level: int) -> torch.Tensor:
        indices = torch.cat([coords.new_zeros(coords.shape[0], 1), coords], dim=1).to(torch.int32).contiguous()
        # the submanifold neighbour tables depend on the voxel set only: reuse them while it is unchanged
        # (training calls this every iteration with the same voxels; spconv would rebuild them each time)
        tables = {}
        if self._neighbour_tables is not None:
            known, known_level, known_tables = self._neighbour_tables
            if known_level == level and known.device == indices.device and torch.equal(known, indices):
                tables = known_tables
        x = spconv.SparseConvTensor(features.contiguous(), indices, self.padded_shape(level), batch_size=1,
                                    indice_dict={"subm0": tables["subm0"]} if "subm0" in tables else None)
        x = self.stem(x)
        # each level's tensor carries its own indice_dict: collect the tables level by level
        built = {k: v for k, v in x.indice_dict.items() if k == "subm0"}
        skips = []
        for lvl in range(1, self.levels):
            skips.append(x)
            x = self.downs[lvl - 1](x)
            name = f"subm{lvl}"
            if name in tables and torch.equal(tables[name].indices, x.indices):
                x.indice_dict[name] = tables[name]
            x = self.encoders[lvl - 1](x)
            built[name] = x.indice_dict[name]
        for lvl in range(self.levels - 1, 0, -1):
            x = self.ups[lvl - 1](x)
            skip = skips[lvl - 1]
            # the inverse conv returns the exact site list of the level above, in its order
            x = skip.replace_feature(torch.cat([x.features, skip.features], dim=1))
            x = self.decoders[lvl - 1](x)
        self._neighbour_tables = (indices, level, built)
        return x.features
