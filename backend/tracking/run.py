"""``python -m backend track``: decode -> landmarks -> identity -> per-frame fits -> joint refinement -> package.

``run_track(config)`` makes the run's parts (frame source, detections, model, tracker, package writer) and hands
them to a ``TrackingSession``, which owns them and the per-frame state until the package is complete.

Streaming: landmarks for the whole selection are computed in one decoding pass (kept in memory: 478x2 floats per
frame); images and masks are re-decoded frame by frame when fitting. Frames are written to the result package as
they finish (chunks of ``CHUNK`` frames); re-running the same command resumes from ``tracker_state.npz`` with the
same bits as an uninterrupted run, a longer range extends the package to what a fresh run of it gives;
``--frames A:B --overwrite`` re-tracks a range keeping the fitted identity.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import BUILTIN_MODEL_DIR, __version__
from ..contracts.conventions import NPHM_UNIT_M
from ..contracts.protocol import BadInputError
from ..contracts.track_config import TrackConfig
from ..model.checkpoint import represents_hair
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

    def device(self, device: str, name: str):
        log.info("device: %s (%s)", device, name)
        if self.ev is not None:
            self.ev.device(device, name)

    def warning(self, message, code="warning", error: BaseException | None = None):
        """``error``: the exception a stage survived; its traceback goes to the log (stderr), the event carries
        the message alone."""
        log.warning(message, exc_info=error)
        if self.ev is not None:
            self.ev.warning(message, code)


# -------------------------------------------------------------------------------------------------------------------
# model loading
# -------------------------------------------------------------------------------------------------------------------
def load_tracking_model(config: TrackConfig, device: str = "cpu"):
    """-> (model, encoders or None, arkit regressor or None, model header dict), the modules on ``device``."""
    from ..model import load_model, load_official
    from ..model.checkpoint import load_encoders

    if config.official_checkpoint:
        if not config.mean_anchors:
            raise TrackingInputError("--official-checkpoint needs --mean-anchors (the official anchors_65.npy)",
                                     "Pass the anchors_65.npy from the official repository's assets/ folder.")
        from ..model.checkpoint import CheckpointError
        try:
            model = load_official(config.official_checkpoint, config.mean_anchors, epoch=config.checkpoint_epoch)
        except CheckpointError as e:
            raise BadInputError(f"the official checkpoint {config.official_checkpoint} cannot be used: {e.message}",
                                e.hint or "Point --official-checkpoint at the official experiment folder.") from None
        except OSError as e:
            raise BadInputError(f"the official checkpoint {config.official_checkpoint} cannot be read: "
                                f"{e.strerror or e}",
                                "Check that the folder and its files exist and are readable.") from None
        return model.to(device), None, None, {"name": "official",
                                              "path": str(Path(config.official_checkpoint).resolve()),
                                              "expression_dim": int(model.cfg.dim_exp), "arkit": False}
    mdir = Path(config.model) if config.model else BUILTIN_MODEL_DIR
    user_given = bool(config.model)
    if not (mdir / "config.json").is_file():
        raise _unusable_model(mdir, "it has no config.json: it is not a head model folder", user_given)
    with _model_file(mdir, user_given):   # CheckpointError names the file
        model = load_model(mdir)
    with _model_file(mdir, user_given):   # encoders are optional: (None, None) without the file
        enc, reg = load_encoders(mdir)
    if enc is None:
        log.info("model has no encoders; fitting raw codes")
    name = (getattr(model, "extra", {}) or {}).get("name", mdir.name)
    header = {"name": str(name), "path": str(mdir.resolve()), "expression_dim": int(model.cfg.dim_exp),
              "arkit": bool(reg is not None or enc is not None)}
    enc, reg = (None if m is None else m.to(device) for m in (enc, reg))
    return model.to(device), enc, reg, header


def _unusable_model(path: Path, reason: str, user_given: bool, hint: str = "") -> Exception:
    """The error for a model folder (or one of its files) that cannot be used: bad input when the user named the
    folder (``--model``), an installation problem when it is the built-in model. ``hint``: how to remake the file."""
    if user_given:
        return BadInputError(f"the head model {path} cannot be used: {reason}",
                             hint or "Re-export that model folder (python -m backend.training.export), remove the "
                                     "file if it is optional (arkit_channels*.json, expression_init.npz, *_image.pt), "
                                     "or pass another --model.")
    return TrackingModelError(f"the built-in head model {path} cannot be used: {reason}",
                              "Reinstall the backend (python3 build.py setup) or pass --model DIR.")


# a damaged or mismatched file in a model folder fails its loader with one of these
_MODEL_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, TypeError, zipfile.BadZipFile,
                      pickle.UnpicklingError)


@contextlib.contextmanager
def _model_file(path: Path, user_given: bool, hint: str = ""):
    """Loads inside this block that fail say which file of the model folder is unusable and why."""
    from ..model.checkpoint import CheckpointError
    try:
        yield
    except CheckpointError as e:
        raise _unusable_model(path, e.message, user_given, hint) from None
    except _MODEL_FILE_ERRORS as e:
        raise _unusable_model(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                              user_given, hint) from None


@dataclass
class ModelReaders:
    """The readers a model folder may ship beside its networks, loaded before the landmark pass so that a damaged
    file fails at once rather than minutes later."""

    channel_table: "ChannelTable"                        # which reading each ARKit channel ships
    landmark_regressor: Optional["LandmarkExpressionRegressor"]   # expression_init.npz; None without the file
    image_regressors: Dict[str, "RegionImageRegressor"]  # region name -> reader (*_image.pt); only shipped ones


def load_model_readers(model_dir: Path, user_given: bool, preset: str) -> ModelReaders:
    """The readers shipped in ``model_dir``, with the ARKit output table of ``preset`` (its own, else draft's:
    ``channel_table.table_path``); an unusable file is reported as ``_unusable_model`` says."""
    from .channel_table import FILE_NAME as CHANNEL_TABLE_FILE, ChannelTable, table_path
    from .expression_init import FILE_NAME as LANDMARK_REGRESSOR_FILE, LandmarkExpressionRegressor
    from .region_image import load_regressors

    with _model_file(table_path(model_dir, preset) or model_dir / CHANNEL_TABLE_FILE, user_given,
                     "Remove that file (a preset without its own table uses draft's arkit_channels.json; without "
                     "that, every channel ships the model's reading) or write it again with "
                     "`python -m backend.training.arkit_channels calibrate`."):
        channel_table = ChannelTable.load(model_dir, preset)
    with _model_file(model_dir / LANDMARK_REGRESSOR_FILE, user_given):
        landmark_regressor = LandmarkExpressionRegressor.load(model_dir)
    with _model_file(model_dir, user_given):   # the reader's error names its file
        image_regressors = load_regressors(model_dir)
    return ModelReaders(channel_table, landmark_regressor, image_regressors)


# -------------------------------------------------------------------------------------------------------------------
# passes over the clip
# -------------------------------------------------------------------------------------------------------------------
@dataclass
class Detections:
    """Pass 1 over the selection: per selected source frame its time, landmarks and face size."""

    indices: List[int]                            # selected source frame indices, in order
    times: Dict[int, float]                       # index -> presentation time (s)
    landmarks: Dict[int, Optional[np.ndarray]]    # index -> (L, 2) float32 detector points; None: no face
    face_sizes: Dict[int, float]                  # index -> face size (px); 0 without a face
    # "decode", "landmarks": seconds spent in each by the pass that made them (empty for a subset or restored ones)
    seconds: Dict[str, float] = field(default_factory=dict)
    # index -> (L,) float32 relative depth of the points (MediaPipe; the landmark expression regressor reads it)
    depths: Dict[int, Optional[np.ndarray]] = field(default_factory=dict)
    # face region name -> index -> (rows, cols, 3) float16 patch (``region_image.region_patches``; the region's
    # image regressor reads it)
    patches: Dict[str, Dict[int, Optional[np.ndarray]]] = field(default_factory=dict)

    @property
    def found(self) -> List[int]:
        """Indices of the frames with a face, in order."""
        return [i for i in self.indices if self.landmarks[i] is not None]

    def observation(self, index: int, image=None, labels=None):
        """The tracker's ``FrameObs`` of a frame (image and labels when decoded)."""
        from .tracker import FrameObs
        return FrameObs(index, self.times[index], self.landmarks[index], image, labels, self.face_sizes[index],
                        self.depths.get(index))

    def found_points(self) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]]]:
        """(points (L, 2), depths (L,) or None) of the frames with a face, in order."""
        found = self.found
        return [self.landmarks[i] for i in found], [self.depths.get(i) for i in found]

    def found_patches(self, region: str) -> Optional[np.ndarray]:
        """(F, rows, cols, 3) the ``region`` patches of the frames with a face, or None unless every one has its
        patch."""
        patches = [self.patches.get(region, {}).get(i) for i in self.found]
        return np.stack(patches) if patches and all(p is not None for p in patches) else None

    def found_in(self, start: int, stop: int) -> List[int]:
        """Indices of the frames with a face among the selected frames at positions [start, stop)."""
        return [i for i in self.indices[start:stop] if self.landmarks[i] is not None]

    def subset(self, indices: List[int]) -> "Detections":
        """The detections of ``indices`` (a part of the selection)."""
        return Detections(list(indices), {i: self.times[i] for i in indices},
                          {i: self.landmarks[i] for i in indices}, {i: self.face_sizes[i] for i in indices},
                          depths={i: self.depths.get(i) for i in indices},
                          patches={r: {i: p.get(i) for i in indices} for r, p in self.patches.items()})

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """Plain arrays (``from_arrays`` restores the same values): ``indices`` (N,) int64, ``times`` (N,) float64,
        ``found`` (N,) bool, ``landmarks`` (N, L, 2) float32 (zeros without a face), ``face_sizes`` (N,) float64;
        ``depths`` (N, L) and per face region ``<region>_patches`` (N, rows, cols, 3) when every frame with a face
        has them."""
        found = np.array([self.landmarks[i] is not None for i in self.indices])
        points = [self.landmarks[i] for i in self.indices if self.landmarks[i] is not None]
        landmarks = np.zeros((len(self.indices),) + (points[0].shape if points else (0, 2)), np.float32)
        if points:
            landmarks[found] = np.stack(points)
        out = {"indices": np.array(self.indices, np.int64), "times": np.array([self.times[i] for i in self.indices]),
               "found": found, "landmarks": landmarks,
               "face_sizes": np.array([self.face_sizes[i] for i in self.indices], np.float64)}
        if points and all(self.depths.get(i) is not None for i, ok in zip(self.indices, found) if ok):
            out["depths"] = np.zeros(landmarks.shape[:2], np.float32)   # (N, L), zeros without a face
            out["depths"][found] = np.stack([self.depths[i] for i, ok in zip(self.indices, found) if ok])
        for region in self.patches:
            patches = self.found_patches(region)
            if patches is not None:
                out[f"{region}_patches"] = np.zeros((len(self.indices),) + patches.shape[1:], np.float16)
                out[f"{region}_patches"][found] = patches
        return out

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray]) -> "Detections":
        indices = arrays["indices"].tolist()

        def per_frame(key):
            return {i: (a if ok else None) for i, a, ok in zip(indices, arrays[key], arrays["found"])}

        return cls(indices, dict(zip(indices, arrays["times"].tolist())),
                   {i: (lm if ok else None) for i, lm, ok in zip(indices, arrays["landmarks"], arrays["found"])},
                   dict(zip(indices, arrays["face_sizes"].tolist())),
                   depths=per_frame("depths") if "depths" in arrays else {},
                   patches={k[: -len("_patches")]: per_frame(k) for k in arrays if k.endswith("_patches")})



