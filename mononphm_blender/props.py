"""Scene properties: track settings, the job (persisted, so a reopened .blend re-attaches) and bad frames."""


import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       IntVectorProperty, PointerProperty, StringProperty)

from .contracts import track_config

REL = {"PATH_SUPPORTS_BLEND_RELATIVE"}  # paths may be stored relative to the .blend ("//…")

# Labels for the contract's choices (backend/contracts/track_config.py): a new preset or mode fails here loudly.
_PRESET_TEXT = {"draft": ("Draft", "Fastest (about 0.3 s per frame for the whole run on a 2-core AVX-512 CPU, slower on "
                          "AVX2-only CPUs): landmarks and the head outline per frame; good for previews"),
                "standard": ("Standard", "Balanced (about 1.1 s per frame for the whole run on a 2-core AVX-512 CPU, slower "
                             "on AVX2-only CPUs): adds rendered colour and silhouette per frame; the most accurate "
                             "face shape per minute"),
                "high": ("High", "Slowest (several times Standard): more rays and iterations, for final takes")}
_OUTPUT_TEXT = {"shape_keys": ("Shape Keys", "One mesh with a shape key per tracked frame (fixed topology)"),
                "meshes": ("Per-frame Meshes", "A USD mesh sequence (MeshSequenceCache), topology may change"),
                "both": ("Both", "Shape keys and the per-frame meshes")}
PRESET_ITEMS = [(name, *_PRESET_TEXT[name]) for name in track_config.PRESET_NAMES]
OUTPUT_ITEMS = [(name, *_OUTPUT_TEXT[name]) for name in track_config.OUTPUT_MODES]
INPUT_ITEMS = [("CLIP", "Movie Clip", "A Movie Clip datablock; its camera settings become the intrinsics"),
               ("FILE", "File", "A video file, an image sequence folder or a single image")]
COLOUR_ITEMS = [("MODEL", "Model", "The head model's generic albedo (its appearance space)"),
                ("BAKED", "Baked", "Per-vertex colours baked from the video"),
                ("TEXTURE", "Texture", "The baked texture where the result has one (track or re-bake with a "
                 "texture), else the baked colours")]
FACE_ITEMS = [("largest", "Largest", "Track the largest face when several are visible"),
              ("leftmost", "Leftmost", "Track the leftmost face (in the image) when several are visible"),
              ("rightmost", "Rightmost", "Track the rightmost face (in the image) when several are visible"),
              ("POINT", "At Point", "Track the face at a pixel of the first frame")]
MODEL_ITEMS = [("BUILTIN", "Built-in", "The model shipped with the add-on"),
               ("OFFICIAL", "Official checkpoint", "An official MonoNPHM experiment folder + mean anchors "
                                                   "(the official weights carry their own licence)")]


def _jump_to_bad_frame(self, context):
    if 0 <= self.bad_frames_index < len(self.bad_frames):
        context.scene.frame_set(self.bad_frames[self.bad_frames_index].frame)


def _colour_source_changed(self, context):
    from . import importer

    importer.apply_colour_source(context.scene)


def _import_hair_changed(self, context):
    from . import importer

    importer.apply_hair_visibility(context.scene)


def _threshold_changed(self, context):
    from . import importer

    importer.refresh_quality_markers(context.scene, self.error_threshold)


class MONONPHM_PG_bad_frame(bpy.types.PropertyGroup):
    frame: IntProperty(name="Frame")
    error: FloatProperty(name="Landmark error", subtype="NONE", precision=2)


class MONONPHM_PG_job(bpy.types.PropertyGroup):
    """Persisted in the .blend: enough to find a backend run again after reopening the file."""

    kind: StringProperty(default="")  # "track" or "bake"
    state: StringProperty(default="")  # "", RUNNING, FINISHED, FAILED, CANCELLED
    pid: IntProperty(default=0)
    log_path: StringProperty(default="", subtype="FILE_PATH", options=REL)
    out_path: StringProperty(default="", subtype="DIR_PATH", options=REL)
    stage: StringProperty(default="")
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    done: IntProperty(default=0)
    total: IntProperty(default=0)
    frames_done: IntProperty(default=0)
    device: StringProperty(default="")  # the device the backend computes on (its device event)
    eta_s: FloatProperty(default=-1.0)
    message: StringProperty(default="")
    error: StringProperty(default="")
    hint: StringProperty(default="")
    warning: StringProperty(default="")  # the backend's latest warning event
    warnings_seen: IntProperty(default=0)  # warning events already reported
    imported_frames: IntProperty(default=0)


