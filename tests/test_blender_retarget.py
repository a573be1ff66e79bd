"""Retargeting a synthetic performance with known ARKit weights and head pose onto an ICT-FaceKit mesh, a
generated Rigify rig, the MakeHuman default skeleton, a plain armature and an object (headless bpy)."""

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from backend.contracts import arkit  # noqa: E402
from backend.contracts import conventions as cv  # noqa: E402
from backend.contracts.retarget import names, rotations  # noqa: E402
from backend.contracts.retarget.performance import RetargetError  # noqa: E402
from fakes.performance import synthetic_performance, write_performance_package  # noqa: E402
from shared_data import ICT_NPZ, MAKEHUMAN_SKELETON  # noqa: E402

FRAMES = 60


@pytest.fixture(scope="module")
def take(tmp_path_factory):
    perf = synthetic_performance(FRAMES, fps=25.0, seed=2)
    return perf, write_performance_package(tmp_path_factory.mktemp("retarget") / "take", perf)


def _bake():
    from mononphm_blender.retarget import bake

    return bake


def _key_values(obj, keys, frames):
    blocks = obj.data.shape_keys.key_blocks
    out = np.empty((len(frames), len(keys)))
    for row, frame in enumerate(frames):
        bpy.context.scene.frame_set(int(round(frame)))
        out[row] = [blocks[k].value for k in keys]
    return out


def _bone_rotations(arm, bone, frames):
    out = np.empty((len(frames), 3, 3))
    for row, frame in enumerate(frames):
        bpy.context.scene.frame_set(int(round(frame)))
        out[row] = np.array(arm.pose.bones[bone].matrix.to_3x3().normalized())
    return out


def _rest(arm, bone):
    return np.array(arm.data.bones[bone].matrix_local.to_3x3().normalized())


def _expected_delta(perf, neutral=0):
    return np.einsum("ji,tjk->tik", perf.head_rotation[neutral], perf.head_rotation)


@pytest.mark.skipif(not ICT_NPZ.is_file(), reason="ICT-FaceKit data (../shared) is absent")
def test_ict_facekit_mesh_out_of_the_box(scene, take):
    from fakes.rigs import ict_face

    perf, package = take
    bake = _bake()
    face = ict_face()
    source = bake.load_source(scene, str(package))
    report = bake.bake_shape_keys(face, source, settings=bake.RetargetSettings(calibrate=False))
    assert sorted(report.keys) == sorted(arkit.ICT_NAMES) and report.missing == [] and report.unbound == ["tongueOut"]
    keys = list(arkit.ICT_NAMES)
    got = _key_values(face, keys, source.frames)
    want = perf.arkit[:, [arkit.ARKIT_INDEX[arkit.ICT_TO_ARKIT[k][0]] for k in keys]]  # halves: the full value
    mae = np.abs(got - want).mean()
    print(f"ICT-FaceKit shape-key MAE {mae:.2e} (max {np.abs(got - want).max():.2e}) over {got.size} values; "
          f"binding zeros would give {np.abs(want).mean():.3f}")
    assert mae <= 0.01 and np.abs(got - want).max() < 1e-5
    # the mapping lives in the .blend, editable, and a re-bake replaces the keys instead of stacking them
    text = bake.mapping_text(face)
    assert text is not None and names.ChannelMapping.from_json(text.as_string()).channels["cheekPuff"][1].key == \
        "cheekPuff_R"
    edited = names.ChannelMapping.from_json(text.as_string())
    channels = dict(edited.channels, jawOpen=(names.Target("jawOpen", 0.5, 0.1),))
    text.from_string(names.ChannelMapping(channels).to_json())
    bake.bake_shape_keys(face, source, settings=bake.RetargetSettings(calibrate=False))
    assert len(_all_fcurves(face.data.shape_keys)) == 53
    jaw = _key_values(face, ["jawOpen"], source.frames)[:, 0]
    assert np.allclose(jaw, np.clip(0.5 * perf.arkit[:, arkit.ARKIT_INDEX["jawOpen"]] + 0.1, 0, 1), atol=1e-6)


