"""`recon view` in a real browser: headless Chromium (software WebGL) shows the object."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from recon.gaussians import Gaussians
from recon.viewer.browser import HeadlessChromium, decode_png, find_chromium, object_pixels, viewer_ready

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")

WIDTH, HEIGHT = 1024, 576  # wide enough that the floating panel (right) clears the centre box
REGION = 0.3  # centre box, as a fraction of each side


def ball(opacity: float, n: int = 600) -> Gaussians:
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    return Gaussians.from_points(p, p * 0.4 + 0.5, 0.12, opacity=opacity)


def start_view(path: Path) -> tuple[subprocess.Popen, str]:
    """`recon view PATH --port 0` in its own process; returns it and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "recon.cli", "view", str(path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    # A thread reads the pipe: select() would miss lines already in the text buffer.
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + 90, []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("viewer: http://"):
            return proc, line.split()[1]
    stop_view(proc)
    raise AssertionError("recon view did not print its URL: " + "".join(seen))


def stop_view(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_browser_shows_the_object(tmp_path):
    from recon.export.ply import write_ply

    write_ply(tmp_path / "object.ply", ball(0.95))
    write_ply(tmp_path / "empty.ply", ball(1e-4))  # same framing, nothing visible: the baseline
    procs = []
    try:
        p_obj, url_obj = start_view(tmp_path / "object.ply")
        procs.append(p_obj)
        p_empty, url_empty = start_view(tmp_path / "empty.ply")
        procs.append(p_empty)
        assert url_obj.startswith("http://127.0.0.1:")
        for url in (url_obj, url_empty):
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.status == 200

        box = int(WIDTH * REGION) * int(HEIGHT * REGION)
        counts: list[int] = []

        def settled(img, text):
            counts.append(object_pixels(img, REGION) if viewer_ready(text) else -1)
            return len(counts) >= 2 and counts[-1] > 0.3 * box and abs(counts[-1] - counts[-2]) <= 0.01 * box

        with HeadlessChromium(width=WIDTH, height=HEIGHT) as b:
            b.open(url_obj)
            png_obj, ok = b.wait_for(settled, timeout=90)
            (tmp_path / "object.png").write_bytes(png_obj)
            assert ok, f"object never showed in the centre: pixel counts {counts}"
            b.open(url_empty)
            _, ready = b.wait_for(lambda img, text: viewer_ready(text), timeout=60)
            assert ready
            time.sleep(2.0)  # as long as the object took to appear after the panel, roughly
            empty = decode_png(b.screenshot())
        n_obj, n_empty = object_pixels(decode_png(png_obj), REGION), object_pixels(empty, REGION)
        assert n_obj > 0.5 * box, (n_obj, box)
        assert n_empty < 0.02 * box, (n_empty, box)
    finally:
        codes = [stop_view(p) for p in procs]
    assert codes == [0] * len(procs)  # Ctrl-C stops the server cleanly
