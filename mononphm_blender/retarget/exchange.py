"""The head animation (shape keys and/or the bound rig) to FBX, glTF and Alembic through Blender's exporters.

The frame rate and frame range come from the result (the Source's frames and the clip's rate); the scene's
timing and selection are set for the export and restored afterwards.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import bpy

from ..core.layout import fps_and_base
from .bake import RetargetError

FORMATS = {"FBX": ".fbx", "GLTF": ".glb", "ALEMBIC": ".abc"}


@contextmanager
def _export_state(context, objects, frame_range: tuple[int, int], fps: float):
    """Scene fps and frame range set to the result's, only ``objects`` selected; both restored on exit."""
    scene, view_layer = context.scene, context.view_layer
    saved = (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end, scene.frame_current)
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    try:
        scene.render.fps, scene.render.fps_base = fps_and_base(fps)
        scene.frame_start, scene.frame_end = frame_range
        for obj in selected:
            obj.select_set(False)
        for obj in objects:
            obj.select_set(True)
        view_layer.objects.active = objects[0]
        yield
    finally:
        for obj in objects:
            obj.select_set(False)
        for obj in selected:
            if obj.name in view_layer.objects:
                obj.select_set(True)
        view_layer.objects.active = active
        scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end = saved[:4]
        scene.frame_set(saved[4])


def frame_range_of(frames) -> tuple[int, int]:
    """The whole scene frames that cover a Source's (T,) frames."""
    return int(math.floor(min(frames) + 1e-6)), int(math.ceil(max(frames) - 1e-6))


def export_animation(context, objects, filepath: str, fmt: str, frame_range: tuple[int, int], fps: float) -> Path:
    """Export ``objects`` (meshes with animated shape keys, armatures with their action) with their animation.

    Alembic writes the evaluated meshes per frame (positions, no colours); FBX and glTF keep shape keys and
    bone animation as such, and the meshes' UV maps and image textures (the baked texture of a MonoNPHM head shown
    with the Texture colours): embedded in the FBX and the GLB, so the file travels alone. Times are scene
    frame / fps: an FBX re-imported into Blender lands on the same frames with the importer's Animation Offset
    at 0 (its default, 1, shifts it by a frame).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {tuple(FORMATS)}")
    objects = [o for o in objects if o is not None]
    if not objects:
        raise RetargetError("nothing to export", "Pick the target mesh and/or the armature in the Retarget panel.")
    for obj in objects:
        if obj.name not in context.view_layer.objects:
            raise RetargetError(f"'{obj.name}' is not in the current view layer", "Link it into the scene first.")
    path = Path(bpy.path.abspath(filepath))
    if path.suffix.lower() != FORMATS[fmt]:
        path = path.with_suffix(FORMATS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    start, end = frame_range
    with _export_state(context, objects, (start, end), fps):
        if fmt == "FBX":
            bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True,
                                     object_types={"ARMATURE", "MESH", "EMPTY"}, bake_anim=True,
                                     bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
                                     bake_anim_force_startend_keying=True, bake_anim_simplify_factor=0.0,
                                     add_leaf_bones=False, path_mode="COPY", embed_textures=True)
        elif fmt == "GLTF":
            bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True,
                                      export_animations=True, export_animation_mode="ACTIVE_ACTIONS",
                                      export_frame_range=True, export_force_sampling=True,
                                      export_optimize_animation_size=False, export_morph=True,
                                      export_morph_animation=True, export_anim_slide_to_zero=False)
        else:
            bpy.ops.wm.alembic_export(filepath=str(path), start=start, end=end, selected=True,
                                      init_scene_frame_range=False, export_hair=False, export_particles=False)
    return path
