"""Minimal LoRA for the attention projections of a diffusers UNet (peft is not a dependency here).

Each targeted nn.Linear W becomes W x + (alpha / rank) * B(A(x)) with A random and B zero, so the adapted
model starts out identical to the base model and only A, B are trained."""
from __future__ import annotations

import math

import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.up.weight)
        self.down.to(base.weight.device, base.weight.dtype)
        self.up.to(base.weight.device, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_lora(model: torch.nn.Module, rank: int = 4, targets: tuple[str, ...] = LORA_TARGETS) -> list[torch.nn.Parameter]:
    """Wrap every nn.Linear whose qualified name ends with one of `targets`; freeze everything else.
    Returns the new trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lora = LoRALinear(module, rank)
        setattr(parent, child, lora)
        wrapped.append(lora)
    if not wrapped:
        raise ValueError(f"no linear layer named like {', '.join(targets)} to adapt")
    return [p for w in wrapped for p in (w.down.weight, w.up.weight)]


def merge_lora(model: torch.nn.Module) -> int:
    """Fold every LoRALinear back into a plain nn.Linear (no extra cost at sampling); returns how many."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            base = module.base
            with torch.no_grad():
                base.weight += module.scale * (module.up.weight @ module.down.weight)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, base)
            count += 1
    return count
