"""``python -m backend track``: decode -> landmarks -> identity -> per-frame fits -> joint refinement -> package.

Streaming: landmarks for the whole selection are computed in one decoding pass (kept in memory: 478x2 floats per
frame); images and masks are re-decoded frame by frame when fitting, so memory stays bounded for long clips.
Frames are written to the result package as they finish (chunks of ``CHUNK`` frames); re-running the same command
resumes from ``tracker_state.npz``; ``--frames A:B --overwrite`` re-tracks a range keeping the fitted identity.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import numpy as np

from .. import __version__
from ..conventions import NPHM_UNIT_M
from .errors import NoFaceError, TrackingInputError, TrackingModelError

log = logging.getLogger("backend.tracking")
CHUNK = 8
MIN_FACE_PX = 24.0


class _Events:
    """Adapter: progress callback -> protocol EventWriter (or nothing)."""

    def __init__(self, events):
        self.ev = events

    def progress(self, stage, done, total, frame=None, message=""):
        if self.ev is not None:
            self.ev.progress(stage, int(done), None if total is None else int(total), frame=frame, message=message)

    def warning(self, message, code="warning"):
        log.warning(message)
        if self.ev is not None:
            self.ev.warning(message, code)


# -------------------------------------------------------------------------------------------------------------------
# model loading
# -------------------------------------------------------------------------------------------------------------------
def load_tracking_model(args):
    """-> (model, encoders or None, arkit regressor or None, model header dict)."""
    from ..model import load_model
    try:
        from ..model import load_official
    except ImportError:  # pragma: no cover
        load_official = None
    official = getattr(args, "official_checkpoint", None)
    if official:
        if not getattr(args, "mean_anchors", None):
            raise TrackingInputError("--official-checkpoint needs --mean-anchors (the official anchors_65.npy)",
                                     "Pass the anchors_65.npy from the official repository's assets/ folder.")
        model = load_official(official, args.mean_anchors, epoch=getattr(args, "checkpoint_epoch", None))
        return model, None, None, {"name": "official", "path": str(Path(official).resolve()),
                                   "expression_dim": int(model.cfg.dim_exp), "arkit": False}
    from ..cli import BUILTIN_MODEL_DIR
    mdir = Path(args.model) if getattr(args, "model", None) else BUILTIN_MODEL_DIR
    if not (mdir / "config.json").is_file():
        raise TrackingModelError(f"no head model at {mdir} (config.json missing)",
                                 "Install the built-in model (backend/models/builtin) or pass --model DIR.")
    model = load_model(mdir)
    enc = reg = None
    try:
        from ..training.export import load_encoders
        enc, reg = load_encoders(mdir)
    except Exception as e:  # noqa: BLE001 - encoders are optional
        log.info("model has no usable encoders (%s); fitting raw codes", e)
    name = (getattr(model, "extra", {}) or {}).get("name", mdir.name)
    return model, enc, reg, {"name": str(name), "path": str(mdir.resolve()),
                             "expression_dim": int(model.cfg.dim_exp), "arkit": bool(reg is not None or enc is not None)}


# -------------------------------------------------------------------------------------------------------------------
# passes over the clip
# -------------------------------------------------------------------------------------------------------------------
def detect_all(src, detector: str, ev: _Events):
    """Pass 1: landmarks for every selected frame. -> (indices, times, landmarks list (None = no face), sizes)."""
    from .landmarks import make_landmarker
    det = make_landmarker(detector, video_mode=True)
    idx, times, lms, sizes = [], [], [], []
    total = None
    if src.info.n_frames:
        a = src.range.start or 0
        b = src.range.stop if src.range.stop is not None else src.info.n_frames
        total = max(0, len(range(a, min(b, src.info.n_frames), src.range.step)))
    try:
        for fr in src:
            lm = det(fr.image)
            pts = lm.points if lm.found and lm.size >= MIN_FACE_PX else None
            idx.append(fr.index)
            times.append(fr.time)
            lms.append(None if pts is None else pts.astype(np.float32))
            sizes.append(lm.size if pts is not None else 0.0)
            if len(idx) % 10 == 0 or len(idx) == total:
                ev.progress("landmarks", len(idx), total, fr.index)
    finally:
        det.close()
    return idx, times, lms, sizes


def iter_frames_with_masks(src, wanted: set, lms: Dict[int, Optional[np.ndarray]]) -> Iterator:
    """Pass 2+: decode again, yield (Frame, labels) for frames in ``wanted`` (person segmentation + face region)."""
    from .masks import SelfieSegmenter, head_labels
    seg = SelfieSegmenter()
    try:
        for fr in src:
            if fr.index not in wanted:
                continue
            lm = lms.get(fr.index)
            labels = head_labels(seg(fr.image), lm, fr.image.shape[:2]) if lm is not None else None
            yield fr, labels
    finally:
        seg.close()


# -------------------------------------------------------------------------------------------------------------------
# result writing
# -------------------------------------------------------------------------------------------------------------------
def _frame_arrays(results, tracker, codes, want_vertices=True):
    import torch
    from .renderer import so3_exp
    p_ex = torch.stack([r.state.p_ex for r in results])
    R = so3_exp(torch.stack([r.state.omega for r in results])).numpy()
    arrays = {
        "scale": np.ones(len(results), np.float32),
        "rotation": R.astype(np.float32),
        "translation": np.stack([r.state.trans.numpy() for r in results]).astype(np.float32),
        "z_exp": codes.z_exp(p_ex).detach().numpy().astype(np.float32),
    }
    if want_vertices:
        arrays["vertices"] = (np.stack([r.vertices for r in results]) * NPHM_UNIT_M).astype(np.float32)
    ak = codes.arkit(p_ex)
    if ak is not None:
        arrays["arkit"] = ak
    return arrays


def _records(results, status_of, times):
    from ..result_format import FrameRecord
    return [FrameRecord(r.index, float(times[r.index]), status_of.get(r.index, "tracked"),
                        None if not np.isfinite(r.landmark_error_px) else r.landmark_error_px,
                        r.photometric_error, r.mask_iou) for r in results]


def _state_arrays(tracker, states: Dict[int, object], stage2_done: bool) -> dict:
    import torch
    ids = np.array(sorted(states), np.int64)
    st = [states[i] for i in ids]
    out = {
        "p_geo": tracker.p_geo.numpy(), "p_app": tracker.p_app.numpy(), "sh": tracker.sh.numpy(),
        "color_affine": tracker.cA.numpy(), "color_bias": tracker.cb.numpy(),
        "mesh_lo_vertices": tracker.mesh_lo.vertices, "mesh_lo_faces": tracker.mesh_lo.faces,
        "mesh_vertices": tracker.mesh.vertices, "mesh_faces": tracker.mesh.faces, "albedo": tracker.albedo,
        "frame_ids": ids, "stage2_done": np.array(int(stage2_done)),
    }
    if len(st):
        out["p_ex"] = torch.stack([s.p_ex for s in st]).numpy()
        out["omega"] = torch.stack([s.omega for s in st]).numpy()
        out["trans"] = torch.stack([s.trans for s in st]).numpy()
    return out


def _restore(tracker, state: dict):
    import torch
    from .mesh import Mesh
    from .tracker import FrameState
    tracker.p_geo = torch.as_tensor(state["p_geo"])
    tracker.p_app = torch.as_tensor(state["p_app"])
    tracker.sh = torch.as_tensor(state["sh"])
    tracker.cA = torch.as_tensor(state["color_affine"])
    tracker.cb = torch.as_tensor(state["color_bias"])
    tracker.mesh_lo = Mesh(state["mesh_lo_vertices"], state["mesh_lo_faces"])
    tracker.mesh = Mesh(state["mesh_vertices"], state["mesh_faces"])
    tracker.albedo = state["albedo"]
    states = {}
    if "p_ex" in state:
        for k, i in enumerate(state["frame_ids"]):
            states[int(i)] = FrameState(torch.as_tensor(state["p_ex"][k]), torch.as_tensor(state["omega"][k]),
                                        torch.as_tensor(state["trans"][k]))
    return states, bool(int(np.asarray(state.get("stage2_done", 0)).reshape(-1)[0]))


# -------------------------------------------------------------------------------------------------------------------
def auto_threads() -> int:
    """Intra-op threads for `--threads 0`: 2 where at least 4 logical CPUs leave room for Blender, else 1.

    Tracking runs many small autograd steps, so each parallel region waits for its slowest thread.  On the idle
    2-core host, 2 threads track 28 % faster than 1 (draft 0.52 vs 0.72 s/frame, standard 0.93 vs 1.33); beside one
    busy core they are slower (0.80 vs 0.69 s/frame, with the spin limit of `backend.openmp_env`; 6.9 s/frame
    without it), hence 1 thread on 2-core machines.
    """
    return 2 if (os.cpu_count() or 1) >= 4 else 1


def run_track(args, events=None) -> Path:
    import torch
    from .. import landmark_tables as lt
    from ..result_format import ResultWriter
    from ..model.parallel import set_threads
    from . import camera
    from .codes import CodeSpace
    from .tracker import PRESETS, Tracker
    from .video import FrameSource

    ev = _Events(events)
    t_start = time.perf_counter()
    set_threads(int(getattr(args, "threads", 0) or 0) or auto_threads())
    torch.manual_seed(int(getattr(args, "seed", 0) or 0))
    preset = PRESETS[getattr(args, "preset", "standard") or "standard"]
    overrides = getattr(args, "preset_overrides", None)     # tests/benchmarks only (not a CLI flag)
    if overrides:
        import dataclasses
        preset = dataclasses.replace(preset, **overrides)
    out = Path(args.out)
    max_size = getattr(args, "max_size", 512)
    src = FrameSource(args.input, getattr(args, "frames", None), max_size=max_size or None)
    W, H = src.size
    intr = camera.make_intrinsics(src.info.width, src.info.height, W, H, getattr(args, "fx", None),
                                  getattr(args, "fy", None), getattr(args, "cx", None), getattr(args, "cy", None),
                                  getattr(args, "fov", None))

    # ---- pass 1: landmarks (before touching the output folder: a clip without a face leaves nothing behind)
    t0 = time.perf_counter()
    ids, times, lms, sizes = detect_all(src, getattr(args, "detector", "mediapipe"), ev)
    t_detect = time.perf_counter() - t0
    if not ids:
        raise TrackingInputError(f"the frame range {src.range} selects no frames of {args.input}",
                                 "Check --frames against the clip length.")
    found = [i for i, l in zip(ids, lms) if l is not None]
    if not found:
        raise NoFaceError(f"no face was found in any of the {len(ids)} selected frames of {args.input}")
    lm_of = dict(zip(ids, lms))
    time_of = dict(zip(ids, times))
    size_of = dict(zip(ids, sizes))
    if len(found) < len(ids):
        ev.warning(f"no face in {len(ids) - len(found)} of {len(ids)} frames; they are filled by interpolation "
                   "and flagged 'interpolated'", "no_face_frames")

    t0 = time.perf_counter()
    model, enc, reg, model_hdr = load_tracking_model(args)
    t_load = time.perf_counter() - t0
    codes = CodeSpace(model, enc, reg)
    scheme = "ibug68" if getattr(args, "detector", "mediapipe") == "face-alignment" else "mediapipe478"
    lmset = lt.tracking_landmarks(scheme, model.id_model.mean_anchors.detach().numpy())
    tracker = Tracker(model, codes, lmset, intr.matrix(), (W, H), preset,
                      progress=lambda s, d, t, f=None, m="": ev.progress(s, d, t, f, m),
                      seed=int(getattr(args, "seed", 0) or 0))
    tracker.timer.add("decode_landmarks", t_detect)
    tracker.timer.add("model_load", t_load)

    header = {
        "source": {"path": str(Path(args.input).resolve()), "kind": src.info.kind,
                   "frame_count": int(src.info.n_frames or len(ids))},
        "fps": float(src.info.fps or 0.0), "image_size": [W, H], "intrinsics": intr.to_dict(),
        "model": model_hdr, "output_mode": getattr(args, "output", "shape_keys") or "shape_keys",
        "settings": {"preset": preset.name, "frames": str(src.range), "max_size": max_size,
                     "backend_version": __version__, "detector": getattr(args, "detector", "mediapipe")},
    }
    writer = ResultWriter(out, header)
    try:
        return _track_into(args, ev, src, writer, tracker, codes, ids, lm_of, time_of, size_of, found, preset,
                           t_start)
    except BaseException as e:
        from ..protocol import Cancelled
        writer.finish("cancelled" if isinstance(e, (Cancelled, KeyboardInterrupt)) else "failed")
        raise


def _track_into(args, ev, src, writer, tracker, codes, ids, lm_of, time_of, size_of, found, preset, t_start):
    from .tracker import FrameObs, interpolate_state

    overwrite = bool(getattr(args, "overwrite", False))
    state = writer.tracker_state()
    states: Dict[int, object] = {}
    stage2_done = False
    if state is not None and "p_geo" in state and writer.has_identity:
        states, stage2_done = _restore(tracker, state)
        ev.progress("identity", 1, 1, None, "identity loaded from the package")
    done = set() if overwrite else (writer.done_frames & set(found))
    todo = [i for i in found if i not in done]
    if overwrite:
        stage2_done = False

    def obs_of(fr, labels):
        return FrameObs(fr.index, fr.time, lm_of[fr.index], fr.image, labels, size_of[fr.index])

    # ---- identity (stage 1a)
    if tracker.mesh is None:
        pool = found[: max(preset.id_frames, min(len(found), 50))]
        pick = [pool[int(round(k))] for k in np.linspace(0, len(pool) - 1, min(preset.id_frames, len(pool)))]
        pick = sorted(set(pick))
        id_obs = [obs_of(fr, lab) for fr, lab in iter_frames_with_masks(src, set(pick), lm_of)]
        tracker.fit_identity(id_obs)
        writer.write_identity({"z_geo": tracker.z_geo()[0].detach().numpy(),
                               "z_app": tracker.z_app()[0].detach().numpy(), "sh_coeffs": tracker.sh.numpy(),
                               "color_affine": tracker.cA.numpy(), "color_bias": tracker.cb.numpy()})
        writer.write_canonical_mesh(tracker.mesh.vertices * np.float32(0.25), tracker.mesh.faces, tracker.albedo)
        writer.write_tracker_state(_state_arrays(tracker, states, False))

    # ---- per frame (stage 1b), written as frames finish
    status_of: Dict[int, str] = {}
    prev_state = None
    prev_obs = None
    prev_warp = None
    pending = []
    n_done = 0
    t_frames = time.perf_counter()
    cpu0 = time.process_time()
    will_refine = preset.stage2_epochs > 0 and len(found) > 1
    if todo:
        first = todo[0]
        before = [i for i in states if i < first]
        if before:
            prev_state = states[max(before)]
        for fr, labels in iter_frames_with_masks(src, set(todo), lm_of):
            obs = obs_of(fr, labels)
            tracker._posed_cache.pop("frame", None)   # each frame starts from the same state (resume = same result)
            tracker._lo_warp = None
            init = prev_state if prev_state is not None else tracker.pnp_init(obs)
            st = tracker.fit_frame(obs, init, prev_obs)
            # quality metrics are measured after the joint refinement when it follows (saves a render per frame)
            res = tracker.frame_result(obs, st, prev_warp, metrics=not will_refine)
            states[obs.index] = st
            pending.append(res)
            prev_state, prev_obs, prev_warp = st, obs, res.warp
            n_done += 1
            ev.progress("tracking", n_done, len(todo), obs.index,
                        f"landmark error {res.landmark_error_px:.2f} px")
            if len(pending) >= CHUNK:
                _flush(writer, pending, tracker, codes, status_of, time_of, states, False)
                pending = []
        if pending:
            _flush(writer, pending, tracker, codes, status_of, time_of, states, False)
            pending = []
    tracker.timer.add("frames_total", time.perf_counter() - t_frames)
    tracker.timer.t["frames_fitted"] = n_done

    # ---- stage 2: joint refinement of all frames with temporal smoothness
    tracked = [i for i in found if i in states]
    if not stage2_done and preset.stage2_epochs > 0 and len(tracked) > 1:
        obs_all = [FrameObs(i, time_of[i], lm_of[i], None, None, size_of[i]) for i in tracked]
        new = tracker.refine_all(obs_all, [states[i] for i in tracked])
        for i, s in zip(tracked, new):
            states[i] = s
        stage2_done = True
        t0 = time.perf_counter()
        _rewrite(src, writer, tracker, codes, tracked, states, lm_of, time_of, size_of, status_of, ev, stage2_done)
        tracker.timer.add("rewrite", time.perf_counter() - t0)
    tracker.timer.add("tracking_cpu", time.process_time() - cpu0)   # CPU seconds of per-frame + stage 2 + rewrite

    # ---- frames without a face: interpolate and flag
    missing = [i for i in ids if lm_of[i] is None]
    if missing and tracked:
        res = []
        tt = np.array([time_of[i] for i in tracked])
        for i in missing:
            k = int(np.searchsorted(tt, time_of[i]))
            a = tracked[max(k - 1, 0)]
            b = tracked[k] if k < len(tracked) else None
            if k == 0:
                a, b = tracked[0], None
            st = interpolate_state(time_of[i], (time_of[a], states[a]), None if b is None else (time_of[b], states[b]))
            obs = FrameObs(i, time_of[i], None, None, None, 0.0)
            r = tracker.frame_result(obs, st)
            status_of[i] = "interpolated"
            res.append(r)
        for s in range(0, len(res), CHUNK):
            _flush(writer, res[s:s + CHUNK], tracker, codes, status_of, time_of, states, stage2_done)

    # ---- the subject's colours from the video, then per-frame meshes as USD (which use them)
    _bake(writer, tracker, ev)
    if writer.manifest.get("output_mode") in ("meshes", "both"):
        _write_usd(writer, tracker, ev)
    writer.write_tracker_state(_state_arrays(tracker, states, stage2_done))
    writer.finish("complete")
    t = tracker.timer.t
    log.info("timings: %s", {k: round(v, 2) for k, v in t.items()})
    tracker_timings[str(writer.root)] = dict(t, total=time.perf_counter() - t_start)
    return writer.root


tracker_timings: Dict[str, dict] = {}   # last run's per-stage timings by package path (benchmarks read this)


def _flush(writer, results, tracker, codes, status_of, time_of, states, stage2_done):
    arrays = _frame_arrays(results, tracker, codes)
    writer.write_frames(_records(results, status_of, time_of), arrays)
    writer.write_tracker_state(_state_arrays(tracker, states, stage2_done))


def _rewrite(src, writer, tracker, codes, tracked, states, lm_of, time_of, size_of, status_of, ev, stage2_done):
    """Recompute outputs of all tracked frames after stage 2 and rewrite them (chunk by chunk)."""
    import torch
    from .tracker import FrameObs
    from ..model.mesh import WarpState
    from ..result_format import load_npz
    pending = []
    prev_warp = None
    n = 0
    chunk_of = {f["index"]: f["chunk"] for f in writer.manifest["frames"]}
    loaded: Dict[str, dict] = {}

    def stage1_vertices(i):
        """The frame's stage-1 vertices (model units) from its chunk: the warm start of the re-warp."""
        c = chunk_of.get(i)
        if c is None:
            return None
        if c not in loaded:
            loaded.clear()
            loaded[c] = load_npz(writer.root / c)
        a = loaded[c]
        hit = np.flatnonzero(a["frame_index"] == i)
        if not hit.size or "vertices" not in a:
            return None
        return a["vertices"][hit[0]] / np.float32(NPHM_UNIT_M)

    for fr, labels in iter_frames_with_masks(src, set(tracked), lm_of):
        obs = FrameObs(fr.index, fr.time, lm_of[fr.index], fr.image, labels, size_of[fr.index])
        x0 = stage1_vertices(fr.index)
        warm = prev_warp
        if x0 is not None:  # the frame's own stage-1 roots, with the last frame's inverse Jacobians
            warm = WarpState(torch.as_tensor(x0), None if prev_warp is None else prev_warp.jinv)
        r = tracker.frame_result(obs, states[fr.index], warm)
        prev_warp = r.warp
        pending.append(r)
        n += 1
        ev.progress("writing", n, len(tracked), fr.index)
        if len(pending) >= CHUNK:
            _flush(writer, pending, tracker, codes, status_of, time_of, states, False)
            pending = []
    if pending:
        _flush(writer, pending, tracker, codes, status_of, time_of, states, False)
    writer.write_tracker_state(_state_arrays(tracker, states, stage2_done))


def _bake(writer, tracker, ev):
    """Baked colours of the canonical mesh (``backend.bake``); a failure leaves the tracked result usable."""
    from ..bake.run import bake_package
    t0 = time.perf_counter()
    try:
        bake_package(writer.root, writer=writer, events=ev.ev)
    except Exception as e:  # noqa: BLE001 - the tracked result stands without baked colours
        ev.warning(f"colours not baked from the video: {type(e).__name__}: {e}", "bake_failed")
    tracker.timer.add("bake", time.perf_counter() - t0)


def posed_frame_meshes(pkg, tracker, ev=None):
    """Topology-varying per-frame meshes: narrow-band marching cubes of the posed SDF (``model.mesh.PosedMesher``,
    each frame reusing the previous frame's band) for every frame of the package, coloured by the package's baked
    colours looked up on the canonical surface through the backward deformation (``bake.posed``), or, without a
    bake, by the tracker's albedo (network albedo through the fitted colour affine). Yields
    ``usd_export.FrameMesh`` (metres, model axes)."""
    import torch
    from ..bake.posed import CanonicalColours
    from ..model.mesh import PosedMesher
    from ..usd_export import FrameMesh

    mesher = PosedMesher(tracker.model, res=tracker.preset.posed_mesh_res)
    z_exp = pkg.frame_arrays(["z_exp"])["z_exp"]
    zg = tracker.z_geo().detach()
    canon = pkg.canonical_mesh()
    baked = None if canon.baked_albedo is None else \
        CanonicalColours(canon.vertices / np.float32(NPHM_UNIT_M), canon.baked_albedo)
    for k, rec in enumerate(pkg.frames):
        ze = torch.as_tensor(z_exp[k])[None]
        mesh = mesher(zg, None, ze, with_color=False)
        colours = tracker.albedo_u8(mesh.vertices, ze) if baked is None else \
            baked.at_posed(tracker.model, zg, ze, mesh.vertices)
        yield FrameMesh(int(rec["index"]), mesh.vertices * np.float32(NPHM_UNIT_M), mesh.faces, colours)
        if ev is not None:
            ev.progress("meshes", k + 1, len(pkg.frames), int(rec["index"]))


def _write_usd(writer, tracker, ev=None):
    """Per-frame meshes (topology-varying, ``posed_frame_meshes``) with albedo colours as ``meshes.usdc``."""
    from ..result_format import ResultPackage, USD_SEQUENCE
    try:
        from ..usd_export import write_mesh_sequence
        pkg = ResultPackage(writer.root)
        write_mesh_sequence(writer.root / USD_SEQUENCE, posed_frame_meshes(pkg, tracker, ev),
                            fps=float(pkg.fps or 25.0))
        writer.set_usd(USD_SEQUENCE)
    except Exception as e:  # noqa: BLE001 - usd-core missing or a frame failing: keep the finished npz result
        msg = f"per-frame USD meshes not written: {type(e).__name__}: {e}"
        if ev is not None:
            ev.warning(msg, "usd_not_written")
        else:
            log.warning(msg)
