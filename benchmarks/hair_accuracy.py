"""Hair benchmark: held-out heads with procedural hair (and a bald one), tracked with one or more head models.

    python benchmarks/hair_accuracy.py --model bald=/path/to/model --model hair=backend/models/builtin \
        [--clips 2] [--bald-clips 1] [--seeds 0 1 2] [--cache DIR] [--json out.json]

Per model and clip, on every 5th of 30 frames (tracker --preset draft, the true intrinsics):
- face Chamfer-L1 (mm): the geometry benchmark's protocol (``backend/evaluation``: visible face points, camera-scale
  pre-alignment, similarity ICP), the points hidden by the hair left out like those hidden by the head (the
  reference crop keeps no hair: a model with hair rightly puts hair over that skin; 2 % of the face points on the
  long-hair clip, 0.05-0.13 mm of a hair model's face figure there, 0.02 mm of the bald model's);
  ``face_incl_hidden`` keeps them (session 14's figure);
- hair Chamfer-L1 (mm): from ground-truth points on the visible hair (every hair pixel's surface point, at most
  4000) to the tracked mesh: ``hair_placed`` with the face protocol's camera-scale only (the tracker's own pose),
  ``hair_icp`` after a similarity ICP on the hair points themselves (shape alone);
- silhouette IoU of the projected tracked mesh against the ground-truth alpha, both above the neck line
  (``tracking.masks.above_neck_line`` from the projected chin and forehead), goal >= 0.9.
- hair area: the share of the tracked canonical mesh's area on its hair volume (the package's ``hair`` vertex flags;
  none for a model without hair).
Bald clips check that a bald head still fits bald (hair area near 0; hair metrics n/a). ``--seeds``: each clip is
tracked once per tracker seed and its figures are the seeds' mean (``pool_seeds``), each seed's beside them: one run's
face Chamfer moves by up to 0.4 mm between seeds (the bald clip, both models), so a change is judged on several.
The last stdout line is the JSON result.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.evaluation import benchmark, metrics, synthetic  # noqa: E402
from backend.evaluation import hair_clips as hc  # noqa: E402
from backend.tracking import masks as M  # noqa: E402
from backend.tracking import raster  # noqa: E402

EVERY, N_FRAMES = 5, 30
# ICT vertices standing in for MediaPipe's chin (152) and forehead top (10) when projecting the neck line
CHIN_LM68 = 8
FOREHEAD_MODEL = np.array([0.0, 0.32, 0.19])


def neck_line_mask(ict, gt: synthetic.GroundTruth, frame: int) -> np.ndarray:
    """(H, W) bool above the neck line of the ground-truth head in ``frame``."""
    fore = int(np.argmin(np.linalg.norm(ict.neutral - FOREHEAD_MODEL, axis=1)))
    pts = gt.vertices_cam[frame][[ict.landmarks68[CHIN_LM68], fore]].astype(np.float64)
    uv = pts @ gt.K.T
    uv = uv[:, :2] / uv[:, 2:]
    lm = np.zeros((478, 2))
    lm[M.CHIN], lm[M.FOREHEAD] = uv[0], uv[1]
    return M.above_neck_line(lm, (gt.height, gt.width))


def visible_hair_points(clip: hc.HairClip, gt: synthetic.GroundTruth, hair: dict, frame: int, n: int = 4000):
    """(N, 3) camera-space points and normals of the hair visible in ``frame`` (pixel centres, z-buffered)."""
    hv = hc.hair_to_camera(hair["hair_vertices"], gt, frame)
    hf = hair["hair_triangles"].astype(np.int64)
    v = np.concatenate([gt.vertices_cam[frame].astype(np.float64), hv])
    f = np.concatenate([gt.triangles.astype(np.int64), hf + len(gt.vertices_cam[frame])])
    frag = raster.rasterize(v, f, gt.K.astype(np.float64), gt.height, gt.width)
    on_hair = frag.mask & (frag.tri >= len(gt.triangles))
    if not on_hair.any():
        return np.zeros((0, 3)), np.zeros((0, 3))
    tri = f[frag.tri[on_hair]]
    bary = frag.bary[on_hair][..., None]
    p = (v[tri] * bary).sum(1)
    nrm = raster.interpolate(frag, f, raster.vertex_normals(v, f))[on_hair]
    nrm /= np.clip(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9, None)
    keep = np.random.default_rng(frame).permutation(len(p))[:n]
    return p[keep], nrm[keep]


def evaluate(clip: hc.HairClip, run: benchmark.TrackerRun, ict) -> list[dict]:
    gt = clip.ground_truth()
    hair = clip.hair_truth()
    rows = []
    for i in range(0, N_FRAMES, EVERY):
        if i not in run.meshes:
            rows.append({"frame": i, "tracked": False})
            continue
        v, f = run.meshes[i]
        hair_mesh = (hc.hair_to_camera(hair["hair_vertices"], gt, i), hair["hair_triangles"])
        P, N = synthetic.gt_face_points(gt, i, 8000, occluder=hair_mesh)
        face = metrics.evaluate_prediction(P, N, v, f, unaligned=True, camera_scale=True)
        row = {"frame": i, "tracked": True, "face_chamfer_l1_mm": face.chamfer_l1_mm,
               "face_incl_hidden_chamfer_l1_mm": face.chamfer_l1_mm}
        if len(hair_mesh[1]):
            P, N = synthetic.gt_face_points(gt, i, 8000)
            row["face_incl_hidden_chamfer_l1_mm"] = metrics.evaluate_prediction(P, N, v, f,
                                                                                camera_scale=True).chamfer_l1_mm
        k = face.icp.get("camera_scale", 1.0)
        above = neck_line_mask(ict, gt, i)
        pred = raster.rasterize(np.asarray(v, np.float64), np.asarray(f, np.int64), gt.K.astype(np.float64),
                                gt.height, gt.width).mask
        a, b = pred & above, hair["alpha"][i] & above
        row["silhouette_iou"] = float((a & b).sum() / max(1, (a | b).sum()))
        hp, hn = visible_hair_points(clip, gt, hair, i)
        if len(hp) >= 50:
            row["hair_placed_chamfer_l1_mm"] = metrics.surface_metrics(hp, hn, k * np.asarray(v, np.float64),
                                                                        f).chamfer_l1_mm
            row["hair_icp_chamfer_l1_mm"] = metrics.evaluate_prediction(hp, hn, v, f, camera_scale=True).chamfer_l1_mm
        rows.append(row)
    return rows


def hair_area_fraction(package: Path) -> float | None:
    """Share of the package's canonical mesh area whose triangles lie on the hair volume (None: no hair flags)."""
    from backend.contracts.result_format import ResultPackage

    mesh = ResultPackage(package).canonical_mesh()
    if mesh.hair is None:
        return None
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    return float(area[mesh.hair[f].all(1).astype(bool)].sum() / area.sum())


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in ("face_chamfer_l1_mm", "face_incl_hidden_chamfer_l1_mm", "hair_placed_chamfer_l1_mm",
                "hair_icp_chamfer_l1_mm", "silhouette_iou"):
        vals = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        out[key] = float(np.mean(vals)) if vals else None
        if key == "silhouette_iou" and vals:
            out["silhouette_iou_min"] = float(np.min(vals))
    out["tracked_frames"] = sum(r["tracked"] for r in rows)
    return out


