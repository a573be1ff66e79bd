"""Tracking accuracy on synthetic held-out ICT-FaceKit clips rendered with Blender Cycles (issue 5).

Reference protocol (docs/mononphm-reference.md section 6): similarity ICP, then one-directional Chamfer-L1/L2
from ground-truth face points to the predicted surface, normal consistency and recall at 1/2.5/5/10 mm. The
tracker (per preset) is reported beside the mean ICT head at the true pose and a MediaPipe face-mesh baseline.

    python benchmarks/tracking_accuracy.py [--clips 3] [--frames 30] [--every 5] [--presets draft standard]

Renders are cached under .cache/evaluation/ (first run: ~1-2 min texture bake + a few s per frame per clip).
Prints progress, a table, and as the LAST line one JSON object (``methods`` → per method the metrics, or
``error`` with "tracker failed: …").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.evaluation import benchmark  # noqa: E402


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30, help="frames per clip")
    ap.add_argument("--every", type=int, default=5, help="evaluate every k-th frame")
    ap.add_argument("--presets", nargs="*", default=["draft"], help="tracker presets (none: baselines only)")
    ap.add_argument("--points", type=int, default=8000, help="ground-truth face points per frame")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--track-all-frames", action="store_true",
                    help="track every frame (default: only the evaluated frames, --frames 0:N:every)")
    ap.add_argument("--no-mediapipe", action="store_true")
    ap.add_argument("--reuse-tracks", action="store_true",
                    help="reuse/resume the clips' existing result packages instead of tracking afresh")
    ap.add_argument("--tracker-timeout", type=float, default=3600.0, help="seconds per tracker run")
    ap.add_argument("--cache", type=Path, default=None, help="render cache (default .cache/evaluation)")
    ap.add_argument("--overlays", type=Path, default=None, metavar="DIR",
                    help="write per-clip error overlays (ground-truth points coloured by distance) into DIR")
    ap.add_argument("--track-arg", action="append", default=[], help="extra argument for the tracker CLI")
    a = ap.parse_args(argv)
    from backend.model.parallel import set_threads

    set_threads(a.threads)
    cfg = benchmark.BenchmarkConfig(
        n_clips=a.clips, n_frames=a.frames, every=a.every, presets=tuple(a.presets), n_points=a.points,
        threads=a.threads, track_all_frames=a.track_all_frames, run_tracker=bool(a.presets),
        run_mediapipe=not a.no_mediapipe, reuse_tracks=a.reuse_tracks, tracker_timeout_s=a.tracker_timeout,
        extra_track_args=tuple(a.track_arg), overlay_dir=a.overlays,
        **({"cache_dir": a.cache} if a.cache else {}))
    result = benchmark.run_benchmark(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(benchmark.format_table(result), flush=True)
    print(json.dumps(_clean(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
