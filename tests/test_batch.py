"""`recon batch` and the Python API: a broken scene fails alone, the summary is right, a killed batch
re-runs without redoing finished scenes, bad manifests are refused before anything runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from recon.batch import load_manifest, run_batch
from recon.cli import app
from recon.errors import ReconError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
TINY = ["data.max_size=40", "train.strategy=none", "train.checkpoint_every=10"]


def make_manifest(tmp_path: Path, scenes: list[dict], iterations: int = 30, **extra) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "transforms.json").write_text(json.dumps(
        {"fl_x": 50, "fl_y": 50, "cx": 20, "cy": 20, "w": 40, "h": 40,
         "frames": [{"file_path": f"images/missing_{i}.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]}
                    for i in range(4)]}))
    m = {"output": "runs", "defaults": {"config": "fast", "iterations": iterations, "views": "4", "set": TINY},
         "scenes": scenes, **extra}
    p = tmp_path / "batch.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


def three_scenes():
    return [{"name": "a", "path": str(SAMPLE)}, {"name": "broken", "path": "broken"},
            {"name": "b", "path": str(SAMPLE), "views": "3"}]


def check_summary(out: Path):
    rows = json.loads((out / "summary.json").read_text())
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["a", "broken", "b"]
    assert by["a"]["status"] == by["b"]["status"] == "done"
    assert by["broken"]["status"] == "failed"
    assert "missing_0" in by["broken"]["error"]
    for n in ("a", "b"):
        assert by[n]["psnr"] is not None and by[n]["error"] is None and by[n]["seconds"] is not None
        assert (out / n / "metrics.json").is_file()
    csv_text = (out / "summary.csv").read_text().splitlines()
    assert csv_text[0].startswith("name,status,seconds,psnr") and len(csv_text) == 4
    return by


def test_local_batch_broken_scene_fails_alone(tmp_path):
    p = make_manifest(tmp_path, three_scenes())
    r = CliRunner().invoke(app, ["batch", str(p)])
    assert r.exit_code == 1, r.output  # one scene failed
    by = check_summary(tmp_path / "runs")
    assert json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())["n_train_views"] == 3
    # a second run skips the finished scenes
    r2 = run_batch(load_manifest(p))
    assert {x["name"]: x.get("skipped") for x in r2}["a"] is True


def test_ray_batch(tmp_path):
    pytest.importorskip("ray")
    p = make_manifest(tmp_path, three_scenes())
    rows = run_batch(load_manifest(p), jobs=2, backend="ray")
    assert len(rows) == 3
    check_summary(tmp_path / "runs")


def test_bad_manifest_lists_every_problem(tmp_path):
    p = make_manifest(tmp_path, [{"name": "a", "path": "nowhere", "colour": "red"}, {"path": str(SAMPLE)}],
                      extra_key=1)
    with pytest.raises(ReconError) as e:
        load_manifest(p)
    msg = str(e.value)
    for bit in ("extra_key", "colour", "nowhere", "'name'"):
        assert bit in msg, msg
    r = CliRunner().invoke(app, ["batch", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_killed_batch_resumes_without_redoing(tmp_path):
    p = make_manifest(tmp_path, [{"name": "first", "path": str(SAMPLE)},
                                 {"name": "second", "path": str(SAMPLE), "iterations": 100000, "time_budget": "10m"}])
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recon.cli", "batch", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, text=True)
    ckpt = out / "second" / "checkpoints" / "last.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    first_metrics = out / "first" / "metrics.json"
    mtime = first_metrics.stat().st_mtime_ns
    # finish the second scene quickly this time
    m = yaml.safe_load(p.read_text())
    m["scenes"][1]["iterations"] = 15
    m["scenes"][1]["time_budget"] = "1m"
    p.write_text(yaml.safe_dump(m))
    rows = {r["name"]: r for r in run_batch(load_manifest(p))}
    assert rows["first"]["skipped"] is True and first_metrics.stat().st_mtime_ns == mtime
    assert rows["second"]["status"] == "done" and rows["second"]["resumed"] is True
    assert "resumed from" in (out / "second" / "log.txt").read_text()


def test_python_api(tmp_path):
    import recon

    res = recon.reconstruct(SAMPLE, tmp_path / "api", "fast", views=3, iterations=20, overrides=TINY)
    assert res.metrics["n_train_views"] == 3 and res.ply.is_file()
