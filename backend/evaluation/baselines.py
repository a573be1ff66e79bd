"""Baselines evaluated with the same protocol as the tracker.

- ``mean_head_mesh``: the mean ICT-FaceKit head (identity and expression weights 0) placed at the **true** pose.
  A tracker must beat it clearly: it has the right pose and an average face, nothing else.
- ``MediaPipeBaseline``: MediaPipe face mesh (0.10.21, the legacy ``face_mesh`` solution whose model ships in the
  wheel; refined landmarks) on the rendered frames. Its 468 mesh landmarks (pixel x, y and a relative depth z in
  the same scale as x, origin at the head centre) are lifted to camera space with the intrinsics at the true
  head-centre depth ``Z0`` (the pose translation's z): ``Z = Z0 + z · Z0 / fx``, ``X = (u − cx) · Z / fx``,
  ``Y = (v − cy) · Z / fy``; the protocol's similarity ICP then fixes the remaining scale and offset. Triangles:
  MediaPipe's canonical face-mesh topology, recovered from ``FACEMESH_TESSELATION`` (every 3-cycle of its edges),
  each oriented towards the camera.
- ``DlibBaseline``: dlib's iBUG-68 shape predictor on its HOG face detector, an independent 2-D detector (its own
  detector, model and training data) for the real-clip jitter and error figures. Optional: ``dlib-bin`` and
  ``face-recognition-models`` (which ships ``shape_predictor_68_face_landmarks.dat``), benchmarks only
  (``dlib_available``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts import conventions

N_MESH_LANDMARKS = 468


def mean_head_mesh(ict, scale: float, rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ICT head at a pose: vertices (V, 3) camera metres and triangles (F, 3) (``ict.faces``)."""
    model_m = conventions.nphm_to_metres(ict.neutral.astype(np.float64))
    v = float(scale) * model_m @ np.asarray(rotation, np.float64).T + np.asarray(translation, np.float64)
    return v, ict.faces.astype(np.int64)


def mediapipe_triangles() -> np.ndarray:
    """(F, 3) triangles of MediaPipe's 468-vertex canonical face mesh, from the tesselation edge list (the Tasks
    API's copy: both mediapipe 0.10.21 and the Tasks-only releases have it, the same edges as the legacy one)."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    edges = {tuple(sorted((c.start, c.end))) for c in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION}
    e = np.array(sorted(edges), np.int64)  # (E, 2), a < b
    adj = np.zeros((N_MESH_LANDMARKS, N_MESH_LANDMARKS), bool)
    adj[e[:, 0], e[:, 1]] = adj[e[:, 1], e[:, 0]] = True
    common = adj[e[:, 0]] & adj[e[:, 1]]  # (E, 468): vertices adjacent to both ends
    ei, k = np.nonzero(common)
    keep = k > e[ei, 1]  # count each triangle once (a < b < k)
    return np.stack([e[ei[keep], 0], e[ei[keep], 1], k[keep]], 1)


def orient_towards_camera(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Triangles (F, 3) re-wound so that their normals face the camera at the origin."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(triangles, np.int64).copy()
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    away = np.einsum("ij,ij->i", n, v[f].mean(1)) > 0
    f[away] = f[away][:, [0, 2, 1]]
    return f


def lift_landmarks(landmarks_px: np.ndarray, intr: conventions.Intrinsics, depth_m: float) -> np.ndarray:
    """(L, 3) MediaPipe landmarks (u px, v px, z px-scale relative depth) → (L, 3) camera metres at head depth."""
    p = np.asarray(landmarks_px, np.float64)
    z = depth_m + p[:, 2] * depth_m / intr.fx
    return np.stack([(p[:, 0] - intr.cx) * z / intr.fx, (p[:, 1] - intr.cy) * z / intr.fy, z], 1)


@dataclass
class MediaPipeBaseline:
    """MediaPipe face mesh over a frame sequence (video mode). ``detect`` returns (T, 478, 3) pixel landmarks
    (u, v, z·width), NaN where no face was found."""

    static_image_mode: bool = False

    def detect(self, frames: list[np.ndarray]) -> np.ndarray:
        from ..tracking.mediapipe_graphs import face_mesh_graph

        out = np.full((len(frames), 478, 3), np.nan)
        graph = face_mesh_graph(self.static_image_mode, max_faces=1)
        try:
            for i, img in enumerate(frames):
                faces = graph.process(img)
                if faces:
                    out[i] = faces[0]
        finally:
            graph.close()
        return out

    @staticmethod
    def mesh(landmarks_px: np.ndarray, intr: conventions.Intrinsics, depth_m: float,
             triangles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Camera-space mesh (468, 3) metres + oriented triangles (F, 3) from one frame's landmarks."""
        v = lift_landmarks(landmarks_px[:N_MESH_LANDMARKS], intr, depth_m)
        f = mediapipe_triangles() if triangles is None else triangles
        return v, orient_towards_camera(v, f)


DLIB_PACKAGES = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
DLIB_MODEL = "shape_predictor_68_face_landmarks.dat"


def _dlib_model_path():
    """The 68-point model inside ``face-recognition-models`` (found without importing the package, whose
    ``__init__`` needs setuptools' ``pkg_resources``), or None."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / DLIB_MODEL
    return path if path.is_file() else None


def dlib_available() -> bool:
    """Whether dlib and its 68-point model are installed (``DLIB_PACKAGES``)."""
    import importlib.util

    return importlib.util.find_spec("dlib") is not None and _dlib_model_path() is not None


@dataclass
class DlibBaseline:
    """dlib's 68-point shape predictor, frame by frame (no temporal filter). ``detect`` returns (T, 68, 2) pixel
    points in iBUG-68 order, NaN where its detector found no face (the largest face when several). dlib returns
    whole pixels."""

    upsample: int = 1   # the HOG detector's image pyramid upsampling (faces down to ~40 px at 1)

    def detect(self, frames: list[np.ndarray]) -> np.ndarray:
        import dlib

        if not dlib_available():
            raise RuntimeError(f"dlib or its 68-point model is missing ({DLIB_PACKAGES})")
        finder = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(str(_dlib_model_path()))
        out = np.full((len(frames), 68, 2), np.nan)
        for i, img in enumerate(frames):
            boxes = finder(np.ascontiguousarray(img), self.upsample)
            if len(boxes):
                box = max(boxes, key=lambda b: b.area())
                shape = predictor(img, box)
                out[i] = [(q.x, q.y) for q in shape.parts()]
        return out


def read_video_frames(path, max_frames: int | None = None) -> list[np.ndarray]:
    """Decode a video into (H, W, 3) uint8 RGB frames with PyAV."""
    import av

    frames = []
    with av.open(str(path)) as c:
        for fr in c.decode(video=0):
            frames.append(fr.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return frames
