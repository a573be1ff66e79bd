"""Target characters for retargeting tests (bpy): an ICT-FaceKit face with its 53 expression shape keys, the
MakeHuman default skeleton, a generated Rigify rig and a small plain armature."""

from __future__ import annotations

import json

import bpy
import numpy as np

from backend.contracts.conventions import MODEL_TO_BLENDER
from shared_data import ICT_NPZ, MAKEHUMAN_BASE_MESH, MAKEHUMAN_SKELETON


def ict_face(name: str = "ICT Face", region_max: int = 1):
    """The ICT-FaceKit neutral face (regions ≤ ``region_max``: face and head/neck) in metres, Blender axes, with
    one shape key per expression (ICT's own names, e.g. browInnerUp_L)."""
    data = np.load(ICT_NPZ)
    keep = data["region"] <= region_max
    remap = -np.ones(len(keep), np.int64)
    remap[keep] = np.arange(keep.sum())
    tris = remap[data["faces"]]
    tris = tris[(tris >= 0).all(1)]
    to_blender = lambda v: (np.asarray(v, np.float64)[keep] * 0.01) @ MODEL_TO_BLENDER.T  # cm → m  # noqa: E731
    neutral = to_blender(data["neutral"])
    me = bpy.data.meshes.new(name)
    me.from_pydata(neutral.tolist(), [], tris.tolist())
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis", from_mix=False)
    for key, delta in zip(data["expression_names"], data["expression_deltas"]):
        kb = obj.shape_key_add(name=str(key), from_mix=False)
        kb.data.foreach_set("co", (neutral + to_blender(delta)).astype(np.float32).ravel())
    return obj


def _armature(name: str):
    arm = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, arm)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def makehuman_skeleton(name: str = "MakeHuman"):
    """The MakeHuman default skeleton (163 bones) at its base mesh's joints, in metres, facing −Y."""
    skeleton = json.loads(MAKEHUMAN_SKELETON.read_text())
    lines = [line.split()[1:4] for line in MAKEHUMAN_BASE_MESH.read_text().splitlines() if line.startswith("v ")]
    verts = (np.array(lines, np.float64) * 0.1) @ MODEL_TO_BLENDER.T  # decimetres, y up → metres, Blender axes
    joints = {name_: verts[ids].mean(0) for name_, ids in skeleton["joints"].items()}
    obj = _armature(name)
    bpy.ops.object.mode_set(mode="EDIT")
    edit = obj.data.edit_bones
    for bone_name, bone in skeleton["bones"].items():
        eb = edit.new(bone_name)
        eb.head, eb.tail = joints[bone["head"]], joints[bone["tail"]]
    for bone_name, bone in skeleton["bones"].items():
        if bone["parent"]:
            edit[bone_name].parent = edit[bone["parent"]]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def rigify_rig():
    """A Rigify rig generated from the Basic Human metarig (its head control bone is ``head``); needs the rigify
    add-on enabled."""
    bpy.ops.object.armature_basic_human_metarig_add()
    bpy.ops.pose.rigify_generate()
    return bpy.data.objects["rig"]


def plain_rig(name: str = "Plain"):
    """Three bones, neck → head → jaw, with rolls that make every bone frame different from the armature's."""
    obj = _armature(name)
    bpy.ops.object.mode_set(mode="EDIT")
    edit = obj.data.edit_bones
    neck, head, jaw = edit.new("neck"), edit.new("head"), edit.new("jaw")
    neck.head, neck.tail, neck.roll = (0, 0.01, 1.45), (0, 0, 1.55), 0.3
    head.head, head.tail, head.roll, head.parent = (0, 0, 1.55), (0, 0.02, 1.75), -0.7, neck
    jaw.head, jaw.tail, jaw.parent = (0, 0, 1.58), (0, -0.08, 1.52), head
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj
