"""Python API: `from recon import reconstruct`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from recon.config import ReconConfig, load_config


def make_config(config: str | Path | ReconConfig = "default", *, views: str | int | None = None,
                train_views: Iterable[str] | None = None, iterations: int | None = None,
                time_budget: float | str | None = None, prior: str | None = None,
                overrides: Iterable[str] = ()) -> ReconConfig:
    """A resolved ReconConfig from a preset name / yaml path plus the usual options."""
    import json

    from recon.config import merge, parse_override
    from recon.pipeline import parse_duration

    cfg = config if isinstance(config, ReconConfig) else load_config(config)
    ov: list[str] = []
    if views is not None:
        ov.append(f"data.views={json.dumps(str(views))}")
    if train_views is not None:
        ov.append(f"data.train_views={json.dumps(list(train_views))}")
    if iterations is not None:
        ov.append(f"train.iterations={int(iterations)}")
    if time_budget is not None:
        secs = parse_duration(time_budget) if isinstance(time_budget, str) else float(time_budget)
        ov.append(f"train.time_budget={secs}")
    if prior is not None:
        ov.append(f"prior.mode={prior}")
    for o in list(ov) + list(overrides):
        cfg = merge(cfg, parse_override(o), where="override")
    return cfg


def reconstruct(scene: str | Path, out: str | Path, config: str | Path | ReconConfig = "default", *,
                views: str | int | None = None, train_views: Iterable[str] | None = None,
                iterations: int | None = None, time_budget: float | str | None = None, prior: str | None = None,
                overrides: Iterable[str] = (), resume: bool = False, quiet: bool = True):
    """Reconstruct one scene; returns a ReconResult with `.metrics` (dict), `.out_dir` and `.ply`.

    Raises recon.errors.ReconError for bad input and recon.train.trainer.TrainingInterrupted when stopped."""
    from recon.pipeline import run_reconstruct

    cfg = make_config(config, views=views, train_views=train_views, iterations=iterations,
                      time_budget=time_budget, prior=prior, overrides=overrides)
    return run_reconstruct(Path(scene), Path(out), cfg, resume=resume, quiet=quiet, show_progress=not quiet)