def detect_all(src, detector: str, ev: _Events, face="largest", regions: Sequence = ()) -> Detections:
    """Pass 1: landmarks for every selected frame; with ``regions`` (``region_image.Region``) also those face regions'
    patches of every frame with MediaPipe's points and their depth (the image regressors' input: the frame is decoded
    only here).

    ``face``: which face to track when several are visible (``landmarks.choose_face``; a point is in source
    pixels). Warns about several faces, and about what decoding found (truncated clip, mixed image sizes).
    """
    from .landmarks import make_landmarker
    from .region_image import region_patches
    rule = face if isinstance(face, str) else (face[0] * src.scale, face[1] * src.scale)
    det = make_landmarker(detector, video_mode=True, face=rule)
    idx, times, lms, sizes, depths, patches = [], [], [], [], [], []
    several = None  # (frame, faces) where more than one face was first seen
    total = None
    if src.info.n_frames:
        a = src.range.start or 0
        b = src.range.stop if src.range.stop is not None else src.info.n_frames
        total = max(0, len(range(a, min(b, src.info.n_frames), src.range.step)))
    frames = iter(src)
    seconds = {"decode": 0.0, "landmarks": 0.0}
    try:
        while True:
            t0 = time.perf_counter()
            fr = next(frames, None)
            t1 = time.perf_counter()
            seconds["decode"] += t1 - t0
            if fr is None:
                break
            lm = det(fr.image)
            seconds["landmarks"] += time.perf_counter() - t1
            pts = lm.points if lm.found and lm.size >= MIN_FACE_PX else None
            idx.append(fr.index)
            times.append(fr.time)
            lms.append(None if pts is None else pts.astype(np.float32))
            sizes.append(lm.size if pts is not None else 0.0)
            depths.append(None if pts is None or lm.depth is None else lm.depth.astype(np.float32))
            readable = regions and depths[-1] is not None and len(pts) >= 468
            cut = region_patches(fr.image, np.concatenate([pts[:, :2], depths[-1][:, None]], 1), regions
                                 ) if readable else {}
            patches.append({k: v.astype(np.float16) for k, v in cut.items()})
            if several is None and lm.n_faces > 1:
                several = (fr.index, lm.n_faces)
            if len(idx) % 10 == 0 or len(idx) == total:
                ev.progress("landmarks", len(idx), total, fr.index)
    finally:
        det.close()
    if several is not None:
        which = face if isinstance(face, str) else f"the one at {face[0]:g},{face[1]:g}"
        ev.warning(f"{several[1]} faces are visible (first at frame {several[0]}); tracking {which}. Choose another "
                   "with --face largest, leftmost, rightmost or X,Y (a point on it in the first frame, in source "
                   "pixels)", "several_faces")
    for code, message in src.warnings:
        ev.warning(message, code)
    return Detections(idx, dict(zip(idx, times)), dict(zip(idx, lms)), dict(zip(idx, sizes)), seconds,
                      dict(zip(idx, depths)), {r.name: {i: p.get(r.name) for i, p in zip(idx, patches)}
                                               for r in regions})


