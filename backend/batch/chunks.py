"""Long clips in chunks: the identity once, frame ranges on workers, stitched and refined across the seams.

1. ``prepare_clip`` (a task): pass 1 over the whole selection (the detector follows the face from frame to frame,
   so one pass gives the landmarks a single ``track`` run sees) and the identity stage, into the clip's package; the
   detections are saved in the clip's work folder ``DIR/.<name>.chunks/``.
2. ``track_chunk`` (a task per range of ``--chunk-frames`` selected frames): a private part-package in the work
   folder, seeded with the clip's identity, that first fits ``WARMUP_FRAMES`` frames before its range (from a PnP
   start, as a clip's first frame), so the range's first frame starts from a fitted neighbour as in one run.
3. ``stitch_parts`` (the driver, the only writer of the clip's package then): each part's frames of its own range
   and their fitted states go into the clip's package.
4. ``finish_clip`` (a task): resumes the package as a re-run of ``track`` would, with the saved detections: the joint
   refinement runs over all frames, across the seams, every frame is rewritten and the package completed.

Every step resumes: the package keeps its identity and stitched frames, each part its own frames and state; the
driver removes the work folder once the package is complete.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contracts.result_format import (FrameRecord, ResultPackage, ResultWriter, TRACKER_STATE, load_npz,
                                       read_manifest, read_manifest_or_none, save_npz_atomic, tracked_frames)
from ..contracts.track_config import TrackConfig

WARMUP_FRAMES = 2       # frames fitted before a chunk's range and dropped: its first frame starts from a fitted state
DETECTIONS = "detections.npz"
# per-frame rows of the tracker state (``TrackingSession``), in ``frame_ids`` order: the current and the stage-1 fits
FRAME_STATE_KEYS = ("p_ex", "omega", "trans", "stage1_p_ex", "stage1_omega", "stage1_trans")


@dataclass(frozen=True)
class ChunkPlan:
    """How a clip's selected frames are split: positions into ``Detections.indices``."""

    frames: int         # selected frames of the clip
    chunk_frames: int   # frames per chunk (the last one may be shorter)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[start, stop) positions of each chunk; a clip of at most ``chunk_frames`` frames is one range."""
        return [(a, min(a + self.chunk_frames, self.frames)) for a in range(0, self.frames, self.chunk_frames)]


def work_folder(package: Path) -> Path:
    """The clip's private work folder beside its package (never inside: the package layout is the contract)."""
    return package.parent / f".{package.name}.chunks"


def part_folder(package: Path, k: int) -> Path:
    return work_folder(package) / f"part_{k:04d}"


def _detections(package: Path):
    from ..tracking.run import Detections

    return Detections.from_arrays(load_npz(work_folder(package) / DETECTIONS))


# --- tasks ------------------------------------------------------------------------------------------------------

def prepare_clip(config: TrackConfig, events, preset=None) -> int:
    """Detections of the whole selection and the identity stage. -> the number of selected frames."""
    from ..tracking.run import identity_frames, open_session

    package = Path(config.out)
    saved = work_folder(package) / DETECTIONS
    if saved.is_file() and _has_identity(package):   # a re-run: nothing left to prepare
        return int(load_npz(saved)["indices"].shape[0])
    session = open_session(config, events, preset)
    with session.marking_interruptions():
        if not session.resume(identity_frames(session.detections.found, session.preset)):
            session.fit_identity()
        save_npz_atomic(saved, session.detections.to_arrays())
        session.writer.finish("running")   # the clip goes on in other steps; this releases the package's lock
    return len(session.detections.indices)


def track_chunk(config: TrackConfig, k: int, start: int, stop: int, events, preset=None) -> int:
    """Fit positions [start - WARMUP_FRAMES, stop) into part ``k``. -> the frames fitted by this attempt."""
    from ..tracking.run import identity_frames, open_session

    package = Path(config.out)
    detections = _detections(package)
    part = detections.subset(detections.indices[max(0, start - WARMUP_FRAMES):stop])
    part_config = dataclasses.replace(config, out=str(part_folder(package, k)), overwrite=False,
                                      frames=_frames_text(part.indices))
    session = open_session(part_config, events, preset, detections=part)
    with session.marking_interruptions():
        if not session.writer.has_identity:
            _seed_identity(ResultPackage(package), session.writer)
        session.resume(identity_frames(detections.found, session.preset))   # the clip's identity frames
        todo = session.pending_frames()
        fitted = session.track_frames(todo) if todo else 0
        session.writer.finish("complete")
    return fitted


