"""The frames a bake reads: which tracked frames, their images and labels (re-decoded from the source clip for a
package; a tracking run passes its own), the eye / mouth-interior regions, and the posed canonical mesh in each
frame's camera space."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..contracts.result_format import PackageError, ResultPackage
from ..tracking import masks as M
from .albedo import FrameBatch, Shading, fit_weights


def spread(indices: Sequence[int], n: int) -> np.ndarray:
    """At most ``n`` of the sorted ``indices``, evenly spaced (first and last kept)."""
    indices = np.asarray(indices, np.int64)
    if len(indices) <= n:
        return indices
    return indices[np.unique(np.round(np.linspace(0, len(indices) - 1, n)).astype(np.int64))]


def select_frames(pkg: ResultPackage, frames: Optional[str], max_frames: int) -> np.ndarray:
    """Source indices of tracked frames within ``frames`` (a ``FrameRange`` string, None: all), at most
    ``max_frames`` of them, evenly spaced."""
    from ..tracking.video import FrameRange
    rng = FrameRange.parse(frames)
    tracked = [f["index"] for f in pkg.frames if f["status"] == "tracked" and rng.contains(f["index"])]
    if not tracked:
        raise PackageError(f"no tracked frames of {pkg.root} in the range {frames or 'all'}",
                           "Choose a frame range the package has tracked (see its manifest).")
    return spread(tracked, max_frames)


def package_shading(pkg: ResultPackage) -> Shading:
    ident = pkg.identity()
    return Shading(ident["sh_coeffs"], ident["color_affine"], ident["color_bias"])


def posed_vertices(pkg: ResultPackage, indices: Sequence[int]) -> np.ndarray:
    """(T, V, 3) canonical-mesh vertices of the frames ``indices`` in camera space (metres, OpenCV)."""
    try:
        arrays = pkg.frame_arrays(["scale", "rotation", "translation", "vertices"])
    except PackageError:
        raise PackageError(f"{pkg.root} has no per-frame vertices in every chunk, which the bake needs",
                           "Re-track the clip into a new folder (this backend writes them).") from None
    rows = np.searchsorted(pkg.frame_indices, np.asarray(indices))
    verts = arrays["vertices"][rows].astype(np.float64)
    R = arrays["rotation"][rows].astype(np.float64)
    return (arrays["scale"][rows, None, None] * np.einsum("tij,tvj->tvi", R, verts)
            + arrays["translation"][rows, None].astype(np.float64))


def interior_regions(labels: np.ndarray, landmarks: Optional[np.ndarray]) -> np.ndarray:
    """(H, W) bool: the mouth interior (label MOUTH) and the eye openings of MediaPipe ``landmarks`` (478, 2)
    (other detectors' landmarks have no eye contours: the mouth only)."""
    special = labels == M.MOUTH
    if landmarks is not None and len(landmarks) > max(c.max() for c in M.EYE_CONTOURS):
        special |= M.eye_openings(landmarks, labels.shape)
    return special


def package_frames(pkg: ResultPackage, indices: Sequence[int],
                   progress: Optional[Callable[[int, int, int], None]] = None) -> FrameBatch:
    """Re-decode the frames ``indices`` (sorted source indices) of the package's clip at the tracked image size,
    with MediaPipe's landmarks, head labels and eye/mouth-interior masks (the package keeps no landmarks), and the
    package's posed mesh of each."""
    from ..tracking.landmarks import make_landmarker
    from ..tracking.video import FrameSource
    source = pkg.manifest["source"]["path"]
    settings = pkg.manifest.get("settings", {})
    W, H = pkg.image_size
    indices = np.asarray(indices, np.int64)
    try:
        src = FrameSource(source, f"{indices[0]}:{indices[-1] + 1}", max_size=settings.get("max_size", 512) or None)
    except Exception as e:  # noqa: BLE001 - any failure to open the clip is the same user problem
        raise PackageError(f"cannot open the tracked clip {source} ({e})",
                           "The bake re-reads the clip the package was tracked from; put it back at that path.") \
            from None
    if tuple(src.size) != (W, H):
        raise PackageError(f"{source} decodes at {src.size}, but the package was tracked at {(W, H)}",
                           "The clip changed since tracking; re-track it.")
    images = np.zeros((len(indices), H, W, 3), np.uint8)
    labels = np.full((len(indices), H, W), M.IGNORE, np.uint8)
    special = np.zeros((len(indices), H, W), bool)
    points = [None] * len(indices)
    row = {int(i): k for k, i in enumerate(indices)}
    det = make_landmarker("mediapipe", video_mode=False)
    seg = M.SelfieSegmenter()
    try:
        for fr in src:
            k = row.get(fr.index)
            if k is None:
                continue
            lm = det(fr.image)
            pts = lm.points if lm.found else None
            points[k] = pts
            images[k] = fr.image
            labels[k] = M.head_labels(seg(fr.image), pts, (H, W))
            special[k] = interior_regions(labels[k], pts)
            if progress is not None:
                progress(k + 1, len(indices), fr.index)
    finally:
        det.close()
        seg.close()
    errors = pkg.quality("landmark_error_px")[np.searchsorted(pkg.frame_indices, indices)]
    return FrameBatch(images, labels, special, posed_vertices(pkg, indices), fit_weights(errors),
                      stack_landmarks(points))


def stack_landmarks(points: Sequence[Optional[np.ndarray]]) -> Optional[np.ndarray]:
    """Per-frame detector points ((L, 2) or None: no face) -> (T, L, 2) float32, NaN where none; None if no frame
    has any."""
    found = [p for p in points if p is not None]
    if not found:
        return None
    out = np.full((len(points),) + np.shape(found[0]), np.nan, np.float32)
    for k, p in enumerate(points):
        if p is not None:
            out[k] = p
    return out