def iter_frames_with_masks(src, wanted: set, lms: Dict[int, Optional[np.ndarray]],
                           hair_region: bool = False) -> Iterator:
    """Pass 2+: decode again, yield (Frame, labels) for frames in ``wanted`` (person segmentation + face region;
    with ``hair_region`` the head above the neck line too, for a model that represents hair)."""
    from .masks import SelfieSegmenter, head_labels
    seg = SelfieSegmenter()
    try:
        for fr in src:
            if fr.index not in wanted:
                continue
            lm = lms.get(fr.index)
            labels = (head_labels(seg(fr.image), lm, fr.image.shape[:2], hair_region=hair_region, image=fr.image)
                      if lm is not None else None)
            yield fr, labels
    finally:
        seg.close()


# -------------------------------------------------------------------------------------------------------------------
# the run
# -------------------------------------------------------------------------------------------------------------------
@dataclass
class TrackOutcome:
    """What a finished run reports: the package, its frame count and the per-stage timings (s)."""

    path: Path
    frames: int
    timings: Dict[str, float]


class TrackingSession:
    """One ``track`` run over a clip: owns the frame source, the detections, the tracker and the package writer,
    and the per-frame state between the stages (fitted states, statuses, the outputs the later stages reuse).

    Stages (``run``): resume from the package's tracker state, identity (stage 1a), per-frame fits written as they
    finish (stage 1b), joint refinement and rewrite of the tracked frames (stage 2), interpolation of frames without
    a face, the subject's colours baked from the video, per-frame USD meshes.

    A resumed or extended run gives the bits of one uninterrupted run: the stage-1 fits are kept beside the refined
    ones and stage 2 always refines them, the first resumed frame continues from its predecessor's fit and
    landmarks, and the re-warp after stage 2 chains only through rewritten frames.
    """

    def __init__(self, config: TrackConfig, preset, source, detections: Detections, writer, tracker, codes,
                 events: _Events, t_start: Optional[float] = None):
        from ..bake.albedo import BakeConfig   # deferred: backend.bake imports tracking modules
        from ..bake.frames import spread
        self.t_start = time.perf_counter() if t_start is None else t_start   # the run's start (timings' total)
        self.config = config
        self.preset = preset
        self.source = source
        self.detections = detections
        self.writer = writer
        self.tracker = tracker
        self.codes = codes
        self.events = events
        self.hair_region = represents_hair(tracker.model)  # hair pixels pull the surface only if it can follow
        self.states: Dict[int, object] = {}           # index -> current FrameState (refined where stage 2 ran)
        self.stage1: Dict[int, object] = {}           # index -> FrameState of the per-frame fit (before stage 2)
        self.refined: List[int] = []                  # frames the last completed joint refinement covered
        # the fitted frame the tracker's warm starts (saved with its state) came from: the next frame continues from
        # them, in one run as after a resume
        self.warm_frame: Optional[int] = None
        self.id_frames: List[int] = []                # frames the identity was fitted on
        self.status: Dict[int, str] = {}              # index -> package status other than "tracked"
        self.written_z_exp: Dict[int, np.ndarray] = {}  # index -> z_exp (E,) as written: the per-frame USD meshes
        # the frames the bake reads (at most BakeConfig.max_frames, evenly spaced) and their vertices as last
        # written, model units (V, 3): V x 12 bytes per frame, 15 MB for 64 frames of the standard mesh
        self.bake_frames = set(spread(detections.found, BakeConfig.max_frames).tolist())
        self.bake_vertices: Dict[int, np.ndarray] = {}
        self.bake_errors: Dict[int, float] = {}          # their landmark errors (px) as written

    # ---------------------------------------------------------------------------------------------------------
    def run(self) -> TrackOutcome:
        tracker, det = self.tracker, self.detections
        found = det.found
        resumed = self.resume(identity_frames(found, self.preset))
        todo = self.pending_frames()
        if resumed:
            self._load_written_frames()
        if tracker.mesh is None:
            self.fit_identity()

        t_frames = time.perf_counter()
        cpu0 = time.process_time()
        n_done = self.track_frames(todo) if todo else 0
        tracker.timer.add("frames_total", time.perf_counter() - t_frames)
        tracker.timer.t["frames_fitted"] = n_done

        tracked = [i for i in found if i in self.stage1]
        if self.preset.stage2_epochs > 0 and len(tracked) > 1 and (n_done or self.refined != tracked):
            self._refine(tracked)
        tracker.timer.add("tracking_cpu", time.process_time() - cpu0)   # CPU s of per-frame + stage 2 + rewrite

        self._interpolate_missing(tracked)
        self._load_bake_frames()
        colours = self._bake()
        if self.writer.manifest.get("output_mode") in ("meshes", "both"):
            self._write_usd(colours)
        self._save_state()
        self.writer.finish("complete")
        t = tracker.timer.t
        log.info("timings: %s", {k: round(v, 2) for k, v in t.items()})
        return TrackOutcome(self.writer.root, len(self.writer.manifest["frames"]),
                            dict(t, total=time.perf_counter() - self.t_start))

    # ---------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def marking_interruptions(self):
        """Mark the package ``cancelled`` (Cancelled, Ctrl-C) or ``failed`` (any other error) and release its lock
        when the body raises; the frames written so far stay valid and a re-run resumes from them."""
        from ..contracts.protocol import Cancelled
        try:
            yield self
        except BaseException as e:
            self.writer.abort("cancelled" if isinstance(e, (Cancelled, KeyboardInterrupt)) else "failed")
            raise

    def resume(self, pick: List[int]) -> bool:
        """Restore the tracker and the frames' fits from the package's tracker state, if it has one; ``pick``: the
        identity frames a fresh run of this selection uses. An extension of the package whose identity frames differ
        starts afresh (the package's frames are dropped first, so it never mixes identities)."""
        self.id_frames = pick
        state = self.writer.tracker_state()
        if state is None or "p_geo" not in state or not self.writer.has_identity:
            return False
        found = set(self.detections.found)
        extension = self.writer.done_frames < found
        if not self.config.overwrite and extension and "id_frames" in state and state["id_frames"].tolist() != pick:
            self.events.warning(f"the package's identity was fitted on frames {state['id_frames'].tolist()}; this "
                                f"range fits it on {pick} (like a fresh run of it), so every frame is tracked again",
                                "identity_refit")
            self.writer.drop_frames(f["index"] for f in self.writer.manifest["frames"])
            return False
        self.tracker.load_state_dict(state)
        self.states = self.fits_of(state)
        self.stage1 = self.fits_of(state, "stage1_") or dict(self.states)
        self.refined = [int(i) for i in state.get("refined_ids", [])]
        self.warm_frame = int(np.asarray(state["warm_frame"]).reshape(-1)[0]) if "warm_frame" in state else None
        if "id_frames" in state:
            self.id_frames = state["id_frames"].tolist()
        self.events.progress("identity", 1, 1, None, "identity loaded from the package")
        return True

    def fits_of(self, state: dict, prefix: str = "") -> Dict[int, object]:
        """index -> FrameState of a tracker state's per-frame fits (``prefix`` "": the current ones, "stage1_": the
        per-frame fits before stage 2); {} when it holds none."""
        from .tracker import FrameState

        if prefix + "p_ex" not in state:
            return {}
        tensor = self.tracker.tensor
        return {int(i): FrameState(tensor(state[prefix + "p_ex"][k]), tensor(state[prefix + "omega"][k]),
                                   tensor(state[prefix + "trans"][k])) for k, i in enumerate(state["frame_ids"])}

    def pending_frames(self) -> List[int]:
        """The frames with a face whose per-frame fit is still to run (after ``resume``): every one with
        ``--overwrite``, else those whose record or stage-1 fit is not on disk yet."""
        done = set() if self.config.overwrite else self.writer.done_frames & set(self.stage1)
        return [i for i in self.detections.found if i not in done]

    def _load_written_frames(self) -> None:
        """A resumed run writes per-frame meshes for the frames an earlier run wrote too: their expression codes,
        read once from the package (when per-frame meshes are written)."""
        from ..contracts.result_format import ResultPackage

        if self.writer.manifest.get("output_mode") not in ("meshes", "both") or not self.writer.manifest["frames"]:
            return
        package = ResultPackage(self.writer.root)
        z_exp = package.frame_arrays(["z_exp"])["z_exp"]
        self.written_z_exp.update(zip(package.frame_indices.tolist(), z_exp))

    def fit_identity(self) -> None:
        """Stage 1a on the frames ``identity_frames`` picks; writes the identity, the canonical mesh and the
        tracker state."""
        from ..model.devices import to_numpy
        tracker = self.tracker
        id_obs = [self.detections.observation(fr.index, fr.image, lab)
                  for fr, lab in iter_frames_with_masks(self.source, set(self.id_frames), self.detections.landmarks,
                                                          self.hair_region)]
        tracker.fit_identity(id_obs)
        self.writer.write_identity({"z_geo": to_numpy(tracker.z_geo()[0]), "z_app": to_numpy(tracker.z_app()[0]),
                                    "sh_coeffs": to_numpy(tracker.sh), "color_affine": to_numpy(tracker.cA),
                                    "color_bias": to_numpy(tracker.cb)})
        self.writer.write_canonical_mesh(tracker.mesh.vertices * np.float32(NPHM_UNIT_M), tracker.mesh.faces,
                                         tracker.albedo, hair=canonical_hair(tracker))
        self._save_state()

    def track_frames(self, todo: List[int]) -> int:
        """Stage 1b: fit the frames in ``todo`` one by one, each warm-started from the previous frame, and write
        them in chunks as they finish. -> number of frames fitted."""
        tracker = self.tracker
        # when the joint refinement follows, its rewrite replaces these outputs: they are previews (coarser
        # vertices, no quality render), which the add-on shows while tracking runs
        will_refine = self.preset.stage2_epochs > 0 and len(self.detections.found) > 1
        # The first frame continues from the frame fitted before it (its fit and landmarks), as in one uninterrupted
        # run.
        before = [i for i in self.stage1 if i < todo[0]]
        prev_state = prev_obs = prev_warp = None
        if before:
            last = max(before)
            prev_state = self.stage1[last]
            if self.detections.landmarks.get(last) is not None:
                prev_obs = self.detections.observation(last)
        if not before or self.warm_frame != max(before):
            tracker.reset_frame_cache()   # the tracker's warm starts are another frame's
        pending = []
        n_done = 0
        for fr, labels in iter_frames_with_masks(self.source, set(todo), self.detections.landmarks,
                                                     self.hair_region):
            obs = self.detections.observation(fr.index, fr.image, labels)
            init = prev_state if prev_state is not None else tracker.pnp_init(obs)
            st = tracker.fit_frame(obs, init, prev_obs)
            res = tracker.frame_result(obs, st, prev_warp, preview=will_refine)
            self.states[obs.index] = self.stage1[obs.index] = st
            self.warm_frame = obs.index
            pending.append(res)
            prev_state, prev_obs, prev_warp = st, obs, res.warp
            n_done += 1
            self.events.progress("tracking", n_done, len(todo), obs.index,
                                 f"landmark error {res.landmark_error_px:.2f} px")
            if len(pending) >= CHUNK:
                self._write_chunk(pending)
                pending = []
        if pending:
            self._write_chunk(pending)
        return n_done

    def _refine(self, tracked: List[int]) -> None:
        """Stage 2: refine all tracked frames jointly from their stage-1 fits, then recompute and rewrite their
        outputs. Recorded as done only then: a run killed before refines again from the same fits."""
        self.refine_fits(tracked)
        self.rewrite(tracked)

    def refine_fits(self, tracked: List[int]) -> None:
        """The joint refinement of ``tracked`` from their stage-1 fits into ``states`` (saved with the tracker
        state; ``refined`` keeps naming the frames last rewritten, so a re-run refines and rewrites again)."""
        obs_all = [self.detections.observation(i) for i in tracked]
        self.states.update(zip(tracked, self.tracker.refine_all(obs_all, [self.stage1[i] for i in tracked])))
        self._save_state()

    def rewrite(self, tracked: List[int]) -> None:
        """Rewrite the outputs of ``tracked`` from their refined fits (``states``) and record them as refined (a
        batch's chunked clip: each worker rewrites its range of one refinement)."""
        timer = self.tracker.timer
        t0, outputs0 = time.perf_counter(), timer.t.get("outputs", 0.0)
        self._rewrite(tracked)
        self.refined = tracked
        self._save_state()
        # the pass's own time (decoding, masks, writing); its frames' outputs count in "outputs"
        timer.add("rewrite", time.perf_counter() - t0 - (timer.t["outputs"] - outputs0))

    def _rewrite(self, tracked: List[int]) -> None:
        """Recompute the outputs of the tracked frames after stage 2 and rewrite them (chunk by chunk).

        Each frame's warp starts from the previous rewritten frame's, never from a frame's stage-1 output (which a
        resumed or extended run does not have), so the outputs depend only on the refined fits.
        """
        pending = []
        prev_warp = None
        for n, (fr, labels) in enumerate(iter_frames_with_masks(self.source, set(tracked),
                                                                self.detections.landmarks, self.hair_region), 1):
            obs = self.detections.observation(fr.index, fr.image, labels)
            r = self.tracker.frame_result(obs, self.states[fr.index], prev_warp)
            prev_warp = r.warp
            pending.append(r)
            self.events.progress("writing", n, len(tracked), fr.index)
            if len(pending) >= CHUNK:
                self._write_chunk(pending)
                pending = []
        if pending:
            self._write_chunk(pending)

    def _interpolate_missing(self, tracked: List[int]) -> None:
        """Frames without a face: pose and expression interpolated from the tracked neighbours, flagged."""
        from .tracker import interpolate_state

        det = self.detections
        missing = [i for i in det.indices if det.landmarks[i] is None]
        if not missing or not tracked:
            return
        results = []
        tt = np.array([det.times[i] for i in tracked])
        for i in missing:
            k = int(np.searchsorted(tt, det.times[i]))
            a = tracked[max(k - 1, 0)]
            b = tracked[k] if k < len(tracked) else None
            if k == 0:
                a, b = tracked[0], None
            st = interpolate_state(det.times[i], (det.times[a], self.states[a]),
                                   None if b is None else (det.times[b], self.states[b]))
            results.append(self.tracker.frame_result(det.observation(i), st))
            self.status[i] = "interpolated"
        for s in range(0, len(results), CHUNK):
            self._write_chunk(results[s:s + CHUNK])

    def _load_bake_frames(self) -> None:
        """A package without a bake whose frames this run did not write (their rewrite ran in other processes: a
        batch's chunked clip, or a run stopped between its rewrite and its bake): the bake frames' vertices and
        landmark errors and expression codes as written."""
        from ..contracts.result_format import ResultPackage

        if self.bake_vertices or self.writer.manifest.get("bake"):
            return
        package = ResultPackage(self.writer.root)
        rows = [n for n, f in enumerate(package.frames) if f["index"] in self.bake_frames and f["status"] == "tracked"]
        if not rows:
            return
        arrays = package.frame_arrays(["vertices", "z_exp"])
        for n in rows:
            frame = package.frames[n]
            self.bake_vertices[frame["index"]] = arrays["vertices"][n] / np.float32(NPHM_UNIT_M)
            self.written_z_exp[frame["index"]] = arrays["z_exp"][n]
            error = frame["landmark_error_px"]
            self.bake_errors[frame["index"]] = float("nan") if error is None else float(error)

    def _bake(self):
        """Bake the subject's colours from the bake frames (``backend.bake``) into the package; a failure leaves the
        tracked result usable. -> ``bake.posed.CanonicalColours`` for the per-frame meshes, or None."""
        import torch
        from ..bake.albedo import FrameBatch, Shading, fit_weights
        from ..bake.frames import interior_regions, stack_landmarks
        from ..bake.posed import CanonicalColours
        from ..bake.run import BakeRequest, bake
        from ..contracts.result_format import CanonicalMesh
        from ..model.devices import to_numpy
        from .renderer import so3_exp

        indices = np.array(sorted(self.bake_vertices), np.int64)
        if not len(indices):   # a resumed run that rewrote no frame keeps the package's bake
            return None
        t0 = time.perf_counter()
        tracker = self.tracker
        try:
            images, labels = [], []
            for fr, lab in iter_frames_with_masks(self.source, set(indices.tolist()),
                                                      self.detections.landmarks, self.hair_region):
                images.append(fr.image)
                labels.append(lab)
                self.events.progress("bake", len(images), len(indices), fr.index)
            special = [interior_regions(lab, self.detections.landmarks[i]) for lab, i in zip(labels, indices)]
            R = to_numpy(so3_exp(torch.stack([self.states[i].omega for i in indices]))).astype(np.float64)
            t = to_numpy(torch.stack([self.states[i].trans for i in indices])).astype(np.float64)
            verts = np.stack([self.bake_vertices[i] for i in indices]).astype(np.float64) * NPHM_UNIT_M
            frames = FrameBatch(np.stack(images), np.stack(labels), np.stack(special),
                                np.einsum("tij,tvj->tvi", R, verts) + t[:, None],
                                fit_weights(np.array([self.bake_errors[i] for i in indices])),
                                stack_landmarks([self.detections.landmarks[i] for i in indices]))
            mesh = CanonicalMesh(tracker.mesh.vertices * np.float32(NPHM_UNIT_M), tracker.mesh.faces, tracker.albedo,
                                 hair=canonical_hair(tracker))
            fitted = Shading(to_numpy(tracker.sh), to_numpy(tracker.cA), to_numpy(tracker.cb))
            request = BakeRequest(texture=self.config.texture, texture_size=self.config.texture_size)
            z_exp = np.stack([self.written_z_exp[i] for i in indices])
            result = bake(frames, indices, np.arange(len(indices)), mesh, tracker.Knp, fitted, request,
                          rotation=R, z_exp=z_exp)
            result.write(self.writer, mesh)
            return CanonicalColours(tracker.mesh.vertices, result.colours.colours, hair=mesh.hair)
        except Exception as e:  # noqa: BLE001 - the tracked result stands without baked colours
            self.events.warning(f"colours not baked from the video: {type(e).__name__}: {e}", "bake_failed",
                                error=e)
            return None
        finally:
            self.bake_vertices.clear()
            self.bake_errors.clear()
            tracker.timer.add("bake", time.perf_counter() - t0)

    def _write_usd(self, colours=None) -> None:
        """Per-frame meshes (topology-varying, ``posed_frame_meshes``) as ``meshes.usdc``, coloured by the baked
        ``colours`` (``bake.posed.CanonicalColours``) or, without them, the tracker's albedo."""
        from ..contracts.result_format import USD_SEQUENCE
        writer = self.writer
        t0 = time.perf_counter()
        try:
            from ..usd_export import write_mesh_sequence
            frames = [int(f["index"]) for f in writer.manifest["frames"]]
            z_exp = np.stack([self.written_z_exp[i] for i in frames])
            write_mesh_sequence(writer.root / USD_SEQUENCE, posed_frame_meshes(frames, z_exp, self.tracker,
                                                                               self.events, colours),
                                fps=float(writer.manifest["fps"] or 25.0))
            writer.set_usd(USD_SEQUENCE)
            timer = self.tracker.timer   # the USD file's own time: the whole stage less the meshes' extraction
            timer.add("usd", time.perf_counter() - t0 - timer.t.get("meshes", 0.0))
        except Exception as e:  # noqa: BLE001 - usd-core missing or a frame failing: keep the finished npz result
            self.events.warning(f"per-frame USD meshes not written: {type(e).__name__}: {e}", "usd_not_written",
                                error=e)

    # ---------------------------------------------------------------------------------------------------------
    # package writing
    # ---------------------------------------------------------------------------------------------------------
    def _write_chunk(self, results) -> None:
        """Write finished frames as one chunk, then the tracker state (a crash after this loses nothing)."""
        from ..contracts.result_format import FrameRecord
        arrays = self._frame_arrays(results)
        records = [FrameRecord(r.index, float(self.detections.times[r.index]), self.status.get(r.index, "tracked"),
                               None if not np.isfinite(r.landmark_error_px) else r.landmark_error_px,
                               r.photometric_error, r.mask_iou) for r in results]
        self.writer.write_frames(records, arrays)
        self.written_z_exp.update((r.index, arrays["z_exp"][k]) for k, r in enumerate(results))
        for r in results:
            if r.index in self.bake_frames:
                self.bake_vertices[r.index] = r.vertices
                self.bake_errors[r.index] = r.landmark_error_px
        self._save_state()

    def _frame_arrays(self, results) -> Dict[str, np.ndarray]:
        import torch
        from ..model.devices import to_numpy
        from .renderer import so3_exp
        p_ex = torch.stack([r.state.p_ex for r in results])
        R = to_numpy(so3_exp(torch.stack([r.state.omega for r in results])))
        arrays = {
            "scale": np.ones(len(results), np.float32),
            "rotation": R.astype(np.float32),
            "translation": to_numpy(torch.stack([r.state.trans for r in results])).astype(np.float32),
            "z_exp": to_numpy(self.codes.z_exp(p_ex)).astype(np.float32),
            "vertices": (np.stack([r.vertices for r in results]) * NPHM_UNIT_M).astype(np.float32),
        }
        det = self.detections
        points = [det.landmarks.get(r.index) for r in results]
        depths = [det.depths.get(r.index) for r in results]
        ak = self.codes.arkit(p_ex, self.codes.landmark_readings(points, depths),
                              self.codes.image_readings({n: [p.get(r.index) for r in results]
                                                         for n, p in det.patches.items()}),
                              self.codes.landmark_readings(points, depths, linear=True))
        if ak is not None:
            arrays["arkit"] = ak
        return arrays

    def _save_state(self) -> None:
        """``tracker_state.npz``, what a re-run continues from: the tracker's state, every frame's stage-1 fit (a
        resumed or extended run continues from them and refines them jointly again), the current fits (refined or
        not), the frames of the last completed joint refinement and the identity's frames."""
        import torch
        from ..model.devices import to_numpy
        ids = np.array(sorted(self.stage1), np.int64)
        out = dict(self.tracker.state_dict(), frame_ids=ids, refined_ids=np.array(self.refined, np.int64),
                   id_frames=np.array(self.id_frames, np.int64))
        if self.warm_frame is not None:
            out["warm_frame"] = np.array(self.warm_frame, np.int64)
        if len(ids):
            for prefix, fits in (("", self.states), ("stage1_", self.stage1)):
                out[prefix + "p_ex"] = to_numpy(torch.stack([fits[i].p_ex for i in ids]))
                out[prefix + "omega"] = to_numpy(torch.stack([fits[i].omega for i in ids]))
                out[prefix + "trans"] = to_numpy(torch.stack([fits[i].trans for i in ids]))
        self.writer.write_tracker_state(out)


