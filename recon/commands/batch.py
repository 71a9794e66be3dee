"""`recon batch MANIFEST.yaml`: many scenes, locally or on a Ray cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _fmt(v, nd=2):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def register(app: typer.Typer, user_errors) -> None:
    @app.command("batch")
    @user_errors
    def batch_cmd(
        manifest: Path = typer.Argument(..., help="Manifest .yaml (output, defaults, scenes)."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="Scenes at a time (local) / CPUs for a local Ray."),
        backend: str = typer.Option("local", help="local | ray"),
        address: Optional[str] = typer.Option(None, help="Ray cluster: 'auto' or ray://host:port."),
    ):
        """Reconstruct every scene of a manifest; a summary table, summary.csv and summary.json."""
        from rich.console import Console
        from rich.table import Table

        from recon.batch import load_manifest, run_batch
        from recon.train.trainer import TrainingInterrupted

        console = Console(stderr=True)
        m = load_manifest(manifest)
        console.print(f"batch: {len(m.jobs)} scene(s) -> {m.output} ({backend}, {jobs} at a time)")

        def on_result(r):
            tag = "[green]done" if r["status"] == "done" else "[red]failed"
            extra = " (already finished)" if r.get("skipped") else (f": {r['error']}" if r["error"] else "")
            console.print(f"  {tag}[/] {r['name']}{extra}", highlight=False)

        try:
            rows = run_batch(m, jobs=jobs, backend=backend, address=address, on_result=on_result)
        except TrainingInterrupted as e:
            console.print(f"[bold yellow]interrupted:[/] {e} Re-run the same batch to continue.")
            raise typer.Exit(130)
        t = Table(title=f"batch {manifest}")
        for c in ("scene", "status", "seconds", "psnr", "ssim", "psnr masked", "gaussians", "error"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["name"], r["status"], _fmt(r["seconds"], 1), _fmt(r["psnr"]), _fmt(r["ssim"], 3),
                      _fmt(r["psnr_masked"]), _fmt(r["n_gaussians"]), r["error"] or "")
        Console().print(t)
        console.print(f"summary: {m.output / 'summary.csv'}, {m.output / 'summary.json'}")
        if any(r["status"] != "done" for r in rows):
            raise typer.Exit(1)
