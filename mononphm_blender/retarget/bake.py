"""Blender-side retarget builders: a Performance onto shape keys, bones or objects (keys or drivers).

Every bake writes into the target's current action (a new one when it has none) and replaces the curves it
wrote before, so re-baking never stacks keys and the target's other animation stays.

Head pose: with R_n the head's rotation at the neutral frame and R_t at frame t (character axes, see
``backend.contracts.retarget.performance``), the motion is D_t = R_nᵀ R_t. A bone with rest orientation B (armature
space) gets the local rotation Bᵀ D_t B, so its armature-space orientation becomes D_t B: the rig is in its
rest pose at the neutral frame and turns as the head did. With a neck bone N taking the share s of the motion,
N gets Nᵀ D_t^s N and the head Bᵀ (D_t^s)ᵀ D_t B. The armature's own axes are the character axes (a rig built
facing −Y, Blender's front view; Rigify, MPFB/MakeHuman).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from .. import importer
from ..blender import anim
from ..contracts import contract, conventions

arkit = contract("contracts.arkit")
performance = contract("contracts.retarget.performance")
names = contract("contracts.retarget.names")
smoothing = contract("contracts.retarget.smoothing")
llf_csv = contract("contracts.retarget.llf_csv")
rotations = contract("contracts.retarget.rotations")
RetargetError = performance.RetargetError

MAPPING_TEXT_PREFIX = "MonoNPHM Mapping "
ACTION_NAME = "MonoNPHM Retarget"
PROP_REST = "mononphm_rest_matrix"  # an object target's rest transform, kept for re-bakes


@dataclass
class RetargetSettings:
    """How a performance is laid onto the scene's timeline and the target (one object through every bake)."""

    neutral_frame: float | None = None
    """Scene frame of the neutral (rest) face and head pose (the nearest sample); None: the first sample."""
    calibrate: bool = True
    """Subtract the neutral frame's expression from every frame (ARKit channels)."""
    smoothing: object = field(default_factory=smoothing.SmoothingSettings)
    """backend.contracts.retarget.smoothing.SmoothingSettings applied before baking (the source stays raw)."""
    neck_share: float = 0.3
    """Share of the head rotation the neck bone takes when one is given."""
    use_location: bool = False
    """Also key the head's translation (relative to the neutral frame)."""
    location_scale: float = 1.0
    """Rig units per metre of head translation."""
    use_drivers: bool = False
    """Shape keys: drivers reading the imported head's ARKit properties instead of baked keys (a live preview)."""


@dataclass(frozen=True)
class Source:
    """A performance and where it sits on the scene's timeline."""

    performance: object
    """backend.contracts.retarget.performance.Performance."""
    frames: np.ndarray
    """(T,) scene frames of its samples."""
    head: object = None
    """The imported head object of a result package (carries the ARKit properties drivers read), or None."""
    path: str = ""

    def index_at(self, scene_frame: float | None) -> int:
        """The sample nearest to ``scene_frame`` (None: the first)."""
        return 0 if scene_frame is None else int(np.argmin(np.abs(self.frames - scene_frame)))


def load_source(scene, path: str) -> Source:
    """A result package folder, on the frames the importer uses (clip start + source frame index, in step with
    the imported head and the clip shown behind it), or a Live Link Face CSV, its first row at the scene's start
    frame and its rows placed by time at the scene's frame rate."""
    path = bpy.path.abspath(str(path))
    if Path(path).suffix.lower() == ".csv":
        perf = llf_csv.read_llf_csv(path).performance
        fps = scene.render.fps / scene.render.fps_base
        return Source(perf, perf.scene_frames(scene.frame_start, fps, from_first=True), None, path)
    perf = performance.from_package(path)
    objects = importer.find_objects(path)
    return Source(perf, perf.scene_frames(importer.scene_frame_of(scene, 0, path)),
                  objects.get("head") or objects.get("usd"), path)



def _prepared(source: Source, settings: RetargetSettings):
    perf = smoothing.smooth_performance(source.performance, settings.smoothing)
    return perf, source.index_at(settings.neutral_frame)


# --- expressions -------------------------------------------------------------------------------------------------

def mapping_text(obj, create: bool = False):
    """The Text datablock holding ``obj``'s mapping (saved in the .blend, editable in the Text Editor)."""
    name = MAPPING_TEXT_PREFIX + obj.name
    text = bpy.data.texts.get(name)
    if text is None and create:
        text = bpy.data.texts.new(name)
    return text


