"""Batch reconstruction over a manifest: a local process pool by default, Ray for a cluster.

Each scene writes to <output>/<name>/. A failing scene is recorded with its one-line error and does not
stop the others; re-running the manifest skips finished scenes and resumes interrupted ones.
"""
from __future__ import annotations

import csv
import io
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recon.errors import ReconError
from recon.io_utils import atomic_write_json, atomic_write_text

SCENE_KEYS = {"name", "path", "config", "views", "train_views", "iterations", "time_budget", "prior", "set"}
DEFAULT_KEYS = SCENE_KEYS - {"name", "path"}
TOP_KEYS = {"output", "defaults", "scenes", "resources"}
RESOURCE_KEYS = {"num_cpus", "num_gpus"}


@dataclass
class SceneJob:
    name: str
    path: Path
    out_dir: Path
    options: dict = field(default_factory=dict)  # config, views, train_views, iterations, time_budget, prior, set


@dataclass
class Manifest:
    path: Path
    output: Path
    jobs: list[SceneJob]
    resources: dict


def load_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest; every problem is listed in one ReconError before anything runs.

    Relative paths (output, scene paths, config files) are taken from the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ReconError("manifest not found", path=path, fix="give a .yaml file listing the scenes")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ReconError(f"not valid YAML ({str(e).splitlines()[0]})", path=path, fix="fix the syntax") from None
    if not isinstance(d, dict):
        raise ReconError("a manifest is a mapping with output, defaults and scenes", path=path)
    base = path.resolve().parent
    problems: list[str] = []
    for k in sorted(set(d) - TOP_KEYS):
        problems.append(f"unknown key '{k}' (known: {', '.join(sorted(TOP_KEYS))})")
    if "output" not in d or not isinstance(d.get("output"), str):
        problems.append("'output' (the folder each scene writes under) is missing")
    defaults = d.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append("'defaults' must be a mapping")
        defaults = {}
    for k in sorted(set(defaults) - DEFAULT_KEYS):
        problems.append(f"defaults: unknown key '{k}' (known: {', '.join(sorted(DEFAULT_KEYS))})")
    resources = d.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - RESOURCE_KEYS:
        problems.append(f"resources: only {', '.join(sorted(RESOURCE_KEYS))} are known")
        resources = {}
    scenes = d.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        problems.append("'scenes' must be a non-empty list of {name, path, ...}")
        scenes = []
    jobs: list[SceneJob] = []
    seen: set[str] = set()
    output = base / str(d.get("output", ""))
    for i, s in enumerate(scenes):
        where = f"scenes[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: must be a mapping with name and path")
            continue
        name = s.get("name")
        where = f"scenes[{i}] ({name})" if name else where
        for k in sorted(set(s) - SCENE_KEYS):
            problems.append(f"{where}: unknown key '{k}' (known: {', '.join(sorted(SCENE_KEYS))})")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            problems.append(f"{where}: 'name' must be a plain folder name")
            continue
        if name in seen:
            problems.append(f"{where}: the name '{name}' is used twice")
        seen.add(name)
        if "path" not in s:
            problems.append(f"{where}: 'path' is missing")
            continue
        scene_path = (base / str(s["path"])).resolve()
        if not scene_path.is_dir():
            problems.append(f"{where}: scene folder {s['path']} does not exist")
        opts = {**defaults, **{k: v for k, v in s.items() if k in DEFAULT_KEYS}}
        cfg = opts.get("config")
        if cfg is not None and str(cfg).endswith((".yaml", ".yml")):
            cfg_path = base / str(cfg)
            if not cfg_path.is_file():
                problems.append(f"{where}: config file {cfg} does not exist")
            opts["config"] = str(cfg_path)
        jobs.append(SceneJob(name, scene_path, output / name, opts))
    if not problems:
        # the options themselves must make a valid config
        from recon.api import make_config

        for j in jobs:
            try:
                _config_for(j, make_config)
            except ReconError as e:
                problems.append(f"scene {j.name}: {e}")
    if problems:
        raise ReconError(f"{len(problems)} problem(s): " + "; ".join(problems), path=path,
                         fix="fix them and run again (nothing was run)")
    return Manifest(path, output, jobs, resources)


def _config_for(job: SceneJob, make_config):
    o = job.options
    return make_config(o.get("config", "default"), views=o.get("views"), train_views=o.get("train_views"),
                       iterations=o.get("iterations"), time_budget=o.get("time_budget"), prior=o.get("prior"),
                       overrides=list(o.get("set") or []))