POOLED = ("face_chamfer_l1_mm", "face_incl_hidden_chamfer_l1_mm", "hair_placed_chamfer_l1_mm",
          "hair_icp_chamfer_l1_mm", "silhouette_iou", "silhouette_iou_min", "hair_area_fraction")


def pool_seeds(summaries: list[dict]) -> dict:
    """One clip's figures over tracker seeds: per figure the mean of the seeds that have it (None if none does) and
    ``<figure>_seeds``, each seed's value; ``tracked_frames`` the fewest any seed tracked."""
    out = {}
    for key in POOLED:
        vals = [s.get(key) for s in summaries]
        have = [v for v in vals if v is not None]
        out[key] = float(np.mean(have)) if have else None
        out[f"{key}_seeds"] = vals
    out["tracked_frames"] = min(s["tracked_frames"] for s in summaries)
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from host import describe_host, host_line

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=DIR", help="a head model to track with")
    ap.add_argument("--clips", type=int, default=2, help="clips with hair")
    ap.add_argument("--bald-clips", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=hc.DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="tracker seeds (each clip once per seed)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from backend.training.data import ICTModel

    ict = ICTModel()
    specs = [hc.HairClipSpec(index=i) for i in range(a.clips)] + \
        [hc.HairClipSpec(index=a.clips + i, bald=True) for i in range(a.bald_clips)]
    clips = [hc.render_hair_clip(s, a.cache, ict, log=lambda m: print(m, file=sys.stderr)) for s in specs]
    host = describe_host()
    print(host_line(host), file=sys.stderr)
    result = {"host": host, "models": {}}
    for item in a.model:
        label, model_dir = item.split("=", 1)
        per_clip = {}
        for clip in clips:
            runs = []
            for seed in a.seeds:
                cfg = benchmark.BenchmarkConfig(n_frames=N_FRAMES, every=EVERY, threads=a.threads, reuse_tracks=True,
                                                extra_track_args=("--model", str(Path(model_dir).resolve()),
                                                                  "--seed", str(seed)),
                                                track_label=label)
                t0 = time.time()
                run = benchmark.run_tracker(clip, "draft", cfg, log=lambda m: print(m, file=sys.stderr))
                if run.error:
                    runs.append({"seed": seed, "error": run.error})
                    continue
                rows = evaluate(clip, run, ict)
                runs.append({"seed": seed, "summary": {**summarise(rows), "hair_area_fraction":
                                                       hair_area_fraction(run.package)},
                             "rows": rows, "tracker_seconds": run.seconds,
                             "eval_seconds": time.time() - t0 - run.seconds})
            done = [r["summary"] for r in runs if "summary" in r]
            per_clip[clip.spec.key] = {"bald": clip.spec.bald, "runs": runs}
            if done:
                per_clip[clip.spec.key]["summary"] = pool_seeds(done)
                print(f"{label} {clip.spec.key}: {per_clip[clip.spec.key]['summary']}", file=sys.stderr)
        hairy = [c["summary"] for c in per_clip.values() if "summary" in c and not c["bald"]]
        bald = [c["summary"] for c in per_clip.values() if "summary" in c and c["bald"]]

        def mean(rows, key):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        result["models"][label] = {
            "model": str(model_dir), "clips": per_clip,
            "hair_clips": {k: mean(hairy, k) for k in POOLED},
            "bald_clips": {k: mean(bald, k) for k in ("face_chamfer_l1_mm", "silhouette_iou",
                                                      "hair_area_fraction")}}
    print("| model | clips | face CL1 mm | hair CL1 placed / ICP mm | IoU mean (min) | hair area |", file=sys.stderr)
    for label, r in result["models"].items():
        for kind in ("hair_clips", "bald_clips"):
            s = r[kind]
            fmt = (lambda x: "n/a" if x is None else f"{x:.3f}")
            print(f"| {label} | {kind} | {fmt(s.get('face_chamfer_l1_mm'))} | "
                  f"{fmt(s.get('hair_placed_chamfer_l1_mm'))} / {fmt(s.get('hair_icp_chamfer_l1_mm'))} | "
                  f"{fmt(s.get('silhouette_iou'))} ({fmt(s.get('silhouette_iou_min'))}) | "
                  f"{fmt(s.get('hair_area_fraction'))} |", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
