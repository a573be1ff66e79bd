"""The Retarget panel section and its operators, headless (bpy 4.5 and 5.0)."""

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from backend.contracts import arkit  # noqa: E402
from backend.contracts.retarget import llf_csv  # noqa: E402
from fakes.performance import synthetic_performance, write_performance_package  # noqa: E402
from test_blender_addon import FakeLayout  # noqa: E402


class SearchLayout(FakeLayout):
    def _child(self, *a, **k):
        return SearchLayout(self.log)

    row = column = box = split = _child

    def prop_search(self, data, name, search_data, search_name, **kw):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        self.log.append(("prop_search", name))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel")
    perf = synthetic_performance(40, 25.0, 7)
    bare = write_performance_package(root / "bare", perf, with_arkit=False)
    return perf, write_performance_package(root / "take", perf), bare


def _scene_with_character(package):
    from fakes.rigs import plain_rig
    from mononphm_blender import importer

    importer.import_package(bpy.context, str(package))
    me = bpy.data.meshes.new("Face")
    me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    face = bpy.data.objects.new("Face", me)
    bpy.context.scene.collection.objects.link(face)
    face.shape_key_add(name="Basis")
    for name in ("JawOpen", "EyeBlinkLeft", "browInnerUp_L", "browInnerUp_R"):
        face.shape_key_add(name=name)
    s = bpy.context.scene.mononphm_retarget
    s.face, s.target, s.head_bone = face, plain_rig(), "head"
    return s


def _keyframe_count(id_data):
    ad = id_data.animation_data
    if bpy.app.version >= (5, 0, 0):
        from bpy_extras import anim_utils

        curves = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot).fcurves
    else:
        curves = ad.action.fcurves
    return sum(len(fc.keyframe_points) for fc in curves)


def test_panel_draws_every_setting(scene, packages):
    from mononphm_blender.retarget import ui

    s = _scene_with_character(packages[1])
    log = []
    for kind in ("RESULT", "CSV"):
        s.source_kind = kind
        s.neck_bone = "neck"
        layout = SearchLayout()
        ui.MONONPHM_PT_retarget.draw(type("P", (), {"layout": layout})(), bpy.context)
        log += layout.log
    names = {entry[1] for entry in log}
    assert {"mononphm.retarget_bake", "mononphm.retarget_auto_map", "mononphm.retarget_export",
            "mononphm.retarget_load_mapping", "mononphm.retarget_save_mapping", "head_bone", "neck_bone", "face",
            "csv_path", "result_path", "camera", "smooth_mouth", "neutral_frame", "export_format"} <= names


def test_operators_bake_rebake_preview_and_export(scene, packages, tmp_path):
    perf, package, _ = packages
    s = _scene_with_character(package)
    for op in ("retarget_auto_map", "retarget_bake", "retarget_load_mapping"):
        assert "UNDO" in getattr(bpy.types, f"MONONPHM_OT_{op}").bl_options
    assert bpy.ops.mononphm.retarget_auto_map() == {"FINISHED"}
    mapping = json.loads(bpy.data.texts["MonoNPHM Mapping Face"].as_string())
    assert mapping["channels"]["browInnerUp"] == [{"target": "browInnerUp_L", "gain": 1.0, "offset": 0.0},
                                                  {"target": "browInnerUp_R", "gain": 1.0, "offset": 0.0}]
    s.neutral_frame = 1
    assert bpy.ops.mononphm.retarget_bake() == {"FINISHED"}
    key, rig = s.face.data.shape_keys, s.target
    counts = _keyframe_count(key), _keyframe_count(rig)
    assert counts == (4 * 40, 4 * 40)  # four keys; one quaternion (4 curves) on the head bone
    assert bpy.ops.mononphm.retarget_bake() == {"FINISHED"}
    assert (_keyframe_count(key), _keyframe_count(rig)) == counts  # re-bake replaces
    scene.frame_set(11)
    jaw = perf.arkit[:, arkit.ARKIT_INDEX["jawOpen"]]
    assert key.key_blocks["JawOpen"].value == pytest.approx(np.clip((jaw[10] - jaw[0]) / (1 - jaw[0]), 0, 1),
                                                            abs=1e-5)
    # save the mapping, edit a gain, load it back: the bake follows
    out = tmp_path / "mapping.json"
    assert bpy.ops.mononphm.retarget_save_mapping(filepath=str(out)) == {"FINISHED"}
    data = json.loads(out.read_text())
    data["channels"]["jawOpen"][0]["gain"] = 0.5
    out.write_text(json.dumps(data))
    assert bpy.ops.mononphm.retarget_load_mapping(filepath=str(out)) == {"FINISHED"}
    s.calibrate = False
    bpy.ops.mononphm.retarget_bake()
    scene.frame_set(11)
    assert key.key_blocks["JawOpen"].value == pytest.approx(0.5 * jaw[10], abs=1e-5)
    # preview: drivers from the imported head; stabilised camera
    s.camera = "STABILISED"
    assert bpy.ops.mononphm.retarget_bake(preview=True) == {"FINISHED"}
    assert key.animation_data.drivers.find('key_blocks["JawOpen"].value') is not None
    camera = bpy.context.scene.camera
    assert camera.animation_data is not None and camera.animation_data.action is not None
    # exports
    s.export_path = str(tmp_path / "head")
    s.export_format = "LLF_CSV"
    assert bpy.ops.mononphm.retarget_export() == {"FINISHED"}
    take = llf_csv.read_llf_csv(tmp_path / "head.csv").performance
    assert np.abs(take.arkit - perf.arkit).max() < 1e-4
    s.export_format = "GLTF"
    assert bpy.ops.mononphm.retarget_export() == {"FINISHED"} and (tmp_path / "head.glb").is_file()


def test_result_without_arkit_says_so(scene, packages):
    s = _scene_with_character(packages[2])
    s.result_path = str(packages[2])
    with pytest.raises(RuntimeError, match="no ARKit channels"):
        bpy.ops.mononphm.retarget_bake()
    s.face = None  # the head pose alone still bakes
    assert bpy.ops.mononphm.retarget_bake() == {"FINISHED"}