def run_scene(job: SceneJob, threads: int | None = None) -> dict:
    """Reconstruct one scene; never raises for a scene's own failure (returns status failed + error)."""
    import json

    if threads:
        import torch

        torch.set_num_threads(threads)
    from recon.api import make_config
    from recon.pipeline import run_reconstruct
    from recon.train.trainer import TrainingInterrupted

    t0 = time.perf_counter()
    metrics_path = job.out_dir / "metrics.json"
    rec = {"name": job.name, "path": str(job.path), "out_dir": str(job.out_dir)}
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        return {**rec, "status": "done", "skipped": True, "seconds": m.get("seconds"), "psnr": m.get("psnr"),
                "ssim": m.get("ssim"), "psnr_masked": m.get("psnr_masked"), "n_gaussians": m.get("n_gaussians"),
                "error": None}
    resume = (job.out_dir / "checkpoints" / "last.pt").exists()
    try:
        cfg = _config_for(job, make_config)
        res = run_reconstruct(job.path, job.out_dir, cfg, resume=resume, quiet=True, show_progress=False)
        m = res.metrics
        return {**rec, "status": "done", "skipped": False, "resumed": resume, "seconds": round(time.perf_counter() - t0, 2),
                "psnr": m.get("psnr"), "ssim": m.get("ssim"), "psnr_masked": m.get("psnr_masked"),
                "n_gaussians": m.get("n_gaussians"), "error": None}
    except TrainingInterrupted:
        raise
    except ReconError as e:
        err = str(e)
    except Exception as e:  # a bug or resource failure in one scene must not stop the batch
        err = f"{type(e).__name__}: {e}".splitlines()[0]
        (job.out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(job.out_dir / "error.txt", traceback.format_exc())
    return {**rec, "status": "failed", "skipped": False, "seconds": round(time.perf_counter() - t0, 2), "psnr": None,
            "ssim": None, "psnr_masked": None, "n_gaussians": None, "error": err}


def _lost_scene(job: SceneJob, error: str) -> dict:
    """The summary row of a scene whose worker or task died before it could report."""
    return {"name": job.name, "path": str(job.path), "out_dir": str(job.out_dir), "status": "failed", "skipped": False,
            "seconds": None, "psnr": None, "ssim": None, "psnr_masked": None, "n_gaussians": None,
            "error": error.splitlines()[0]}


def run_batch(manifest: Manifest, jobs: int = 1, backend: str = "local", address: str | None = None,
              on_result=None) -> list[dict]:
    """Run every scene; returns the summary rows (also written to <output>/summary.{json,csv})."""
    manifest.output.mkdir(parents=True, exist_ok=True)
    if backend == "local":
        results = _run_local(manifest, jobs, on_result)
    elif backend == "ray":
        results = _run_ray(manifest, jobs, address, on_result)
    else:
        raise ReconError(f"unknown backend {backend!r}", fix="use --backend local or --backend ray")
    order = {j.name: i for i, j in enumerate(manifest.jobs)}
    results.sort(key=lambda r: order[r["name"]])
    write_summary(manifest.output, results)
    return results


def _run_local(manifest: Manifest, jobs: int, on_result) -> list[dict]:
    results = []
    if jobs <= 1:
        for j in manifest.jobs:  # in-process, so Ctrl-C / SIGTERM checkpoint the running scene
            r = run_scene(j)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_scene, j, threads): j for j in manifest.jobs}
        for f in as_completed(futs):
            j = futs[f]
            try:
                r = f.result()
            except Exception as e:  # the worker itself died (out of memory, killed)
                r = _lost_scene(j, f"worker died: {type(e).__name__}: {e}")
            results.append(r)
            if on_result:
                on_result(r)
    return results


def _run_ray(manifest: Manifest, jobs: int, address: str | None, on_result) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise ReconError("the Ray backend needs ray", fix="pip install 'recon[cluster]'") from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(jobs, 1), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        num_cpus = float(manifest.resources.get("num_cpus", 1))
        num_gpus = float(manifest.resources.get("num_gpus", 0))
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_scene)
        threads = max(1, int(num_cpus))
        refs = {remote.remote(j, threads): j for j in manifest.jobs}
        results = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            j = refs[done[0]]
            try:
                r = ray.get(done[0])
            except Exception as e:  # task or node failure
                r = _lost_scene(j, f"ray task failed: {type(e).__name__}")
            results.append(r)
            if on_result:
                on_result(r)
        return results
    finally:
        if started:
            ray.shutdown()


SUMMARY_FIELDS = ["name", "status", "seconds", "psnr", "ssim", "psnr_masked", "n_gaussians", "skipped", "error", "out_dir"]


def write_summary(output: Path, rows: list[dict]) -> None:
    atomic_write_json(output / "summary.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(output / "summary.csv", buf.getvalue())
