"""The add-on under hostile but fair use: imports are all or nothing, only video/image sources are loaded, and a
package that another process writes is never written by a second run."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fakes.packages import make_package

bpy = pytest.importorskip("bpy")

from backend.contracts import result_format as rf  # noqa: E402
from test_contracts_package_safety import _WRITER, REPO  # noqa: E402


def _state():
    """Everything a failed import must leave as it was."""
    scene = bpy.context.scene
    return ({kind: sorted(b.name for b in getattr(bpy.data, kind)) for kind in
             ("objects", "meshes", "cameras", "collections", "actions", "movieclips", "materials")},
            scene.render.fps, scene.frame_start, scene.frame_end, scene.camera,
            [(m.name, m.frame) for m in scene.timeline_markers], scene.mononphm.last_package)


def _import(path, **kw):
    from mononphm_blender import importer

    return importer.import_package(bpy.context, str(path), **kw)


def test_failed_import_leaves_the_scene_unchanged(scene, tmp_path, monkeypatch):
    from mononphm_blender import importer

    _import(make_package(tmp_path / "ok", frames=4, vertices=100))  # an earlier import that must survive
    before = _state()
    bad = make_package(tmp_path / "bad", frames=4, vertices=100)

    def broken(*args, **kwargs):
        raise RuntimeError("Blender refused a value")

    monkeypatch.setattr(importer, "_animate_object", broken)  # fails after the head, before the camera
    with pytest.raises(RuntimeError, match="refused"):
        _import(bad)
    assert _state() == before
    with pytest.raises(RuntimeError, match="Error: Cannot import: RuntimeError: Blender refused"):  # a report
        bpy.ops.mononphm.import_result(directory=str(bad))
    assert _state() == before


def test_package_error_during_import_leaves_the_scene_unchanged(scene, tmp_path):
    root = make_package(tmp_path / "p", frames=4, vertices=100)
    mesh = dict(np.load(root / rf.CANONICAL_MESH))
    mesh["vertices"][3] = np.nan
    np.savez(root / rf.CANONICAL_MESH, **mesh)
    before = _state()
    with pytest.raises(rf.PackageError, match="NaN"):
        _import(root)
    assert _state() == before


def test_frames_beyond_blenders_range_are_refused_cleanly(scene, tmp_path):
    root = make_package(tmp_path / "p", frames=3, vertices=100, stride=600_000)  # last index 1 200 000
    before = _state()
    with pytest.raises(rf.PackageError, match="beyond Blender's frame range"):
        _import(root)
    assert _state() == before


@pytest.mark.parametrize("source, why", [(os.path.abspath(__file__), "is not a video or image file"),
                                         ("/nonexistent/take.mp4", "is missing")])
def test_only_video_or_image_sources_are_loaded(scene, tmp_path, source, why):
    result = _import(make_package(tmp_path / "p", frames=3, vertices=100, source_path=source))
    assert result.clip is None and not list(bpy.data.movieclips)
    assert any(why in w for w in result.warnings) and result.head is not None


def test_track_refuses_a_package_another_run_writes(scene, tmp_path):
    from mononphm_blender import job_control

    s = scene.mononphm
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    s.input_kind, s.input_path, s.output_dir = "FILE", str(clip), str(tmp_path / "out")
    writer = rf.ResultWriter(tmp_path / "out", {"source": {"path": str(clip), "kind": "video"}, "fps": 25.0,
                                                "image_size": [64, 48], "intrinsics": {
                                                    "fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0, "width": 64,
                                                    "height": 48}, "model": {"name": "builtin"},
                                                "output_mode": "shape_keys"})
    try:
        with pytest.raises(ValueError, match=f"being written by another tracking run \\(process {os.getpid()}"):
            job_control.start_track(bpy.context, python=sys.executable)
        s.retrack_start, s.retrack_end = 1, 3
        with pytest.raises(RuntimeError, match="being written by another tracking run"):  # the operator's report
            bpy.ops.mononphm.retrack()
        assert job_control.running_job(scene) is None
    finally:
        writer.finish()


def test_reattach_follows_the_process_holding_the_lock(scene, tmp_path):
    from mononphm_blender import job_control

    out = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(REPO), str(out), "0", "1000", "0.05"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        st = scene.mononphm.job
        st.state, st.pid, st.out_path, st.log_path = "RUNNING", 0, str(out), str(tmp_path / "x.log")
        assert job_control.reattach_all() == [scene.name]
        job = job_control.running_job(scene)
        assert job.pid == writer.pid and st.pid == writer.pid
        job_control.tick()
        assert st.state == "RUNNING"
    finally:
        writer.kill()
        writer.wait(10)
        job_control._jobs.clear()


def test_usd_pulling_files_from_outside_is_not_imported(scene, tmp_path):
    from fakes.packages import usd_python
    from test_contracts_package_safety import _ADD_DEPENDENCY

    root = make_package(tmp_path / "p", frames=3, vertices=100, output_mode="meshes", usd=True)
    subprocess.run([usd_python(), "-c", _ADD_DEPENDENCY, str(root / rf.USD_SEQUENCE), "sublayer"], check=True)
    before = _state()
    with pytest.raises(rf.PackageError, match="meshes.usdc pulls in files from outside the package: /etc/outside"):
        _import(root)
    assert _state() == before


@pytest.mark.parametrize("choice, point, expected", [("leftmost", (0, 0), "leftmost"),
                                                     ("POINT", (320, 200), "320,200")])
def test_the_panels_face_choice_reaches_the_command_line(scene, tmp_path, choice, point, expected):
    from mononphm_blender import job_control

    s = scene.mononphm
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    s.input_kind, s.input_path, s.output_dir = "FILE", str(clip), str(tmp_path / "out")
    s.face, s.face_point = choice, point
    argv = job_control.build_request(bpy.context, scene).to_argv()
    assert argv[argv.index("--face") + 1] == expected
