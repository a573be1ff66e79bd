"""Batch throughput: two clips on a local Ray with 2 single-thread workers vs the same two clips one after the other.

    .venv/bin/python benchmarks/batch_throughput.py [--frames 10] [--size 256] [--preset draft]

Both sides are whole command lines as a user runs them (``python -m backend batch A B --workers 2 --threads 1`` vs
``python -m backend track A`` then ``track B``, ``--threads 1``), so the batch pays for starting Ray and its
workers. Clips: the development clip's first ``--frames`` frames and the next ``--frames`` (``$MONONPHM_SHARED`` or
``../shared``), at ``--size`` px. Goal on 2 cores: ratio <= 0.6. Only meaningful on an otherwise idle machine: the
load average before and after is printed beside the figures, with the CPU model, its flags and fp32 matmul peak.

The LAST stdout line is one JSON object: {"sequential_s", "batch_s", "ratio", "per_clip_s", "load_avg", ...}.

Idle runs (2026-12-07 00:12-00:16, Xeon with AVX-512 BF16/AMX, 2 cores, load average 0.4-1.6, 1-thread fp32
matmul peak 125-153 GFLOP/s, 256 px, draft): 8 frames per clip: sequential 54.4 s (27.4 + 27.0), batch 33.1 s,
ratio 0.61; 20 frames per clip: sequential 70.6 s (36.1 + 34.4), batch 48.7 s, ratio 0.69. The goal (<= 0.6) is
not met, and the ratio grows with clip length. The host sets the floor: the same two 20-frame clips as two plain
`track` processes started side by side (no Ray) took 41.4 s each against 34.2 s for one alone (1.21x), a ratio of
0.61 at best; the batch adds about 7 s (Ray's start-up, the workers' imports, the event relay).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from host import describe_host, host_line  # noqa: E402
from tracking_speed import DEFAULT_CLIP  # noqa: E402


def write_clip_halves(src: Path, frames: int, size: int, folders: list[Path]) -> None:
    """The first ``2 * frames`` frames of ``src``, longer side ``size`` px, as two image-folder clips."""
    import av

    with av.open(str(src)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k >= 2 * frames:
                break
            scale = size / max(frame.width, frame.height)
            image = frame.to_image().resize((round(frame.width * scale), round(frame.height * scale)))
            image.save(folders[k // frames] / f"{k:04d}.png")


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wall = time.perf_counter() - t0
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {last}")
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=10, help="frames per clip")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--preset", default="draft")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    result = {"host": describe_host(), "frames_per_clip": a.frames, "size": a.size, "preset": a.preset,
              "load_avg_start": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="batchbench_"))
    clips = [tmp / "first", tmp / "second"]   # two different clips of equal length: the halves of the clip
    for c in clips:
        c.mkdir()
    write_clip_halves(DEFAULT_CLIP, a.frames, a.size, clips)
    py = [sys.executable, "-m", "backend"]
    flags = ["--preset", a.preset, "--max-size", str(a.size), "--threads", "1", "--device", "cpu"]
    per_clip = [timed(py + ["track", str(c), "--out", str(tmp / f"seq_{c.name}")] + flags) for c in clips]
    result["per_clip_s"] = [round(t, 1) for t in per_clip]
    result["sequential_s"] = round(sum(per_clip), 1)
    result["batch_s"] = round(timed(py + ["batch", *map(str, clips), "--out-root", str(tmp / "batch"),
                                          "--workers", "2"] + flags), 1)
    result["ratio"] = round(result["batch_s"] / result["sequential_s"], 3)
    result["load_avg_end"] = os.getloadavg()
    print(host_line(result["host"]), file=sys.stderr)
    print(f"sequential {result['sequential_s']} s ({result['per_clip_s']}), batch {result['batch_s']} s: "
          f"ratio {result['ratio']} (goal <= 0.6); load average {result['load_avg_start']} -> "
          f"{result['load_avg_end']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
