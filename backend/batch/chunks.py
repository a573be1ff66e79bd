"""Long clips in chunks: the identity once, frame ranges on workers, stitched, refined across the seams, rewritten
on workers.

1. ``prepare_clip`` (a task): pass 1 over the whole selection (the detector follows the face from frame to frame,
   so one pass gives the landmarks a single ``track`` run sees) and the identity stage, into the clip's package; the
   detections are saved in the clip's work folder ``DIR/.<name>.chunks/``.
2. ``track_chunk`` (a task per range of ``--chunk-frames`` selected frames): a private part-package in the work
   folder, seeded with the clip's identity, that first fits ``WARMUP_FRAMES`` frames before its range (from a PnP
   start, as a clip's first frame), so the range's first frame starts from a fitted neighbour as in one run.
3. ``stitch_parts`` (the driver, the only writer of the clip's package then): each part's frames of its own range
   and their fitted states go into the clip's package.
4. ``refine_clip`` (a task): the joint refinement over all frames, across the seams, as one run's stage 2; the
   refined fits are saved in the package.
5. ``rewrite_chunk`` (a task per range): the part's frames rewritten from the refined fits (the outputs: warped
   vertices, metrics), its warm-up frames first, so the range's first frame warps from its predecessor's as in one
   run (the warp is a root finding to a tolerance: its start moves the vertices by less than that). Then
   ``stitch_parts(rewritten=True)``: the rewritten frames into the package, recorded as refined.
6. ``finish_clip`` (a task): resumes the package as a re-run of ``track`` would, with the saved detections: nothing
   left to fit, refine or rewrite; frames without a face interpolated, the bake, USD meshes, complete.

Every step resumes: the package keeps its identity, stitched frames and refined fits, each part its own frames and
state; the driver removes the work folder once the package is complete.
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
    session = _open_part(config, k, start, stop, events, preset)
    with session.marking_interruptions():
        todo = session.pending_frames()
        fitted = session.track_frames(todo) if todo else 0
        session.writer.finish("complete")
    return fitted


def refine_clip(config: TrackConfig, events, preset=None) -> int:
    """The joint refinement of the stitched package's frames, across the seams; the refined fits are saved, the
    frames not rewritten yet (``rewrite_chunk``). -> the frames refined (0: none to refine, or already rewritten)."""
    from ..tracking.run import identity_frames, open_session

    session = open_session(config, events, preset, detections=_detections(Path(config.out)))
    with session.marking_interruptions():
        session.resume(identity_frames(session.detections.found, session.preset))
        tracked = [i for i in session.detections.found if i in session.stage1]
        refine = session.preset.stage2_epochs > 0 and len(tracked) > 1 and session.refined != tracked
        if refine:
            session.refine_fits(tracked)
        session.writer.finish("running")
    return len(tracked) if refine else 0


def rewrite_chunk(config: TrackConfig, k: int, start: int, stop: int, events, preset=None) -> int:
    """Rewrite part ``k``'s frames (warm-up frames first: each frame's warp starts from its predecessor's) from the
    package's refined fits. -> the frames rewritten by this attempt."""
    session = _open_part(config, k, start, stop, events, preset)
    with session.marking_interruptions():
        frames = [i for i in session.detections.found if i not in session.refined]
        if frames:
            refined = session.fits_of(load_npz(Path(config.out) / TRACKER_STATE))
            session.states.update((i, refined[i]) for i in session.detections.found)
            session.rewrite(session.detections.found)
        session.writer.finish("complete")
    return len(frames)


def finish_clip(config: TrackConfig, events, preset=None) -> int:
    """Resume the stitched package with the saved detections and complete it as a re-run of ``track`` would: the
    joint refinement and rewrite when the workers did not do them, interpolation, the bake, USD meshes."""
    from ..tracking.run import open_session

    session = open_session(config, events, preset, detections=_detections(Path(config.out)))
    with session.marking_interruptions():
        return session.run().frames


def _open_part(config: TrackConfig, k: int, start: int, stop: int, events, preset):
    """The session of part ``k`` (positions [start - WARMUP_FRAMES, stop) of the clip), resumed: a new part is seeded
    with the clip's identity."""
    from ..tracking.run import identity_frames, open_session

    package = Path(config.out)
    detections = _detections(package)
    part = detections.subset(detections.indices[max(0, start - WARMUP_FRAMES):stop])
    part_config = dataclasses.replace(config, out=str(part_folder(package, k)), overwrite=False,
                                      frames=_frames_text(part.indices))
    session = open_session(part_config, events, preset, detections=part)
    session.codes.set_landmark_rest(*detections.found_points())   # the clip's rest face, as in a single run
    session.codes.set_image_rest(detections.found_patches)
    with session.marking_interruptions():
        if not session.writer.has_identity:
            _seed_identity(ResultPackage(package), session.writer)
        session.resume(identity_frames(detections.found, session.preset))   # the clip's identity frames
    return session


# --- the driver's part ------------------------------------------------------------------------------------------

def unfinished_parts(package: Path, plan: ChunkPlan) -> list[tuple[int, int, int]]:
    """(k, start, stop) of each chunk whose frames are neither in the package nor in a complete part."""
    detections = _detections(package)
    tracked = tracked_frames(read_manifest(package))
    return [(k, start, stop) for k, (start, stop) in enumerate(plan.ranges)
            if not set(detections.found_in(start, stop)) <= tracked and _state(part_folder(package, k)) != "complete"]


def stitch_parts(package: Path, plan: ChunkPlan, rewritten: bool = False) -> None:
    """Copy each part's frames of its own range into the package (idempotent): after the parts' fits (complete
    parts), their fitted states too; after their rewrite (``rewritten``: parts that rewrote their range), the package
    is then recorded as refined and rewritten (its tracker state holds the refined fits already)."""
    detections = _detections(package)
    writer = ResultWriter(package, read_manifest(package))
    try:
        state = writer.tracker_state()
        have = writer.done_frames & {int(i) for i in state.get("frame_ids", ())}
        refined = {int(i) for i in state.get("refined_ids", ())}
        changed = missing = False
        for k, (start, stop) in enumerate(plan.ranges):
            part = part_folder(package, k)
            wanted = set(detections.found_in(start, stop))
            if wanted <= (refined if rewritten else have):
                continue
            part_state = load_npz(part / TRACKER_STATE) if _state(part) == "complete" else {}
            if not part_state or rewritten and not wanted <= {int(i) for i in part_state.get("refined_ids", ())}:
                missing = True
                continue
            source = ResultPackage(part)
            rows = [n for n, f in enumerate(source.frames) if f["index"] in wanted]
            arrays = {key: value[rows] for key, value in source.frame_arrays().items()}
            records = [FrameRecord(f["index"], f["time_s"], f["status"], f["landmark_error_px"],
                                   f["photometric_error"], f["mask_iou"]) for f in (source.frames[n] for n in rows)]
            writer.write_frames(records, arrays)
            if not rewritten:
                state = _merge_frame_states(state, part_state, wanted)
            changed = True
        # the records part by part, the state once (one read and one write of the tracker state): a stitch cut
        # short before this redoes the parts it lacks
        if rewritten and changed and not missing:
            writer.write_tracker_state(dict(state, refined_ids=np.array(sorted(state["frame_ids"]), np.int64)))
        elif changed and not rewritten:
            writer.write_tracker_state(state)
    except BaseException:
        writer.abort("failed")
        raise
    writer.finish("running")   # the next step continues it; this releases the package's lock


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
    part.write_canonical_mesh(mesh.vertices, mesh.triangles, mesh.albedo, hair=mesh.hair)
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
