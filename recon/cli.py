"""`recon` command line: reconstruct, info, make-sample (more verbs arrive with their stages)."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

# Offline by default: never reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import typer
from rich.console import Console

from recon.errors import ReconError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Few-view 3D reconstruction with Gaussians.")
console = Console(stderr=True)
_state = {"debug": False}


def user_errors(fn):
    """Turn ReconError (a user mistake) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReconError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)

    return wrapper


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")):
    _state["debug"] = debug


def _data_overrides(views, train_views, split, background, max_size) -> list[str]:
    out = []
    if views is not None:
        out.append(f"data.views={json.dumps(str(views))}")
    if train_views is not None:
        names = [t.strip() for t in train_views.split(",") if t.strip()]
        out.append(f"data.train_views={json.dumps(names)}")
    if split is not None:
        out.append(f"data.split={json.dumps(str(split))}")
    if background is not None:
        out.append(f"data.background={background}")
    if max_size is not None:
        out.append(f"data.max_size={max_size}")
    return out


def _prior_overrides(prior: str | None, prior_model: Path | None) -> list[str]:
    from recon.prior.config import PRIOR_MODES

    if prior is not None and prior not in PRIOR_MODES:
        raise ReconError(f"--prior {prior!r} is unknown", fix=f"use one of {', '.join(PRIOR_MODES)}")
    if prior_model is not None:
        if prior not in (None, "pretrained"):
            raise ReconError(f"--prior-model is a Stable Diffusion folder for --prior pretrained, not --prior {prior}",
                             fix="drop --prior-model, or use --prior pretrained")
        prior = "pretrained"
    out = [] if prior is None else [f"prior.mode={prior}"]
    if prior_model is not None:
        out.append(f"prior.model_path={json.dumps(str(prior_model))}")
    return out


@app.command()
@user_errors
def info(
    scene: Path = typer.Argument(..., help="Scene folder (transforms.json, COLMAP, LLFF or bare images)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    views: Optional[str] = typer.Option(None, help="N spread-out training views, or a split subset name."),
    train_views: Optional[str] = typer.Option(None, help="Comma-separated training frame names."),
    split: Optional[Path] = typer.Option(None, help="Split file (default SCENE/split.json)."),
    max_size: Optional[int] = typer.Option(None, help="Longest image side after loading."),
):
    """Print what was found in a scene folder."""
    from recon.config import load_config
    from recon.data.load import load_scene, scene_summary

    cfg = load_config(None, _data_overrides(views, train_views, split, None, max_size))
    s = load_scene(scene, cfg.data)
    summary = scene_summary(s)
    if as_json:
        print(json.dumps(summary))
        return
    from rich.table import Table

    t = Table(title=f"{scene}", show_header=False)
    for k, v in summary.items():
        t.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    Console().print(t)


@app.command("make-sample")
@user_errors
def make_sample(
    out: Path = typer.Argument(Path("data/sample"), help="Folder to write the sample scene into."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    n_views: int = typer.Option(32, help="Number of cameras on the sphere."),
    size: int = typer.Option(200, help="Image size in pixels."),
):
    """Render the procedural sample scene (RGBA images, transforms.json, split.json, mesh)."""
    from recon.sample.generate import make_sample as _make

    _make(out, seed=seed, n_views=n_views, size=size)
    console.print(f"wrote sample scene to {out}")


@app.command()
@user_errors
def reconstruct(
    scene: Path = typer.Argument(..., help="Scene folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    config: str = typer.Option("default", "--config", "-c", help="Preset name (configs/NAME.yaml) or a .yaml path."),
    views: Optional[str] = typer.Option(None, help="N spread-out training views, or a split subset name."),
    train_views: Optional[str] = typer.Option(None, help="Comma-separated training frame names."),
    split: Optional[Path] = typer.Option(None, help="Split file (default SCENE/split.json)."),
    background: Optional[str] = typer.Option(None, help="white|black|random for RGBA input."),
    max_size: Optional[int] = typer.Option(None, help="Longest image side after loading."),
    iterations: Optional[int] = typer.Option(None, help="Training iterations."),
    time_budget: Optional[str] = typer.Option(None, help="Wall-time budget for training, e.g. 90s, 5m."),
    stop_after: Optional[str] = typer.Option(None, help="Stop after a stage: load | init."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints."),
    set_: List[str] = typer.Option([], "--set", help="Override any config field: section.key=value."),
    viewer: bool = typer.Option(False, "--viewer", help="Watch training live in the browser (stays open after; Ctrl-C quits)."),
    viewer_port: int = typer.Option(8080, help="Port of the --viewer page."),
    viewer_host: str = typer.Option("127.0.0.1", help="Address the --viewer page binds."),
    prior: Optional[str] = typer.Option(None, help="Diffusion prior: none | repair (per-scene model, offline) | "
                                                   "pretrained (local Stable Diffusion, see --prior-model)."),
    prior_model: Optional[Path] = typer.Option(None, help="Local diffusers Stable Diffusion folder; implies "
                                                          "--prior pretrained. Never downloads."),
):
    """Reconstruct Gaussians from a few photos: load -> init -> train -> evaluate -> export."""
    from recon.config import load_config
    from recon.pipeline import parse_duration, run_reconstruct

    overrides = _data_overrides(views, train_views, split, background, max_size)
    if iterations is not None:
        overrides.append(f"train.iterations={iterations}")
    if time_budget is not None:
        overrides.append(f"train.time_budget={parse_duration(time_budget)}")
    overrides += _prior_overrides(prior, prior_model)
    overrides += list(set_)
    cfg = load_config(config, overrides)
    from recon.train.trainer import TrainingInterrupted

    live = None
    if viewer:
        from recon.viewer.live import LiveViewer

        live = LiveViewer(host=viewer_host, port=viewer_port, total_steps=cfg.train.iterations)
    try:
        run_reconstruct(scene, out, cfg, stop_after=stop_after, resume=resume, console=console, viewer=live)
        if live is not None:
            live.hold()
    except TrainingInterrupted as e:
        console.print(f"[bold yellow]interrupted:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    finally:
        if live is not None:
            live.close()


def _register_verbs() -> None:
    """Verbs that live in recon/commands/<name>.py, each with a `register(app)` function."""
    import importlib
    import importlib.util

    for name in ("view", "export", "eval", "batch"):
        if importlib.util.find_spec(f"recon.commands.{name}") is not None:
            importlib.import_module(f"recon.commands.{name}").register(app, user_errors)


_register_verbs()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
