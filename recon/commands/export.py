"""`recon export OUT --format ply|splat|mesh|video|all [-o PATH]`: take a reconstruction into other tools."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

FORMATS = ("ply", "splat", "mesh", "video", "all")
# Default file names inside the output folder.
DEFAULT_NAMES = {"ply": ["gaussians.ply"], "splat": ["gaussians.splat"], "mesh": ["mesh.ply"],
                 "video": ["turntable.mp4", "turntable.gif"]}
SUFFIXES = {"ply": (".ply",), "splat": (".splat",), "mesh": (".ply", ".obj"), "video": (".mp4", ".gif")}


def resolve_input(src: Path, cameras: Path | None) -> tuple[Path, Path | None, Path]:
    """(gaussians file, cameras.json or None, default output folder) for OUT or a .ply/.splat path."""
    from recon.errors import ReconError

    if src.is_dir():
        gaussians = src / "point_cloud.ply"
        if not gaussians.is_file():
            raise ReconError("no point_cloud.ply in this folder", path=src,
                             fix="pass the folder written by `recon reconstruct -o`, or a .ply/.splat file")
        folder, out_dir = src, src / "export"
    elif src.is_file():
        if src.suffix.lower() not in (".ply", ".splat"):
            raise ReconError(f"cannot export from a {src.suffix or 'suffix-less'} file", path=src,
                             fix="pass a reconstruction folder, a .ply or a .splat")
        gaussians, folder, out_dir = src, src.parent, src.parent / "export"
    else:
        raise ReconError("no such file or folder", path=src, fix="pass the folder written by `recon reconstruct -o`")
    if cameras is not None:
        if not cameras.is_file():
            raise ReconError("no such cameras file", path=cameras, fix="pass OUT/cameras.json or leave --cameras out")
        return gaussians, cameras, out_dir
    found = folder / "cameras.json"
    return gaussians, (found if found.is_file() else None), out_dir


def output_paths(fmt: str, out: Path | None, default_dir: Path) -> dict[str, list[Path]]:
    """Where each format goes. For one format, -o may be a file (its suffix must fit) or a folder;
    for `all` it is a folder."""
    from recon.errors import ReconError

    formats = [f for f in FORMATS if f != "all"] if fmt == "all" else [fmt]
    if out is not None and out.suffix and not out.is_dir():
        if fmt == "all":
            raise ReconError("--format all writes several files, so -o must be a folder", path=out,
                             fix="pass a folder name without a suffix")
        if out.suffix.lower() not in SUFFIXES[fmt]:
            raise ReconError(f"a {fmt} export cannot be written as {out.suffix}", path=out,
                             fix=f"use a path ending in {' or '.join(SUFFIXES[fmt])}")
        return {fmt: [out]}
    folder = out if out is not None else default_dir
    return {f: [folder / name for name in DEFAULT_NAMES[f]] for f in formats}


def run_export(src: Path, fmt: str = "all", out: Path | None = None, cameras: Path | None = None, *,
               frames: int = 60, fps: int = 30, size: int = 512, poisson: bool = False, mesh_views: int = 48,
               mesh_resolution: int = 256, log=print) -> list[Path]:
    from recon.errors import ReconError
    from recon.export import load_gaussians, write_ply, write_splat
    from recon.export.views import read_cameras_json

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ReconError(f"unknown export format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    for name, value, least in (("--frames", frames, 1), ("--fps", fps, 1), ("--size", size, 16),
                               ("--mesh-views", mesh_views, 1), ("--mesh-resolution", mesh_resolution, 16)):
        if value < least:
            raise ReconError(f"{name} must be at least {least}, got {value}", fix=f"pass {name} {least} or more")
    gaussians_path, cameras_path, default_dir = resolve_input(Path(src), cameras)
    targets = output_paths(fmt, out, default_dir)
    if any(p.resolve() == gaussians_path.resolve() for ps in targets.values() for p in ps):
        raise ReconError("the export would overwrite its own input", path=gaussians_path, fix="pass another -o")
    g = load_gaussians(gaussians_path)
    if len(g) == 0:
        raise ReconError("the file holds no Gaussians", path=gaussians_path, fix="check the reconstruction finished")
    cams = read_cameras_json(cameras_path).cameras if cameras_path is not None else None
    log(f"read {len(g)} Gaussians (SH degree {g.sh_degree}) from {gaussians_path}"
        + (f", {len(cams)} cameras from {cameras_path}" if cams is not None else ", no cameras (orbit from the bounds)"))
    written: list[Path] = []
    for f, paths in targets.items():
        if f == "ply":
            written += [write_ply(p, g) for p in paths]
        elif f == "splat":
            written += [write_splat(p, g) for p in paths]
        elif f == "mesh":
            from recon.export.mesh import extract_mesh

            for p in paths:
                mesh = extract_mesh(g, p, cams, n_views=mesh_views, resolution=mesh_resolution, poisson=poisson)
                log(f"mesh: {len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles")
                written.append(p)
        elif f == "video":
            from recon.export.video import render_turntable

            written += render_turntable(g, paths, cams, n_frames=frames, fps=fps, size=size)
    return written


def register(app: typer.Typer, user_errors) -> None:
    @app.command("export")
    @user_errors
    def export(
        src: Path = typer.Argument(..., help="Reconstruction folder (point_cloud.ply, cameras.json) or a .ply/.splat file."),
        fmt: str = typer.Option("all", "--format", "-f", help="ply | splat | mesh | video | all."),
        out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output file (one format) or folder (default SRC/export)."),
        cameras: Optional[Path] = typer.Option(None, help="cameras.json to frame the views (default: beside the input)."),
        frames: int = typer.Option(60, help="Turntable frames (one full orbit)."),
        fps: int = typer.Option(30, help="Turntable frames per second."),
        size: int = typer.Option(512, help="Turntable frame height in pixels."),
        poisson: bool = typer.Option(False, help="Re-mesh the fused surface with screened Poisson (watertight)."),
        mesh_views: int = typer.Option(48, help="Virtual views rendered for mesh fusion."),
        mesh_resolution: int = typer.Option(256, help="Render size of those views in pixels."),
    ):
        """Export Gaussians as a standard 3DGS .ply, a .splat, a coloured mesh or a turntable video."""
        from rich.console import Console

        console = Console(stderr=True)
        written = run_export(src, fmt, out, cameras, frames=frames, fps=fps, size=size, poisson=poisson,
                             mesh_views=mesh_views, mesh_resolution=mesh_resolution,
                             log=lambda m: console.print(m, highlight=False))
        for p in written:
            print(p)
