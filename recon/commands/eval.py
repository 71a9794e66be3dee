"""`recon eval OUT`: recompute held-out metrics of a finished run (torchmetrics PSNR/SSIM)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def evaluate_output(out: Path, scene_path: Path | None = None, rerender: bool = False) -> dict:
    """Metrics of OUT's test renders against the scene's held-out photos.

    With rerender (or when renders/test is missing) the test views are rendered again from
    OUT/point_cloud.ply with the cameras in OUT/cameras.json, both in the input world frame."""
    import torch
    import yaml

    from recon.config import ReconConfig, merge
    from recon.data.load import load_scene
    from recon.errors import ReconError
    from recon.train.evaluate import eval_background, frame_stem, metrics_for

    out = Path(out)
    cams_path = out / "cameras.json"
    if not cams_path.exists():
        raise ReconError("no cameras.json here", path=out, fix="give the folder written by `recon reconstruct -o`")
    try:
        cams = json.loads(cams_path.read_text())
        cfg_d = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else {}
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ReconError(f"cannot read the run's files ({e})", path=out, fix="re-run `recon reconstruct`") from None
    cfg = merge(ReconConfig(), cfg_d or {}, where=str(out / "config.yaml"))
    scene_path = Path(scene_path or cams.get("scene", ""))
    if not scene_path.exists():
        raise ReconError(f"the scene folder {scene_path} is not there", path=cams_path, fix="pass --scene SCENE")
    scene = load_scene(scene_path, cfg.data)
    index = {n: i for i, n in enumerate(scene.names)}
    test_names = [f["name"] for f in cams["frames"] if f["split"] == "test"]
    unknown = [n for n in test_names if n not in index]
    if unknown:
        raise ReconError(f"test view {unknown[0]} is not in {scene_path}", path=cams_path, fix="pass the scene it was made from with --scene")
    idx = [index[n] for n in test_names]
    bg = eval_background(scene, cfg.data.background)
    render_dir = out / "renders" / "test"
    files = [render_dir / f"{frame_stem(n)}.png" for n in test_names]
    if rerender or not all(f.exists() for f in files):
        preds = _rerender(out, cams, test_names, bg)
    else:
        import imageio.v3 as iio

        preds = torch.stack([torch.from_numpy(iio.imread(f)[..., :3].copy()).float() / 255.0 for f in files])
        if preds.shape[1:3] != (scene.height, scene.width):
            raise ReconError(f"renders are {preds.shape[2]}x{preds.shape[1]} but the scene loads at {scene.width}x{scene.height}",
                             path=render_dir, fix="use --rerender or the same --max-size")
    return metrics_for(preds, scene, idx, bg)


def _rerender(out: Path, cams: dict, names: list[str], bg):
    import torch

    from recon.errors import ReconError
    from recon.export.ply import read_ply
    from recon.render import rasterize

    ply = out / "point_cloud.ply"
    if not ply.exists():
        raise ReconError("no point_cloud.ply to render", path=out, fix="finish the run first")
    g = read_ply(ply)
    frames = {f["name"]: f for f in cams["frames"]}
    preds = []
    for n in names:
        c2w = torch.tensor(frames[n]["camtoworld"], dtype=torch.float64)
        vm = torch.linalg.inv(c2w).float()[None]
        K = torch.tensor(frames[n]["K"], dtype=torch.float32)[None]
        c, _, _ = rasterize(g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits), g.sh, vm, K,
                            cams["width"], cams["height"], sh_degree=g.sh_degree, backgrounds=bg[None])
        preds.append(c[0].clamp(0, 1))
    return torch.stack(preds)


def register(app: typer.Typer, user_errors) -> None:
    @app.command("eval")
    @user_errors
    def eval_cmd(
        out: Path = typer.Argument(..., help="Output folder of `recon reconstruct`."),
        scene: Optional[Path] = typer.Option(None, help="Scene folder (default: the one recorded in OUT)."),
        rerender: bool = typer.Option(False, help="Render the test views again from point_cloud.ply."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ):
        """Recompute held-out PSNR/SSIM of a finished run."""
        from rich.console import Console
        from rich.table import Table

        m = evaluate_output(out, scene, rerender)
        if as_json:
            print(json.dumps(m))
            return
        t = Table(title=f"held-out views of {out}")
        keys = [k for k in ("psnr", "ssim", "psnr_masked", "ssim_masked") if k in m]
        t.add_column("view")
        for k in keys:
            t.add_column(k, justify="right")
        for r in m["per_view"]:
            t.add_row(r["name"], *(f"{r[k]:.3f}" for k in keys))
        t.add_row("[bold]mean", *(f"[bold]{m[k]:.3f}" for k in keys))
        Console().print(t)
