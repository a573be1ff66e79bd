"""FBX, glTF and Alembic exports of a retargeted head re-import into Blender with the same animation."""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from backend.contracts.retarget import rotations  # noqa: E402
from fakes.performance import synthetic_performance, write_performance_package  # noqa: E402

FRAMES, FPS = 30, 25.0
KEYS = ("jawOpen", "eyeBlinkLeft", "browInnerUp")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return write_performance_package(tmp_path_factory.mktemp("export") / "take", synthetic_performance(FRAMES, FPS, 4))


def _character(scene, package):
    """A plain rig and a 12×12 grid with three ARKit shape keys, both baked from the package."""
    from fakes.rigs import plain_rig
    from mononphm_blender.retarget import bake

    rig = plain_rig()
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=12, y_subdivisions=12, size=0.2, location=(0, -0.1, 1.6))
    face = bpy.context.object
    face.name = "Face"
    face.rotation_euler = (1.5708, 0, 0)
    face.shape_key_add(name="Basis")
    co = np.empty(len(face.data.vertices) * 3, np.float32)
    face.data.vertices.foreach_get("co", co)
    for i, name in enumerate(KEYS):
        kb = face.shape_key_add(name=name)
        moved = co.reshape(-1, 3).copy()
        moved[:, 2] += 0.02 * (i + 1) * np.sin(moved[:, 0] * (10 + 5 * i))
        kb.data.foreach_set("co", moved.ravel())
    source = bake.load_source(scene, str(package))
    bake.bake_shape_keys(face, source, settings=bake.RetargetSettings(calibrate=False))
    bake.bake_head_pose(rig, source, head_bone="head", neck_bone="neck")
    scene.render.fps = 24  # the export takes the result's rate, not the scene's
    return rig, face, source


def _sample(rig, face, frames):
    keys, heads, verts = [], [], []
    dg = bpy.context.evaluated_depsgraph_get()
    for frame in frames:
        bpy.context.scene.frame_set(int(frame))
        if face is not None:
            if face.data.shape_keys is not None:  # (an Alembic import has none: its cache moves the vertices)
                keys.append([face.data.shape_keys.key_blocks[k].value for k in KEYS])
            me = face.evaluated_get(dg).to_mesh()
            local = np.array([v.co for v in me.vertices])
            face.evaluated_get(dg).to_mesh_clear()
            m = np.array(face.matrix_world)
            verts.append(local @ m[:3, :3].T + m[:3, 3])
        if rig is not None:
            heads.append(np.array((rig.matrix_world @ rig.pose.bones["head"].matrix).to_3x3().normalized()))
    return np.array(keys), np.array(heads), np.array(verts)


def _relative(rotations_):
    return np.einsum("tij,kj->tik", rotations_, rotations_[0])  # W_t W_0ᵀ: free of the bones' axis conventions


def _export_and_reimport(scene, package, tmp_path, fmt):
    from mononphm_blender.retarget import exchange

    rig, face, source = _character(scene, package)
    frames = np.arange(*exchange.frame_range_of(source.frames)) + 0
    frames = np.append(frames, frames[-1] + 1)
    want = _sample(rig, face, frames)
    objects = [face] if fmt == "ALEMBIC" else [rig, face]
    path = exchange.export_animation(bpy.context, objects, str(tmp_path / "head"), fmt,
                                     exchange.frame_range_of(source.frames), source.performance.fps)
    assert scene.render.fps == 24 and path.is_file()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = int(FPS)
    before = set(bpy.data.objects)
    # Blender's FBX exporter stores scene frame f at f / fps seconds; its importer adds 1 frame by default
    {"FBX": lambda: bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0.0),
     "GLTF": lambda: bpy.ops.import_scene.gltf(filepath=str(path)),
     "ALEMBIC": lambda: bpy.ops.wm.alembic_import(filepath=str(path))}[fmt]()
    new = [o for o in bpy.data.objects if o not in before]
    rig2 = next((o for o in new if o.type == "ARMATURE"), None)
    face2 = next(o for o in new if o.type == "MESH")
    return want, frames, rig2, face2


@pytest.mark.parametrize("fmt", ["FBX", "GLTF"])
def test_fbx_and_gltf_round_trip(scene, package, tmp_path, fmt):
    (keys, heads, _verts), frames, rig2, face2 = _export_and_reimport(scene, package, tmp_path, fmt)
    keys2, heads2, _ = _sample(rig2, face2, frames)
    key_err = np.abs(keys2 - keys).max()
    rot_err = np.radians(rotations.rotation_angle_deg(_relative(heads2), _relative(heads))).max()
    print(f"{fmt}: shape-key max error {key_err:.1e}, head rotation max error {rot_err:.1e} rad over "
          f"{len(frames)} frames")
    assert keys.std() > 0.1 and np.radians(rotations.rotation_angle_deg(_relative(heads), heads[:1].repeat(
        len(heads), 0) @ np.transpose(heads[:1], (0, 2, 1)))).max() > 0.1  # there is animation to lose
    assert key_err < 1e-3 and rot_err < 1e-3


def test_alembic_round_trip(scene, package, tmp_path):
    (_keys, _heads, verts), frames, _rig2, face2 = _export_and_reimport(scene, package, tmp_path, "ALEMBIC")
    assert any(m.type == "MESH_SEQUENCE_CACHE" for m in face2.modifiers)
    _, _, verts2 = _sample(None, face2, frames)
    err = np.linalg.norm(verts2 - verts, axis=2).max()
    print(f"ALEMBIC: vertex position max error {err:.1e} m over {len(frames)} frames (motion up to "
          f"{np.linalg.norm(verts - verts[:1], axis=2).max():.3f} m)")
    assert err < 1e-4
