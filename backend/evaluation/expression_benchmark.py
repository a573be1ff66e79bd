"""Expression benchmark: does the tracker follow the performance, channel by channel? (issue 23)

For each expression clip (``expression_clips``, cached) the tracker CLI tracks every frame; its ARKit weights are
compared with the truth (the clip's ICT weights through ``arkit.ict_to_arkit``) per active (clip, channel) pair
(``channel_metrics``), beside the all-zeros prediction and the landmark regressor alone (no tracking: the tracker's
own values for the channels it takes from it, so those can be measured on many clips in seconds). Diagnostics per
clip: the tracker's ICT weights through the direct ICT->ARKit map (regressor vs map), MediaPipe's eyelid opening
against the true blink (is the signal in the detector's points?), all-channel MAE (secondary) and, on a few frames,
the geometry protocol's Chamfer-L1.

``real_clip_jitter``: on a real clip, the tracked mesh's projected vertices that best follow MediaPipe's inner face
points against those points themselves (mean |second difference| and mean distance), and against an independent
detector (dlib's 68 points, when installed) beside MediaPipe's points.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contracts import arkit
from . import benchmark, channel_metrics as cm, expression_clips as ec, metrics, synthetic

BLINK_CHANNELS = ("eyeBlinkLeft", "eyeBlinkRight")
# MediaPipe eyelid points (upper, lower) and eye corners (outer, inner) per side; ARKit left = the subject's left
MP_EYELID = {"eyeBlinkLeft": (386, 374, 263, 362), "eyeBlinkRight": (159, 145, 33, 133)}


@dataclass
class ExpressionBenchmarkConfig:
    seed_base: int = ec.TUNE_SEED_BASE
    quick: bool = True                     # one clip per group + one mixed clip (else the full set)
    clip_indices: tuple[int, ...] = ()     # explicit clip indices (overrides ``quick``)
    presets: tuple[str, ...] = ("draft",)
    threads: int = 1
    cache_dir: Path = ec.DEFAULT_CACHE
    label: str = ""                        # result package folder tag (the tracker version under test)
    extra_track_args: tuple[str, ...] = ()
    geometry_every: int = 20               # geometry protocol on every k-th frame (0: off)
    n_points: int = 4000

    def specs(self) -> list[ec.ExpressionClipSpec]:
        if self.clip_indices:
            return [ec.ExpressionClipSpec(index=i, seed_base=self.seed_base) for i in self.clip_indices]
        return ec.clip_specs(self.seed_base, self.quick)

    def tracker_config(self, n_frames: int) -> benchmark.BenchmarkConfig:
        return benchmark.BenchmarkConfig(n_frames=n_frames, every=1, presets=self.presets, threads=self.threads,
                                         track_all_frames=True, reuse_tracks=True, run_mediapipe=False,
                                         extra_track_args=self.extra_track_args, track_label=self.label)


def arkit_truth(w_ex_ict: np.ndarray) -> np.ndarray:
    """(T, 52) ARKit truth of (T, 53) ICT weights."""
    return np.clip(arkit.ict_to_arkit(np.asarray(w_ex_ict, np.float64)), 0.0, 1.0)


def _tracked_curves(package: Path, T: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(T, 52) ARKit weights of the package and (T, 52) its ICT weights through the direct map (NaN rows for
    untracked frames; None when absent)."""
    from ..contracts.result_format import TRACKER_STATE, load_npz

    ak = benchmark.package_arkit(package)
    out = np.full((T, 52), np.nan)
    for i, w in ak.items():
        if i < T:
            out[i] = w
    direct = None
    state = load_npz(package / TRACKER_STATE) if (package / TRACKER_STATE).is_file() else None
    if state is not None and "p_ex" in state and state["p_ex"].shape[-1] == len(arkit.ICT_NAMES):
        direct = np.full((T, 52), np.nan)
        ids = state["frame_ids"]
        direct[ids[ids < T]] = arkit_truth(state["p_ex"][ids < T])
    return (out if ak else None), direct


def mediapipe_points(video: Path, T: int) -> np.ndarray:
    """(T, 478, 3) MediaPipe's points (u, v, relative depth) in pixels, video mode as the tracker runs it (NaN where
    no face)."""
    from . import baselines

    return baselines.MediaPipeBaseline().detect(baselines.read_video_frames(video, max_frames=T))


def clip_mediapipe_points(clip_dir: Path, T: int) -> np.ndarray:
    """(T, 478, 3) ``mediapipe_points`` of an expression clip folder's ``clip.mp4``, or the folder's cached
    ``mp_video.npz`` (``points``) where one was saved."""
    cached = Path(clip_dir) / "mp_video.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as d:
            return d["points"][:T]
    return mediapipe_points(Path(clip_dir) / "clip.mp4", T)


def landmark_regressor_curves(points: np.ndarray, model_dir: Path | None = None) -> np.ndarray | None:
    """(T, 52) ARKit weights of the landmark regressor alone (``tracking.expression_init``, read against the clip's
    rest face, through the direct ICT->ARKit map; NaN rows without a face), None when the model has no regressor.
    For the channels the tracker takes from the regressor (``CodeSpace.landmark_channels``) these are the tracker's
    own values; for the others they show what the points alone carry."""
    from .. import BUILTIN_MODEL_DIR
    from ..tracking.expression_init import LandmarkExpressionRegressor, rest_features

    reg = LandmarkExpressionRegressor.load(model_dir or BUILTIN_MODEL_DIR)
    ok = np.isfinite(points).all((1, 2))
    if reg is None or ok.sum() < 3:
        return None
    out = np.full((len(points), 52), np.nan)
    out[ok] = arkit_truth(reg(points[ok], rest_features(points[ok])))
    return out


def mediapipe_blink_signal(points: np.ndarray) -> dict[str, np.ndarray]:
    """Per blink channel (T,) 1 - eyelid opening / its clip maximum from MediaPipe's points (T, 478, >=2) (NaN where
    no face): eyelid opening = |upper - lower| / |outer - inner corner|."""
    lm = points[..., :2]
    out = {}
    for ch, (up, lo, a, b) in MP_EYELID.items():
        opening = np.linalg.norm(lm[:, up] - lm[:, lo], axis=-1) / np.linalg.norm(lm[:, a] - lm[:, b], axis=-1)
        out[ch] = 1.0 - opening / np.nanmax(opening)
    return out


def evaluate_expression_clip(clip: ec.ExpressionClip, run: benchmark.TrackerRun | None, cfg: ExpressionBenchmarkConfig,
                             log=print) -> dict:
    """Per-method pair metrics and diagnostics of one clip (methods: tracker, its direct map, zeros, the landmark
    regressor alone, MediaPipe eyelid signal for the blink channels)."""
    gt = clip.ground_truth()
    T = len(gt.w_ex)
    truth = arkit_truth(gt.w_ex)
    names = arkit.ARKIT_NAMES
    out: dict = {"clip": clip.spec.key, "groups": clip.meta.get("groups"), "look": clip.meta.get("look"),
                 "pairs": {}, "all_channel_mae": {}, "geometry": {}}

    def add(method: str, tracked: np.ndarray) -> None:
        ok = np.isfinite(tracked).all(1)
        if ok.sum() < 3:
            return
        tr = np.where(ok[:, None], tracked, 0.0)
        out["pairs"][method] = [p.__dict__ for p in cm.clip_pairs(clip.spec.key, names, truth, tr, BLINK_CHANNELS)]
        out["all_channel_mae"][method] = float(np.abs(tr[ok] - truth[ok]).mean())

    add("zeros", np.zeros_like(truth))
    points = mediapipe_points(clip.video, T)
    regressor = landmark_regressor_curves(points)
    if regressor is not None:
        add("landmark_regressor", regressor)
    mp = mediapipe_blink_signal(points)
    mp_arr = np.zeros_like(truth)
    for ch, sig in mp.items():
        mp_arr[:, arkit.ARKIT_INDEX[ch]] = np.nan_to_num(sig)
    out["pairs"]["mediapipe_eyelids"] = [p.__dict__ for p in cm.clip_pairs(
        clip.spec.key, names, truth, mp_arr, BLINK_CHANNELS) if p.channel in BLINK_CHANNELS]
    if run is not None and not run.error:
        ak, direct = _tracked_curves(run.package, T)
        if ak is not None:
            add(f"tracker_{run.preset}", ak)
        if direct is not None:
            add(f"tracker_{run.preset}_ictmap", direct)
        if cfg.geometry_every:
            rows = []
            for i in range(0, T, cfg.geometry_every):
                if i in run.meshes:
                    P, N = synthetic.gt_face_points(gt, i, cfg.n_points)
                    v, f = run.meshes[i]
                    rows.append(metrics.evaluate_prediction(P, N, v, f, camera_scale=True).chamfer_l1_mm)
            out["geometry"][f"tracker_{run.preset}"] = float(np.mean(rows)) if rows else float("nan")
        out["tracker_seconds"] = run.seconds
    elif run is not None:
        out["error"] = run.error
        log(run.error)
    return out


