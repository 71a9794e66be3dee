"""Headless Chromium driven over the DevTools protocol: screenshots of the viewer page.

Used by the viewer tests and to make docs/viewer.png. The plain `chromium --screenshot` flag takes
its picture when a virtual clock runs out, which does not wait for viser's websocket data, so the
picture is sometimes empty; here we poll real screenshots until the page shows what we wait for.

    python -m recon.viewer.browser http://127.0.0.1:8080 out.png [--size 1200x800]
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

# WebGL in a GPU-less headless browser: SwiftShader (software), opted in explicitly.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]


def find_chromium() -> str | None:
    env = os.environ.get("RECON_CHROMIUM")
    for c in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def object_pixels(img: np.ndarray, region: float = 0.3, background=(255, 255, 255), tol: int = 24) -> int:
    """Pixels in the central `region` x `region` box (fractions of width/height) that differ from the
    background colour by more than `tol` in some channel: how much of an object the canvas shows."""
    h, w = img.shape[:2]
    y0, y1 = int(h * (0.5 - region / 2)), int(h * (0.5 + region / 2))
    x0, x1 = int(w * (0.5 - region / 2)), int(w * (0.5 + region / 2))
    box = img[y0:y1, x0:x1].astype(np.int16)
    diff = np.abs(box - np.asarray(background, dtype=np.int16)).max(axis=2)
    return int((diff > tol).sum())


class HeadlessChromium:
    """One headless Chromium process (own temporary profile); close() ends it."""

    def __init__(self, executable: str | None = None, width: int = 800, height: int = 600):
        from websockets.sync.client import connect

        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium executable found (set RECON_CHROMIUM)")
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="recon-chromium-")
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            ws_url = self._devtools_url(timeout=30.0)
            self._ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self._session: str | None = None

    def _devtools_url(self, timeout: float) -> str:
        found: list[str] = []

        def read():
            for raw in self.proc.stderr:  # type: ignore[union-attr]
                m = re.search(rb"DevTools listening on (ws://\S+)", raw)
                if m and not found:
                    found.append(m.group(1).decode())
            # keep draining so chromium never blocks on a full pipe

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        return found[0]

    def _call(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60.0) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        # Open the page directly in a new target: navigating an about:blank target swaps its
        # renderer process and drops the session.
        target = self._call("Target.createTarget", {"url": url},
                            session=False)["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                   session=False)["sessionId"]
        self._call("Emulation.setDeviceMetricsOverride",
                   {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, expression: str):
        res = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res.get("result", {}).get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("Page.captureScreenshot", {"format": "png"})["data"])

    def page_text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, condition: Callable[[np.ndarray, str], bool], timeout: float = 40.0,
                 interval: float = 0.5) -> tuple[bytes, bool]:
        """Screenshot every `interval` s until condition(image, page_text) holds; (last png, held)."""
        deadline = time.monotonic() + timeout
        while True:
            png = self.screenshot()
            if condition(decode_png(png), self.page_text()):
                return png, True
            if time.monotonic() > deadline:
                return png, False
            time.sleep(interval)

    def hide_notifications(self) -> None:
        """Remove toast notifications (e.g. viser's 'software WebGL' notice) from the page."""
        self.evaluate("document.querySelectorAll('.mantine-Notifications-root, .mantine-Notification-root')"
                      ".forEach(e => e.remove())")

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "HeadlessChromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def viewer_ready(text: str) -> bool:
    """The panel has received the scene (our count line is there)."""
    return "Gaussians shown" in text


def capture_viewer(url: str, out_png: str | Path | None = None, width: int = 800, height: int = 600,
                   min_object_pixels: int = 500, timeout: float = 60.0,
                   hide_notifications: bool = False) -> tuple[np.ndarray, bool]:
    """Screenshot the viewer page once the object shows in the centre of the canvas and the
    picture has settled (splats fade in and get re-sorted for a few frames), or at the timeout.
    Returns (RGB image, whether a settled object appeared)."""
    history: list[int] = []

    def settled(img: np.ndarray, text: str) -> bool:
        history.append(object_pixels(img) if viewer_ready(text) else 0)
        if len(history) < 2:
            return False
        a, b = history[-2], history[-1]
        return b >= min_object_pixels and abs(a - b) <= 0.01 * b

    with HeadlessChromium(width=width, height=height) as b:
        b.open(url)
        png, ok = b.wait_for(settled, timeout=timeout)
        if hide_notifications:
            b.hide_notifications()
            time.sleep(0.5)
            png = b.screenshot()
    if out_png is not None:
        from recon.io_utils import atomic_write_bytes

        atomic_write_bytes(out_png, png)
    return decode_png(png), ok


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--size", default="800x600")
    p.add_argument("--hide-notifications", action="store_true")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    img, ok = capture_viewer(a.url, a.out, w, h, hide_notifications=a.hide_notifications)
    print(f"wrote {a.out} ({img.shape[1]}x{img.shape[0]}); object {'shown' if ok else 'NOT shown'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
