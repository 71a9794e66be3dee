"""Benchmark of the init stage (carving -> floaters -> colours -> Gaussians) on the shared scenes.

Prints, per scene, the time and the kept cells of every carving level, the time of every later stage,
and memory: the peak resident set of the init call alone (Linux: VmHWM after resetting it) and the
tracemalloc peak (Python and numpy allocations; torch tensors are not traced). Each scene runs in its
own process so peaks do not carry over.

    python bench/bench_init.py                      # 8 views, 256 cells across, all shared scenes
    python bench/bench_init.py --views 4 --levels 32,64,128 --scenes chair beer_can
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

SCENES = ["chair", "ethiopian_head", "mold_gold_cape", "beer_can"]


def shared_data() -> Path:
    env = os.environ.get("RECON_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(scene_path: Path, views: str, levels: list[int], footprint: float | None) -> dict:
    import torch

    from recon.data.config import DataConfig
    from recon.data.load import load_scene
    from recon.init.config import InitConfig
    from recon.init.initialize import initialize

    t0 = time.perf_counter()
    scene = load_scene(scene_path, DataConfig(views=views))
    load_s = time.perf_counter() - t0
    cfg = InitConfig(levels=levels) if footprint is None else InitConfig(levels=levels, footprint=footprint)
    rss_before = _status_kb("VmRSS")
    peak_reset = _reset_peak_rss()
    tracemalloc.start()
    level_peaks = []

    def on_level(entry: dict) -> None:
        # peaks since the previous level ended; then both readings start afresh for the next level
        level_peaks.append({"rss_peak_mb": (_status_kb("VmHWM") or 0) / 1024 if peak_reset else None,
                            "tracemalloc_peak_mb": tracemalloc.get_traced_memory()[1] / 2 ** 20})
        tracemalloc.reset_peak()
        if peak_reset:
            _reset_peak_rss()

    t0, c0 = time.perf_counter(), time.process_time()
    res = initialize(scene, scene.train_idx, cfg, on_level=on_level)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    traced_peak = max([traced_peak] + [m["tracemalloc_peak_mb"] * 2 ** 20 for m in level_peaks])
    peak = max([_status_kb("VmHWM") or 0] + [m["rss_peak_mb"] * 1024 for m in level_peaks]) if peak_reset else None
    return {"scene": scene_path.name, "views": len(scene.train_idx), "size": f"{scene.width}x{scene.height}",
            "masks": scene.has_masks, "load_s": load_s, "init_wall_s": wall, "init_cpu_s": cpu,
            "rss_before_mb": (rss_before or 0) / 1024,
            "rss_peak_mb": None if peak is None else peak / 1024,
            "rss_peak_over_start_mb": None if peak is None or rss_before is None else (peak - rss_before) / 1024,
            "tracemalloc_peak_mb": traced_peak / 2 ** 20, "stats": res.stats, "level_peaks": level_peaks,
            "surface_voxels": len(res.voxels), "gaussians": len(res.gaussians)}


def report(r: dict) -> None:
    mb = lambda v: "n/a" if v is None else f"{v:.0f} MB"  # noqa: E731
    print(f"\n== {r['scene']}: {r['views']} views {r['size']}, {'masks' if r['masks'] else 'no masks'} "
          f"({r['stats']['mode']}); load {r['load_s']:.1f}s")
    for s, m in zip(r["stats"]["levels"], r["level_peaks"]):
        mem = f"RSS peak {mb(m['rss_peak_mb'])}, tracemalloc peak {m['tracemalloc_peak_mb']:.0f} MB"
        if s["level"] == "grid":
            print(f"   occupancy grid: {s['occupied']:>9} cells {'':>27} {s['seconds']:6.2f}s  {mem}")
            continue
        extra = f" interior {s['interior']}" if "interior" in s else (f" band {s['band']}" if "band" in s else "")
        print(f"   level {s['level']:>4}: {s['candidates']:>9} candidates -> {s['kept']:>8} kept{extra:<16} "
              f"{s['seconds']:6.2f}s  {mem}")
    st = r["stats"]
    if "floaters" in st:
        f = st["floaters"]
        print(f"   floaters: {f['components']} pieces, {f['kept_components']} kept, "
              f"{f['dropped_voxels']} voxels dropped  {f['seconds']:.2f}s")
    print(f"   colours: {st['colors']['seconds']:.2f}s ({st['colors']['no_view']} voxels seen by no view); "
          f"seed: {st['seed']['gaussians']} Gaussians {st['seed']['seconds']:.2f}s")
    print(f"   init total: {r['init_wall_s']:.2f}s wall, {r['init_cpu_s']:.2f}s CPU (init runs torch on one "
          f"thread); {r['surface_voxels']} surface voxels")
    print(f"   memory: peak RSS {mb(r['rss_peak_mb'])} ({mb(r['rss_peak_over_start_mb'])} above the "
          f"{r['rss_before_mb']:.0f} MB before init), tracemalloc peak {r['tracemalloc_peak_mb']:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=SCENES)
    ap.add_argument("--views", default="8")
    ap.add_argument("--levels", default="32,64,128,256")
    ap.add_argument("--footprint", type=float, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run a single scene in this process, print JSON
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.one:
        print("RESULT " + json.dumps(run_one(Path(args.one), args.views, levels, args.footprint), default=float))
        return
    root = shared_data()
    for name in args.scenes:
        path = Path(name) if Path(name).is_dir() else root / name
        if not path.is_dir():
            print(f"\n== {name}: not found at {path}, skipped")
            continue
        cmd = [sys.executable, __file__, "--one", str(path), "--views", args.views, "--levels", args.levels]
        if args.footprint is not None:
            cmd += ["--footprint", str(args.footprint)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(f"\n== {name}: failed\n{out.stderr.strip()[-2000:]}")
            continue
        report(json.loads(line[len("RESULT "):]))


if __name__ == "__main__":
    main()
