"""Batch queue: several clips (Movie Clips or files) tracked by one ``python -m backend batch``.

Each clip's result package is imported as soon as the backend reports it finished (its ``result`` event, or
``clip_state`` ``skipped`` for a package an earlier run finished). The backend names each clip's package folder and
says which input it belongs to (``clip_state`` events: ``clip``, ``path``, ``source``), so the queue follows the
backend's naming. Like single runs, ``tick()`` holds the logic (tests call it; a timer calls it in the UI).

A batch applies one set of tracking flags to every clip: the camera of each Movie Clip is not passed (the backend's
default field of view is used), nor the scene's frame range.
"""

from __future__ import annotations

import os

import bpy
from bpy.props import CollectionProperty, IntProperty, PointerProperty, StringProperty

from . import contracts, importer, job_control
from .core import command, jobs
from .ui import SidebarPanel

TICK_S = 0.2
REL = {"PATH_SUPPORTS_BLEND_RELATIVE"}

_jobs: dict[str, jobs.BackendJob] = {}  # scene name → the running batch


class MONONPHM_PG_queued_clip(bpy.types.PropertyGroup):
    """One queued clip; ``name`` is the backend's folder name for it once the batch has started."""

    clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    path: StringProperty(name="File", subtype="FILE_PATH", options=REL)
    clip_start: IntProperty(name="Start Frame", default=1, description="Scene frame of the first source frame")
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
    state: StringProperty(default="")  # "", RUNNING, FINISHED, FAILED, CANCELLED
    error: StringProperty(default="")


def _normpath(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


# --- starting and ticking ---------------------------------------------------------------------------------------

def start_batch(context, scene=None, *, python: str | None = None) -> jobs.BackendJob:
    """Start ``python -m backend batch`` for the queue; raises ValueError / RuntimeError with a user message."""
    scene = scene or context.scene
    batch = scene.mononphm_batch
    if scene.name in _jobs or job_control.is_running(scene):
        raise RuntimeError("A tracking job is already running for this scene")
    python = job_control.require_backend_python(context, python)
    inputs = [item.input_path() for item in batch.clips]
    missing = [p for p in inputs if not p or not os.path.exists(p)]
    if missing:
        raise ValueError(f"Input not found: {missing[0] or '(empty)'}")
    out_root = bpy.path.abspath(batch.out_root)
    if not out_root or out_root.startswith("//"):
        raise ValueError("Save the .blend first, or choose an absolute output root")
    face = scene.mononphm.face if scene.mononphm.face != "POINT" else "largest"  # a point belongs to one clip
    config = contracts.track_config.TrackConfig(input="", out="", face=face,
                                                **job_control.tracking_settings(context, scene))
    argv = command.batch_argv(python, inputs, out_root, config, batch.workers, batch.chunk_frames)
    job, log = job_control.launch(context, "batch", argv, out_root)
    batch.log_path, batch.state, batch.error = str(log), "RUNNING", ""
    for item in batch.clips:
        item.state, item.stage, item.done, item.total, item.error, item.package = "queued", "", 0, 0, "", ""
    _jobs[scene.name] = job
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TICK_S)
    return job


def cancel(scene) -> bool:
    job = _jobs.get(scene.name)
    if job is None or job.status.finished:
        return False
    job.cancel()
    return True


def is_running(scene) -> bool:
    return scene.name in _jobs


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
    with context.temp_override(scene=scene):
        try:
            importer.import_package(context, bpy.path.abspath(item.package), clip=item.clip,
                                    clip_start=None if item.clip else item.clip_start)
        except contracts.result_format.PackageError as exc:
            item.error = f"Import: {exc.message} {exc.hint}"


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


def unregister() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    _jobs.clear()
    del bpy.types.Scene.mononphm_batch