def summarise_clips(per_clip: list[dict]) -> dict:
    """{method: channel_metrics.summarise(...) + all_channel_mae + geometry} over the clips."""
    methods = sorted({m for pc in per_clip for m in pc["pairs"]})
    groups = ec.arkit_groups()
    out = {}
    for m in methods:
        pairs = [cm.PairMetrics(**p) for pc in per_clip for p in pc["pairs"].get(m, [])]
        s = cm.summarise(pairs, groups)
        s["all_channel_mae"] = float(np.mean([pc["all_channel_mae"][m] for pc in per_clip
                                              if m in pc["all_channel_mae"]] or [np.nan]))
        geo = [pc["geometry"][m] for pc in per_clip if m in pc.get("geometry", {})]
        s["chamfer_l1_mm"] = float(np.nanmean(geo)) if geo else None
        s["clips"] = sum(1 for pc in per_clip if m in pc["pairs"])
        out[m] = s
    return out


def run_expression_benchmark(cfg: ExpressionBenchmarkConfig, log=print) -> dict:
    """Render (or reuse) the clips, track every frame with each preset (packages reused: resumable) and summarise."""
    from ..training.data import ICTModel

    ict = ICTModel()
    per_clip: list[dict] = []
    for spec in cfg.specs():
        clip = ec.render_expression_clip(spec, cfg.cache_dir, ict=ict)
        log(f"clip {spec.key} ({', '.join(clip.meta['groups'])}): {clip.video}")
        runs = [benchmark.run_tracker(clip, p, cfg.tracker_config(spec.n_frames), log) for p in cfg.presets]
        for k, run in enumerate(runs or [None]):
            res = evaluate_expression_clip(clip, run, cfg, log)
            if k:  # later presets: only their own entries
                for key in ("pairs", "all_channel_mae", "geometry"):
                    per_clip[-1][key].update({m: v for m, v in res[key].items() if m.startswith("tracker_")})
            else:
                per_clip.append(res)
    return {"methods": summarise_clips(per_clip), "per_clip": per_clip, "seed_base": cfg.seed_base,
            "label": cfg.label, "clips": [pc["clip"] for pc in per_clip]}


