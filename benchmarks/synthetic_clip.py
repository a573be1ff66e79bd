"""Render (or reuse from .cache/evaluation/) a synthetic held-out ICT-FaceKit clip with ground truth.

    python benchmarks/synthetic_clip.py --index 0 [--frames 30] [--size 384] [--samples 12]

Prints the cache folder (clip.mp4, frames/frame_NNNN.png, gt.npz, meta.json) and the render time per frame.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.evaluation import synthetic  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=0, help="held-out identity index (seed stream 7_300_000 + i)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=384, help="square image size in pixels")
    ap.add_argument("--samples", type=int, default=12, help="Cycles samples per pixel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None)
    a = ap.parse_args(argv)
    spec = synthetic.ClipSpec(index=a.index, n_frames=a.frames, width=a.size, height=a.size, samples=a.samples)
    clip = synthetic.render_clip(spec, a.cache, threads=a.threads)
    print(json.dumps({"folder": str(clip.folder), "video": str(clip.video), "gt": str(clip.gt_path), **clip.meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
