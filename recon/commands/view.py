"""`recon view OUT_DIR|FILE.ply`: look at a reconstruction in the browser."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, user_errors) -> None:
    @app.command()
    @user_errors
    def view(
        path: Path = typer.Argument(..., help="A `recon reconstruct` output folder, or a 3DGS .ply / .splat file."),
        port: int = typer.Option(8080, help="Port to serve on (0: any free port; a busy one moves to the next)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind. 0.0.0.0 exposes the viewer to your network."),
        scene: Optional[Path] = typer.Option(None, help="Scene folder with the input photos shown on the cameras "
                                                        "(default: the one named in OUT_DIR/cameras.json)."),
    ):
        """Show Gaussians, input cameras and the voxel hull in the browser (viser). Ctrl-C stops."""
        from recon.viewer.server import serve

        serve(path, host=host, port=port, block=True, scene=scene)
