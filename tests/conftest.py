"""Imported by pytest before any test module: `import recon` first sets OpenMP's idle-wait policy (a short
spin) before torch loads OpenMP (long spinning makes 2-thread torch many times slower on a busy 2-core
machine)."""
import recon  # noqa: F401
