"""The add-on's batch queue: a Movie Clip and a file run as one ``backend batch`` (the fake backend); each result is
imported when its clip finishes, and a re-run skips finished clips and imports them again."""
import time

import pytest

bpy = pytest.importorskip("bpy")


def _run_to_end(first_package, timeout=30.0):
    """Tick until the batch ends; whether ``first_package`` was imported while the batch still ran."""
    from mononphm_blender import batch_queue, importer

    end = time.monotonic() + timeout
    early = False
    while batch_queue.tick() is not None:
        early = early or bool(importer.find_objects(str(first_package)))
        if time.monotonic() > end:
            raise TimeoutError("batch still running")
        time.sleep(0.02)
    return early


def test_queue_runs_as_one_batch_and_imports_each_clip(scene, tmp_path, fake_backend, monkeypatch):
    from mononphm_blender import batch_queue, importer, job_control

    monkeypatch.setenv("FAKE_FRAMES", "4")
    monkeypatch.setenv("FAKE_DELAY", "0.1")
    seq = tmp_path / "take1"
    seq.mkdir()
    img = bpy.data.images.new("f", 40, 30)
    img.filepath_raw = str(seq / "f_0001.png")
    img.file_format = "PNG"
    img.save()
    s = scene.mononphm
    s.input_kind, s.clip = "CLIP", bpy.data.movieclips.load(str(seq / "f_0001.png"))
    assert bpy.ops.mononphm.batch_add() == {"FINISHED"}
    video = tmp_path / "take2.mp4"
    video.write_bytes(b"not really a video")
    s.input_kind, s.input_path, s.clip_start = "FILE", str(video), 101
    s.use_frame_range, s.frame_start, s.frame_end, s.preset = True, 102, 103, "draft"   # source frames 1 and 2
    assert bpy.ops.mononphm.batch_add() == {"FINISHED"}
    s.use_frame_range, s.preset = False, "standard"   # queued clips keep their own settings
    batch = scene.mononphm_batch
    batch.out_root, batch.chunk_frames = str(tmp_path / "out"), 500
    assert bpy.ops.mononphm.batch_run() == {"FINISHED"}
    job = batch_queue._jobs[scene.name]
    assert job.argv[3] == "batch" and job.argv[4].startswith("@") and "--out-root" in job.argv
    assert job.argv[job.argv.index("--chunk-frames") + 1] == "500"
    lines = [line.split("\t") for line in open(job.argv[4][1:]).read().splitlines()]
    assert [path for path, _ in lines] == [str(seq), str(video)]
    assert "--fx" in lines[0][1] and "--frames" not in lines[0][1]   # the Movie Clip's camera, every frame
    assert "--frames 1:3:1" in lines[1][1] and "--preset draft" in lines[1][1]
    with pytest.raises(RuntimeError, match="batch is running"):   # one backend job per scene at a time
        job_control.start_track(bpy.context, scene)
    assert _run_to_end(tmp_path / "out" / "take1")   # imported while take2 was still tracking
    assert batch.state == "FINISHED", (batch.error, open(batch.log_path).read())
    assert [(c.name, c.state) for c in batch.clips] == [("take1", "complete"), ("take2", "complete")]
    for name in ("take1", "take2"):
        objects = importer.find_objects(str(tmp_path / "out" / name))
        assert objects.get("head") is not None
    head2 = importer.find_objects(str(tmp_path / "out" / "take2"))["head"]
    assert head2["mononphm_clip_start"] == 101   # the file's start frame reached the import
    from backend.contracts.result_format import read_manifest

    assert [f["index"] for f in read_manifest(tmp_path / "out" / "take2")["frames"]] == [1, 2]   # its own range
    assert bpy.ops.mononphm.batch_run() == {"FINISHED"}   # again: both finished, skipped and re-imported
    _run_to_end(tmp_path / "out" / "take1")
    assert [c.state for c in batch.clips] == ["skipped", "skipped"] and batch.state == "FINISHED"


def test_reopening_the_blend_follows_the_batch(scene, tmp_path, fake_backend, monkeypatch):
    """Blender closed while a batch runs: the reopened .blend follows the same process and imports every clip."""
    from mononphm_blender import batch_queue, importer

    monkeypatch.setenv("FAKE_FRAMES", "5")
    monkeypatch.setenv("FAKE_DELAY", "0.3")
    s = scene.mononphm
    for name in ("take1", "take2"):
        (tmp_path / f"{name}.mp4").write_bytes(b"not really a video")
        s.input_kind, s.input_path = "FILE", str(tmp_path / f"{name}.mp4")
        assert bpy.ops.mononphm.batch_add() == {"FINISHED"}
    scene.mononphm_batch.out_root = str(tmp_path / "out")
    job = batch_queue.start_batch(bpy.context)
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    batch_queue._jobs.clear()   # Blender closed: the batch goes on in its own session
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend))   # load_post → batch_queue.reattach_all()
    scene = bpy.context.scene
    attached = batch_queue._jobs[scene.name]
    assert attached.pid == job.pid and batch_queue.is_running(scene)
    _run_to_end(tmp_path / "out" / "take1")
    batch = scene.mononphm_batch
    assert batch.state == "FINISHED" and [(c.name, c.state) for c in batch.clips] == \
        [("take1", "complete"), ("take2", "complete")]
    assert all(importer.find_objects(str(tmp_path / "out" / n)).get("head") for n in ("take1", "take2"))
    job.proc.wait(5)


def test_batch_panel_shows_the_selected_clips_own_settings(scene, tmp_path):
    from test_blender_addon import _draw

    from mononphm_blender import batch_queue

    s = scene.mononphm
    (tmp_path / "take.mp4").write_bytes(b"")
    s.input_kind, s.input_path, s.preset, s.stride = "FILE", str(tmp_path / "take.mp4"), "high", 2
    assert bpy.ops.mononphm.batch_add() == {"FINISHED"}
    item = scene.mononphm_batch.clips[0]
    assert (item.preset, item.stride, item.use_frame_range) == ("high", 2, False)   # taken from the panels
    drawn = {name for _, name in _draw(batch_queue.MONONPHM_PT_batch, bpy.context)}
    assert {"preset", "use_frame_range", "frame_start", "frame_end", "stride", "mononphm.batch_run"} <= drawn