def store_mapping(obj, mapping) -> object:
    text = mapping_text(obj, create=True)
    text.from_string(mapping.to_json())
    return text


def mapping_for(obj, mapping=None):
    """``mapping``, else the one stored for ``obj``, else one auto-bound to its shape key names (then stored)."""
    if mapping is not None:
        return mapping
    text = mapping_text(obj)
    if text is not None and text.as_string().strip():
        return names.ChannelMapping.from_json(text.as_string())
    mapping = names.auto_mapping(shape_key_names(obj))
    store_mapping(obj, mapping)
    return mapping


def shape_key_names(obj) -> list[str]:
    keys = getattr(obj.data, "shape_keys", None) if obj is not None else None
    return [kb.name for kb in keys.key_blocks[1:]] if keys is not None else []


@dataclass
class ShapeKeyBake:
    """What a shape-key bake did."""

    keys: list = field(default_factory=list)  # target keys now driven
    missing: list = field(default_factory=list)  # mapping targets the mesh does not have
    unbound: list = field(default_factory=list)  # ARKit channels that drive nothing


def bake_shape_keys(obj, source: Source, mapping=None, settings: RetargetSettings | None = None) -> ShapeKeyBake:
    """Key (or drive) ``obj``'s shape keys from the source's ARKit channels through ``mapping``."""
    settings = settings or RetargetSettings()
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        raise RetargetError(f"'{getattr(obj, 'name', None)}' is not a mesh with shape keys",
                            "Pick the character's face mesh (the one with the expression shape keys).")
    perf, neutral = _prepared(source, settings)
    weights = performance.calibrated_weights(perf.require_arkit(), neutral if settings.calibrate else None)
    mapping = mapping_for(obj, mapping)
    key = obj.data.shape_keys
    blocks = key.key_blocks
    values = mapping.target_values(weights)
    report = ShapeKeyBake(missing=[k for k in values if k not in blocks], unbound=mapping.unbound)
    present = [k for k in values if k in blocks]
    if not present:
        raise RetargetError(f"none of the mapping's {len(values)} targets is a shape key of '{obj.name}'",
                            "Edit or auto-build the mapping for this mesh (Retarget ▸ Auto Map).")
    paths = [blocks[k].path_from_id("value") for k in present]
    if settings.use_drivers:
        anim.remove_fcurves(key, paths)
        _drive_shape_keys(obj, source, mapping, present, neutral, settings)
    else:
        for path in paths:
            key.driver_remove(path)
        fcurves = anim.action_fcurves(key, ACTION_NAME)
        for name, path in zip(present, paths):
            kb = blocks[name]
            column = np.clip(values[name], kb.slider_min, kb.slider_max)
            anim.replace_fcurve(fcurves, path, np.stack([source.frames, column], 1))
    report.keys = present
    return report


def _drive_shape_keys(obj, source: Source, mapping, present, neutral, settings) -> None:
    head = source.head
    if head is None:
        raise RetargetError("drivers read the imported head's ARKit properties, and this source has no imported "
                            "head", "Import the result package first, or bake keys instead.")
    missing = [c for c in mapping.channels if c not in head.keys()]
    if missing:
        raise RetargetError(f"the head '{head.name}' has no ARKit properties", performance.NO_ARKIT_HINT)
    # drivers read the raw curves on the head: calibrate against its raw neutral frame (as calibrated_weights)
    base = np.clip(source.performance.arkit[neutral], 0.0, 0.99) if settings.calibrate else None
    blocks = obj.data.shape_keys.key_blocks
    terms: dict[str, list] = {}
    for channel, targets in mapping.channels.items():
        for target in targets:
            terms.setdefault(target.key, []).append((channel, target))
    for name in present:
        kb = blocks[name]
        kb.driver_remove("value")
        driver = kb.driver_add("value").driver
        driver.type = "SCRIPTED"
        parts = []
        for i, (channel, target) in enumerate(terms[name]):
            if channel in arkit.UNDRIVEN_ARKIT:  # 0, as in bakes: the head's curve holds regressor noise only
                parts.append(f"{target.offset:.6f}")
                continue
            var = driver.variables.new()
            var.name = f"w{i}"
            var.type = "SINGLE_PROP"
            var.targets[0].id_type = "OBJECT"
            var.targets[0].id = head
            var.targets[0].data_path = f'["{channel}"]'
            weight = var.name
            if base is not None:
                n = float(base[arkit.ARKIT_INDEX[channel]])
                weight = f"max(0.0, min(1.0, ({var.name} - {n:.6f}) / {1.0 - n:.6f}))"
            parts.append(f"{target.gain:.6f} * {weight} + {target.offset:.6f}")
        driver.expression = f"max({kb.slider_min:.6f}, min({kb.slider_max:.6f}, {' + '.join(parts)}))"


