"""Imported by pytest before any test module: `import recon` first sets OMP_WAIT_POLICY=PASSIVE before torch
loads OpenMP (spinning threads make 2-thread torch many times slower on a busy 2-core machine)."""
import recon  # noqa: F401
