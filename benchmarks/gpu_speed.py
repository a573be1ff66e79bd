"""GPU speed: the model core's throughput and end-to-end tracking on a CUDA device, with the GPU's name.

    .venv/bin/python benchmarks/gpu_speed.py [--frames 0:250] [--presets draft,standard] [--device cuda] [--quick]

For a machine with an NVIDIA GPU (the issue's goals: standard <= 0.1 s per frame end to end with the built-in model on
an H100-class GPU, official-size model core figures beside it).  Measures on ``--device``:
  * model core, built-in and official sizes (geometric-init networks: the official checkpoint is not shipped):
    SDF-only points/s (no grad), SDF + colour points/s, and a tracking step (SDF, colour and d sdf/dx with
    create_graph, backward to the codes) points/s, each the best of several synchronised calls;
  * end to end: ``benchmarks/tracking_speed.py --device DEVICE`` (``python -m backend track`` as a subprocess on
    cap12_edit, per-stage figures) for each preset, ``--output both``.
``--device cpu --quick`` runs the same code on the CPU (a smoke test of the script).  The LAST stdout line is one JSON
object: {"host" (with "gpu"), "model_core": {size: {...}}, "tracking": <tracking_speed's JSON>}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from backend.model import MonoNPHM, MonoNPHMConfig, geometric_init  # noqa: E402
from host import describe_host, host_line  # noqa: E402
from model_throughput import mean_anchors  # noqa: E402


def best_time(fn, device: str, reps: int) -> float:
    """Best wall time of fn() over reps calls after a warm-up, the device synchronised around each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def model_core(size: str, device: str, quick: bool) -> dict:
    cfg = MonoNPHMConfig.official() if size == "official" else MonoNPHMConfig.builtin()
    torch.manual_seed(0)
    model = MonoNPHM(cfg, mean_anchors(cfg.n_anchors)).eval()
    geometric_init(model, 0.42)
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    n, n_track, reps = (4096, 1024, 2) if quick else (262144, 32768, 5)
    lo, hi = (torch.tensor(b, dtype=torch.float32, device=device) for b in cfg.mesh_box)
    x = lo + (hi - lo) * torch.rand(1, n, 3, device=device)
    zg, za, ze = (0.1 * torch.randn_like(z) for z in model.zero_codes(1, device=device))

    def track_step():
        codes = [z.clone().requires_grad_(True) for z in (zg, za, ze)]
        out = model(x[:, :n_track], *codes, with_color=True, with_gradient=True)
        loss = out.sdf.abs().mean() + out.color.abs().mean() + out.gradient.norm(dim=-1).mean()
        loss.backward()

    sdf_s = best_time(lambda: model.sdf_only(x, zg, ze), device, reps)
    col_s = best_time(lambda: model.query(x, zg, za, ze), device, reps)
    step_s = best_time(track_step, device, reps)
    return {"points": n, "sdf_pts_per_s": round(n / sdf_s), "sdf_color_pts_per_s": round(n / col_s),
            "track_step_points": n_track, "track_step_pts_per_s": round(n_track / step_s)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", default="0:250")
    ap.add_argument("--presets", default="draft,standard")
    ap.add_argument("--sizes", default="builtin,official")
    ap.add_argument("--quick", action="store_true", help="small inputs (a smoke test of the script)")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run it on a GPU machine (or --device cpu --quick to test the script)")
    host = describe_host(device=a.device)
    print(host_line(host), file=sys.stderr, flush=True)
    core = {}
    for size in a.sizes.split(","):
        core[size] = model_core(size, a.device, a.quick)
        print(f"[{size}] {core[size]}", file=sys.stderr, flush=True)
    cmd = [sys.executable, str(HERE / "tracking_speed.py"), "--device", a.device, "--frames", a.frames,
           "--presets", a.presets, "--output", "both"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"tracking_speed.py failed (exit {proc.returncode})")
    tracking = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"host": host, "model_core": core, "tracking": tracking}))


if __name__ == "__main__":
    main()
