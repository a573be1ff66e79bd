"""View3D sidebar tab "MonoNPHM": backend, input, output/model, track (progress, cancel), result review."""

from __future__ import annotations

import bpy

from . import job_control, prefs


class MONONPHM_UL_bad_frames(bpy.types.UIList):
    bl_idname = "MONONPHM_UL_bad_frames"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row()
        row.label(text=f"Frame {item.frame}", icon="MARKER_HLT")
        row.label(text=f"{item.error:.2f} px")


class SidebarPanel:
    """The MonoNPHM tab of the 3D Viewport's sidebar: every panel of the add-on lives there."""
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MonoNPHM"


def draw_frame_range(layout, settings) -> None:
    """The frame range (on/off, start, end: scene frames) and stride of a clip's settings (the scene's Input panel,
    a queued clip of the Batch panel)."""
    row = layout.row(align=True)
    row.prop(settings, "use_frame_range", text="")
    sub = row.row(align=True)
    sub.active = settings.use_frame_range
    sub.prop(settings, "frame_start")
    sub.prop(settings, "frame_end")
    layout.prop(settings, "stride")


class MONONPHM_PT_main(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_main"
    bl_label = "MonoNPHM"

    def draw(self, context):
        layout = self.layout
        prefs.draw_backend_status(layout, context)
        layout.operator("mononphm.check_backend", icon="FILE_REFRESH")


class MONONPHM_PT_input(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_input"
    bl_label = "Input"
    bl_parent_id = "MONONPHM_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.mononphm
        layout.prop(s, "input_kind", expand=True)
        if s.input_kind == "CLIP":
            layout.template_ID(s, "clip", open="clip.open")
            if s.clip is not None:
                cam = s.clip.tracking.camera
                layout.label(text=f"{cam.focal_length:.1f} mm · sensor {cam.sensor_width:.1f} mm · "
                                  f"{s.clip.size[0]}×{s.clip.size[1]}", icon="CAMERA_DATA")
        else:
            layout.prop(s, "input_path")
            layout.prop(s, "clip_start")
        draw_frame_range(layout, s)
        layout.prop(s, "face")
        if s.face == "POINT":
            layout.prop(s, "face_point")


class MONONPHM_PT_output(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_output"
    bl_label = "Output and Model"
    bl_parent_id = "MONONPHM_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.mononphm
        layout.prop(s, "preset")
        layout.prop(s, "output_mode")
        layout.prop(s, "track_texture")
        layout.prop(s, "output_dir")
        layout.prop(s, "model")
        if s.model == "OFFICIAL":
            layout.prop(s, "official_dir")
            layout.prop(s, "mean_anchors")
            layout.prop(s, "checkpoint_epoch")
            layout.label(text="Official weights carry their own licence", icon="INFO")


class MONONPHM_PT_track(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_track"
    bl_label = "Track"
    bl_parent_id = "MONONPHM_PT_main"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        s = scene.mononphm
        st = s.job
        running = job_control.is_running(scene)
        if running:
            text = f"{st.stage or 'tracking'}: {st.done}/{st.total or '?'}"
            if st.eta_s >= 0:
                text += f" · ETA {job_control.format_eta(st.eta_s)}"
            if hasattr(layout, "progress"):
                layout.progress(factor=st.progress, type="BAR", text=text)
            else:
                layout.label(text=text)
            layout.label(text=f"Frames done: {st.frames_done}" + (f" · on {st.device}" if st.device else ""))
            if st.warning:
                layout.label(text=st.warning, icon="ERROR")
            layout.operator("mononphm.cancel", icon="CANCEL")
        else:
            layout.prop(s, "auto_import")
            layout.operator("mononphm.track", icon="PLAY")
            if st.state in ("FAILED", "CANCELLED") and st.error:
                box = layout.box()
                box.label(text=st.error, icon="ERROR" if st.state == "FAILED" else "INFO")
                if st.hint:
                    box.label(text=st.hint)
                if st.log_path:
                    box.label(text=f"Log: {st.log_path}")
                    box.operator("mononphm.open_log", icon="TEXT")
            elif st.state == "FINISHED":
                layout.label(text=f"Finished: {st.frames_done} frames", icon="CHECKMARK")
            if st.warning and st.state != "RUNNING":
                layout.label(text=st.warning, icon="ERROR")
            col = layout.column(align=True)
            col.label(text="Re-track a range (overwrites those frames):")
            row = col.row(align=True)
            row.prop(s, "retrack_start")
            row.prop(s, "retrack_end")
            col.operator("mononphm.retrack", icon="FILE_REFRESH")


class MONONPHM_PT_result(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_result"
    bl_label = "Result"
    bl_parent_id = "MONONPHM_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.mononphm
        row = layout.row(align=True)
        row.operator("mononphm.import_result", icon="IMPORT")
        row.prop(s, "import_hair", toggle=True)
        if s.last_package:
            layout.label(text=f"Result: {s.last_package}")
        row = layout.row(align=True)
        row.prop(s, "error_threshold")
        row.operator("mononphm.refresh_markers", text="", icon="FILE_REFRESH")
        layout.label(text=f"Frames above threshold: {len(s.bad_frames)}")
        layout.template_list(MONONPHM_UL_bad_frames.bl_idname, "", s, "bad_frames", s, "bad_frames_index", rows=4)


class MONONPHM_PT_appearance(SidebarPanel, bpy.types.Panel):
    bl_idname = "MONONPHM_PT_appearance"
    bl_label = "Appearance"
    bl_parent_id = "MONONPHM_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.mononphm
        layout.prop(s, "colour_source", expand=True)
        col = layout.column(align=True)
        col.label(text="Re-bake from the video:")
        row = col.row(align=True)
        row.prop(s, "bake_use_range", text="")
        sub = row.row(align=True)
        sub.active = s.bake_use_range
        sub.prop(s, "bake_start")
        sub.prop(s, "bake_end")
        col.prop(s, "bake_texture")
        col.operator("mononphm.bake", icon="BRUSH_DATA")


classes = (MONONPHM_UL_bad_frames, MONONPHM_PT_main, MONONPHM_PT_input, MONONPHM_PT_output, MONONPHM_PT_track,
           MONONPHM_PT_result, MONONPHM_PT_appearance)
