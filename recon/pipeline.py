"""`recon reconstruct`: load -> init -> train -> evaluate -> export."""
from __future__ import annotations

import re
from pathlib import Path

from recon.errors import ReconError


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h', '1m30s' -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise ReconError(f"cannot read the duration {text!r}", fix="write e.g. 90s, 5m or 1h")
    mult = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(a) * mult[b] for a, b in parts)


def run_reconstruct(scene: Path, out: Path, cfg, stop_after: str | None = None, resume: bool = False):
    raise ReconError("the training stage is not built yet; `recon info` shows what was loaded")
