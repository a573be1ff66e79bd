"""Scene settings of the Retarget panel (``scene.mononphm_retarget``) and their RetargetSettings."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from ..contracts import contract
from .bake import RetargetSettings

smoothing = contract("contracts.retarget.smoothing")
REL = {"PATH_SUPPORTS_BLEND_RELATIVE"}

SOURCE_ITEMS = [("RESULT", "Result", "The result package (by default the one imported last)"),
                ("CSV", "Live Link Face CSV", "A take recorded by Live Link Face or exported from a result")]
DRIVE_ITEMS = [("KEYS", "Baked Keys", "Keyframes on the shape keys (exportable, editable)"),
               ("DRIVERS", "Drivers", "Drivers reading the imported head's ARKit properties (live preview)")]
CAMERA_ITEMS = [("TRACKED", "Camera Stays", "The head moves; the camera stays where tracking put it"),
                ("STABILISED", "Head Stabilised", "The head holds its neutral pose; the camera moves around it")]
EXPORT_ITEMS = [("FBX", "FBX", "Shape keys and bones, for game engines and DCCs"),
                ("GLTF", "glTF (.glb)", "Morph targets and bones"),
                ("ALEMBIC", "Alembic", "Per-frame vertex positions of the meshes"),
                ("LLF_CSV", "Live Link Face CSV", "The ARKit channels and head angles (Unreal, Faceit, ...)")]


def _is_mesh(self, obj):
    return obj.type == "MESH"


class MONONPHM_PG_retarget(bpy.types.PropertyGroup):
    source_kind: EnumProperty(name="Source", items=SOURCE_ITEMS, default="RESULT")
    result_path: StringProperty(name="Result", subtype="DIR_PATH", options=REL,
                                description="Result package folder; empty: the one imported last")
    csv_path: StringProperty(name="CSV", subtype="FILE_PATH", options=REL, description="Live Link Face CSV take")
    target: PointerProperty(name="Head Target", type=bpy.types.Object,
                            description="Armature whose head bone follows the head, or any object")
    head_bone: StringProperty(name="Head Bone", description="Bone that takes the head rotation")
    neck_bone: StringProperty(name="Neck Bone", description="Optional bone that takes a share of the rotation")
    neck_share: FloatProperty(name="Neck Share", default=0.3, min=0.0, max=1.0, subtype="FACTOR",
                              description="Share of the head rotation the neck bone takes")
    use_location: BoolProperty(name="Translation", default=False,
                               description="Also key the head's translation relative to the neutral frame")
    location_scale: FloatProperty(name="Scale", default=1.0, min=0.0, soft_max=100.0,
                                  description="Rig units per metre of head translation")
    face: PointerProperty(name="Face Mesh", type=bpy.types.Object, poll=_is_mesh,
                          description="Mesh whose shape keys follow the ARKit channels")
    drive: EnumProperty(name="Drive By", items=DRIVE_ITEMS, default="KEYS")
    camera: EnumProperty(name="Camera", items=CAMERA_ITEMS, default="TRACKED")
    neutral_frame: IntProperty(name="Neutral Frame", default=1,
                               description="Scene frame of a neutral face and head pose: the rig's rest pose")
    calibrate: BoolProperty(name="Calibrate Neutral", default=True,
                            description="Subtract the neutral frame's expression from every frame")
    smooth_pose: FloatProperty(name="Pose", default=0.0, min=0.0, soft_max=10.0, unit="NONE",
                               description="One-euro minimum cutoff in Hz for the head pose (0: off; lower smooths "
                                           "more)")
    smooth_eyes: FloatProperty(name="Eyes", default=0.0, min=0.0, soft_max=10.0,
                               description="One-euro minimum cutoff in Hz for the eye channels (0: off)")
    smooth_mouth: FloatProperty(name="Mouth", default=0.0, min=0.0, soft_max=10.0,
                                description="One-euro minimum cutoff in Hz for jaw, mouth, cheeks, nose (0: off)")
    smooth_brows: FloatProperty(name="Brows", default=0.0, min=0.0, soft_max=10.0,
                                description="One-euro minimum cutoff in Hz for the brow channels (0: off)")
    smooth_beta: FloatProperty(name="Speed", default=smoothing.OneEuro.beta, min=0.0, soft_max=50.0,
                               description="How fast motion (blinks) opens the filter: higher keeps more of it")
    export_format: EnumProperty(name="Format", items=EXPORT_ITEMS, default="FBX")
    export_path: StringProperty(name="File", subtype="FILE_PATH", options=REL, default="//mononphm_head",
                                description="Export file (the format's extension is added)")

    def smoothing_settings(self):
        groups = {group: smoothing.OneEuro(cutoff, self.smooth_beta)
                  for group, cutoff in (("pose", self.smooth_pose), ("eyes", self.smooth_eyes),
                                        ("mouth", self.smooth_mouth), ("brows", self.smooth_brows)) if cutoff > 0}
        return smoothing.SmoothingSettings(groups)

    def settings(self) -> RetargetSettings:
        return RetargetSettings(neutral_frame=self.neutral_frame, calibrate=self.calibrate,
                                smoothing=self.smoothing_settings(), neck_share=self.neck_share,
                                use_location=self.use_location, location_scale=self.location_scale,
                                use_drivers=self.drive == "DRIVERS")

    def source_path(self, scene) -> str:
        if self.source_kind == "CSV":
            return self.csv_path
        return self.result_path or scene.mononphm.last_package


classes = (MONONPHM_PG_retarget,)


def register_props() -> None:
    bpy.types.Scene.mononphm_retarget = PointerProperty(type=MONONPHM_PG_retarget)


def unregister_props() -> None:
    del bpy.types.Scene.mononphm_retarget