def identity_frames(found: List[int], preset) -> List[int]:
    """The frames the identity is fitted on: ``preset.id_frames`` spread over the first 50 frames with a face."""
    pool = found[: max(preset.id_frames, min(len(found), 50))]
    pick = [pool[int(round(k))] for k in np.linspace(0, len(pool) - 1, min(preset.id_frames, len(pool)))]
    return sorted(set(pick))


def bald_z_geo(tracker):
    """The tracked identity's code without hair (``codes.bald``), or None for a model without hair."""
    return tracker.codes.z_geo_bald(tracker.p_geo)


def canonical_hair(tracker) -> Optional[np.ndarray]:
    """(V,) uint8 hair vertices of the tracker's canonical mesh, or None for a model without hair."""
    from .head_mesh import hair_vertices
    zb = bald_z_geo(tracker)
    return None if zb is None else hair_vertices(tracker.model, zb, tracker.mesh.vertices)


def posed_frame_meshes(frames: List[int], z_exp: np.ndarray, tracker, ev: Optional[_Events] = None, colours=None):
    """Topology-varying per-frame meshes: narrow-band marching cubes of the posed SDF (``model.meshing.PosedMesher``,
    each frame reusing the previous frame's band) for source frames ``frames`` with expression codes ``z_exp``
    (T, E), coloured by the baked ``colours`` (``bake.posed.CanonicalColours``: each posed vertex looked up on the
    canonical surface through the backward deformation, and its hair vertices with it) or, without them, the
    tracker's albedo (network albedo through the fitted colour affine; hair: a posed query of the bald head). Yields
    ``usd_export.FrameMesh`` (metres, model axes)."""
    from ..bake.posed import canonical_points
    from ..model.meshing import COLOR_PRUNE_MASS, POSED_REUSE_TOL, PosedMesher
    from ..usd_export import FrameMesh
    from .head_mesh import HeadMesh, fill_posed_eye_pockets, hair_vertices

    mesher = PosedMesher(tracker.model, res=tracker.preset.posed_mesh_res, reuse_tol=POSED_REUSE_TOL)
    zg = tracker.z_geo().detach()
    contours = tracker.eye_contours(zg)
    zb = bald_z_geo(tracker)
    for k, index in enumerate(frames):
        t0 = time.perf_counter()
        ze = tracker.tensor(z_exp[k])[None]
        mesh = mesher(zg, None, ze, with_color=False)
        posed, canonical = fill_posed_eye_pockets(HeadMesh(mesh.vertices, mesh.faces),
                                                  canonical_points(tracker.model, zg, ze, mesh.vertices), contours)
        if colours is None:
            rgb = tracker.albedo_u8(posed.vertices, ze, COLOR_PRUNE_MASS)
            hair = None if zb is None else hair_vertices(tracker.model, zb, posed.vertices, ze)
        else:
            rgb, hair = colours.lookup(canonical)
        frame_mesh = FrameMesh(index, posed.vertices * np.float32(NPHM_UNIT_M), posed.faces, rgb, hair)
        tracker.timer.add("meshes", time.perf_counter() - t0)
        yield frame_mesh
        if ev is not None:
            ev.progress("meshes", k + 1, len(frames), index)


