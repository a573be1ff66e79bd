"""OpenMP settings for the backend process; torch-free, applied before torch loads its OpenMP runtime."""
from __future__ import annotations

import os

# OpenMP workers spin ~300k iterations (libgomp's default) before sleeping; when another process holds one of the
# cores (Blender, a second job) every parallel region then waits on its descheduled worker.  Draft tracking with
# 2 threads beside one busy core: 6.9 s/frame by default, 0.80 s with 2000 spins (idle: 0.56 vs 0.52 s/frame).
GOMP_SPINCOUNT = "2000"


def configure_openmp() -> None:
    """Set the spin limit unless the user set one.  Call before the first `import torch` of the process."""
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
