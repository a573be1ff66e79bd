"""Tracking-accuracy benchmark: synthetic held-out clips → tracker CLI → reference protocol, beside two baselines.

Used by ``benchmarks/tracking_accuracy.py``. For each clip (``synthetic.render_clip``, cached) and every
``every``-th frame: ground-truth face points (``synthetic.gt_face_points``) are compared with

- ``tracker_<preset>``: ``python -m backend track clip.mp4 --out … --preset P`` with the true intrinsics; the
  result package's per-frame fixed-topology vertices (model metres) are posed with its s, R, t into the camera;
- ``mean_head``: the mean ICT head at the true pose;
- ``mediapipe``: the MediaPipe face mesh lifted to 3-D (``baselines``), pre-aligned with ``coarse_similarity``;

all through ``metrics.evaluate_prediction``: a 1-D search along the monocular size/depth ambiguity
(``camera_scale_prealignment``: the prediction scaled about the camera centre), then the reference's similarity ICP
and one-directional metrics. The reference starts its local ICP from a metric tracker's pose; without the search a
tracker placed a few cm too deep would be scored on its depth, not its shape (the raw, unaligned Chamfer-L1 is
reported beside it for that). Aggregation as the reference (6.6): nan-mean over a clip's frames, then the plain mean
over clips.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import baselines, metrics, synthetic
from ..contracts.track_config import TrackConfig

GOAL_CHAMFER_L1_MM = 1.5


@dataclass
class BenchmarkConfig:
    n_clips: int = 3
    n_frames: int = 30
    every: int = 5                      # evaluate frames 0, every, 2·every, …
    presets: tuple[str, ...] = ("draft",)
    n_points: int = 8000                # ground-truth face points per frame
    threads: int = 1
    cache_dir: Path = synthetic.DEFAULT_CACHE
    tracker_timeout_s: float = 3600.0
    track_all_frames: bool = False      # False: the tracker only tracks the evaluated frames (--frames ::every)
    run_tracker: bool = True
    reuse_tracks: bool = False          # True: resume/reuse an existing result package of the clip
    run_mediapipe: bool = True
    extra_track_args: tuple[str, ...] = ()
    track_label: str = ""               # names the result package folder (e.g. the tracker version under test)
    overlay_dir: Path | None = None     # write per-clip error overlays (PNG) here
    spec_overrides: dict = field(default_factory=dict)

    def spec(self, index: int) -> synthetic.ClipSpec:
        return synthetic.ClipSpec(index=index, n_frames=self.n_frames, **self.spec_overrides)

    def eval_frames(self) -> np.ndarray:
        return np.arange(0, self.n_frames, self.every)


@dataclass
class TrackerRun:
    """Outcome of one tracker subprocess: per evaluated frame a camera-space mesh, or an error message."""

    preset: str
    package: Path
    error: str | None = None
    seconds: float = 0.0
    meshes: dict = field(default_factory=dict)  # frame index -> (vertices (V, 3) camera metres, triangles (F, 3))
    arkit: dict = field(default_factory=dict)   # frame index -> (52,) ARKit weights, when the package has them


def _error_from_output(stdout: str, stderr: str, rc: int) -> str:
    for line in reversed(stdout.splitlines()):
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("type") == "error":
            return f"exit {rc}: {ev.get('message')} ({ev.get('hint')})"
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
    return f"exit {rc}: " + (" | ".join(tail) if tail else "no error message")


def package_meshes(package: Path, frames: np.ndarray | None = None) -> dict:
    """Camera-space meshes from a result package: {frame index: (vertices (V, 3) metres, triangles (F, 3))}.

    Uses the per-frame fixed-topology ``vertices`` when present, else the canonical mesh; both posed with the
    frame's similarity (x_cam = s · R · x + t)."""
    from ..contracts.result_format import ResultPackage

    pkg = ResultPackage(package)
    mesh = pkg.canonical_mesh()
    keys = ["scale", "rotation", "translation"]
    arrays = pkg.frame_arrays(None)
    has_v = "vertices" in arrays
    out = {}
    for row, rec in enumerate(pkg.frames):
        idx = int(rec["index"])
        if rec.get("status") not in ("tracked", "interpolated") or (frames is not None and idx not in frames):
            continue
        s, R, t = (arrays[k][row] for k in keys)
        v = arrays["vertices"][row] if has_v else mesh.vertices
        out[idx] = (float(s) * np.asarray(v, np.float64) @ np.asarray(R, np.float64).T + np.asarray(t, np.float64),
                    np.asarray(mesh.triangles, np.int64))
    return out


