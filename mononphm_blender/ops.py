"""Operators: track / cancel / re-track a range / import a result / jump to a flagged frame."""


import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import importer, job_control
from .contracts import result_format
from .core import command

IMPORT_MODE_ITEMS = [("AUTO", "From Package", "Use the output mode the package was tracked with"),
                     ("SHAPE_KEYS", "Shape Keys", "One mesh with a shape key per frame"),
                     ("MESHES", "Per-frame Meshes", "The USD mesh sequence"),
                     ("BOTH", "Both", "")]


class MONONPHM_OT_track(bpy.types.Operator):
    bl_idname = "mononphm.track"
    bl_label = "Track"
    bl_description = "Track the input with the MonoNPHM backend; frames are imported as they finish"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and not job_control.is_running(context.scene)

    def execute(self, context):
        try:
            job = job_control.start_track(context)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if job.status.finished:
            self.report({"ERROR"}, f"{job.status.error} — log: {job.log_path}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Tracking started (log: {job.log_path})")
        return {"FINISHED"}


class MONONPHM_OT_retrack(bpy.types.Operator):
    bl_idname = "mononphm.retrack"
    bl_label = "Re-track Range"
    bl_description = "Track the given frame range again into the existing result (--frames … --overwrite)"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and not job_control.is_running(context.scene)

    def execute(self, context):
        s = context.scene.mononphm
        start, end = sorted((s.retrack_start, s.retrack_end))
        clip_start = s.clip.frame_start if (s.input_kind == "CLIP" and s.clip) else s.clip_start
        try:
            frames = command.frames_arg(start - clip_start, end - clip_start, s.stride)
            job_control.start_track(context, frames=frames, overwrite=True)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Re-tracking frames {start}–{end}")
        return {"FINISHED"}


class MONONPHM_OT_bake(bpy.types.Operator):
    bl_idname = "mononphm.bake"
    bl_label = "Re-bake Colours"
    bl_description = ("Bake the subject's colours (and a texture) into the last result again, from the given frame "
                      "range (e.g. frames without hands or hair over the face)")

    @classmethod
    def poll(cls, context):
        return (context.scene is not None and not job_control.is_running(context.scene)
                and bool(context.scene.mononphm.last_package))

    def execute(self, context):
        s = context.scene.mononphm
        frames = None
        if s.bake_use_range:
            start, end = sorted((s.bake_start, s.bake_end))
            clip_start = importer.scene_frame_of(context.scene, 0)
            frames = command.frames_arg(start - clip_start, end - clip_start)
        try:
            job_control.start_bake(context, frames=frames, texture=s.bake_texture)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, "Baking colours" + (f" from frames {frames}" if frames else ""))
        return {"FINISHED"}


class MONONPHM_OT_cancel(bpy.types.Operator):
    bl_idname = "mononphm.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the backend (finished frames are kept and can be imported or resumed)"

    def execute(self, context):
        if not job_control.cancel(context.scene):
            self.report({"WARNING"}, "No tracking job is running")
            return {"CANCELLED"}
        return {"FINISHED"}


class MONONPHM_OT_import_result(bpy.types.Operator, ImportHelper):
    bl_idname = "mononphm.import_result"
    bl_label = "Import Result"
    bl_description = "Import a MonoNPHM result package (a folder with manifest.json); updates an earlier import"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ""
    use_filter_folder = True
    filter_glob: StringProperty(default="manifest.json", options={"HIDDEN"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    mode: EnumProperty(name="Import As", items=IMPORT_MODE_ITEMS, default="AUTO")

    def invoke(self, context, event):
        last = context.scene.mononphm.last_package
        if last:
            self.directory = bpy.path.abspath(last)
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        path = self.directory or self.filepath
        if self.filepath and self.filepath.endswith("manifest.json"):
            path = bpy.path.abspath(self.filepath)[: -len("manifest.json")]
        s = context.scene.mononphm
        clip = s.clip if s.input_kind == "CLIP" else None
        clip_start = None if clip is not None else (s.clip_start if s.input_kind == "FILE" else None)
        try:
            result = importer.import_package(context, path, mode=self.mode, clip=clip, clip_start=clip_start)
        except result_format.PackageError as exc:
            self.report({"ERROR"}, f"Cannot import: {exc.message}. {exc.hint}")
            return {"CANCELLED"}
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Imported {len(result.scene_frames)} frames in {result.seconds:.2f} s")
        return {"FINISHED"}


class MONONPHM_OT_open_log(bpy.types.Operator):
    bl_idname = "mononphm.open_log"
    bl_label = "Open Log"
    bl_description = "Open the backend log in Blender's text editor"

    def execute(self, context):
        path = bpy.path.abspath(context.scene.mononphm.job.log_path)
        try:
            text = bpy.data.texts.load(path)
        except (RuntimeError, OSError) as exc:
            self.report({"ERROR"}, f"Cannot open {path}: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Loaded {text.name} into the Text Editor")
        return {"FINISHED"}


class MONONPHM_OT_refresh_markers(bpy.types.Operator):
    bl_idname = "mononphm.refresh_markers"
    bl_label = "Update Markers"
    bl_description = "Recompute the flagged frames with the current error threshold"

    def execute(self, context):
        s = context.scene.mononphm
        bad = importer.refresh_quality_markers(context.scene, s.error_threshold)
        self.report({"INFO"}, f"{len(bad)} frames above {s.error_threshold:.1f} px")
        return {"FINISHED"}


classes = (MONONPHM_OT_track, MONONPHM_OT_retrack, MONONPHM_OT_bake, MONONPHM_OT_cancel, MONONPHM_OT_import_result,
           MONONPHM_OT_open_log, MONONPHM_OT_refresh_markers)


def menu_import(self, context):
    self.layout.operator(MONONPHM_OT_import_result.bl_idname, text="MonoNPHM Result (folder)")
