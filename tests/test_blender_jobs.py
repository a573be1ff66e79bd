"""Job runner with fake backends: progress, failure, cancel, re-attach after reopening the .blend."""

import os
import sys
import time

import pytest

from fakes.packages import make_package

bpy = pytest.importorskip("bpy")

from backend.contracts import protocol, result_format as rf  # noqa: E402
from backend.contracts.track_config import TrackConfig  # noqa: E402


def _configure(scene, tmp_path, frames_env=None):
    s = scene.mononphm
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video")
    s.input_kind = "FILE"
    s.input_path = str(clip)
    s.output_dir = str(tmp_path / "out")
    s.auto_import = True
    return s


def _tick_until(pred, timeout=30.0):
    from mononphm_blender import job_control

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job_control.tick()
        if pred():
            return True
        time.sleep(0.02)
    raise TimeoutError("condition not reached")


def test_progress_job_imports_frames(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_FRAMES", "8")
    s = _configure(scene, tmp_path)
    s.preset, s.output_mode = "draft", "shape_keys"
    assert bpy.ops.mononphm.track() == {"FINISHED"}
    job = job_control.running_job(scene)
    assert isinstance(job.argv, list) and job.argv[1:4] == ["-m", "backend", "track"]
    assert "--preset" in job.argv and job.argv[job.argv.index("--preset") + 1] == "draft"
    assert s.job.state == "RUNNING" and s.job.pid > 0
    seen = set()

    def done():
        seen.add((s.job.done, s.job.total))
        return s.job.state != "RUNNING"

    _tick_until(done)
    assert s.job.state == "FINISHED", (s.job.error, open(s.job.log_path).read())
    assert s.job.frames_done == 8 and s.job.progress == 1.0
    assert s.job.device == "cpu (fake CPU)"   # the backend's device event reaches the panel
    assert any(0 < d < 8 for d, _ in seen) or (8, 8) in seen
    head = next(o for o in bpy.data.objects if o.get("mononphm_role") == "head")
    assert len(head.data.shape_keys.key_blocks) == 9
    assert not job_control.is_running(scene)
    assert "fake backend argv" in open(s.job.log_path).read()  # stderr went to the log


def test_backend_warnings_reach_the_panel_and_the_log_once(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    text = "Tracking does not use 'cuda' in this version: it runs on the CPU."
    monkeypatch.setenv("FAKE_FRAMES", "4")
    monkeypatch.setenv("FAKE_WARNING", text)
    s = _configure(scene, tmp_path)
    before = len([m for m in job_control.messages() if m == ("WARNING", f"Backend: {text}")])
    assert bpy.ops.mononphm.track() == {"FINISHED"}
    assert s.job.warning == "" and s.job.warnings_seen == 0
    _tick_until(lambda: s.job.state != "RUNNING")
    assert s.job.state == "FINISHED"
    assert s.job.warning == text and s.job.warnings_seen == 1
    after = [m for m in job_control.messages() if m == ("WARNING", f"Backend: {text}")]
    assert len(after) == before + 1  # reported once, not on every tick


def test_failing_backend_reports_error_and_log(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import importer, job_control

    monkeypatch.setenv("FAKE_BACKEND_MODE", "fail")
    monkeypatch.setenv("FAKE_FRAMES", "6")
    s = _configure(scene, tmp_path)
    job_control.start_track(bpy.context)
    _tick_until(lambda: s.job.state != "RUNNING")
    assert s.job.state == "FAILED"
    assert "diverged" in s.job.error and s.job.hint == "Try the draft preset."
    assert os.path.isfile(s.job.log_path) and "tracker diverged" in open(s.job.log_path).read()
    assert any("log:" in text and s.job.log_path in text for level, text in job_control.messages()
               if level == "ERROR")
    # nothing lost: the finished frames are still an importable package
    pkg = rf.ResultPackage(tmp_path / "out")
    assert pkg.manifest["state"] == "failed" and len(pkg.frames) == 3
    res = importer.import_package(bpy.context, str(tmp_path / "out"))
    assert len(res.head.data.shape_keys.key_blocks) == 4


def test_crashing_backend_without_error_event(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_BACKEND_MODE", "crash")
    s = _configure(scene, tmp_path)
    job_control.start_track(bpy.context)
    _tick_until(lambda: s.job.state != "RUNNING")
    assert s.job.state == "FAILED" and "exited with code 1" in s.job.error


def test_cancel_stops_the_process_group_and_keeps_frames(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_BACKEND_MODE", "slow")
    monkeypatch.setenv("FAKE_FRAMES", "200")
    s = _configure(scene, tmp_path)
    job = job_control.start_track(bpy.context)
    pid = job.pid
    _tick_until(lambda: s.job.frames_done >= 2)
    assert bpy.ops.mononphm.cancel() == {"FINISHED"}
    _tick_until(lambda: s.job.state != "RUNNING", timeout=15)
    assert s.job.state == "CANCELLED"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole group is gone
    pkg = rf.ResultPackage(tmp_path / "out")
    assert pkg.manifest["state"] == "cancelled" and 2 <= len(pkg.frames) < 200
    assert any(o.get("mononphm_role") == "head" for o in bpy.data.objects)  # kept frames imported


def test_reopening_the_blend_reattaches(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_BACKEND_MODE", "slow")
    monkeypatch.setenv("FAKE_FRAMES", "6")
    _configure(scene, tmp_path)
    job = job_control.start_track(bpy.context)
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    # simulate closing Blender: forget the job object (the backend keeps running in its own session)
    job_control._jobs.clear()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend))  # load_post → reattach_all()
    scene = bpy.context.scene
    st = scene.mononphm.job
    attached = job_control.running_job(scene)
    assert attached is not None and attached.pid == job.pid
    _tick_until(lambda: st.state != "RUNNING", timeout=30)
    assert st.state == "FINISHED" and st.frames_done == 6
    head = next(o for o in bpy.data.objects if o.get("mononphm_role") == "head")
    assert len(head.data.shape_keys.key_blocks) == 7
    job.proc.wait(5)


def test_reopening_after_the_job_finished(scene, tmp_path):
    from mononphm_blender import job_control

    make_package(tmp_path / "out", frames=4, vertices=100)
    st = scene.mononphm.job
    st.state, st.pid, st.out_path, st.log_path = "RUNNING", 0, str(tmp_path / "out"), str(tmp_path / "x.log")
    assert job_control.reattach_all() == [scene.name]
    _tick_until(lambda: st.state != "RUNNING")
    assert st.state == "FINISHED"


def test_retrack_range_passes_frames_and_overwrite(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_FRAMES", "10")
    s = _configure(scene, tmp_path)
    s.clip_start = 1
    job_control.start_track(bpy.context)
    _tick_until(lambda: s.job.state != "RUNNING")
    first = rf.ResultPackage(tmp_path / "out").manifest["updated"]
    s.retrack_start, s.retrack_end = 3, 5
    assert bpy.ops.mononphm.retrack() == {"FINISHED"}
    job = job_control.running_job(scene)
    assert job.argv[job.argv.index("--frames") + 1] == "2:5:1" and "--overwrite" in job.argv
    _tick_until(lambda: s.job.state != "RUNNING")
    assert s.job.state == "FINISHED"
    assert len(rf.ResultPackage(tmp_path / "out").frames) == 10 and first


def test_track_refuses_bad_settings(scene, tmp_path, fake_backend):
    s = scene.mononphm
    s.input_kind = "CLIP"
    with pytest.raises(RuntimeError, match="Movie Clip"):
        bpy.ops.mononphm.track()
    s.input_kind = "FILE"
    s.input_path = str(tmp_path / "missing.mp4")
    with pytest.raises(RuntimeError, match="Input not found"):
        bpy.ops.mononphm.track()


def test_clip_intrinsics_reach_the_command(scene, tmp_path, fake_backend):
    from mononphm_blender import job_control

    seq = tmp_path / "seq"
    seq.mkdir()
    img = bpy.data.images.new("f", 40, 30)
    img.filepath_raw = str(seq / "f_0001.png")
    img.file_format = "PNG"
    img.save()
    clip = bpy.data.movieclips.load(str(seq / "f_0001.png"))
    clip.tracking.camera.sensor_width = 36.0
    clip.tracking.camera.focal_length = 36.0
    s = scene.mononphm
    s.input_kind, s.clip, s.output_dir = "CLIP", clip, str(tmp_path / "out")
    s.use_frame_range, s.frame_start, s.frame_end, s.stride = True, 1, 1, 2
    req = job_control.build_request(bpy.context, scene)
    assert req.fx == pytest.approx(40.0) and req.frames == "0:1:2"
    assert req.input == str(seq)  # image sequences are passed as their folder


# --- bpy-free job core ------------------------------------------------------------------------------------------

def test_job_core_handshake_and_argv(tmp_path, fake_backend):
    from mononphm_blender import contracts
    from mononphm_blender.core import command, jobs

    env = command.backend_env(contracts.backend_root())
    info = jobs.run_handshake(command.version_argv(sys.executable), cwd=str(fake_backend), env=env)
    assert info["protocol"] == protocol.PROTOCOL_VERSION and info["devices"] == ["cpu"]
    hs = jobs.Handshake(command.version_argv(sys.executable), cwd=str(fake_backend), env=env)
    end = time.monotonic() + 20
    while not hs.poll() and time.monotonic() < end:
        time.sleep(0.02)
    assert hs.result and not hs.error
    with pytest.raises(RuntimeError, match="not found"):
        jobs.run_handshake(["/nonexistent/python", "-m", "backend"])
    with pytest.raises(TypeError):
        jobs.BackendJob("python -m backend", log_path=tmp_path / "x.log")
    argv = command.track_argv("py", TrackConfig("in.mp4", "out", frames="0:10:2", preset="high", fx=1.0, fy=2.0,
                                                cx=3.0, cy=4.0, official_checkpoint="exp", mean_anchors="a.npy",
                                                overwrite=True))
    assert argv[:5] == ["py", "-m", "backend", "track", "in.mp4"]
    for flag in ("--frames", "--fx", "--official-checkpoint", "--mean-anchors", "--overwrite"):
        assert flag in argv
    with pytest.raises(ValueError):
        command.track_argv("py", TrackConfig("a", "b", official_checkpoint="exp"))
    with pytest.raises(ValueError, match="preset"):
        command.track_argv("py", TrackConfig("a", "b", preset="fastest"))
    assert command.frames_arg(None, None, 1) is None and command.frames_arg(0, 9, 3) == "0:10:3"


def test_remove_backend_only_removes_managed_envs(scene, tmp_path, monkeypatch):
    from mononphm_blender import prefs
    from mononphm_blender.core import command

    env = tmp_path / "env"
    env.mkdir()
    (env / "something").write_text("x")
    monkeypatch.setattr(prefs, "default_env_dir", lambda p=None: env)
    with pytest.raises(RuntimeError, match="not created by this add-on"):
        bpy.ops.mononphm.remove_backend()
    (env / command.ENV_MARKER).write_text("mononphm")
    assert bpy.ops.mononphm.remove_backend() == {"FINISHED"}
    prefs.STATE.removing.join(10)
    assert not env.exists()


def test_check_backend_operator_runs_the_handshake(scene, fake_backend):
    from mononphm_blender import job_control, prefs

    assert bpy.ops.mononphm.check_backend() == {"FINISHED"}
    _tick_until(lambda: prefs.STATE.checking is None, timeout=30)
    assert prefs.STATE.info and prefs.STATE.info["protocol"] == protocol.PROTOCOL_VERSION, prefs.STATE.error
    assert "Backend 0.0.0-fake" in prefs.status_text() or "Backend" in prefs.status_text()
    assert job_control.tick() is None  # idle again


def test_open_log_and_refresh_markers_operators(scene, tmp_path):
    log = tmp_path / "backend.log"
    log.write_text("line 1\nTraceback: boom\n")
    scene.mononphm.job.log_path = str(log)
    assert bpy.ops.mononphm.open_log() == {"FINISHED"}
    assert "Traceback: boom" in bpy.data.texts[-1].as_string()
    pkg = make_package(tmp_path / "p", frames=30, vertices=100)
    assert bpy.ops.mononphm.import_result(directory=str(pkg)) == {"FINISHED"}
    scene.mononphm["error_threshold"] = 0.5  # no update callback: the operator recomputes
    assert bpy.ops.mononphm.refresh_markers() == {"FINISHED"}
    assert len(scene.mononphm.bad_frames) == 30


def test_frames_appear_while_tracking(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import job_control

    monkeypatch.setenv("FAKE_BACKEND_MODE", "slow")
    monkeypatch.setenv("FAKE_FRAMES", "8")
    monkeypatch.setattr(job_control, "LIVE_IMPORT_MIN_S", 0.05)
    s = _configure(scene, tmp_path)
    job_control.start_track(bpy.context)
    partial = []

    def check():
        head = next((o for o in bpy.data.objects if o.get("mononphm_role") == "head"), None)
        if head is not None and s.job.state == "RUNNING" and head.data.shape_keys:
            partial.append(len(head.data.shape_keys.key_blocks) - 1)
        return s.job.state != "RUNNING"

    _tick_until(check, timeout=30)
    assert s.job.state == "FINISHED"
    assert partial and min(partial) < 8  # some frames were in the scene before tracking ended
    assert s.job.imported_frames == 8


def test_track_argv_parses_with_the_real_cli():
    from backend.cli import build_parser
    from mononphm_blender.core import command

    req = TrackConfig("in.mp4", "out", frames="3:9:2", preset="high", output="both", device="cpu", fx=500.0,
                      fy=501.0, cx=320.0, cy=240.0, official_checkpoint="exp", mean_anchors="anchors_65.npy",
                      checkpoint_epoch=7, overwrite=True, max_size=384, threads=2, detector="face-alignment",
                      seed=3)
    args = build_parser().parse_args(command.track_argv("python", req)[3:])
    assert TrackConfig.from_namespace(args) == req  # the schema round-trips every field
    assert (args.command, args.input, args.out, args.frames, args.preset, args.output, args.device) == (
        "track", "in.mp4", "out", "3:9:2", "high", "both", "cpu")
    assert (args.fx, args.fy, args.cx, args.cy) == (500.0, 501.0, 320.0, 240.0)
    assert (args.official_checkpoint, args.mean_anchors, args.checkpoint_epoch) == ("exp", "anchors_65.npy", 7)
    assert args.overwrite and args.max_size == 384 and args.threads == 2
    assert build_parser().parse_args(command.version_argv("python")[3:]).version
    bake = build_parser().parse_args(command.bake_argv("python", "res", frames="10:41:1", texture=True)[3:])
    assert (bake.command, bake.package, bake.frames, bake.texture) == ("bake", "res", "10:41:1", True)
    assert not build_parser().parse_args(command.bake_argv("python", "res")[3:]).texture


def test_handshake_refuses_another_protocol(tmp_path):
    from mononphm_blender.core import jobs

    script = tmp_path / "other.py"
    script.write_text('import json; print(json.dumps({"protocol": 99, "backend": "9"}))\n')
    with pytest.raises(RuntimeError, match="protocol 99"):
        jobs.run_handshake([sys.executable, str(script)])
    script.write_text('import sys; print("boom", file=sys.stderr); sys.exit(2)\n')
    with pytest.raises(RuntimeError, match="boom"):
        jobs.run_handshake([sys.executable, str(script)])