def package_arkit(package: Path, frames: np.ndarray | None = None) -> dict:
    """{frame index: (52,) ARKit weights} of a result package's tracked/interpolated frames ({} without them)."""
    from ..contracts.result_format import ResultPackage

    pkg = ResultPackage(package)
    arrays = pkg.frame_arrays(None)
    if "arkit" not in arrays:
        return {}
    return {int(rec["index"]): np.asarray(arrays["arkit"][row], np.float64) for row, rec in enumerate(pkg.frames)
            if rec.get("status") in ("tracked", "interpolated") and (frames is None or int(rec["index"]) in frames)}


def arkit_mae(predicted: np.ndarray, ground_truth_ict: np.ndarray) -> float:
    """Mean absolute error over the 52 ARKit channels against the ground truth's ICT expression weights mapped to
    ARKit (``arkit.ict_to_arkit``, clipped to [0, 1])."""
    from ..contracts import arkit

    truth = np.clip(arkit.ict_to_arkit(np.asarray(ground_truth_ict, np.float64)), 0.0, 1.0)
    return float(np.abs(np.asarray(predicted, np.float64) - truth).mean())


def _track_dir(clip: synthetic.RenderedClip, preset: str, cfg: BenchmarkConfig) -> Path:
    """Result package folder: one per clip, preset and extra tracker arguments (e.g. another ``--model``)."""
    import hashlib

    tag = f"_{cfg.track_label}" if cfg.track_label else ""
    if cfg.extra_track_args:
        tag += "_" + hashlib.sha1("\0".join(cfg.extra_track_args).encode()).hexdigest()[:8]
    return clip.folder / f"track_{preset}{tag}"


class _FolderLock:
    """Exclusive advisory lock (``<folder>.lock``) so concurrent benchmark runs on the same clip and preset take
    turns instead of deleting each other's packages (no-op where fcntl is unavailable)."""

    def __init__(self, folder: Path):
        self.path = folder.with_name(folder.name + ".lock")
        self._fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows)
            return self
        self._fh = open(self.path, "w")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            self._fh.close()  # releases the lock
        return False


def run_tracker(clip: synthetic.RenderedClip, preset: str, cfg: BenchmarkConfig, log=print) -> TrackerRun:
    """Run the tracker CLI on a clip (a fresh package unless ``cfg.reuse_tracks``) and load its meshes; never
    raises: failures come back as ``TrackerRun.error`` ("tracker failed: …")."""
    out_dir = _track_dir(clip, preset, cfg)
    with _FolderLock(out_dir):
        return _run_tracker_locked(clip, preset, cfg, out_dir, log)


def _run_tracker_locked(clip: synthetic.RenderedClip, preset: str, cfg: BenchmarkConfig, out_dir: Path,
                        log=print) -> TrackerRun:
    intr = clip.ground_truth().intrinsics
    # the true intrinsics (to a micro-pixel), full resolution
    config = TrackConfig(str(clip.video), str(out_dir), preset=preset, fx=round(intr.fx, 6), fy=round(intr.fy, 6),
                         cx=round(intr.cx, 6), cy=round(intr.cy, 6), max_size=0, threads=cfg.threads, device="cpu",
                         frames=None if cfg.track_all_frames else f"0:{cfg.n_frames}:{cfg.every}")
    cmd = [sys.executable, "-m", "backend", "track", *config.to_argv(), *cfg.extra_track_args]
    run = TrackerRun(preset, out_dir)
    if out_dir.exists() and not cfg.reuse_tracks:
        import shutil

        shutil.rmtree(out_dir)  # measure the current tracker, not a package from an earlier version
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads))
    try:
        log("running: " + " ".join(cmd))
        proc = subprocess.run(cmd, cwd=str(synthetic.REPO_ROOT), capture_output=True, text=True,
                              timeout=cfg.tracker_timeout_s, env=env)
        run.seconds = time.time() - t0
        if proc.returncode != 0:
            run.error = "tracker failed: " + _error_from_output(proc.stdout, proc.stderr, proc.returncode)
            return run
        run.meshes = package_meshes(out_dir, cfg.eval_frames())
        run.arkit = package_arkit(out_dir, cfg.eval_frames())
        if not run.meshes:
            run.error = "tracker failed: the result package holds no tracked evaluation frames"
    except subprocess.TimeoutExpired:
        run.seconds = time.time() - t0
        run.error = f"tracker failed: timed out after {cfg.tracker_timeout_s:.0f} s"
    except Exception as exc:  # a broken package or reader error must not stop the baselines
        run.seconds = time.time() - t0
        run.error = f"tracker failed: {type(exc).__name__}: {exc}"
    return run


