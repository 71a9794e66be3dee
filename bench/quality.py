"""Held-out quality on the shared real scenes: our presets against a vanilla-3DGS baseline, same views,
same budget, in one run.

    python bench/quality.py                       # default protocol (about 10 minutes per row and scene)
    python bench/quality.py --time-budget 2m --presets vanilla,fast,default

Scenes and views follow the issue's protocol: chair with dietnerf_8 (white background), ethiopian_head and
mold_gold_cape with 4 views (masked metrics). Prints a table and writes <out>/quality.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROTOCOL = {"chair": "dietnerf_8", "ethiopian_head": "4", "mold_gold_cape": "4"}
# rows: name -> (preset, extra overrides)
ROWS = {
    "vanilla": ("vanilla", []),
    "fast": ("fast", []),
    "default": ("default", []),
    "decoder": ("default", ["decoder.enabled=true"]),
    "decoder+bake": ("default", ["decoder.enabled=true", "decoder.bake=true"]),
    "prior": ("default", ["prior.mode=repair"]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=",".join(PROTOCOL))
    ap.add_argument("--presets", default="vanilla,default", help=f"rows, from {', '.join(ROWS)}")
    ap.add_argument("--time-budget", default=None, help="override every row's training budget (e.g. 2m)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    ap.add_argument("--set", action="append", default=[], help="extra override for every row")
    a = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from recon.api import reconstruct

    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}; set RECON_SHARED_DATA", file=sys.stderr)
        return 2
    results = []
    for scene in a.scenes.split(","):
        for row in a.presets.split(","):
            preset, extra = ROWS[row]
            out = a.out / f"{scene}-{row}"
            t0 = time.perf_counter()
            res = reconstruct(SHARED / scene, out, preset, views=PROTOCOL.get(scene, "8"),
                              time_budget=a.time_budget, iterations=a.iterations, overrides=extra + a.set)
            m = res.metrics
            rec = {"scene": scene, "row": row, "views": PROTOCOL.get(scene, "8"), "psnr": m["psnr"], "ssim": m["ssim"],
                   "psnr_masked": m.get("psnr_masked"), "ssim_masked": m.get("ssim_masked"),
                   "seconds": round(time.perf_counter() - t0, 1), "train_seconds": m.get("train_seconds"),
                   "iterations": m.get("iterations"), "n_gaussians": m["n_gaussians"]}
            results.append(rec)
            print(json.dumps(rec), flush=True)

    t = Table(title="held-out views (test split), 400 px, this machine")
    cols = ["scene", "row", "views", "psnr", "ssim", "psnr_masked", "ssim_masked", "seconds", "iterations", "n_gaussians"]
    for c in cols:
        t.add_column(c)
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) and abs(v) < 1.5 else (f"{v:.2f}" if isinstance(v, float) else str(v)))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        t.add_row(*(fmt(r[c]) for c in cols))
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    Console().print(t)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality.md").write_text("\n".join(lines) + "\n")
    (a.out / "quality.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