def finish_clip(config: TrackConfig, events, preset=None) -> int:
    """Resume the stitched package with the saved detections: refinement across the seams, rewrite, complete."""
    from ..tracking.run import open_session

    session = open_session(config, events, preset, detections=_detections(Path(config.out)))
    with session.marking_interruptions():
        return session.run().frames


# --- the driver's part ------------------------------------------------------------------------------------------

def unfinished_parts(package: Path, plan: ChunkPlan) -> list[tuple[int, int, int]]:
    """(k, start, stop) of each chunk whose frames are neither in the package nor in a complete part."""
    detections = _detections(package)
    tracked = tracked_frames(read_manifest(package))
    return [(k, start, stop) for k, (start, stop) in enumerate(plan.ranges)
            if not set(detections.found_in(start, stop)) <= tracked and _state(part_folder(package, k)) != "complete"]


def stitch_parts(package: Path, plan: ChunkPlan) -> None:
    """Copy each complete part's frames of its own range, and their fitted states, into the package (idempotent)."""
    detections = _detections(package)
    writer = ResultWriter(package, read_manifest(package))
    try:
        state = writer.tracker_state()
        stitched = False
        for k, (start, stop) in enumerate(plan.ranges):
            part = part_folder(package, k)
            wanted = set(detections.found_in(start, stop))
            have = writer.done_frames & {int(i) for i in state.get("frame_ids", ())}
            if wanted <= have or _state(part) != "complete":
                continue
            source = ResultPackage(part)
            rows = [n for n, f in enumerate(source.frames) if f["index"] in wanted]
            arrays = {key: value[rows] for key, value in source.frame_arrays().items()}
            records = [FrameRecord(f["index"], f["time_s"], f["status"], f["landmark_error_px"],
                                   f["photometric_error"], f["mask_iou"]) for f in (source.frames[n] for n in rows)]
            writer.write_frames(records, arrays)
            state = _merge_frame_states(state, load_npz(part / TRACKER_STATE), wanted)
            stitched = True
        # the records part by part, the states once (one read and one write of the tracker state): a stitch cut
        # short before this redoes the parts whose states are missing
        if stitched:
            writer.write_tracker_state(state)
    except BaseException:
        writer.abort("failed")
        raise
    writer.finish("running")   # FINISH continues it; this releases the package's lock


def remove_work_folder(package: Path) -> None:
    shutil.rmtree(work_folder(package), ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------------------------------

def _merge_frame_states(state: dict, part_state: dict, wanted: set) -> dict:
    """``state`` with the part's fitted frames of ``wanted`` added; no joint refinement covers them yet."""
    rows = {int(i): (state, n) for n, i in enumerate(state.get("frame_ids", ()))}
    rows.update({int(i): (part_state, n) for n, i in enumerate(part_state["frame_ids"]) if int(i) in wanted})
    ids = sorted(rows)
    merged = {k: v for k, v in state.items() if k not in FRAME_STATE_KEYS}
    merged["frame_ids"] = np.array(ids, np.int64)
    merged["refined_ids"] = np.zeros(0, np.int64)
    for key in FRAME_STATE_KEYS:
        merged[key] = np.stack([rows[i][0][key][rows[i][1]] for i in ids])
    return merged


def _seed_identity(package: ResultPackage, part: ResultWriter) -> None:
    """Give a new part-package the clip's identity, canonical mesh and tracker state (without frames)."""
    mesh = package.canonical_mesh()
    part.write_identity(package.identity())
    part.write_canonical_mesh(mesh.vertices, mesh.triangles, mesh.albedo)
    state = load_npz(package.root / TRACKER_STATE)
    part.write_tracker_state({k: v for k, v in state.items()
                              if k not in FRAME_STATE_KEYS + ("frame_ids", "refined_ids")})


def _has_identity(package: Path) -> bool:
    manifest = read_manifest_or_none(package)
    return bool(manifest and manifest.get("has_identity")) and (package / TRACKER_STATE).is_file()


def _state(package: Path) -> str | None:
    manifest = read_manifest_or_none(package)
    return manifest and manifest["state"]


def _frames_text(indices: list[int]) -> str:
    """The ``--frames`` slice selecting ``indices`` (consecutive picks of one stride)."""
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    return f"{indices[0]}:{indices[-1] + 1}:{step}"