def evaluate_clip(clip: synthetic.RenderedClip, cfg: BenchmarkConfig, ict, log=print) -> dict:
    """Per-method lists of per-frame metric dicts for one clip, plus tracker errors and timings."""
    gt = clip.ground_truth()
    frames = cfg.eval_frames()
    rows: dict[str, list] = {"mean_head": []}
    notes: dict[str, str] = {}
    mp_lm = None
    if cfg.run_mediapipe:
        rows["mediapipe"] = []
        video = baselines.read_video_frames(clip.video, max_frames=cfg.n_frames)
        mp_lm = baselines.MediaPipeBaseline().detect(video)
        mp_tri = baselines.mediapipe_triangles()
    runs = {}
    if cfg.run_tracker:
        for preset in cfg.presets:
            runs[preset] = run_tracker(clip, preset, cfg, log)
            rows[f"tracker_{preset}"] = []
            if runs[preset].error:
                notes[f"tracker_{preset}"] = runs[preset].error
                log(runs[preset].error)
    overlay: dict = {}  # (frame, method) -> (points (N, 3), distances (N,) mm)

    def record(method: str, frame: int, P: np.ndarray, m: metrics.SurfaceMetrics | None, **extra) -> None:
        rows[method].append({**(m.as_dict() if m is not None else {k: np.nan for k in metrics.METRIC_KEYS}), **extra})
        if m is not None and cfg.overlay_dir is not None:
            overlay[(frame, method)] = (P, m.distances_mm)

    for i in frames:
        i = int(i)
        P, N = synthetic.gt_face_points(gt, i, cfg.n_points)
        v, f = baselines.mean_head_mesh(ict, gt.scale[i], gt.rotation[i], gt.translation[i])
        # the mean head is also the neutral-expression baseline for the ARKit weights (all zero)
        record("mean_head", i, P, metrics.evaluate_prediction(P, N, v, f, unaligned=True, camera_scale=True),
               arkit_mae=arkit_mae(np.zeros(52), gt.w_ex[i]))
        if mp_lm is not None:
            m = None
            if np.isfinite(mp_lm[i]).all():
                v, f = baselines.MediaPipeBaseline.mesh(mp_lm[i], gt.intrinsics, float(gt.translation[i, 2]), mp_tri)
                m = metrics.evaluate_prediction(P, N, v, f, coarse=True, camera_scale=True)
            record("mediapipe", i, P, m)
        for preset, run in runs.items():
            if run.error:
                continue
            m = None
            if i in run.meshes:
                v, f = run.meshes[i]
                m = metrics.evaluate_prediction(P, N, v, f, unaligned=True, camera_scale=True)
            extra = {"arkit_mae": arkit_mae(run.arkit[i], gt.w_ex[i])} if i in run.arkit else {}
            record(f"tracker_{preset}", i, P, m, **extra)
        log(f"{clip.spec.key} frame {i}: " + ", ".join(
            f"{m} {r[-1]['chamfer_l1_mm']:.2f}" for m, r in rows.items() if r))
    if cfg.overlay_dir is not None and overlay:
        path = Path(cfg.overlay_dir) / f"{clip.spec.key}.png"
        write_overlay(path, clip, gt, [int(i) for i in frames], [m for m in rows if rows[m]], overlay)
        log(f"overlay: {path}")
    return {"clip": clip.spec.key, "rows": rows, "notes": notes, "tracker_seconds": {p: r.seconds for p, r in runs.items()},
            "mediapipe_detect_rate": None if mp_lm is None else float(np.isfinite(mp_lm[frames, 0, 0]).mean())}