def format_expression_table(result: dict, method: str, baseline: str = "zeros") -> str:
    """Markdown table per group (and overall) of ``method`` with the baseline's MAE beside it."""
    s, z = result["methods"][method], result["methods"].get(baseline)
    head = ("| group | pairs | corr | MAE | zeros MAE | peak ratio | abs lag | lag 0 | events found |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]

    def fmt(name, r, zr):
        ev = f"{r['events_found']}/{r['events']}" if r["events"] else "–"
        return (f"| {name} | {r['pairs']} | {r['correlation']:.2f} | {r['mae']:.3f} | "
                f"{(zr or r)['zeros_mae']:.3f} | {r['peak_ratio']:.2f} | {r['abs_lag']:.1f} | {r['lag0']:.2f} | {ev} |")

    for g, r in s["groups"].items():
        lines.append(fmt(g, r, (z or {}).get("groups", {}).get(g)))
    lines.append(fmt("**mean of groups**", s["overall"], (z or {}).get("overall")))
    w = s["worst_group"]
    lines.append(f"\nworst group: {w[0]} (corr {w[1]['correlation']:.2f}); all-channel MAE "
                 f"{s['all_channel_mae']:.4f} (zeros {result['methods'][baseline]['all_channel_mae']:.4f})"
                 + (f"; Chamfer-L1 {s['chamfer_l1_mm']:.3f} mm" if s.get("chamfer_l1_mm") else ""))
    return "\n".join(lines)


def format_channel_table(result: dict, method: str) -> str:
    """Markdown table per ARKit channel: corr, MAE (zeros), peak ratio, lag."""
    s, z = result["methods"][method], result["methods"]["zeros"]
    lines = ["| channel | pairs | corr | MAE | zeros MAE | peak ratio | abs lag |", "|---|---|---|---|---|---|---|"]
    for c in arkit.ARKIT_NAMES:
        if c in s["channels"]:
            r = s["channels"][c]
            lines.append(f"| {c} | {r['pairs']} | {r['correlation']:.2f} | {r['mae']:.3f} | "
                         f"{z['channels'][c]['zeros_mae']:.3f} | {r['peak_ratio']:.2f} | {r['abs_lag']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# real clips
# ---------------------------------------------------------------------------------------------------------------
# iBUG-68 inner points (brows, nose, eyes, mouth) by region, and the outer eye corners that normalise errors
IBUG_INNER_REGIONS = {"brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48), "mouth": range(48, 68)}
IBUG_OUTER_EYE_CORNERS = (36, 45)


def _following_tracks(uv: np.ndarray, target: np.ndarray) -> np.ndarray:
    """uv (T, V, 2) projected mesh vertices, target (T, P, 2) detector points -> (T, P, 2) the track of the vertex
    whose projection stays closest to each point over the clip (mean distance; chunked over points for memory)."""
    best = [np.linalg.norm(uv - target[:, j:j + 1], axis=-1).mean(0).argmin() for j in range(target.shape[1])]
    return uv[:, np.asarray(best)]


def _region_jitter(tracks: np.ndarray) -> dict:
    """{region: jitter} of (T, 51, 2) inner-point tracks (``IBUG_INNER_REGIONS``, offset to the inner points)."""
    return {name: cm.jitter(tracks[:, np.asarray(r) - 17]) for name, r in IBUG_INNER_REGIONS.items()}


def real_clip_jitter(video: Path, package: Path, max_frames: int | None = None,
                     independent: np.ndarray | None = None) -> dict:
    """Jitter and 2-D error of the tracked mesh on a real clip beside MediaPipe's own points.

    For each of MediaPipe's 51 inner iBUG-68 points (brows, nose, eyes, mouth) the mesh vertex whose projection
    stays closest to it over the clip stands for that point; the figures are the mean |second difference| of those
    vertex tracks and of MediaPipe's points (px/frame^2, also per region), and the vertices' mean distance from
    MediaPipe's points normalised by the outer eye-corner distance.

    ``independent``: a second detector's (T, 68, 2) iBUG-68 points on the same frames (NaN: no face), by default
    dlib's (``baselines.DlibBaseline``) when installed. Against it (``"independent"``): the vertices that best follow
    its 51 inner points, their jitter beside MediaPipe's and its own, and the normalised error of the vertices and of
    MediaPipe's points from its points (mean over frames where both detectors found the face). Frames read: the
    package's up to its last (or ``max_frames``)."""
    from ..contracts.landmark_tables import IBUG68_FROM_MEDIAPIPE
    from ..contracts.result_format import ResultPackage
    from . import baselines

    K = ResultPackage(package).intrinsics().matrix()
    meshes = benchmark.package_meshes(package)
    last = max(meshes) + 1 if meshes else 0
    frames = baselines.read_video_frames(video, max_frames=last if max_frames is None else min(max_frames, last))
    mp = baselines.MediaPipeBaseline().detect(frames)[..., :2]
    ids = sorted(i for i in meshes if i < len(frames) and np.isfinite(mp[i]).all())
    if len(ids) < 3:
        return {"error": "fewer than 3 frames with both a mesh and MediaPipe points"}
    inner = np.asarray(IBUG68_FROM_MEDIAPIPE[17:])
    V = np.stack([meshes[i][0] for i in ids])                     # (T, V, 3)
    uv = V[..., :2] / V[..., 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]   # (T, V, 2)
    target = mp[ids][:, inner]                                    # (T, 51, 2)
    tracks = _following_tracks(uv, target)
    eye = np.linalg.norm(mp[ids][:, 263] - mp[ids][:, 33], axis=-1)[:, None]
    out = {"frames": len(ids), "contiguous": bool(np.all(np.diff(ids) == 1)),
           "jitter_mesh_px": cm.jitter(tracks), "jitter_mediapipe_px": cm.jitter(target),
           "error_vs_mediapipe_pct": float((np.linalg.norm(tracks - target, axis=-1) / eye).mean() * 100),
           "jitter_mesh_by_region": _region_jitter(tracks), "jitter_mediapipe_by_region": _region_jitter(target)}
    if independent is None and baselines.dlib_available():
        independent = baselines.DlibBaseline().detect(frames)
        out["independent_detector"] = "dlib 68-point shape predictor"
    if independent is not None:
        out["independent"] = _against_independent(uv, mp[ids][:, np.asarray(IBUG68_FROM_MEDIAPIPE)],
                                                  np.asarray(independent, np.float64)[ids])
    return out


def _against_independent(uv: np.ndarray, mp68: np.ndarray, ref68: np.ndarray) -> dict:
    """The mesh (uv (T, V, 2)) and MediaPipe (mp68 (T, 68, 2) its iBUG-68 points) against an independent
    detector's points ref68 (T, 68, 2), NaN where it found no face. Jitter runs over all frames (NaN second
    differences skipped); errors are normalised per frame by the reference's outer eye-corner distance."""
    found = np.isfinite(ref68).all(axis=(1, 2))
    if found.sum() < 3:
        return {"error": "the independent detector found the face in fewer than 3 frames"}
    ref, mp = ref68[:, 17:], mp68[:, 17:]
    tracks = _following_tracks(uv[found], ref[found])
    full = np.full(ref.shape, np.nan)
    full[found] = tracks
    a, b = IBUG_OUTER_EYE_CORNERS
    eye = np.linalg.norm(ref68[found, b] - ref68[found, a], axis=-1)[:, None]
    err_mesh = np.linalg.norm(tracks - ref[found], axis=-1) / eye * 100
    err_mp = np.linalg.norm(mp[found] - ref[found], axis=-1) / eye * 100
    return {"frames": int(found.sum()),
            "jitter_mesh_px": cm.jitter(full), "jitter_mediapipe_px": cm.jitter(mp),
            "jitter_detector_px": cm.jitter(ref),
            "error_mesh_pct": float(err_mesh.mean()), "error_mediapipe_pct": float(err_mp.mean()),
            "error_ratio": float(err_mesh.mean() / err_mp.mean()),
            "jitter_mesh_by_region": _region_jitter(full), "jitter_mediapipe_by_region": _region_jitter(mp),
            "error_mesh_by_region": {n: float(err_mesh[:, np.asarray(r) - 17].mean())
                                     for n, r in IBUG_INNER_REGIONS.items()},
            "error_mediapipe_by_region": {n: float(err_mp[:, np.asarray(r) - 17].mean())
                                          for n, r in IBUG_INNER_REGIONS.items()}}


__all__ = ["ExpressionBenchmarkConfig", "run_expression_benchmark", "evaluate_expression_clip", "summarise_clips",
           "format_expression_table", "format_channel_table", "real_clip_jitter", "arkit_truth",
           "mediapipe_blink_signal", "mediapipe_points", "landmark_regressor_curves"]
