import os
import sys

# OpenMP workers spin ~300k iterations (libgomp's default) before sleeping; when another process holds one of the
# cores (Blender, a second job) every parallel region then waits on its descheduled worker.  Draft tracking with
# 2 threads beside one busy core: 6.9 s/frame by default, 0.80 s with 2000 spins (idle: 0.56 vs 0.52 s/frame).
# Must be set before torch loads its OpenMP runtime; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

from .cli import main  # noqa: E402

sys.exit(main())
