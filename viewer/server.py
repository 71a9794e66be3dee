"""`recon view`: serve a reconstruction (or any 3DGS .ply / .splat) to the browser with viser."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import threading
from pathlib import Path

import viser

from recon.viewer.content import ViewerContent, load_content
from recon.viewer.scene_view import SceneView

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def start_viser(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> viser.ViserServer:
    """A viser server on host:port (port 0: any free port; a busy port moves to the next free one).
    viser's own banner is swallowed: we print our own URL lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        return viser.ViserServer(host=host, port=port, verbose=False)


def stop_viser(server: viser.ViserServer) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        server.stop()


def url_lines(host: str, port: int, requested_port: int | None = None) -> list[str]:
    """What to tell the user: the URL, and for a session on a remote machine the ssh tunnel."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    lines = [f"viewer: http://{shown}:{port}"]
    if requested_port not in (None, 0, port):
        lines.append(f"(port {requested_port} was busy; using {port})")
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT"):
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or "user"
        lines.append(f"on your own computer run: ssh -L {port}:localhost:{port} {user}@{socket.gethostname()}"
                     f"  and open http://localhost:{port}")
    return lines


class ViewerServer:
    """A running `recon view` server. `.url`, `.port`, `.view` (the SceneView), `.stop()`."""

    def __init__(self, server: viser.ViserServer, view: SceneView, content: ViewerContent):
        self.server, self.view, self.content = server, view, content
        self._stopped = threading.Event()

    @property
    def host(self) -> str:
        return self.server.get_host()

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def wait(self) -> None:
        """Block until stop() (or Ctrl-C)."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.view.close()
        stop_viser(self.server)


def show_content(server: viser.ViserServer, content: ViewerContent, title: str = "recon") -> SceneView:
    view = SceneView(server, title=title)
    # Cameras first: they set the up direction and start pose the Gaussians are framed with.
    if content.cameras is not None:
        view.set_cameras(content.cameras)
    if content.hull_points is not None and len(content.hull_points):
        view.set_hull(content.hull_points, content.hull_colors)
    ply_bytes = None
    if content.source is not None and content.source.suffix.lower() == ".ply":
        src = content.source
        ply_bytes = src.read_bytes  # the original file, whatever tool wrote it
    stem = content.source.stem if content.source is not None else "gaussians"
    view.set_gaussians(content.gaussians, ply_bytes=ply_bytes, download_stem=stem)
    return view


def serve(path: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True,
          scene: str | Path | None = None, quiet: bool = False) -> ViewerServer:
    """Serve `path` (a `recon reconstruct` output folder, a .ply or a .splat) at http://host:port.

    Raises ReconError (before anything binds) when the input is unreadable. With block=True it
    returns after Ctrl-C; otherwise it returns the running server: call .stop() when done.
    """
    content = load_content(path, scene_root=scene)
    server = start_viser(host, port)
    try:
        view = show_content(server, content, title=Path(path).name)
    except BaseException:
        stop_viser(server)
        raise
    handle = ViewerServer(server, view, content)
    if not quiet:
        g = content.gaussians
        print(f"showing {len(g):,} Gaussians from {content.source}"
              + (f", {len(content.cameras.names)} cameras" if content.cameras is not None else "")
              + (", voxel hull" if content.hull_points is not None else ""), flush=True)
        for note in content.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        for line in url_lines(server.get_host(), server.get_port(), port):
            print(line, flush=True)
    if block:
        handle.wait()
    return handle

