"""recon: few-view 3D reconstruction with Gaussians."""
from __future__ import annotations

import os

# Before torch loads OpenMP. libgomp's default lets idle workers spin for 300k rounds, and that made
# 2-thread torch 10-70x slower as soon as anything else ran on a 2-core machine (SSIM at 64 px:
# 332 ms spinning, 4.4 ms passive). Sleeping at once (passive) costs a wake-up of ~50-80 us per
# parallel op instead, which is 10% of a small training step. A short spin (3000 rounds, a few us)
# keeps back-to-back ops warm without the pathology: bench/bench_rasterize.py and the free
# iteration of bench/bench_decoder.py measure it. A user's own OpenMP settings win.
_OMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
if not any(name in os.environ for name in _OMP_SETTINGS):
    os.environ["GOMP_SPINCOUNT"] = "3000"  # libgomp (Linux torch wheels)
    os.environ["KMP_BLOCKTIME"] = "0"  # LLVM/Intel OpenMP (macOS wheels) has no spin count: passive

__version__ = "0.1.0"

__all__ = ["reconstruct", "ReconConfig", "load_config", "__version__"]


def __getattr__(name):
    # Lazy, so `import recon` (and the CLI's start-up) stays light.
    if name == "reconstruct":
        from recon.api import reconstruct

        return reconstruct
    if name in ("ReconConfig", "load_config"):
        import recon.config as c

        return getattr(c, name)
    raise AttributeError(name)
