"""Per-frame expression estimate straight from MediaPipe's points (numpy inference, no training code).

Why: the built-in model barely moves its surface for the eye and brow channels (its expression encoder's columns
for blinks, squints, wide eyes and brows are 10-20x weaker than the mouth's; posing the mean head with a full blink
moves its upper eyelid by 0.2 mm where ICT-FaceKit moves it 8 mm, backend/evaluation/README.md). A landmark loss
through the model therefore cannot see those channels, however the priors are weighted. The detector's points do
carry them, so a small regressor reads them from the points:

- features (``landmark_features``): MediaPipe's 468 face-mesh points in 3-D (pixels and its relative depth),
  similarity-aligned (Umeyama on nearly rigid points: eye corners, nose, mid forehead) onto the same points on the ICT mean head,
  minus those, over the eye-corner distance: the head pose is divided out, the expression (and identity) remain;
- minus the clip's rest features (``rest_features``: their per-feature median over the clip's frames, which are at
  rest most of the time): the person's own eye and brow shape is divided out as well, so the map reads the change
  from that person's rest face, not a brow that sits high or an eye that is narrow by nature (tuning clips, eye and
  brow groups: correlation 0.42 -> 0.49, MAE 0.114 -> 0.095, backend/evaluation/README.md);
- a linear map (ridge regression) -> the 53 ICT expression weights, then a calibrated response (``DEAD_ZONE``,
  ``RESPONSE_GAIN``) that returns the map's small readings on a face at rest to exactly 0, clamped to [0, 1];
- trained on MediaPipe's detections in renders of random ICT-FaceKit heads (``backend/training/expression_init.py``),
  shipped beside the model as ``expression_init.npz`` (plain arrays, loaded with ``allow_pickle=False``).

The tracker uses it for the channels the model cannot express (``CodeSpace.landmark_channels``): their values come
from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..contracts.landmark_tables import mediapipe_ict_positions

FILE_NAME = "expression_init.npz"
# nearly rigid MediaPipe points for the alignment: eye corners, nose bridge, dorsum and tip, mid forehead
ALIGN_POINTS = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 151)
N_POINTS = 468  # the face mesh (the refined irises follow the eyelids' occlusion poorly)
# The response to the linear reading r: clip(gain * (r - DEAD_ZONE), 0, 1). Readings below the dead zone are the map's
# noise on a face at rest; the gain undoes the ridge's shrinkage of the peaks, which is stronger on the brows (chosen
# on the tuning seed range, eye and brow groups: MAE 0.090 -> 0.062 (zeros 0.066), blink events 7/14 -> 12/16, brow
# peak ratios 0.34-0.49 -> 0.35-0.79; see backend/evaluation/README.md)
DEAD_ZONE = 0.07
RESPONSE_GAIN = 2.5
BROW_RESPONSE_GAIN = 4.0
# brows pulled down are read weakest of all (tuning clips, through stage 2's temporal model, brow down: peak ratio
# 0.32 at gain 4, 0.50 at 6, 0.68 at 8; MAE 0.067, 0.066, 0.065). 6, not 8: at 7-8 the still test head's mesh
# jitter crosses its limit (0.083 -> 0.102 px/frame^2), not through the brows (they read 0-0.02 there) but through
# the model-driven mouth channels' per-frame fit taking another path at the clip's start (backend/evaluation/README.md)
BROW_DOWN_RESPONSE_GAIN = 6.0


def template() -> np.ndarray:
    """(468, 3) the MediaPipe points on the ICT mean head in MediaPipe's axes (x right, y down, depth away)."""
    return mediapipe_ict_positions()[:N_POINTS] * np.array([1.0, -1.0, -1.0])


def landmark_features(points: np.ndarray) -> np.ndarray:
    """(..., >=468, 3) MediaPipe points (u, v, depth) in pixels -> (..., 1404) aligned offsets from the template
    (eye-corner units)."""
    from ..contracts.geometry import fit_similarity

    tpl = template()
    scale = np.linalg.norm(tpl[263] - tpl[33])
    pts = np.asarray(points, np.float64)[..., :N_POINTS, :3]
    flat = pts.reshape(-1, N_POINTS, 3)
    out = np.empty((len(flat), N_POINTS * 3))
    idx = list(ALIGN_POINTS)
    for k, p in enumerate(flat):  # one 3x3 SVD per frame
        s, R, t = fit_similarity(p[idx], tpl[idx])
        out[k] = (((s * p @ R.T + t) - tpl) / scale).ravel()
    return out.reshape(pts.shape[:-2] + (N_POINTS * 3,)).astype(np.float32)


def rest_features(points: np.ndarray) -> np.ndarray:
    """(T, >=468, 3) MediaPipe points (u, v, depth) of a clip's frames with a face -> (1404,) the clip's rest
    features: the per-feature median of ``landmark_features`` (a blink or a raised brow lasts a minority of the
    frames, so the median is the person's rest face)."""
    return np.median(landmark_features(points), axis=0)


class LandmarkExpressionRegressor:
    """Linear map from ``landmark_features`` (minus the clip's rest features) to the 53 ICT expression weights.

    Arrays: ``rest`` (1404,) the training identities' mean rest features (stands in for the clip's when none is
    given), ``mean``/``std`` (1404,) normalisation of the rest-relative features, ``W`` (1404, 53), ``b`` (53,),
    ``channels`` (53,) the ICT names."""

    def __init__(self, arrays: dict):
        self.rest = np.asarray(arrays["rest"], np.float32)
        self.mean = np.asarray(arrays["mean"], np.float32)
        self.std = np.asarray(arrays["std"], np.float32)
        self.W = np.asarray(arrays["W"], np.float32)
        self.b = np.asarray(arrays["b"], np.float32)
        self.channels = tuple(str(c) for c in arrays["channels"])
        self.gain = np.select([[c.startswith("browDown") for c in self.channels],
                               [c.startswith("brow") for c in self.channels]],
                              [BROW_DOWN_RESPONSE_GAIN, BROW_RESPONSE_GAIN], RESPONSE_GAIN).astype(np.float32)

    @classmethod
    def load(cls, model_dir: Path) -> Optional["LandmarkExpressionRegressor"]:
        """The regressor shipped in ``model_dir`` (None when the model has none)."""
        path = Path(model_dir) / FILE_NAME
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as d:
            return cls({k: d[k] for k in d.files})

    def linear(self, points: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(..., 478, 3) MediaPipe points (u, v, depth) in pixels -> (..., 53) the linear map's reading (unclamped);
        ``rest`` (1404,): the clip's ``rest_features`` (default: the training identities' mean)."""
        h = (landmark_features(points) - (self.rest if rest is None else rest) - self.mean) / self.std
        return h @ self.W + self.b

    def __call__(self, points: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(..., 478, 3) MediaPipe points (u, v, depth) in pixels -> (..., 53) ICT weights in [0, 1]."""
        return np.clip(self.gain * (self.linear(points, rest) - DEAD_ZONE), 0.0, 1.0)


__all__ = ["LandmarkExpressionRegressor", "landmark_features", "rest_features", "DEAD_ZONE", "RESPONSE_GAIN",
           "BROW_RESPONSE_GAIN", "BROW_DOWN_RESPONSE_GAIN", "template", "FILE_NAME"]