# --- head pose ---------------------------------------------------------------------------------------------------

def _rest_rotation(bone) -> np.ndarray:
    return np.array(bone.matrix_local.to_3x3().normalized(), dtype=np.float64)


def bake_head_pose(target, source: Source, settings: RetargetSettings | None = None, *, head_bone: str = "",
                   neck_bone: str = "") -> list[str]:
    """Key the head motion onto an armature's ``head_bone`` (and ``neck_bone``) or, without a bone, onto the
    object ``target`` itself. Returns the keyed data paths."""
    settings = settings or RetargetSettings()
    perf, neutral = _prepared(source, settings)
    delta, shift = performance.relative_head_motion(perf, neutral)
    if shift is not None and settings.use_location:
        shift = shift * settings.location_scale
    else:
        shift = None
    if target is None:
        raise RetargetError("no target object", "Pick an armature (and its head bone) or any object.")
    if target.type == "ARMATURE" and head_bone:
        return _bake_bones(target, source.frames, delta, shift, head_bone, neck_bone, settings.neck_share)
    return _bake_object(target, source.frames, delta, shift)


def _bake_bones(arm, frames, delta, shift, head_bone: str, neck_bone: str, share: float) -> list[str]:
    bones = arm.data.bones
    for name in filter(None, (head_bone, neck_bone)):
        if name not in bones:
            raise RetargetError(f"armature '{arm.name}' has no bone '{name}'", "Pick one of its bones.")
    if neck_bone:
        _check_neck_chain(arm, head_bone, neck_bone)
    head_rest = _rest_rotation(bones[head_bone])
    carried = np.broadcast_to(np.eye(3), delta.shape)
    fcurves = anim.action_fcurves(arm, ACTION_NAME)
    paths = []
    if neck_bone:
        neck_rest = _rest_rotation(bones[neck_bone])
        carried = rotations.rotation_fraction(delta, share)
        local = neck_rest.T @ carried @ neck_rest
        paths += _key_rotation(fcurves, arm.pose.bones[neck_bone], frames, local)
    local = head_rest.T @ np.transpose(carried, (0, 2, 1)) @ delta @ head_rest
    pose_bone = arm.pose.bones[head_bone]
    paths += _key_rotation(fcurves, pose_bone, frames, local)
    if shift is not None:
        offset = np.einsum("ij,tjk,tk->ti", head_rest.T, np.transpose(carried, (0, 2, 1)), shift)
        paths += _key_vector(fcurves, pose_bone.path_from_id("location"), frames, offset)
    return paths


def _check_neck_chain(arm, head_bone: str, neck_bone: str) -> None:
    """The neck split assumes the head inherits the neck's rotation: the neck is an ancestor of the head and no
    bone between them is constrained (Rigify's head copies the torso's rotation unless Head Follow is 1)."""
    chain, bone = [], arm.pose.bones[head_bone].parent
    while bone is not None and bone.name != neck_bone:
        chain.append(bone)
        bone = bone.parent
    if bone is None:
        raise RetargetError(f"'{neck_bone}' is not a parent of '{head_bone}' in '{arm.name}'",
                            "Pick a neck bone above the head bone, or clear the neck bone.")
    constrained = [b.name for b in chain if any(c.enabled and c.influence > 0 for c in b.constraints)]
    if constrained:
        raise RetargetError(f"the head does not simply follow '{neck_bone}': {', '.join(constrained)} "
                            f"{'is' if len(constrained) == 1 else 'are'} constrained (e.g. Rigify's Head Follow)",
                            "Bake the head bone alone (clear the neck bone).")


