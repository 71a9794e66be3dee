"""Live view of training: the trainer calls `update()` every step; the page shows the current
Gaussians, a progress bar, a loss/PSNR plot and the Gaussian count, with pause/resume and
stop-and-save buttons.

Cost to training: update() only appends numbers and, every `update_every` steps, copies the
Gaussian tensors; conversion and sending run in a background thread that rests after each send
for (1 / max_overhead - 1) times as long as the send took, so it uses at most `max_overhead`
(10 %) of the wall time. One snapshot waits at a time: while one is waiting, due snapshots are
skipped (the next is taken as soon as the slot is free), so a slow browser never slows the trainer.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from recon.gaussians import Gaussians
from recon.viewer.server import DEFAULT_HOST, DEFAULT_PORT, start_viser, stop_viser, url_lines
from recon.viewer.scene_view import SceneView, cameras_from_scene

PANEL_PERIOD = 0.25  # s between progress/plot refreshes (the page needs no more)
PLOT_POINTS = 400  # the plot keeps at most this many points (evenly thinned), so messages stay small


class LiveViewer:
    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, update_every: int = 50,
                 total_steps: int | None = None, max_overhead: float = 0.10, quiet: bool = False,
                 title: str = "recon: training"):
        if update_every < 1:
            raise ValueError("update_every must be >= 1")
        if not 0 < max_overhead <= 1:
            raise ValueError("max_overhead must be in (0, 1]")
        self.update_every = int(update_every)
        self.total_steps = total_steps
        self.max_overhead = float(max_overhead)
        self.server = start_viser(host, port)
        self.view = SceneView(self.server, title=title)
        self._build_training_panel()
        self._paused = threading.Event()
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._pending: Gaussians | None = None  # latest snapshot waiting to be sent
        self._pending_step = -1
        self._snapshot_due = False
        self._free_at = 0.0  # monotonic time the sender may take the next snapshot
        self._history: list[tuple[int, float, float]] = []  # (step, loss, psnr)
        self._last_step = 0
        self._last_metrics: dict = {}
        self._gui_dirty = False
        self._panel_at = 0.0
        self._busy = False  # the sender is working on taken-over work
        self.sent_steps: list[int] = []  # steps whose Gaussians reached the page
        self.update_seconds = 0.0  # time spent inside update() (the trainer's cost)
        self.sender_seconds = 0.0  # time the background sender was busy
        self._thread = threading.Thread(target=self._sender, name="live-viewer", daemon=True)
        self._thread.start()
        if not quiet:
            for line in url_lines(self.server.get_host(), self.server.get_port(), port):
                print(line, flush=True)

    # ---------------------------------------------------------------- panel

    def _build_training_panel(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Training", order=-1):
            self.progress_bar = gui.add_progress_bar(0.0, animated=False)
            self.status_md = gui.add_markdown("waiting for the first step")
            self.pause_button = gui.add_button("Pause", icon=self._icon("PLAYER_PAUSE"))
            self.stop_button = gui.add_button("Stop and save", color="red", icon=self._icon("PLAYER_STOP"))
            self.plot = gui.add_uplot(
                data=(np.zeros(0), np.zeros(0), np.zeros(0)),
                series=({"label": "step"},
                        {"label": "loss", "stroke": "#d9480f", "scale": "loss", "width": 1.5},
                        {"label": "PSNR", "stroke": "#1971c2", "scale": "psnr", "width": 1.5}),
                axes=({}, {"scale": "loss", "label": "loss"}, {"scale": "psnr", "side": 1, "label": "PSNR (dB)",
                                                               "grid": {"show": False}}),
                scales={"x": {"time": False}, "loss": {"auto": True}, "psnr": {"auto": True}},
                aspect=1.6)
        self.pause_button.on_click(lambda _: self._toggle_pause())
        self.stop_button.on_click(lambda _: self._request_stop())

    @staticmethod
    def _icon(name: str):
        import viser

        return getattr(viser.Icon, name, None)

    def _mark_urgent(self) -> None:
        # Button feedback should not wait for the panel period.
        self._panel_at = 0.0
        self._gui_dirty = True
        self._wake.set()

    def _toggle_pause(self) -> None:
        if self._paused.is_set():
            self._paused.clear()
            self.pause_button.label = "Pause"
            self.pause_button.icon = self._icon("PLAYER_PAUSE")
        else:
            self._paused.set()
            self.pause_button.label = "Resume"
            self.pause_button.icon = self._icon("PLAYER_PLAY")
        self._mark_urgent()

    def _request_stop(self) -> None:
        self._stop_requested.set()
        self._paused.clear()  # a paused trainer must wake up to save
        self.pause_button.disabled = True
        self.stop_button.disabled = True
        self._mark_urgent()

    # ---------------------------------------------------------------- trainer side

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def update(self, step: int, gaussians: Gaussians, metrics: dict | None = None) -> None:
        """Record `metrics` (loss, psnr, n_gaussians; optional progress in [0, 1] or total_steps)
        and, every `update_every` steps, hand a copy of `gaussians` to the sender thread."""
        t0 = time.perf_counter()
        metrics = metrics or {}
        with self._lock:
            self._last_step = int(step)
            self._last_metrics = dict(metrics)
            loss, psnr = metrics.get("loss"), metrics.get("psnr")
            if loss is not None or psnr is not None:
                self._history.append((int(step), _num(loss), _num(psnr)))
            if step % self.update_every == 0:
                self._snapshot_due = True
            # One snapshot in flight at a time; the sender sends it once its rest is over.
            take = self._snapshot_due and self._pending is None
            self._gui_dirty = True
        if take:
            # Copy now: the optimiser changes the parameters in place on the next step.
            snap = Gaussians(*(t.detach().to("cpu", copy=True) for t in gaussians.tensors()))
            with self._lock:
                self._pending, self._pending_step = snap, int(step)
                self._snapshot_due = False
        self._wake.set()
        self.update_seconds += time.perf_counter() - t0

    def wait_while_paused(self, poll: float = 0.1) -> None:
        """For trainers: block while paused (returns at once on stop)."""
        while self.paused and not self.stop_requested and not self._closed:
            time.sleep(poll)

    def set_cameras(self, cameras, names: list[str] | None = None, images=None, splits: list[str] | None = None) -> None:
        """Input cameras (recon Cameras, in the frame of the streamed Gaussians) with optional
        (H, W, 3) uint8 images and "train"/"test" splits."""
        from recon.viewer.content import CameraViews, thumbnail

        n = len(cameras)
        imgs = [None if im is None else thumbnail(np.asarray(im)) for im in (images if images is not None else [None] * n)]
        self.view.set_cameras(CameraViews(cameras, list(names or [str(i) for i in range(n)]),
                                          list(splits or ["train"] * n), imgs))

    def set_hull(self, points, colors=None) -> None:
        self.view.set_hull(_to_numpy(points), None if colors is None else _to_numpy(colors))

    def set_scene(self, scene, train_idx=None, init_result=None) -> None:
        """Called by the pipeline once the scene is loaded: cameras with their photos, and the
        carved voxels of the init stage when there are any."""
        self.view.set_cameras(cameras_from_scene(scene, train_idx))
        voxels = getattr(init_result, "voxels", None)
        if voxels is not None and len(voxels):
            centers = voxels.centers() if callable(getattr(voxels, "centers", None)) else voxels.centers
            colors = getattr(voxels, "colors", None)
            self.set_hull(centers, colors)

    # ---------------------------------------------------------------- sender thread

    def _sender(self) -> None:
        while True:
            self._wake.wait(timeout=PANEL_PERIOD)
            self._wake.clear()
            if self._closed:
                return
            now = time.monotonic()
            if now < self._free_at:
                time.sleep(self._free_at - now)
            with self._lock:
                snap, step = self._pending, self._pending_step
                panel_due = self._gui_dirty and time.monotonic() >= self._panel_at
                if panel_due:
                    self._gui_dirty = False
                self._busy = snap is not None or panel_due
            if not self._busy:
                continue
            t0 = time.perf_counter()
            try:
                if panel_due:
                    self._refresh_panel()
                    self._panel_at = time.monotonic() + PANEL_PERIOD
                if snap is not None:
                    self.view.set_gaussians(snap, download_stem=f"step_{step:06d}")
                    self.sent_steps.append(step)
            finally:
                with self._lock:
                    if snap is not None:
                        self._pending = None
                    self._busy = False
                busy = time.perf_counter() - t0
                self.sender_seconds += busy
                # Rest so that busy / (busy + rest) <= max_overhead.
                self._free_at = time.monotonic() + busy * (1.0 / self.max_overhead - 1.0)

    def _refresh_panel(self) -> None:
        with self._lock:
            step, m = self._last_step, dict(self._last_metrics)
            hist = list(self._history)
        total = m.get("total_steps", self.total_steps)
        progress = m.get("progress")
        if progress is None and total:
            progress = step / max(int(total), 1)
        if progress is not None:
            self.progress_bar.value = float(np.clip(progress, 0.0, 1.0)) * 100.0
        parts = [f"step **{step:,}**" + (f" / {int(total):,}" if total else "")]
        if m.get("n_gaussians") is not None:
            parts.append(f"**{int(m['n_gaussians']):,}** Gaussians")
        if m.get("loss") is not None:
            parts.append(f"loss {float(m['loss']):.4f}")
        if m.get("psnr") is not None:
            parts.append(f"PSNR {float(m['psnr']):.2f} dB")
        state = "stopping: saving" if self.stop_requested else ("paused" if self.paused else "")
        self.status_md.content = " · ".join(parts) + (f"  \n*{state}*" if state else "")
        if hist:
            arr = np.asarray(hist, dtype=np.float64)
            if len(arr) > PLOT_POINTS:
                arr = arr[np.linspace(0, len(arr) - 1, PLOT_POINTS).round().astype(int)]
            self.plot.data = (arr[:, 0], arr[:, 1], arr[:, 2])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the latest snapshot has been sent (tests, and before closing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._pending is None and not self._gui_dirty and not self._busy
            if idle:
                return True
            self._panel_at = 0.0
            self._wake.set()
            time.sleep(0.02)
        return False

    def hold(self) -> None:
        """After training: keep the page up (last streamed state) until Ctrl-C."""
        self.flush()
        self.pause_button.disabled = True
        self.stop_button.disabled = True
        self.status_md.content += "  \n*training finished*"
        print(f"training finished; the viewer stays open at {self.url} (Ctrl-C to quit)", flush=True)
        try:
            while not self._closed:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.view.close()
        stop_viser(self.server)

    def __enter__(self) -> "LiveViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _to_numpy(t) -> np.ndarray:
    import torch

    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
