"""Batch throughput: two clips on a local Ray with 2 single-thread workers vs the same two clips one after the other,
beside the host's floor (the same two clips as two plain ``track`` processes side by side, no Ray).

    .venv/bin/python benchmarks/batch_throughput.py [--frames 40] [--size 256] [--preset draft]

All runs are whole command lines as a user runs them, ``--threads 1``: ``python -m backend track A`` then ``track B``
(sequential); ``track A`` and ``track B`` started together (side by side); ``python -m backend batch A B --workers 2``
(batch, which pays for starting Ray and its workers). Clips: the development clip's first ``--frames`` frames and the
next ``--frames`` (``$MONONPHM_SHARED`` or ``../shared``), at ``--size`` px. 40 frames per clip (1.6 s of video at
25 fps) by default: a short take, where the fixed costs (imports, model, identity, bake, USD, Ray's start-up) weigh
more than on the takes a studio batches, so the ratio measured here is an upper bound for longer ones.

Goal on 2 cores: batch / sequential <= 0.6. The side-by-side ratio is what this host allows without any batch
machinery (two processes on two cores run slower than one alone: shared caches, memory bandwidth, turbo), and
``batch_s - side_by_side_s`` is Ray's own cost: its start-up (``startup_s``: from the command's start to the first
clip running on a worker) and its shut-down (``shutdown_s``: from the last clip's result to the command's exit).
Only meaningful on an otherwise idle machine: the load average before and after is printed beside the figures, with
the CPU model, its flags and fp32 matmul peak.

The LAST stdout line is one JSON object: {"sequential_s", "side_by_side_s", "batch_s", "ratio", "floor_ratio",
"ray_overhead_s", "startup_s", "shutdown_s", "per_clip_s", "load_avg_start", "load_avg_end", "host", ...}.

Idle runs before this session's changes (2026-12-07 00:12-00:16, Xeon with AVX-512 BF16/AMX, 2 cores, load average
0.4-1.6, 256 px, draft): 8 frames per clip: sequential 54.4 s, batch 33.1 s, ratio 0.61; 20 frames per clip:
sequential 70.6 s, batch 48.7 s, ratio 0.69, side by side 41.4 s (ratio 0.59 at best on this host).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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


class Run:
    """One backend command line, its protocol events stamped with the seconds since its start."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def wait(self) -> tuple[float, list[tuple[float, dict]]]:
        """-> (wall seconds, [(seconds, event)]); exits the benchmark when the command failed."""
        events = [(time.perf_counter() - self.t0, json.loads(line)) for line in self.proc.stdout if line.strip()]
        self.proc.wait()
        wall = time.perf_counter() - self.t0
        if self.proc.returncode != 0:
            raise SystemExit(f"{' '.join(self.argv)} failed: {events[-1][1] if events else 'no output'}")
        return wall, events


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=40, help="frames per clip")
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

    def track(clip: Path, tag: str) -> Run:
        return Run(py + ["track", str(clip), "--out", str(tmp / f"{tag}_{clip.name}")] + flags)

    per_clip = [track(c, "seq").wait()[0] for c in clips]
    result["per_clip_s"] = [round(t, 1) for t in per_clip]
    result["sequential_s"] = round(sum(per_clip), 1)
    t0 = time.perf_counter()
    side = [track(c, "side") for c in clips]
    result["side_by_side_each_s"] = [round(run.wait()[0], 1) for run in side]
    result["side_by_side_s"] = round(time.perf_counter() - t0, 1)
    wall, events = Run(py + ["batch", *map(str, clips), "--out-root", str(tmp / "batch"), "--workers", "2"]
                       + flags).wait()
    result["batch_s"] = round(wall, 1)
    running = [t for t, e in events if e["type"] == "clip_state" and e["state"] == "running"]
    results = [t for t, e in events if e["type"] == "result" and e.get("clip")]
    result["startup_s"] = round(min(running), 1)
    result["shutdown_s"] = round(wall - max(results), 1)
    result["ratio"] = round(result["batch_s"] / result["sequential_s"], 3)
    result["floor_ratio"] = round(result["side_by_side_s"] / result["sequential_s"], 3)
    result["ray_overhead_s"] = round(result["batch_s"] - result["side_by_side_s"], 1)
    result["load_avg_end"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    print(host_line(result["host"]), file=sys.stderr)
    print(f"{a.frames} frames per clip: sequential {result['sequential_s']} s ({result['per_clip_s']}), side by "
          f"side {result['side_by_side_s']} s (floor ratio {result['floor_ratio']}), batch {result['batch_s']} s: "
          f"ratio {result['ratio']} (goal <= 0.6); Ray's cost {result['ray_overhead_s']} s (start-up to the first "
          f"clip running {result['startup_s']} s, last result to exit {result['shutdown_s']} s); load average "
          f"{result['load_avg_start']} -> {result['load_avg_end']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
