"""recon: few-view 3D reconstruction with Gaussians."""
from __future__ import annotations

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