def write_overlay(path: Path, clip: synthetic.RenderedClip, gt: synthetic.GroundTruth, frames: list[int],
                  methods: list[str], overlay: dict, vmax_mm: float = 5.0) -> None:
    """Contact sheet: rows = evaluated frames, columns = methods; the rendered frame with the ground-truth face
    points coloured by their distance to the aligned prediction (0 … ``vmax_mm``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = clip.frame_paths()
    fig, axes = plt.subplots(len(frames), len(methods), figsize=(2.6 * len(methods), 2.6 * len(frames)),
                             squeeze=False)
    sc = None
    for r, i in enumerate(frames):
        img = np.asarray(Image.open(paths[i]).convert("L")) if i < len(paths) else np.zeros((gt.height, gt.width))
        for c, m in enumerate(methods):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            if (i, m) in overlay:
                P, d = overlay[(i, m)]
                uv = P @ gt.K.T
                uv = uv[:, :2] / uv[:, 2:]
                sc = ax.scatter(uv[:, 0], uv[:, 1], c=d, s=1.0, cmap="turbo", vmin=0, vmax=vmax_mm)
                lo, hi = uv.min(0), uv.max(0)
                pad = 0.15 * (hi - lo).max()
                ax.set_xlim(lo[0] - pad, hi[0] + pad)
                ax.set_ylim(hi[1] + pad, lo[1] - pad)
                ax.set_title(f"{m} f{i}: L2 {d.mean():.2f} mm", fontsize=7)
            else:
                ax.set_title(f"{m} f{i}: -", fontsize=7)
            ax.axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.6, label="distance (mm)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_benchmark(cfg: BenchmarkConfig, log=print) -> dict:
    """Render (or reuse) the clips, evaluate every method and return the summary dict (see ``format_table``)."""
    from ..training.data import ICTModel

    ict = ICTModel()
    per_clip = []
    render_s = []
    for c in range(cfg.n_clips):
        clip = synthetic.render_clip(cfg.spec(c), cfg.cache_dir, ict=ict, threads=cfg.threads, log=None)
        render_s.append(clip.meta.get("render_s_per_frame"))
        log(f"clip {clip.spec.key}: {clip.video}")
        per_clip.append(evaluate_clip(clip, cfg, ict, log))
    methods = sorted({m for pc in per_clip for m in pc["rows"]}, key=lambda m: (not m.startswith("tracker"), m))
    summary: dict = {}
    for m in methods:
        notes = [pc["notes"][m] for pc in per_clip if m in pc["notes"]]
        clip_means = [metrics.aggregate(pc["rows"][m]) for pc in per_clip if pc["rows"].get(m)]
        if clip_means:
            keys = [k for k in clip_means[0] if all(k in cm for cm in clip_means)]
            entry = {k: float(np.nanmean([cm[k] for cm in clip_means])) for k in keys}
            entry["clips"] = len(clip_means)
            entry["frames"] = int(sum(len(pc["rows"][m]) for pc in per_clip if pc["rows"].get(m)))
        else:
            entry = {"error": notes[0] if notes else "no frames evaluated"}
        if notes and clip_means:
            entry["warnings"] = notes
        summary[m] = entry
    for m in summary:
        if m.startswith("tracker_") and "error" not in summary[m]:
            summary[m]["seconds"] = float(sum(pc["tracker_seconds"].get(m[len("tracker_"):], 0.0) for pc in per_clip))
    if "mediapipe" in summary and "error" not in summary["mediapipe"]:
        rates = [pc["mediapipe_detect_rate"] for pc in per_clip if pc["mediapipe_detect_rate"] is not None]
        summary["mediapipe"]["detect_rate"] = float(np.mean(rates)) if rates else None
    per_clip_l1 = {pc["clip"]: {m: metrics.aggregate(r)["chamfer_l1_mm"] for m, r in pc["rows"].items() if r}
                   for pc in per_clip}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(synthetic.REPO_ROOT),
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        head = None
    return {"methods": summary, "per_clip_chamfer_l1_mm": per_clip_l1, "git_head": head,
            "goal_chamfer_l1_mm": GOAL_CHAMFER_L1_MM, "n_clips": cfg.n_clips,
            "n_frames": cfg.n_frames, "every": cfg.every, "n_points": cfg.n_points,
            "render_s_per_frame": render_s, "protocol": "docs/mononphm-reference.md section 6"}


def format_table(result: dict) -> str:
    """Fixed-width table of the per-method means (errors shortened; the JSON line has them in full)."""
    cols = (("chamfer_l1_mm", "CD-L1 mm"), ("chamfer_l2_mm", "CD-L2 mm"), ("normal_consistency", "NC"),
            ("recall_1mm", "R@1mm"), ("recall_2.5mm", "R@2.5mm"), ("recall_5mm", "R@5mm"), ("recall_10mm", "R@10mm"),
            ("unaligned_chamfer_l1_mm", "raw L1"), ("arkit_mae", "ARKit MAE"))
    head = f"{'method':<16}" + "".join(f"{name:>10}" for _, name in cols)
    lines = [head, "-" * len(head)]
    for m, e in result["methods"].items():
        if "error" in e:
            msg = e["error"] if len(e["error"]) <= 160 else e["error"][:157] + "..."
            lines.append(f"{m:<16}  {msg}")
        else:
            line = f"{m:<16}" + "".join(f"{e[k]:>10.3f}" if k in e else f"{'-':>10}" for k, _ in cols)
            if e.get("clips", result["n_clips"]) < result["n_clips"]:
                first = str((e.get("warnings") or ["?"])[0]).splitlines()[0][:70]
                line += f"   [only {e['clips']}/{result['n_clips']} clips; {first}]"
            lines.append(line)
    lines.append(f"goal: tracker Chamfer-L1 < {result['goal_chamfer_l1_mm']} mm; {result['n_clips']} clips, "
                 f"every {result['every']}th of {result['n_frames']} frames, {result['n_points']} face points/frame; "
                 "raw L1 = before the similarity ICP (diagnostic); ARKit MAE over 52 channels vs the ground truth "
                 "(mean_head: all-zero weights)")
    return "\n".join(lines)
