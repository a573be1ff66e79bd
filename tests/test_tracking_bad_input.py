"""User mistakes reach the user as bad input (exit 2, one JSON error line saying what to do), found before the long
landmark pass where possible; odd inputs (truncated clips, mixed image sizes, several faces) are tracked with a
warning that says what happened."""

import io
import json
import re
import sys

import numpy as np
import pytest

from backend.cli import main as cli_main
from backend.tracking import video
from test_tracking_inputs import _frames, _write_video


def _run(argv):
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        code = cli_main(argv)
    finally:
        sys.stdout = stdout
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "plain.mkv"
    _write_video(path, _frames(4, 48, 64))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--max-size", "-1"], "--max-size must be 0 \\(keep the size\\) or a positive number"),
    (["--fov", "0"], "--fov 0 is outside"),
    (["--fov", "179"], "--fov 179 is outside"),
    (["--fov", "nan"], "--fov nan is outside"),
    (["--fx", "-300"], "--fx -300 is not a valid focal length"),
    (["--cx", "inf"], "--cx inf is not a valid principal point"),
    (["--face", "middle"], "--face 'middle' is neither largest, leftmost, rightmost nor a point"),
    (["--official-checkpoint", "/nonexistent/exp", "--mean-anchors", "/nonexistent/anchors_65.npy"],
     "the official checkpoint /nonexistent/exp cannot be used: .*configs.yaml not found"),
])
def test_bad_flags_are_bad_input_before_the_landmark_pass(clip, tmp_path, flags, message):
    code, events = _run(["track", str(clip), "--out", str(tmp_path / "out"), "--threads", "1", *flags])
    errors = [e for e in events if e["type"] == "error"]
    assert code == 2 and len(errors) == 1 and errors[0]["hint"], events
    assert re.search(message, errors[0]["message"]), errors[0]["message"]
    assert not any(e.get("stage") == "landmarks" for e in events)  # refused before decoding the clip
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_bad_input(clip, tmp_path):
    (tmp_path / "out").write_text("notes")
    code, events = _run(["track", str(clip), "--out", str(tmp_path / "out"), "--threads", "1"])
    assert code == 2 and events[-1]["type"] == "error" and "is a file, not a folder" in events[-1]["message"]
    assert not any(e.get("stage") == "landmarks" for e in events)
    assert (tmp_path / "out").read_text() == "notes"


def test_truncated_clip_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "short.mkv"
    _write_video(path, _frames(5))
    src = video.FrameSource(path)
    src.info.n_frames = 9  # the container announces more frames than the stream holds
    assert len(list(src)) == 5
    [(code, message)] = src.warnings
    assert code == "truncated_clip" and "ends after 5 frames although its container announces 9" in message
    stopped = video.FrameSource(path, "0:2")
    stopped.info.n_frames = 9
    list(stopped)
    assert stopped.warnings == []  # a selection that ends early is no truncation


def test_mixed_image_sizes_are_fitted_not_stretched(tmp_path):
    import cv2
    cv2.imwrite(str(tmp_path / "f1.png"), np.full((40, 80, 3), 50, np.uint8))
    cv2.imwrite(str(tmp_path / "f2.png"), np.full((40, 40, 3), 200, np.uint8))  # square: half as wide
    src = video.FrameSource(tmp_path)
    first, second = list(src)
    assert second.image.shape == first.image.shape == (40, 80, 3)
    assert (second.image[:, 20:60] == 200).all() and (second.image[:, :20] == 0).all() \
        and (second.image[:, 60:] == 0).all()
    [(code, message)] = src.warnings
    assert code == "mixed_image_sizes" and "frame 1 is 40x40, the first is 80x40" in message


