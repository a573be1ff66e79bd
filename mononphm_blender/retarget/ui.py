"""The Retarget section of the MonoNPHM sidebar tab."""

import bpy

from ..ui import SidebarPanel
from .bake import mapping_text


class MONONPHM_PT_retarget(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_retarget"
    bl_label = "Retarget"
    bl_parent_id = "MONONPHM_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        s = context.scene.mononphm_retarget
        layout.prop(s, "source_kind", expand=True)
        if s.source_kind == "CSV":
            layout.prop(s, "csv_path")
        else:
            layout.prop(s, "result_path")
            if not s.result_path:
                last = context.scene.mononphm.last_package
                layout.label(text=f"Last import: {last}" if last else "No result imported yet", icon="INFO")

        box = layout.box()
        box.label(text="Head Pose", icon="BONE_DATA")
        box.prop(s, "target")
        if s.target is not None and s.target.type == "ARMATURE":
            box.prop_search(s, "head_bone", s.target.data, "bones")
            box.prop_search(s, "neck_bone", s.target.data, "bones")
            if s.neck_bone:
                box.prop(s, "neck_share")
        row = box.row(align=True)
        row.prop(s, "use_location")
        sub = row.row(align=True)
        sub.active = s.use_location
        sub.prop(s, "location_scale")
        if s.source_kind == "RESULT":
            box.prop(s, "camera", expand=True)

        box = layout.box()
        box.label(text="Expressions", icon="SHAPEKEY_DATA")
        box.prop(s, "face")
        if s.face is not None:
            text = mapping_text(s.face)
            box.label(text=f"Mapping: {text.name}" if text else "Mapping: by name at bake (Auto Map to edit)",
                      icon="TEXT")
            row = box.row(align=True)
            row.operator("mononphm.retarget_auto_map", icon="LINKED")
            row.operator("mononphm.retarget_load_mapping", text="", icon="FILE_FOLDER")
            row.operator("mononphm.retarget_save_mapping", text="", icon="FILE_TICK")
        box.prop(s, "drive", expand=True)

        box = layout.box()
        row = box.row(align=True)
        row.prop(s, "neutral_frame")
        row.operator("mononphm.retarget_set_neutral", text="", icon="TIME")
        box.prop(s, "calibrate")
        col = box.column(align=True)
        col.label(text="Smoothing (one-euro cutoff Hz, 0 = off):")
        row = col.row(align=True)
        for name in ("smooth_pose", "smooth_eyes", "smooth_mouth", "smooth_brows"):
            row.prop(s, name)
        col.prop(s, "smooth_beta")

        row = layout.row(align=True)
        preview = row.operator("mononphm.retarget_bake", text="Preview", icon="HIDE_OFF")
        preview.preview = True
        row.operator("mononphm.retarget_bake", icon="KEYINGSET")

        box = layout.box()
        box.label(text="Export", icon="EXPORT")
        box.prop(s, "export_format")
        box.prop(s, "export_path")
        box.operator("mononphm.retarget_export", icon="EXPORT")


classes = (MONONPHM_PT_retarget,)
