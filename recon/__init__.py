"""recon: few-view 3D reconstruction with Gaussians."""
from __future__ import annotations

import os

# Before torch loads OpenMP: busy-waiting worker threads make 2-thread torch 10-70x slower as soon as
# anything else runs on a 2-core machine (measured: SSIM at 64 px 332 ms spinning, 4.4 ms passive).
# A short spin (GOMP_SPINCOUNT=3000) instead saved ~10% of a 5k-splat render step on an idle machine,
# but with one other busy process the decoder's step took 2x and spconv's convs 3-5x as long: passive
# it stays. A user's own OpenMP settings win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