def test_face_rules():
    from backend.contracts.track_config import parse_face
    from backend.tracking.landmarks import choose_face

    left_small = np.array([[0, 0], [10, 10]], np.float32)
    right_big = np.array([[50, 50], [100, 100]], np.float32)
    middle = np.array([[20, 0], [40, 20]], np.float32)
    faces = [middle, left_small, right_big]
    assert choose_face(faces, None, "largest") == 2
    assert choose_face(faces, None, "leftmost") == 1
    assert choose_face(faces, None, "rightmost") == 2
    assert choose_face(faces, None, (30.0, 10.0)) == 0  # inside the middle box
    assert choose_face(faces, None, (48.0, 45.0)) == 2  # nearest box
    assert choose_face(faces, np.array([0, 0, 10, 10], np.float32), "rightmost") == 1  # keeps following
    assert parse_face(" Leftmost ") == "leftmost" and parse_face("320,200.5") == (320.0, 200.5)
    with pytest.raises(ValueError, match="neither"):
        parse_face("1,2,3")


def test_several_faces_warn_and_follow_the_choice(tmp_path):
    """Two real faces side by side: the warning names the one tracked and the --face rule picks it."""
    from skimage import data

    from backend.tracking.run import _Events, detect_all

    face = data.astronaut()[:300, 100:400]
    pair = np.concatenate([face, face[:, ::-1]], axis=1)
    video_path = tmp_path / "pair.mkv"
    _write_video(video_path, [pair] * 2)
    seen = {}
    for rule in ("leftmost", "rightmost", (450.0, 120.0)):
        warnings = []
        events = type("Events", (), {"progress": lambda *a, **k: None,
                                     "warning": lambda self, message, code: warnings.append((code, message))})()
        det = detect_all(video.FrameSource(video_path, max_size=300), "mediapipe", _Events(events), rule)
        seen[str(rule)] = float(det.landmarks[0][:, 0].mean()) * 2  # source pixels (the frames were halved)
        assert [c for c, _ in warnings] == ["several_faces"] and "2 faces are visible" in warnings[0][1]
    assert seen["leftmost"] < 300 < seen["rightmost"]
    assert abs(seen["(450.0, 120.0)"] - seen["rightmost"]) < 1.0


@pytest.mark.parametrize("preset", ["draft", "standard"])
def test_a_broken_arkit_channel_table_is_reported_before_the_landmark_pass(clip, tmp_path, preset):
    import shutil

    from backend import BUILTIN_MODEL_DIR
    from backend.tracking.channel_table import table_file

    model = tmp_path / "model"
    shutil.copytree(BUILTIN_MODEL_DIR, model)
    # the run reads the table of its preset (standard's own file: the draft table is not read)
    (model / table_file(preset)).write_text('{"format": "mononphm-arkit-channels", "channels": {}}')
    code, events = _run(["track", str(clip), "--out", str(tmp_path / "out"), "--threads", "1", "--model", str(model),
                         "--preset", preset])
    errors = [e for e in events if e["type"] == "error"]
    assert code == 2 and len(errors) == 1, events
    assert f"{table_file(preset)} cannot be used" in errors[0]["message"] and "calibrate" in errors[0]["hint"]
    assert not any(e.get("stage") == "landmarks" for e in events)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, named", [
    ("no_config", "no config.json"),
    ("model.pt", "model.pt"),
    ("encoders.pt", "encoders.pt"),
    ("lid_image.pt", "lid_image.pt"),
    ("expression_init.npz", "expression_init.npz"),
])
def test_a_damaged_model_folder_is_bad_input_before_the_landmark_pass(clip, tmp_path, damage, named):
    """Whatever file of a ``--model`` folder is damaged, the user hears which one, with exit 2 and no traceback,
    before the landmark pass and without an output folder."""
    import shutil

    from backend import BUILTIN_MODEL_DIR

    model = tmp_path / "model"
    shutil.copytree(BUILTIN_MODEL_DIR, model)
    if damage == "no_config":
        (model / "config.json").unlink()
    else:
        (model / damage).write_bytes(b"PK\x03\x04 not what it claims to be")
    code, events = _run(["track", str(clip), "--out", str(tmp_path / "out"), "--threads", "1", "--model", str(model)])
    errors = [e for e in events if e["type"] == "error"]
    assert code == 2 and len(errors) == 1 and errors[0]["code"] == "bad_input", events
    assert named in errors[0]["message"] and "--model" in errors[0]["hint"]
    assert not any(e.get("stage") == "landmarks" for e in events)
    assert not (tmp_path / "out").exists()