def test_calibration_drivers_and_clear_errors(scene, take, tmp_path):
    from mononphm_blender import importer

    perf, package = take
    bake = _bake()
    importer.import_package(bpy.context, str(package))
    me = bpy.data.meshes.new("Toy")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    toy = bpy.data.objects.new("Toy", me)
    scene.collection.objects.link(toy)
    toy.shape_key_add(name="Basis")
    for key in ("JawOpen", "EyeBlink_L", "unrelated"):
        toy.shape_key_add(name=key)
    source = bake.load_source(scene, str(package))
    neutral = 10
    settings = bake.RetargetSettings(neutral_frame=source.frames[neutral])
    report = bake.bake_shape_keys(toy, source, settings=settings)
    assert sorted(report.keys) == ["EyeBlink_L", "JawOpen"] and len(report.unbound) == 50
    jaw = perf.arkit[:, arkit.ARKIT_INDEX["jawOpen"]]
    want = np.clip((jaw - jaw[neutral]) / (1 - jaw[neutral]), 0, 1)
    keyed = _key_values(toy, ["JawOpen"], source.frames)[:, 0]
    assert np.allclose(keyed, want, atol=1e-6) and keyed[neutral] == 0.0
    # drivers from the imported head's ARKit properties give the same values, live
    settings.use_drivers = True
    bake.bake_shape_keys(toy, source, settings=settings)
    fc = toy.data.shape_keys.animation_data.drivers.find('key_blocks["JawOpen"].value')
    assert fc is not None and fc.driver.is_simple_expression
    anim_data = toy.data.shape_keys.animation_data
    assert anim_data.action is None or not any(
        getattr(f, "data_path", "") == 'key_blocks["JawOpen"].value' for f in _all_fcurves(toy.data.shape_keys))
    driven = _key_values(toy, ["JawOpen"], source.frames)[:, 0]
    assert np.abs(driven - want).max() < 1e-4
    # a package without ARKit channels says so instead of binding zeros
    bare = write_performance_package(tmp_path / "bare", perf, with_arkit=False)
    with pytest.raises(RetargetError, match="no ARKit channels"):
        bake.bake_shape_keys(toy, bake.load_source(scene, str(bare)))
    with pytest.raises(RetargetError, match="not a mesh with shape keys"):
        bake.bake_shape_keys(bpy.data.objects.new("Empty", None), source)


def _all_fcurves(id_data):
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return []
    if bpy.app.version >= (5, 0, 0):
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
        return list(bag.fcurves) if bag else []
    return list(ad.action.fcurves)


@pytest.fixture
def rigify():
    """The Rigify add-on, enabled for one test."""
    import addon_utils

    addon_utils.enable("rigify", default_set=True)
    yield
    addon_utils.disable("rigify", default_set=True)


def test_rigify_metarig_head_bone(scene, take, rigify):
    perf, package = take
    bake = _bake()
    bpy.ops.object.armature_basic_human_metarig_add()
    metarig = bpy.context.object  # the metarig's head bone is spine.006
    source = bake.load_source(scene, str(package))
    bake.bake_head_pose(metarig, source, head_bone="spine.006")
    err = rotations.rotation_angle_deg(_bone_rotations(metarig, "spine.006", source.frames),
                                       _expected_delta(perf) @ _rest(metarig, "spine.006"))
    print(f"Rigify metarig head max error {err.max():.1e} deg")
    assert err.max() < 0.2


# After bpy.ops.pose.rigify_generate(), the bpy 4.5.15 wheel's process never exits (it waits on a lock after the
# tests pass; reproduced without the add-on: enable rigify, add a metarig, generate, quit); 5.0.1 is fine.
@pytest.mark.skipif(bpy.app.version < (5, 0, 0), reason="bpy 4.5's process hangs at exit after Rigify generates a rig")
def test_rigify_generated_rig_head_bone(scene, take, rigify):
    from fakes.rigs import rigify_rig

    perf, package = take
    bake = _bake()
    rig = rigify_rig()
    source = bake.load_source(scene, str(package))
    bake.bake_head_pose(rig, source, head_bone="head")
    want = _expected_delta(perf) @ _rest(rig, "head")
    err = rotations.rotation_angle_deg(_bone_rotations(rig, "head", source.frames), want)
    deform = rotations.rotation_angle_deg(_bone_rotations(rig, "DEF-spine.006", source.frames),
                                          _expected_delta(perf) @ _rest(rig, "DEF-spine.006"))
    print(f"Rigify head control max error {err.max():.1e} deg, deform bone {deform.max():.1e} deg; "
          f"head turns up to {rotations.rotation_angle_deg(want, want[:1].repeat(len(want), 0)).max():.1f} deg")
    assert err.max() < 0.2 and deform.max() < 0.2
    with pytest.raises(RetargetError, match="MCH-ROT-head is constrained"):  # Rigify's head follows the torso
        bake.bake_head_pose(rig, source, head_bone="head", neck_bone="neck")