class MONONPHM_PG_settings(bpy.types.PropertyGroup):
    input_kind: EnumProperty(name="Input", items=INPUT_ITEMS, default="CLIP")
    clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    input_path: StringProperty(name="Video", subtype="FILE_PATH", options=REL,
                               description="Video file, image sequence folder or single image")
    clip_start: IntProperty(name="Start Frame", default=1,
                            description="Scene frame of the first source frame (file input)")
    use_frame_range: BoolProperty(name="Frame Range", default=False, description="Track only part of the clip")
    frame_start: IntProperty(name="Start", default=1, description="First scene frame to track")
    frame_end: IntProperty(name="End", default=250, description="Last scene frame to track")
    face: EnumProperty(name="Face", items=FACE_ITEMS, default="largest",
                       description="Which face to track when more than one is visible")
    face_point: IntVectorProperty(name="Point", size=2, default=(0, 0), min=0,
                                  description="Pixel (x from the left, y from the top) on the face in the first "
                                              "frame, in source pixels")
    stride: IntProperty(name="Stride", default=1, min=1, soft_max=10,
                        description="Track every Nth frame; shape keys blend between tracked neighbours")
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default=track_config.TrackConfig.preset)
    output_mode: EnumProperty(name="Output", items=OUTPUT_ITEMS, default=track_config.TrackConfig.output)
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", options=REL, default="//mononphm_result",
                               description="Result package folder (resumed if it already holds a result)")
    model: EnumProperty(name="Model", items=MODEL_ITEMS, default="BUILTIN")
    official_dir: StringProperty(name="Checkpoint Folder", subtype="DIR_PATH", options=REL,
                                 description="Official experiment folder (configs.yaml + checkpoints/)")
    mean_anchors: StringProperty(name="Mean Anchors", subtype="FILE_PATH", options=REL, description="anchors_65.npy")
    checkpoint_epoch: IntProperty(name="Epoch", default=0, min=0, description="0 = the latest checkpoint")
    track_texture: BoolProperty(name="Bake Texture", default=False,
                                description="Also bake a 2048² texture when tracking ends, so the imported head is "
                                            "textured (unwraps the head: about a minute more)")
    auto_import: BoolProperty(name="Import While Tracking", default=True,
                              description="Import frames as they finish and when tracking ends")
    error_threshold: FloatProperty(name="Error Threshold", default=5.0, min=0.0, soft_max=50.0, unit="NONE",
                                   description="Mark frames whose landmark error exceeds this (pixels)",
                                   update=_threshold_changed)
    bad_frames: CollectionProperty(type=MONONPHM_PG_bad_frame)
    bad_frames_index: IntProperty(default=-1, update=_jump_to_bad_frame)
    last_package: StringProperty(name="Result", subtype="DIR_PATH", options=REL, default="")
    colour_source: EnumProperty(name="Colours", items=COLOUR_ITEMS, default="TEXTURE", update=_colour_source_changed,
                                description="What the imported head shows")
    import_hair: BoolProperty(name="Hair", default=True, update=_import_hair_changed,
                              description="Show the hair volume of a head model with hair (its own material and "
                                          "vertex group); off leaves it out of the imported head")
    bake_use_range: BoolProperty(name="Frame Range", default=False,
                                 description="Bake from part of the tracked frames only (e.g. without occlusions)")
    bake_start: IntProperty(name="Start", default=1, description="First scene frame to bake from")
    bake_end: IntProperty(name="End", default=250, description="Last scene frame to bake from")
    bake_texture: BoolProperty(name="Texture", default=True,
                               description="Also bake a 2048² texture (unwraps the head; takes longer)")
    retrack_start: IntProperty(name="Start", default=1)
    retrack_end: IntProperty(name="End", default=1)
    job: PointerProperty(type=MONONPHM_PG_job)


classes = (MONONPHM_PG_bad_frame, MONONPHM_PG_job, MONONPHM_PG_settings)


def register_props() -> None:
    bpy.types.Scene.mononphm = PointerProperty(type=MONONPHM_PG_settings)


def unregister_props() -> None:
    del bpy.types.Scene.mononphm
