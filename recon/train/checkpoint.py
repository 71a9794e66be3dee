"""Checkpoints hold only tensors and plain containers, so they load with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch

from recon.errors import ReconError
from recon.io_utils import atomic_path

FORMAT = 1


def save_checkpoint(path: Path, trainer) -> None:
    ckpt = {
        "format": FORMAT,
        "step": trainer.state.step,
        "elapsed": trainer.state.elapsed,
        "history": trainer.state.history,
        "params": {k: v.detach().cpu() for k, v in trainer.params.items()},
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "strategy_state": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in (trainer.strategy_state or {}).items()},
        "rng": torch.get_rng_state(),
        "generator": trainer.generator.get_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: Path, trainer) -> None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise ReconError(f"cannot read the checkpoint ({type(e).__name__})", path=path,
                         fix="delete it and start without --resume") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ReconError("not a recon checkpoint", path=path, fix="delete it and start without --resume")
    dev = trainer.device
    trainer.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(dev)) for k, v in ckpt["params"].items()})
    trainer.optimizers = trainer._make_optimizers()
    for k, o in trainer.optimizers.items():
        o.load_state_dict(ckpt["optimizers"][k])
    if trainer.strategy_state is not None:
        trainer.strategy_state.update({k: (v.to(dev) if torch.is_tensor(v) else v)
                                       for k, v in ckpt["strategy_state"].items()})
    trainer.state.step = int(ckpt["step"])
    trainer.state.elapsed = float(ckpt["elapsed"])
    trainer.state.history = list(ckpt["history"])
    torch.set_rng_state(ckpt["rng"])
    trainer.generator.set_state(ckpt["generator"])