# 1-minute load average under which a 2- or 3-CPU machine counts as idle at the start of a run
IDLE_LOAD = 0.5


def auto_threads() -> int:
    """Intra-op threads for `--threads 0`: 2 where at least 4 logical CPUs leave room for Blender; on 2-3 CPUs, 2
    while the machine is idle at the start (1-minute load average below ``IDLE_LOAD``), else 1.

    Tracking runs many small autograd steps, so each parallel region waits for its slowest thread.  On the idle
    2-core host, 2 threads track 28 % faster than 1 (draft 0.52 vs 0.72 s/frame, standard 0.93 vs 1.33); beside one
    busy core they are slower (0.80 vs 0.69 s/frame, with the spin limit of `backend.openmp_env`; 6.9 s/frame
    without it), hence the load check (without a load average, e.g. on Windows: 1 thread).
    """
    cpus = os.cpu_count() or 1
    if cpus >= 4:
        return 2
    idle = cpus >= 2 and hasattr(os, "getloadavg") and os.getloadavg()[0] < IDLE_LOAD
    return 2 if idle else 1


def run_track(config: TrackConfig, events=None, preset=None) -> TrackOutcome:
    """Track ``config.input`` into the package ``config.out`` (created, resumed or partly re-tracked).

    ``events``: a protocol ``EventWriter`` (or None); ``preset``: the stage settings (``tracker.Preset``), by default
    ``PRESETS[config.preset]`` (tests and benchmarks pass smaller ones).
    """
    session = open_session(config, events, preset)
    with session.marking_interruptions():
        return session.run()