@pytest.mark.skipif(not MAKEHUMAN_SKELETON.is_file(), reason="MakeHuman data (../shared) is absent")
def test_makehuman_skeleton_head_and_neck(scene, take):
    from fakes.rigs import makehuman_skeleton

    perf, package = take
    bake = _bake()
    rig = makehuman_skeleton()
    assert {"head", "neck01", "neck02", "neck03", "jaw"} <= set(rig.data.bones.keys())
    source = bake.load_source(scene, str(package))
    neutral = 20
    settings = bake.RetargetSettings(neutral_frame=source.frames[neutral], neck_share=0.4)
    bake.bake_head_pose(rig, source, settings, head_bone="head", neck_bone="neck03")
    delta = _expected_delta(perf, neutral)
    head = rotations.rotation_angle_deg(_bone_rotations(rig, "head", source.frames), delta @ _rest(rig, "head"))
    neck = rotations.rotation_angle_deg(_bone_rotations(rig, "neck03", source.frames),
                                        rotations.rotation_fraction(delta, 0.4) @ _rest(rig, "neck03"))
    print(f"MakeHuman head max error {head.max():.1e} deg, neck03 {neck.max():.1e} deg; keying nothing would give "
          f"{rotations.rotation_angle_deg(delta, np.broadcast_to(np.eye(3), delta.shape)).max():.1f} deg")
    assert head.max() < 0.2 and neck.max() < 0.2 and head[neutral] < 1e-3


def test_plain_rig_rotation_modes_translation_and_rebake(scene, take):
    from fakes.rigs import plain_rig

    perf, package = take
    bake = _bake()
    rig = plain_rig()
    source = bake.load_source(scene, str(package))
    delta = _expected_delta(perf)
    settings = bake.RetargetSettings(use_location=True, location_scale=10.0)
    for mode in ("QUATERNION", "AXIS_ANGLE", "ZXY", "XYZ"):
        rig.pose.bones["head"].rotation_mode = mode
        bake.bake_head_pose(rig, source, settings, head_bone="head")
        err = rotations.rotation_angle_deg(_bone_rotations(rig, "head", source.frames), delta @ _rest(rig, "head"))
        assert err.max() < 0.01, mode
    curves = _all_fcurves(rig)
    assert len({(fc.data_path, fc.array_index) for fc in curves}) == len(curves)  # re-bakes replaced, not stacked
    scene.frame_set(int(round(source.frames[30])))
    moved = np.array(rig.pose.bones["head"].head) - np.array(rig.data.bones["head"].head_local)
    shift = (perf.head_location[30] - perf.head_location[0]) @ perf.head_rotation[0] * 10.0
    assert np.allclose(moved, shift, atol=1e-4)
    # any object: rotation about its rest transform, which later re-bakes keep
    cube = bpy.data.objects.new("Prop", None)
    scene.collection.objects.link(cube)
    cube.rotation_euler = (0.2, 0.0, 0.5)
    rest = np.array(cube.matrix_basis.to_3x3())
    for _ in range(2):
        bake.bake_head_pose(cube, source)
    got = np.empty((FRAMES, 3, 3))
    for row, frame in enumerate(source.frames):
        scene.frame_set(int(round(frame)))
        got[row] = np.array(cube.matrix_basis.to_3x3())
    assert rotations.rotation_angle_deg(got, delta @ rest).max() < 0.01


def test_stabilised_head_keeps_the_view(scene, take):
    from mononphm_blender import importer

    perf, package = take
    bake = _bake()
    result = importer.import_package(bpy.context, str(package))
    head, camera = result.head, result.camera
    frames = bake.load_source(scene, str(package)).frames

    def view_of_head():
        out = []
        for frame in frames[::7]:
            scene.frame_set(int(round(frame)))
            out.append(np.array(camera.matrix_world.inverted() @ head.matrix_world))
        return np.array(out)

    tracked = view_of_head()
    bake.stabilise_head(scene, str(package), stabilise=True, neutral_frame=frames[5])
    assert np.allclose(view_of_head(), tracked, atol=1e-5)
    scene.frame_set(int(round(frames[40])))
    assert np.allclose(np.array(head.matrix_world.to_3x3().normalized()), perf.head_rotation[5], atol=1e-5)
    bake.stabilise_head(scene, str(package), stabilise=False)
    assert np.allclose(view_of_head(), tracked, atol=1e-5)
    assert np.allclose(np.array(camera.matrix_world), cv.camera_world_matrix(), atol=1e-6)