def _bake_object(obj, frames, delta, shift) -> list[str]:
    if PROP_REST not in obj:  # the transform before the first bake is the rest pose of every re-bake
        obj[PROP_REST] = [v for row in obj.matrix_basis for v in row]
    rest = np.array(obj[PROP_REST], dtype=np.float64).reshape(4, 4)
    rest_loc, rest_rot, _scale = Matrix(rest.tolist()).decompose()
    rot = delta @ np.array(rest_rot.to_matrix(), dtype=np.float64)
    fcurves = anim.action_fcurves(obj, ACTION_NAME)
    paths = _key_rotation(fcurves, obj, frames, rot)
    location = np.broadcast_to(np.array(rest_loc), (len(frames), 3))
    if shift is not None:
        location = location + shift
    paths += _key_vector(fcurves, "location", frames, location)
    return paths


def _prefix(owner) -> str:
    return owner.path_from_id() + "." if isinstance(owner, bpy.types.PoseBone) else ""


def _key_rotation(fcurves, owner, frames, rot: np.ndarray) -> list[str]:
    """Key (T, 3, 3) rotations on an Object or PoseBone in its own rotation mode."""
    mode = owner.rotation_mode
    if mode == "QUATERNION":
        path, values = "rotation_quaternion", rotations.matrix_to_quaternion(rot)
    elif mode == "AXIS_ANGLE":
        path, values = "rotation_axis_angle", rotations.quaternion_to_axis_angle(rotations.matrix_to_quaternion(rot))
    else:
        path, values = "rotation_euler", rotations.matrix_to_euler(rot, mode)
    return _key_vector(fcurves, _prefix(owner) + path, frames, values)


def _key_vector(fcurves, path: str, frames, values: np.ndarray) -> list[str]:
    for axis in range(values.shape[1]):
        anim.replace_fcurve(fcurves, path, np.stack([frames, values[:, axis]], 1), index=axis)
    return [path]


# --- camera ------------------------------------------------------------------------------------------------------

def stabilise_head(scene, package_path: str, stabilise: bool = True, neutral_frame: float | None = None) -> None:
    """Stabilised: the imported head holds its neutral-frame pose and the camera moves (the view of the head is
    unchanged); otherwise the head moves and the camera stays where tracking put it (the import's layout)."""
    objects = importer.find_objects(package_path)
    head, camera = objects.get("head") or objects.get("usd"), objects.get("camera")
    if head is None or camera is None:
        if not stabilise:
            return  # nothing to restore
        raise RetargetError("the result's head and camera are not in this scene", "Import the result first.")
    source = load_source(scene, package_path)
    perf = source.performance
    neutral = source.index_at(neutral_frame)
    camera_rest = conventions.camera_world_matrix()
    head_fc = anim.action_fcurves(head, ACTION_NAME)
    head_rot = perf.head_rotation
    head_loc = perf.head_location
    camera_world = np.tile(camera_rest, (len(perf), 1, 1))
    if stabilise:
        # head H'_t = [R_n | x_n] (its scale stays keyed); camera C_t = H'_t H_t⁻¹ C: rigid, same view of the head
        head_rot = np.broadcast_to(perf.head_rotation[neutral], head_rot.shape)
        head_loc = np.broadcast_to(perf.head_location[neutral], head_loc.shape)
        relative = np.tile(np.eye(4), (len(perf), 1, 1))
        relative[:, :3, :3] = perf.head_rotation[neutral] @ np.transpose(perf.head_rotation, (0, 2, 1))
        relative[:, :3, 3] = perf.head_location[neutral] - np.einsum("tij,tj->ti", relative[:, :3, :3],
                                                                     perf.head_location)
        camera_world = relative @ camera_rest
    head.rotation_mode = "XYZ"
    _key_vector(head_fc, "rotation_euler", source.frames, rotations.matrix_to_euler(head_rot, "XYZ"))
    _key_vector(head_fc, "location", source.frames, head_loc)
    camera.rotation_mode = "XYZ"
    if stabilise:
        cam_fc = anim.action_fcurves(camera, ACTION_NAME)
        _key_vector(cam_fc, "rotation_euler", source.frames, rotations.matrix_to_euler(camera_world[:, :3, :3], "XYZ"))
        _key_vector(cam_fc, "location", source.frames, camera_world[:, :3, 3])
    else:
        anim.remove_fcurves(camera, ("rotation_euler", "location"))
        camera.matrix_world = Matrix(camera_rest.tolist())