def open_session(config: TrackConfig, events=None, preset=None,
                 detections: Optional[Detections] = None) -> TrackingSession:
    """The parts of a ``track`` run, ready to ``run()``, holding the package's lock: pass 1 over the selection
    (unless ``detections`` of it are given: the chunks of a long clip reuse its one pass), the model and tracker,
    the package writer."""
    import torch
    from ..contracts import landmark_tables as lt
    from ..contracts.result_format import ResultWriter
    from ..contracts.track_config import parse_face
    from ..model.devices import device_name, resolve_device, to_numpy
    from ..model.kernels import choose_ensemble_layout
    from ..model.parallel import set_threads
    from . import camera
    from .codes import CodeSpace
    from .tracker import PRESETS, Tracker
    from .video import FrameSource

    ev = _Events(events)
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    ev.device(device, device_name(device))
    set_threads(config.threads or auto_threads())
    torch.manual_seed(config.seed)
    preset = preset or PRESETS[config.preset]
    if config.max_size < 0:
        raise TrackingInputError(f"--max-size must be 0 (keep the size) or a positive number of pixels, "
                                 f"not {config.max_size}", "Use e.g. --max-size 512, or 0 to keep the source "
                                                           "resolution.")
    try:
        face = parse_face(config.face)
    except ValueError as e:
        raise TrackingInputError(str(e), "Use --face largest, leftmost, rightmost, or the pixel X,Y of the face in "
                                         "the first frame, e.g. --face 320,200.") from None
    src = FrameSource(config.input, config.frames, max_size=config.max_size or None)
    W, H = src.size
    intr = camera.make_intrinsics(src.info.width, src.info.height, W, H, config.fx, config.fy, config.cx, config.cy,
                                  config.fov)

    # ---- the model and the output folder are checked before the landmark pass, which can take minutes
    t0 = time.perf_counter()
    model, enc, reg, model_hdr = load_tracking_model(config, device)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    log.info("ensemble layout by measured speed: %s", choose_ensemble_layout(model))
    t_kernels = time.perf_counter() - t0
    header = {
        "source": {"path": str(Path(config.input).resolve()), "kind": src.info.kind},
        "fps": float(src.info.fps or 25.0), "image_size": [W, H], "intrinsics": intr.to_dict(),
        "model": model_hdr, "output_mode": config.output,
        "settings": {"preset": preset.name, "frames": str(src.range), "max_size": config.max_size,
                     "backend_version": __version__, "detector": config.detector},
    }
    ResultWriter.check_can_write(Path(config.out), header)

    # ---- pass 1: landmarks (before touching the output folder: a clip without a face leaves nothing behind)
    readers = load_model_readers(Path(model_hdr["path"]), user_given=bool(config.model), preset=preset.name)
    det = detections if detections is not None else detect_all(
        src, config.detector, ev, face, regions=[r.region for r in readers.image_regressors.values()])
    if not det.indices:
        raise TrackingInputError(f"the frame range {src.range} selects no frames of {config.input}",
                                 "Check --frames against the clip length.")
    n_found = len(det.found)
    if not n_found:
        raise NoFaceError(f"no face was found in any of the {len(det.indices)} selected frames of {config.input}")
    if n_found < len(det.indices):
        ev.warning(f"no face in {len(det.indices) - n_found} of {len(det.indices)} frames; they are filled by "
                   "interpolation and flagged 'interpolated'", "no_face_frames")

    codes = CodeSpace(model, enc, reg, readers.landmark_regressor, readers.image_regressors, readers.channel_table)
    codes.set_landmark_rest(*det.found_points())
    codes.set_image_rest(det.found_patches)
    scheme = "ibug68" if config.detector == "face-alignment" else "mediapipe478"
    lmset = lt.tracking_landmarks(scheme, to_numpy(model.id_model.mean_anchors))
    tracker = Tracker(model, codes, lmset, intr.matrix(), (W, H), preset,
                      progress=lambda s, d, t, f=None, m="": ev.progress(s, d, t, f, m), seed=config.seed)
    for stage, seconds in det.seconds.items():
        tracker.timer.add(stage, seconds)
    tracker.timer.add("model_load", t_load)
    tracker.timer.add("kernel_choice", t_kernels)

    # a container may announce fewer frames than it holds
    header["source"]["frame_count"] = max(int(src.info.n_frames or 0), max(det.indices) + 1)
    writer = ResultWriter(Path(config.out), header)
    return TrackingSession(config, preset, src, det, writer, tracker, codes, ev, t_start)
