"""2D face landmarks per frame.

Default: MediaPipe's face mesh (478 points incl. irises; ``mediapipe_graphs``: the legacy solution of mediapipe
0.10.21 with the model in its wheel, or the Tasks API's FaceLandmarker on Python 3.13+; nothing is downloaded) in video
mode, tracking up to ``max_faces`` faces and keeping the largest consistent one; when the video-mode graph
loses the face, a fresh single-image detector is re-run on that frame.
Optional: face-alignment (iBUG-68) when the package and its weights are present locally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

from .errors import TrackingInputError
from .mediapipe_graphs import face_mesh_graph

MEDIAPIPE = "mediapipe478"
IBUG68 = "ibug68"


@dataclass
class FaceLandmarks:
    """Landmarks of the tracked face in one frame (pixel units of the image passed in)."""

    scheme: str                      # MEDIAPIPE or IBUG68
    points: Optional[np.ndarray]     # (L, 2) float32 pixels, None when no face was found
    depth: Optional[np.ndarray]      # (L,) float32 relative depth in pixels (MediaPipe only), None otherwise
    bbox: Optional[np.ndarray]       # (4,) x0, y0, x1, y1
    n_faces: int = 0

    @property
    def found(self) -> bool:
        return self.points is not None

    @property
    def size(self) -> float:
        """Face size in pixels (bounding-box diagonal), 0 if not found."""
        if self.bbox is None:
            return 0.0
        return float(np.hypot(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


def _bbox(p: np.ndarray) -> np.ndarray:
    return np.concatenate([p.min(0), p.max(0)]).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def choose_face(candidates: List[np.ndarray], previous_bbox: Optional[np.ndarray],
                rule: Union[str, Tuple[float, float]] = "largest") -> int:
    """Index of the face to track: the one overlapping the previous choice, else the one ``rule`` picks: the
    largest, the leftmost or rightmost (box centre), or the one whose box contains (else is nearest to) a point."""
    boxes = np.array([_bbox(c) for c in candidates], np.float64)
    if previous_bbox is not None:
        ious = [_iou(b, previous_bbox) for b in boxes]
        j = int(np.argmax(ious))
        if ious[j] > 0.3:
            return j
    centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    if rule == "leftmost":
        return int(np.argmin(centres[:, 0]))
    if rule == "rightmost":
        return int(np.argmax(centres[:, 0]))
    if not isinstance(rule, str):
        point = np.asarray(rule, np.float64)
        outside = np.maximum(np.maximum(boxes[:, :2] - point, point - boxes[:, 2:]), 0.0)
        return int(np.argmin(np.hypot(outside[:, 0], outside[:, 1]) * 1e6
                             + np.hypot(*(centres - point).T)))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.argmax(areas))


class MediaPipeLandmarker:
    """MediaPipe face mesh with refined (iris) landmarks: 478 points per face."""

    scheme = MEDIAPIPE

    def __init__(self, video_mode: bool = True, max_faces: int = 3, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, face: Union[str, Tuple[float, float]] = "largest"):
        self.video_mode = video_mode
        self.max_faces = max_faces
        self._conf = (min_detection_confidence, min_tracking_confidence)
        self._graph = face_mesh_graph(not video_mode, max_faces, min_detection_confidence, min_tracking_confidence)
        self._static = None
        self._prev_bbox: Optional[np.ndarray] = None
        self.face = face

    def __call__(self, image: np.ndarray) -> FaceLandmarks:
        """image: (H, W, 3) uint8 RGB."""
        faces = self._graph.process(image)
        if not faces and self.video_mode:
            # tracking lost: re-run the detector from scratch on this frame
            if self._static is None:
                self._static = face_mesh_graph(True, self.max_faces, self._conf[0] * 0.6)
            faces = self._static.process(image)
        if not faces:
            return FaceLandmarks(self.scheme, None, None, None, 0)
        j = choose_face([f[:, :2] for f in faces], self._prev_bbox, self.face)
        pts = faces[j]
        self._prev_bbox = _bbox(pts[:, :2])
        return FaceLandmarks(self.scheme, pts[:, :2].copy(), pts[:, 2].copy(), self._prev_bbox, len(faces))

    def close(self):
        for g in (self._graph, self._static):
            if g is not None:
                g.close()


def face_alignment_weights_present() -> bool:
    hub = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    ck = os.path.join(hub, "hub", "checkpoints")
    if not os.path.isdir(ck):
        return False
    names = os.listdir(ck)
    return any(n.startswith("2DFAN4") for n in names) and any(n.startswith("s3fd") for n in names)


class FaceAlignmentLandmarker:
    """face-alignment (Bulat & Tzimiropoulos) 2D iBUG-68 landmarks; needs its weights in the torch hub cache."""

    scheme = IBUG68

    def __init__(self, face: Union[str, Tuple[float, float]] = "largest"):
        self.face = face
        try:
            import face_alignment  # noqa: F401
        except Exception as e:
            raise TrackingInputError("detector 'face-alignment' requested but the package is not installed "
                                     "(pip install face-alignment), use --detector mediapipe") from e
        if not face_alignment_weights_present():
            raise TrackingInputError(
                "detector 'face-alignment' needs its weights (2DFAN4*.zip and s3fd*.pth) in "
                "$TORCH_HOME/hub/checkpoints; they are not downloaded at run time. Copy them there or use "
                "--detector mediapipe")
        import face_alignment
        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        self._fa = face_alignment.FaceAlignment(lt, device="cpu", flip_input=False)
        self._prev_bbox = None

    def __call__(self, image: np.ndarray) -> FaceLandmarks:
        preds = self._fa.get_landmarks_from_image(image)
        if not preds:
            return FaceLandmarks(self.scheme, None, None, None, 0)
        j = choose_face([p[:, :2] for p in preds], self._prev_bbox, self.face)
        pts = np.asarray(preds[j][:, :2], np.float32)
        self._prev_bbox = _bbox(pts)
        return FaceLandmarks(self.scheme, pts, None, self._prev_bbox, len(preds))

    def close(self):
        pass


def make_landmarker(name: str = "mediapipe", video_mode: bool = True,
                    face: Union[str, Tuple[float, float]] = "largest"):
    """``face``: which face to track when several are visible (``choose_face``; a point in the images' pixels)."""
    name = (name or "mediapipe").lower().replace("_", "-")
    if name == "mediapipe":
        return MediaPipeLandmarker(video_mode=video_mode, face=face)
    if name in ("face-alignment", "fan"):
        return FaceAlignmentLandmarker(face=face)
    raise TrackingInputError(f"unknown landmark detector {name!r} (choose mediapipe or face-alignment)")
