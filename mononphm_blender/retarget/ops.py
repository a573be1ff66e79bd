"""Retarget operators: auto/load/save the mapping, preview, bake, stabilise, export (all undoable)."""

from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..contracts import contract
from . import bake, exchange

protocol = contract("contracts.protocol")
names = contract("contracts.retarget.names")
llf_csv = contract("contracts.retarget.llf_csv")
smoothing = contract("contracts.retarget.smoothing")


def _run(op, action):
    """Run ``action()``; a RetargetError (or a package error) becomes an operator error with its hint."""
    try:
        return action()
    except protocol.BackendError as exc:
        op.report({"ERROR"}, f"{exc.message}. {exc.hint}".strip())
        return None


def _source(context):
    s = context.scene.mononphm_retarget
    path = s.source_path(context.scene)
    if not path:
        raise bake.RetargetError("no source: import a result, or pick a result folder or a CSV take",
                                 "Set the Source in the Retarget panel.")
    return bake.load_source(context.scene, path)


class _Op:
    bl_options = {"REGISTER", "UNDO"}


class MONONPHM_OT_retarget_auto_map(_Op, bpy.types.Operator):
    bl_idname = "mononphm.retarget_auto_map"
    bl_label = "Auto Map"
    bl_description = ("Bind the ARKit channels to the face mesh's shape keys by name (any convention) and store the "
                      "mapping in the .blend (Text Editor)")

    @classmethod
    def poll(cls, context):
        return context.scene.mononphm_retarget.face is not None

    def execute(self, context):
        face = context.scene.mononphm_retarget.face
        mapping = names.auto_mapping(bake.shape_key_names(face))
        text = bake.store_mapping(face, mapping)
        bound = 52 - len(mapping.unbound)
        self.report({"INFO" if bound else "WARNING"}, f"{bound} of 52 channels bound ({text.name}); unbound: "
                    f"{', '.join(mapping.unbound) or 'none'}")
        return {"FINISHED"}


class MONONPHM_OT_retarget_load_mapping(_Op, bpy.types.Operator, ImportHelper):
    bl_idname = "mononphm.retarget_load_mapping"
    bl_label = "Load Mapping"
    bl_description = "Load a mapping file (JSON) for the face mesh"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return context.scene.mononphm_retarget.face is not None

    def execute(self, context):
        face = context.scene.mononphm_retarget.face

        def load():
            return bake.store_mapping(face, names.ChannelMapping.from_json(Path(self.filepath).read_text("utf-8")))

        try:
            text = _run(self, load)
        except OSError as exc:
            self.report({"ERROR"}, f"Cannot read {self.filepath}: {exc}")
            return {"CANCELLED"}
        return {"FINISHED"} if text is not None else {"CANCELLED"}


class MONONPHM_OT_retarget_save_mapping(bpy.types.Operator, ExportHelper):
    bl_idname = "mononphm.retarget_save_mapping"
    bl_label = "Save Mapping"
    bl_description = "Write the face mesh's mapping to a JSON file (to reuse it for another take or character)"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        face = context.scene.mononphm_retarget.face
        return face is not None and bake.mapping_text(face) is not None

    def execute(self, context):
        face = context.scene.mononphm_retarget.face
        mapping = _run(self, lambda: names.ChannelMapping.from_json(bake.mapping_text(face).as_string()))
        if mapping is None:
            return {"CANCELLED"}
        Path(self.filepath).write_text(mapping.to_json(), encoding="utf-8")
        self.report({"INFO"}, f"Saved {self.filepath}")
        return {"FINISHED"}


class MONONPHM_OT_retarget_bake(_Op, bpy.types.Operator):
    bl_idname = "mononphm.retarget_bake"
    bl_label = "Bake"
    bl_description = ("Key the performance onto the face mesh's shape keys and the head target (re-baking replaces "
                      "the previous bake)")
    preview: bpy.props.BoolProperty(default=False, options={"SKIP_SAVE", "HIDDEN"})

    @classmethod
    def poll(cls, context):
        s = context.scene.mononphm_retarget
        return s.face is not None or s.target is not None

    def execute(self, context):
        s = context.scene.mononphm_retarget
        settings = s.settings()
        if self.preview:
            settings.use_drivers = True

        def run():
            source = _source(context)
            done = []
            if s.face is not None:
                report = bake.bake_shape_keys(s.face, source, settings=settings)
                done.append(f"{len(report.keys)} shape keys")
                if report.missing:
                    self.report({"WARNING"}, f"Not on '{s.face.name}': {', '.join(report.missing)}")
            if s.target is not None:
                bone = s.head_bone if s.target.type == "ARMATURE" else ""
                bake.bake_head_pose(s.target, source, settings, head_bone=bone,
                                    neck_bone=s.neck_bone if bone else "")
                done.append(f"head pose on {s.target.name}{':' + bone if bone else ''}")
            if s.source_kind == "RESULT" and source.head is not None:
                bake.stabilise_head(context.scene, source.path, s.camera == "STABILISED", settings.neutral_frame)
            return done

        done = _run(self, run)
        if done is None:
            return {"CANCELLED"}
        self.report({"INFO"}, ("Preview (drivers): " if self.preview else "Baked ") + ", ".join(done))
        return {"FINISHED"}


class MONONPHM_OT_retarget_set_neutral(_Op, bpy.types.Operator):
    bl_idname = "mononphm.retarget_set_neutral"
    bl_label = "Use Current Frame"
    bl_description = "Make the current frame the neutral (rest) frame"

    def execute(self, context):
        context.scene.mononphm_retarget.neutral_frame = context.scene.frame_current
        return {"FINISHED"}


class MONONPHM_OT_retarget_export(bpy.types.Operator):
    bl_idname = "mononphm.retarget_export"
    bl_label = "Export"
    bl_description = "Export the head animation with the result's frame rate and frame range"

    def execute(self, context):
        s = context.scene.mononphm_retarget

        def run():
            source = _source(context)
            if s.export_format == "LLF_CSV":
                perf = smoothing.smooth_performance(source.performance, s.smoothing_settings())
                return llf_csv.write_llf_csv(Path(bpy.path.abspath(s.export_path)).with_suffix(".csv"), perf)
            objects = [o for o in (s.face, s.target) if o is not None]
            if s.export_format == "ALEMBIC":
                objects = [o for o in objects if o.type == "MESH"] + [c for o in objects if o.type == "ARMATURE"
                                                                      for c in o.children if c.type == "MESH"]
            return exchange.export_animation(context, objects, s.export_path, s.export_format,
                                             exchange.frame_range_of(source.frames), source.performance.fps)

        path = _run(self, run)
        if path is None:
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}


classes = (MONONPHM_OT_retarget_auto_map, MONONPHM_OT_retarget_load_mapping, MONONPHM_OT_retarget_save_mapping,
           MONONPHM_OT_retarget_bake, MONONPHM_OT_retarget_set_neutral, MONONPHM_OT_retarget_export)
