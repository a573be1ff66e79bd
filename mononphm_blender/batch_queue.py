"""Batch queue: several clips (Movie Clips or files) tracked by one ``python -m backend batch``.

Each clip keeps its own settings, taken from the Input and Settings panels when it is queued (preset, frame range,
stride) and editable in the Batch panel, plus its Movie Clip's camera; they reach the backend as the clip's line of
the batch's ``@list`` file (the scene's other settings apply to every clip). Each clip's result package is imported
as soon as the backend reports it finished (its ``result`` event, or ``clip_state`` ``skipped`` for a package an
earlier run finished). The backend names each clip's package folder and says which input it belongs to
(``clip_state`` events: ``clip``, ``path``, ``source``), so the queue follows the backend's naming. Like single
runs, ``tick()`` holds the logic (tests call it; a timer calls it in the UI).

The queue and its batch's process and log are saved with the .blend: reopening it follows a batch that still runs,
or reads what a finished one reported (importing the clips it finished); Track Batch again resumes the rest.
"""

from __future__ import annotations

import dataclasses
import os

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from . import contracts, importer, job_control
from .core import command, jobs
from .props import PRESET_ITEMS
from .ui import SidebarPanel, draw_frame_range

TICK_S = 0.2
REL = {"PATH_SUPPORTS_BLEND_RELATIVE"}

_jobs = job_control.batch_jobs  # scene name → the running batch (BackendJob, or AttachedJob after reopening)


class MONONPHM_PG_queued_clip(bpy.types.PropertyGroup):
    """One queued clip; ``name`` is the backend's folder name for it once the batch has started."""

    clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    path: StringProperty(name="File", subtype="FILE_PATH", options=REL)
    clip_start: IntProperty(name="Start Frame", default=1, description="Scene frame of the first source frame")
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default=contracts.track_config.TrackConfig.preset)
    use_frame_range: BoolProperty(name="Frame Range", default=False, description="Track only part of the clip")
    frame_start: IntProperty(name="Start", default=1, description="First scene frame to track")
    frame_end: IntProperty(name="End", default=250, description="Last scene frame to track")
    stride: IntProperty(name="Stride", default=1, min=1, soft_max=10, description="Track every Nth frame")
    package: StringProperty(subtype="DIR_PATH", options=REL)
    state: StringProperty(default="")  # "", queued, running, complete, skipped, failed
    stage: StringProperty(default="")
    done: IntProperty(default=0)
    total: IntProperty(default=0)
    error: StringProperty(default="")

    def input_path(self) -> str:
        return job_control.movie_clip_input(self.clip) if self.clip else bpy.path.abspath(self.path)

    def label(self) -> str:
        return self.clip.name if self.clip else os.path.basename(self.input_path().rstrip("/\\"))

    def start_frame(self) -> int:
        """Scene frame of its source frame 0."""
        return int(self.clip.frame_start) if self.clip else int(self.clip_start)

    def track_config(self, common):
        """Its TrackConfig: ``common`` (the scene's settings) with its own preset, frames and camera."""
        scene_range = (self.frame_start, self.frame_end) if self.use_frame_range else None
        return dataclasses.replace(common, preset=self.preset, **job_control.clip_fields(
            self.clip, self.start_frame(), scene_range, self.stride))


class MONONPHM_PG_batch(bpy.types.PropertyGroup):
    clips: CollectionProperty(type=MONONPHM_PG_queued_clip)
    index: IntProperty(default=-1)
    out_root: StringProperty(name="Output Root", subtype="DIR_PATH", options=REL, default="//mononphm_batch",
                             description="One result package per clip in this folder (finished ones are skipped)")
    workers: IntProperty(name="Workers", default=0, min=0, soft_max=16,
                         description="Clips tracked at once on this machine (0: one per CPU core)")
    chunk_frames: IntProperty(name="Chunk Frames", default=0, min=0, soft_max=2000,
                              description="Track clips longer than this in chunks on all workers (0: never)")
    log_path: StringProperty(subtype="FILE_PATH", options=REL)
    pid: IntProperty(default=0)        # the batch's process (a reopened .blend follows it)
    state: StringProperty(default="")  # "", RUNNING, FINISHED, FAILED, CANCELLED
    error: StringProperty(default="")


