"""Checkpoints hold only tensors and plain containers, so they load with weights_only=True."""
from __future__ import annotations

from pathlib import Path

import torch

from recon.errors import ReconError
from recon.io_utils import atomic_path

FORMAT = 1


def checkpoint_state(trainer) -> dict:
    """The free-Gaussian trainer's state as a checkpoint dict (StructuredTrainer adds its own keys)."""
    return {
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


def write_checkpoint(path: Path, ckpt: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def save_checkpoint(path: Path, trainer) -> None:
    write_checkpoint(path, checkpoint_state(trainer))


def read_checkpoint(path: Path) -> dict:
    """Load a recon checkpoint (tensors and plain containers only); ReconError when it is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise ReconError(f"cannot read the checkpoint ({type(e).__name__})", path=path,
                         fix="delete it and start without --resume") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ReconError("not a recon checkpoint", path=path, fix="delete it and start without --resume")
    return ckpt


def restore_state(ckpt: dict, trainer) -> None:
    """Step counters, history and random state (everything but the model)."""
    trainer.state.step = int(ckpt["step"])
    trainer.state.elapsed = float(ckpt["elapsed"])
    trainer.state.history = list(ckpt["history"])
    torch.set_rng_state(ckpt["rng"])
    trainer.generator.set_state(ckpt["generator"])


def restore_free_gaussians(ckpt: dict, trainer) -> None:
    """Free Gaussians, their optimizers and the strategy state."""
    dev = trainer.device
    trainer.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(dev)) for k, v in ckpt["params"].items()})
    trainer.optimizers = trainer._make_optimizers()
    for k, o in trainer.optimizers.items():
        o.load_state_dict(ckpt["optimizers"][k])
    if trainer.strategy_state is not None:
        trainer.strategy_state.update({k: (v.to(dev) if torch.is_tensor(v) else v)
                                       for k, v in ckpt["strategy_state"].items()})


def load_checkpoint(path: Path, trainer) -> None:
    ckpt = read_checkpoint(path)
    if "params" not in ckpt:  # written during the decoder stage (recon.train.structured)
        raise ReconError("the checkpoint was written by the decoder stage (decoder.enabled=true)", path=path,
                         fix="resume with decoder.enabled=true, or delete it and start without --resume")
    restore_free_gaussians(ckpt, trainer)
    restore_state(ckpt, trainer)
