"""Operators: track / cancel / re-track a range / import a result / jump to a flagged frame; check, set up and
remove the backend environment."""


import os
import shutil
import threading

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import contracts, importer, job_control, prefs
from .contracts import result_format
from .core import command, installer

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
        try:
            job_control.start_track(context, scene_range=(start, end), overwrite=True)
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
        try:
            result = importer.import_package(context, path, mode=self.mode, clip=clip,
                                             clip_start=importer.track_clip_start(s))
        except result_format.PackageError as exc:
            self.report({"ERROR"}, f"Cannot import: {exc.message}. {exc.hint}")
            return {"CANCELLED"}
        except Exception as exc:  # noqa: BLE001 - Blender refusing a value etc.: the scene was left unchanged
            self.report({"ERROR"}, f"Cannot import: {type(exc).__name__}: {exc}")
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


class MONONPHM_OT_check_backend(bpy.types.Operator):
    bl_idname = "mononphm.check_backend"
    bl_label = "Check Backend"
    bl_description = "Run the backend's version handshake (python -m backend --version --json)"

    def execute(self, context):
        prefs.start_handshake(context)
        job_control.ensure_timer()
        return {"FINISHED"}


class MONONPHM_OT_setup_backend(bpy.types.Operator):
    bl_idname = "mononphm.setup_backend"
    bl_label = "Set Up Backend"
    bl_description = ("Create the backend's Python environment (from Blender's own Python unless a custom one is "
                      "set), install the pinned packages with the right torch build and run a one-frame smoke test. "
                      "Running it again resumes an unfinished set-up")

    def execute(self, context):
        if prefs.setup_running():
            self.report({"ERROR"}, "The backend set-up is already running")
            return {"CANCELLED"}
        p = prefs.get_prefs(context)
        prefs.STATE.base_choice = None  # probe again: the user may have installed a Python since
        base = prefs.base_python_choice(p)
        if isinstance(base, installer.InstallError):
            self.report({"ERROR"}, f"{base.message}. {base.hint}")
            return {"CANCELLED"}
        wheels = None
        if p.install_source == "OFFLINE":
            wheels = bpy.path.abspath(p.wheels_dir)
            if not wheels or not os.path.isdir(wheels):
                self.report({"ERROR"}, "Choose the folder of wheels for the offline install")
                return {"CANCELLED"}
        elif not getattr(bpy.app, "online_access", True):
            self.report({"ERROR"}, "Online access is disabled in Blender (Preferences ▸ System ▸ Network); "
                                   "enable it or use the offline install from a folder of wheels")
            return {"CANCELLED"}
        try:
            variant = prefs.torch_choice(p).variant
        except installer.InstallError as exc:
            self.report({"ERROR"}, f"{exc.message}. {exc.hint}")
            return {"CANCELLED"}
        env_dir = prefs.default_env_dir(p)
        if env_dir.exists() and any(env_dir.iterdir()) and not command.is_managed_env(env_dir):
            self.report({"ERROR"}, f"{env_dir} exists and was not created by this add-on; choose another folder")
            return {"CANCELLED"}
        options = installer.InstallOptions(base.python, env_dir, contracts.requirements_file(p.install_ray),
                                           contracts.backend_root(), torch_variant=variant, wheel_dir=wheels,
                                           python_version=base.python_version)
        log = prefs.log_dir(context) / "backend-setup.log"
        prefs.STATE.setup = installer.Installer(options, log_path=log).start()
        prefs.STATE.setup_message = ""
        job_control.ensure_timer()
        self.report({"INFO"}, f"Setting up the backend in {env_dir} — log: {log}")
        return {"FINISHED"}


class MONONPHM_OT_cancel_setup(bpy.types.Operator):
    bl_idname = "mononphm.cancel_setup"
    bl_label = "Cancel Set-Up"
    bl_description = "Stop the backend set-up; Set Up Backend resumes it later (downloaded files are kept)"

    def execute(self, context):
        if not prefs.setup_running():
            return {"CANCELLED"}
        prefs.STATE.setup.cancel()
        return {"FINISHED"}


class MONONPHM_OT_remove_backend(bpy.types.Operator):
    bl_idname = "mononphm.remove_backend"
    bl_label = "Remove Backend"
    bl_description = "Delete the backend environment created by 'Set up backend'"

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        if prefs.setup_running():
            self.report({"ERROR"}, "Cancel the running set-up first")
            return {"CANCELLED"}
        env_dir = prefs.default_env_dir(prefs.get_prefs(context))
        if not env_dir.exists():
            self.report({"INFO"}, "No backend environment to remove")
            return {"CANCELLED"}
        if not command.is_managed_env(env_dir):
            self.report({"ERROR"}, f"{env_dir} was not created by this add-on; remove it yourself")
            return {"CANCELLED"}
        prefs.STATE.removing = threading.Thread(target=shutil.rmtree, args=(env_dir,),
                                                kwargs={"ignore_errors": True}, daemon=True)
        prefs.STATE.removing.start()
        prefs.STATE.info, prefs.STATE.error = None, "Backend removed"
        job_control.ensure_timer()
        return {"FINISHED"}


classes = (MONONPHM_OT_track, MONONPHM_OT_retrack, MONONPHM_OT_bake, MONONPHM_OT_cancel, MONONPHM_OT_import_result,
           MONONPHM_OT_open_log, MONONPHM_OT_refresh_markers, MONONPHM_OT_check_backend, MONONPHM_OT_setup_backend,
           MONONPHM_OT_cancel_setup, MONONPHM_OT_remove_backend)


def menu_import(self, context):
    self.layout.operator(MONONPHM_OT_import_result.bl_idname, text="MonoNPHM Result (folder)")