def _normpath(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


# --- starting and ticking ---------------------------------------------------------------------------------------

def start_batch(context, scene=None, *, python: str | None = None) -> jobs.BackendJob:
    """Start ``python -m backend batch`` for the queue; raises ValueError / RuntimeError with a user message."""
    scene = scene or context.scene
    batch = scene.mononphm_batch
    job_control.refuse_when_busy(scene)
    python = job_control.require_backend_python(context, python)
    inputs = [item.input_path() for item in batch.clips]
    missing = [p for p in inputs if not p or not os.path.exists(p)]
    if missing:
        raise ValueError(f"Input not found: {missing[0] or '(empty)'}")
    out_root = bpy.path.abspath(batch.out_root)
    if not out_root or out_root.startswith("//"):
        raise ValueError("Save the .blend first, or choose an absolute output root")
    face = scene.mononphm.face if scene.mononphm.face != "POINT" else "largest"  # a point belongs to one clip
    common = contracts.track_config.TrackConfig(input="", out="", face=face,
                                                **job_control.tracking_settings(context, scene))
    listing = job_control.log_file(context, "batch", ".list.txt")
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(command.batch_list([(path, item.track_config(common))
                                           for path, item in zip(inputs, batch.clips)]), encoding="utf-8")
    argv = command.batch_argv(python, [f"@{listing}"], out_root, common, batch.workers, batch.chunk_frames)
    job, log = job_control.launch(context, "batch", argv, out_root)
    batch.log_path, batch.pid, batch.state, batch.error = str(log), job.pid, "RUNNING", ""
    for item in batch.clips:
        item.state, item.stage, item.done, item.total, item.error, item.package = "queued", "", 0, 0, "", ""
    _jobs[scene.name] = job
    _ensure_timer()
    return job


def cancel(scene) -> bool:
    return job_control.cancel_job(_jobs.get(scene.name))


def is_running(scene) -> bool:
    return scene.name in _jobs


def reattach_all() -> list[str]:
    """After loading a .blend: follow the batches its scenes were running (still going, or finished meanwhile: then
    their events say which clips finished, and those are imported)."""
    found = []
    for scene in bpy.data.scenes:
        batch = getattr(scene, "mononphm_batch", None)
        if batch is None or batch.state != "RUNNING" or scene.name in _jobs:
            continue
        _jobs[scene.name] = jobs.AttachedJob.follow(batch.pid, log_path=bpy.path.abspath(batch.log_path),
                                                    out_dir=bpy.path.abspath(batch.out_root), total=len(batch.clips))
        found.append(scene.name)
    if found:
        _ensure_timer()
    return found


@persistent
def _on_load_post(*_args) -> None:
    _jobs.clear()
    reattach_all()


def tick(context=None) -> float | None:
    """Apply every batch's new events (main thread); imports finished clips. The next interval, or None when idle."""
    context = context or bpy.context
    for scene_name, job in list(_jobs.items()):
        scene = bpy.data.scenes.get(scene_name)
        if scene is None:
            _jobs.pop(scene_name)
            continue
        for event in job.poll():
            _apply(context, scene, event)
        if job.status.finished:
            batch = scene.mononphm_batch
            batch.state, batch.error = job.status.state, job.status.error
            _jobs.pop(scene_name)
    return TICK_S if _jobs else None


def _apply(context, scene, event) -> None:
    batch = scene.mononphm_batch
    if event.type == "clip_state":
        source = _normpath(str(event.get("source")))
        item = next((i for i in batch.clips if _normpath(i.input_path()) == source), None)
        if item is None:
            return
        item.name, item.state = str(event.get("clip")), str(event.get("state"))
        item.package = importer.stored_path(str(event.get("path")))
        if item.state == "skipped":  # finished by an earlier run
            _import(context, scene, item)
        return
    item = batch.clips.get(str(event.get("clip"))) if event.get("clip") else None
    if item is None:
        return
    if event.type == "progress":
        item.stage, item.done, item.total = str(event.get("stage") or ""), int(event.get("done") or 0), \
            int(event.get("total") or 0)
    elif event.type == "result":
        _import(context, scene, item)
    elif event.type == "error":
        item.error = f"{event.get('message', '')} {event.get('hint', '')}".strip()


def _import(context, scene, item) -> None:
    problem = job_control.import_into(context, scene, item.package, item.clip,
                                      None if item.clip else item.clip_start)
    if problem:
        item.error = problem


def _ensure_timer() -> None:
    # persistent: a batch outlives loading a file (and the bpy 4.5 wheel hung at exit after a file load had
    # dropped a non-persistent timer)
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TICK_S, persistent=True)


def _timer():
    try:
        return tick()
    except Exception as exc:  # never let the timer die silently with a batch running
        print(f"MonoNPHM ERROR: batch tick failed: {exc}")
        return 1.0


# --- operators and panel ----------------------------------------------------------------------------------------

