"""`recon reconstruct`: load -> init -> train -> evaluate -> export.

Every file in OUT is written atomically; metrics.json is written last and marks a finished run.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recon.config import ReconConfig, save_config, to_dict
from recon.errors import ReconError
from recon.io_utils import atomic_write_json

STAGES = ("load", "init", "train")


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h', '1m30s' -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise ReconError(f"cannot read the duration {text!r}", fix="write e.g. 90s, 5m or 1h")
    mult = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(a) * mult[b] for a, b in parts)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ReconError("device=cuda was asked for but torch sees no CUDA GPU", fix="use --set device=cpu")
    return torch.device(setting)


class RunLog:
    """Lines go to OUT/log.txt (appended, flushed) and to the terminal."""

    def __init__(self, path: Path | None, console=None, quiet: bool = False):
        self.path, self.console, self.quiet = path, console, quiet
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", buffering=1)
        else:
            self._f = None

    def __call__(self, msg: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self._f is not None:
            self._f.write(f"[{stamp}] {msg}\n")
        if not self.quiet:
            if self.console is not None:
                self.console.print(f"[dim]{stamp}[/] {msg}", highlight=False)
            else:
                print(msg, file=sys.stderr)

    def close(self):
        if self._f is not None:
            self._f.close()


@dataclass
class ReconResult:
    out_dir: Path
    metrics: dict
    ply: Path | None


def cameras_json(scene, train_idx, test_idx) -> dict:
    """Train and test cameras in the input world frame (OpenCV axes)."""
    c2w = scene.normalization.camtoworlds_to_world(scene.cameras.camtoworlds.double())
    frames = []
    for split, idx in (("train", train_idx), ("test", test_idx)):
        for i in idx:
            frames.append({"name": scene.names[i], "split": split, "camtoworld": c2w[i].tolist(),
                           "K": scene.cameras.Ks[i].double().tolist()})
    return {"width": scene.width, "height": scene.height, "convention": "opencv", "frames": frames,
            "normalization": scene.normalization.to_dict(), "scene": str(scene.root)}


def initial_gaussians(scene, train_idx, cfg: ReconConfig, log):
    """Seed Gaussians: carved sparse voxels (default) or random points in the bound (vanilla baseline)."""
    method = getattr(cfg.init, "method", "voxels")
    if method == "random":
        from recon.gaussians import Gaussians

        g = torch.Generator().manual_seed(cfg.seed)
        n = getattr(cfg.init, "n_random", 20000)
        pts = (torch.rand(n, 3, generator=g) * 2 - 1)
        cols = torch.rand(n, 3, generator=g)
        log(f"init: {n} random Gaussians in the bound [-1, 1]^3")
        return None, Gaussians.from_points(pts, cols, scale=0.02, opacity=0.1)
    from recon.init.initialize import initialize

    res = initialize(scene, train_idx, cfg.init)
    inner = res.stats.get("interior_voxels", 0)
    log(f"init: {len(res.voxels)} voxels at level {res.voxels.level} ({res.stats['surface_voxels']} on the surface"
        f"{f', {inner} inside' if inner else ''}), {len(res.gaussians)} Gaussians")
    return res, res.gaussians


def run_reconstruct(scene_path: Path, out: Path, cfg: ReconConfig, stop_after: str | None = None,
                    resume: bool = False, viewer=None, console=None, quiet: bool = False,
                    show_progress: bool = True) -> ReconResult:
    from recon.data.load import load_scene, scene_summary
    from recon.train.evaluate import eval_background, evaluate
    from recon.train.trainer import Trainer

    if stop_after is not None and stop_after not in STAGES:
        raise ReconError(f"--stop-after {stop_after!r} is not a stage", fix=f"use one of {', '.join(STAGES)}")
    from recon.train.prior_hook import check_prior_ready, make_prior_hook

    check_prior_ready(cfg.prior)  # a missing model folder fails here, before anything is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReconError("the output path is a file", path=out, fix="give a folder for -o")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        # a finished run's marker must not survive into a new run that may not finish
        (out / "metrics.json").unlink(missing_ok=True)
    log = RunLog(out / "log.txt", console, quiet)
    t0 = time.perf_counter()
    try:
        torch.manual_seed(cfg.seed)
        device = pick_device(cfg.device)
        log(f"recon reconstruct {scene_path} -> {out} (preset {cfg.preset}, device {device})")
        save_config(cfg, out / "config.yaml")

        scene = load_scene(Path(scene_path), cfg.data)
        info = scene_summary(scene)
        log(f"load: {info['format']} scene, {info['n_frames']} frames at {info['width']}x{info['height']}, "
            f"masks: {'yes' if info['has_masks'] else 'no'}, {info['n_train']} train / {info['n_test']} test views")
        for note in scene.notes:
            log(f"note: {note}")
        train_idx, test_idx = list(scene.train_idx), list(scene.test_idx)
        atomic_write_json(out / "cameras.json", cameras_json(scene, train_idx, test_idx))
        if stop_after == "load":
            log("stopped after load (--stop-after load)")
            return ReconResult(out, {}, None)

        t_init = time.perf_counter()
        init_res, init_g = initial_gaussians(scene, train_idx, cfg, log)
        if init_res is not None:
            from recon.init.outputs import write_init_outputs

            write_init_outputs(init_res, scene, out)
        log(f"init took {time.perf_counter() - t_init:.1f}s")
        if stop_after == "init":
            log(f"stopped after init (--stop-after init): see {out / 'init'}")
            return ReconResult(out, {}, None)

        bg_eval = eval_background(scene, cfg.data.background)
        prior_hook = make_prior_hook(cfg, scene, out, log)  # None when prior.mode=none
        if cfg.decoder.enabled:
            if init_res is None:
                raise ReconError("decoder.enabled=true decodes Gaussians from the carved voxels, but init.method is "
                                 f"{cfg.init.method!r}", fix="use init.method=voxels or decoder.enabled=false")
            from recon.train.structured import StructuredTrainer

            trainer = StructuredTrainer(scene, train_idx, init_res.voxels, cfg.train, cfg.decoder, out_dir=out,
                                        device=device, seed=cfg.seed, background=cfg.data.background, log=log,
                                        viewer=viewer, extra_loss=prior_hook)
            log(f"decoder: {len(init_res.voxels)} voxels x {cfg.decoder.gaussians_per_voxel} Gaussians, U-Net "
                f"{cfg.decoder.channels}" + (f", baked after {cfg.decoder.bake_fraction:.0%} of the run"
                                             if cfg.decoder.bake else ""))
        else:
            trainer = Trainer(scene, train_idx, init_g, cfg.train, out_dir=out, device=device, seed=cfg.seed,
                              background=cfg.data.background, log=log, viewer=viewer, extra_loss=prior_hook)
        if viewer is not None and hasattr(viewer, "set_scene"):
            viewer.set_scene(scene, train_idx, init_res)
        t_train = time.perf_counter()
        g = _train_with_progress(trainer, resume, console if show_progress and not quiet else None)
        train_seconds = time.perf_counter() - t_train
        log(f"train: {trainer.state.step} steps in {trainer.state.elapsed:.1f}s, {len(g)} Gaussians")
        if stop_after == "train":
            return ReconResult(out, {}, None)

        sh_degree = trainer.cfg.sh_degree
        metrics = evaluate(g, scene, test_idx, sh_degree, out, bg_eval, device) if test_idx else {"psnr": None, "ssim": None}
        ply = export_outputs(g, scene, out, cfg.export, log)
        metrics.update({
            "n_train_views": len(train_idx), "n_test_views": len(test_idx),
            "train_views": [scene.names[i] for i in train_idx], "test_views": [scene.names[i] for i in test_idx],
            "n_gaussians": len(g), "seconds": round(time.perf_counter() - t0, 2),
            "train_seconds": round(train_seconds, 2), "iterations": trainer.state.step, "preset": cfg.preset,
            "device": str(device), "scene": str(scene_path), "eval_background": bg_eval.tolist(),
            "prior": cfg.prior.mode,
        })
        atomic_write_json(out / "metrics.json", metrics)
        summary = ", ".join(f"{k} {metrics[k]:.2f}" if k.startswith("psnr") else f"{k} {metrics[k]:.3f}"
                            for k in ("psnr", "ssim", "psnr_masked", "ssim_masked") if metrics.get(k) is not None)
        log(f"done in {metrics['seconds']:.1f}s: {summary or 'no held-out views to score'}; results in {out}")
        return ReconResult(out, metrics, ply)
    finally:
        log.close()


def export_outputs(g, scene, out: Path, cfg, log) -> Path:
    """point_cloud.ply (standard 3DGS layout) and the other exports, all in the input world frame."""
    from recon.export.ply import transform_gaussians, write_ply

    world = transform_gaussians(g, scene.normalization)
    path = out / "point_cloud.ply"
    write_ply(path, world)
    written = [path.name]
    if cfg.splat:
        from recon.export.splat import write_splat

        write_splat(out / "point_cloud.splat", world)
        written.append("point_cloud.splat")
    if cfg.mesh or cfg.video:
        cams = scene.cameras.to(torch.float64)
        cams.camtoworlds = scene.normalization.camtoworlds_to_world(cams.camtoworlds)
    if cfg.mesh:
        from recon.export.mesh import extract_mesh

        try:
            extract_mesh(world, out / "mesh.ply", cams.to(torch.float32), n_views=cfg.mesh_views,
                         resolution=cfg.mesh_resolution)
            written.append("mesh.ply")
        except ReconError as e:  # a reconstruction too sparse to mesh still has its Gaussians
            log(f"mesh skipped: {e}")
    if cfg.video:
        from recon.export.video import render_turntable

        render_turntable(world, [out / "turntable.mp4"], cams.to(torch.float32))
        written.append("turntable.mp4")
    log(f"export: {', '.join(written)}")
    return path


def _train_with_progress(trainer, resume: bool, console):
    if console is None:
        return trainer.train(resume=resume)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task("train", total=trainer.cfg.iterations, stats="")

        def cb(step, total, info):
            if step % 5 == 0 or step == total:
                bar.update(task, completed=step, total=total,
                           stats=f"loss {info['loss']:.4f}  psnr {info['psnr']:.2f}  gaussians {info['n_gaussians']}")

        return trainer.train(resume=resume, progress=cb)