class MONONPHM_OT_batch_add(bpy.types.Operator):
    bl_idname = "mononphm.batch_add"
    bl_label = "Add Input"
    bl_description = "Queue the Input panel's Movie Clip or file for the batch"

    def execute(self, context):
        s, batch = context.scene.mononphm, context.scene.mononphm_batch
        if s.input_kind == "CLIP" and s.clip is None or s.input_kind == "FILE" and not s.input_path:
            self.report({"ERROR"}, "Choose a Movie Clip or a file in the Input panel first")
            return {"CANCELLED"}
        item = batch.clips.add()
        if s.input_kind == "CLIP":
            item.clip = s.clip
        else:
            item.path, item.clip_start = s.input_path, s.clip_start
        for name in ("preset", "use_frame_range", "frame_start", "frame_end", "stride"):
            setattr(item, name, getattr(s, name))
        item.name = item.label()
        batch.index = len(batch.clips) - 1
        return {"FINISHED"}


class MONONPHM_OT_batch_remove(bpy.types.Operator):
    bl_idname = "mononphm.batch_remove"
    bl_label = "Remove"
    bl_description = "Take the selected clip out of the queue"

    @classmethod
    def poll(cls, context):
        batch = context.scene.mononphm_batch
        return not is_running(context.scene) and 0 <= batch.index < len(batch.clips)

    def execute(self, context):
        batch = context.scene.mononphm_batch
        batch.clips.remove(batch.index)
        batch.index = min(batch.index, len(batch.clips) - 1)
        return {"FINISHED"}


class MONONPHM_OT_batch_run(bpy.types.Operator):
    bl_idname = "mononphm.batch_run"
    bl_label = "Track Batch"
    bl_description = "Track every queued clip (python -m backend batch); each result is imported when it finishes"

    @classmethod
    def poll(cls, context):
        scene = context.scene
        return len(scene.mononphm_batch.clips) > 0 and not is_running(scene) and not job_control.is_running(scene)

    def execute(self, context):
        try:
            job = start_batch(context)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Batch started (log: {job.log_path})")
        return {"FINISHED"}


class MONONPHM_OT_batch_cancel(bpy.types.Operator):
    bl_idname = "mononphm.batch_cancel"
    bl_label = "Cancel Batch"
    bl_description = "Stop every clip of the batch (finished frames are kept; running the batch again resumes)"

    def execute(self, context):
        return {"FINISHED"} if cancel(context.scene) else {"CANCELLED"}


class MONONPHM_UL_batch(bpy.types.UIList):
    bl_idname = "MONONPHM_UL_batch"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row()
        row.label(text=item.label(), icon="CLIP" if item.clip else "FILE_MOVIE")
        if item.error:
            row.label(text=item.error, icon="ERROR")
        elif item.state == "running" and item.total:
            row.label(text=f"{item.stage} {item.done}/{item.total}")
        else:
            row.label(text=item.state)


class MONONPHM_PT_batch(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_batch"
    bl_label = "Batch"
    bl_parent_id = "MONONPHM_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        batch = context.scene.mononphm_batch
        row = layout.row()
        row.template_list(MONONPHM_UL_batch.bl_idname, "", batch, "clips", batch, "index", rows=3)
        col = row.column(align=True)
        col.operator("mononphm.batch_add", text="", icon="ADD")
        col.operator("mononphm.batch_remove", text="", icon="REMOVE")
        if 0 <= batch.index < len(batch.clips):   # the selected clip's own settings
            item = batch.clips[batch.index]
            box = layout.box()
            box.enabled = not is_running(context.scene)
            box.prop(item, "preset")
            draw_frame_range(box, item)
        layout.prop(batch, "out_root")
        row = layout.row(align=True)
        row.prop(batch, "workers")
        row.prop(batch, "chunk_frames")
        if is_running(context.scene):
            done = sum(item.state in ("complete", "skipped", "failed") for item in batch.clips)
            layout.label(text=f"Clips finished: {done}/{len(batch.clips)}")
            layout.operator("mononphm.batch_cancel", icon="CANCEL")
        else:
            layout.operator("mononphm.batch_run", icon="PLAY")
            if batch.error:
                layout.label(text=batch.error, icon="ERROR")


classes = (MONONPHM_PG_queued_clip, MONONPHM_PG_batch, MONONPHM_OT_batch_add, MONONPHM_OT_batch_remove,
           MONONPHM_OT_batch_run, MONONPHM_OT_batch_cancel, MONONPHM_UL_batch, MONONPHM_PT_batch)


def register() -> None:
    bpy.types.Scene.mononphm_batch = PointerProperty(type=MONONPHM_PG_batch)
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    _jobs.clear()   # running batches keep going (own process group); reopening the .blend follows them
    del bpy.types.Scene.mononphm_batch
