"""Mouth channels read from the image around the mouth (inference only, no training code).

Why: MediaPipe's points follow the lips' outline, and frown, dimple, press, roll, lower lip down, shrug, jaw sideways
and forward and mouth close leave no linear trace in them (out-of-fold on the landmark regressor's training renders
their best reading has exactly the all-zeros error), nor does the model's fit return them, with or without the
standard preset's colour term (their peak ratios 0.00-0.07; backend/evaluation/README.md). They change the lips'
thickness, contact and colour and the skin around the corners and chin, which the image shows. So a small network
reads them from a frontalised patch of the lower face:

- patch (``mouth_patch``): a fixed grid on the ICT mean head's lower face (MediaPipe's points on it, their depth
  interpolated between them), carried into the frame by the similarity that aligns the frame's nearly rigid points
  (eye corners, nose, forehead: ``expression_init.ALIGN_POINTS``) onto the same points of the mean head, sampled from
  the RGB frame (bilinear, 2x2 supersampled): the head pose is divided out, the mouth's motion stays in the patch;
- features (``patch_features``): chromaticity (r, g: lips against skin, whatever the light's strength) and log grey
  minus the patch's mean, minus the clip's rest features (their per-pixel median over the clip's frames, as
  ``expression_init.rest_features``): the person's own lips and skin and the clip's light are divided out;
- ``MouthImageNet``: three small convolutions and a linear layer -> the ICT weights of its channels, then the landmark
  regressor's calibrated response (``expression_init.DEAD_ZONE``, a gain), clamped to [0, 1];
- trained on renders of random ICT-FaceKit heads with MakeHuman skin detail (``backend/training/mouth_image.py``),
  shipped beside the model as ``mouth_image.pt`` (a plain state dict, loaded with ``weights_only=True``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..contracts import arkit
from .expression_init import ALIGN_POINTS, DEAD_ZONE, template

FILE_NAME = "mouth_image.pt"
PATCH_SHAPE = (24, 32)   # (rows, columns) of the patch
# The patch spans the mean head's lower face in MediaPipe point ids: mouth corners (61, 291) widened by this share of
# the mouth width on each side, from the subnasale (2) to the chin (152)
PATCH_CORNERS = (61, 291)
PATCH_TOP_BOTTOM = (2, 152)
PATCH_MARGIN = 0.35
N_FEATURES = 3           # feature planes per patch pixel (``patch_features``)
OUTSIDE_GREY = 0.5       # the patch's value where the grid leaves MediaPipe's points


@lru_cache(maxsize=1)
def patch_grid() -> np.ndarray:
    """(2 * rows, 2 * cols, 3) points on the mean head's lower face in the template's frame (x right, y down, depth
    away; ``expression_init.template``), two samples per patch pixel and axis; NaN depth beyond MediaPipe's points
    (the corners below the jaw line)."""
    from scipy.interpolate import LinearNDInterpolator

    tpl = template()
    left, right = tpl[PATCH_CORNERS[0], 0], tpl[PATCH_CORNERS[1], 0]
    lo, hi = min(left, right), max(left, right)
    pad = PATCH_MARGIN * (hi - lo)
    top, bottom = tpl[PATCH_TOP_BOTTOM[0], 1], tpl[PATCH_TOP_BOTTOM[1], 1]
    rows, cols = 2 * PATCH_SHAPE[0], 2 * PATCH_SHAPE[1]
    y, x = np.meshgrid(np.linspace(top, bottom, rows), np.linspace(lo - pad, hi + pad, cols), indexing="ij")
    depth = LinearNDInterpolator(tpl[:, :2], tpl[:, 2])(x, y)
    return np.stack([x, y, depth], -1)


@lru_cache(maxsize=1)
def patch_outside() -> np.ndarray:
    """(rows, cols) bool: the patch pixels with a grid sample beyond MediaPipe's points (held at ``OUTSIDE_GREY``)."""
    r, c = PATCH_SHAPE
    return np.isnan(patch_grid()[..., 2]).reshape(r, 2, c, 2).any((1, 3))


def mouth_patch(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame and its (>=468, 3) MediaPipe points (u, v, relative depth; pixels) -> (rows, cols, 3)
    float32 RGB patch in [0, 1] (``PATCH_SHAPE``)."""
    import cv2

    from ..contracts.geometry import fit_similarity

    idx = list(ALIGN_POINTS)
    s, R, t = fit_similarity(np.asarray(points, np.float64)[idx, :3], template()[idx])
    uv = np.nan_to_num(((patch_grid() - t) @ R) / s)   # the inverse similarity: template frame -> (u, v, depth)
    # pixel centres at integer + 0.5 (MediaPipe's points are in pixel units from the image's corner)
    fine = cv2.remap(np.ascontiguousarray(image), (uv[..., 0] - 0.5).astype(np.float32),
                     (uv[..., 1] - 0.5).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    r, c = PATCH_SHAPE
    patch = fine.reshape(r, 2, c, 2, 3).mean((1, 3), dtype=np.float32) / 255.0
    patch[patch_outside()] = OUTSIDE_GREY
    return patch


def patch_features(patches: np.ndarray) -> np.ndarray:
    """(..., rows, cols, 3) RGB patches -> (..., 3, rows, cols) float32 features: chromaticity r and g, log grey minus
    the patch's mean."""
    p = np.asarray(patches, np.float64)
    total = p.sum(-1) + 0.03
    grey = np.log(p.mean(-1) + 0.02)
    grey -= grey.mean((-2, -1), keepdims=True)
    return np.stack([p[..., 0] / total, p[..., 1] / total, grey], -3).astype(np.float32)


def rest_patch_features(patches: np.ndarray) -> np.ndarray:
    """(T, rows, cols, 3) patches of a clip's frames with a face -> (3, rows, cols) the clip's rest features."""
    return np.median(patch_features(patches), axis=0)


class MouthImageNet(torch.nn.Module):
    """(B, 3, rows, cols) rest-relative features -> (B, C) readings of the ICT weights ``ict_index`` (0 at rest).

    Buffers (saved with the weights): ``ict_index`` (C,) the channels' indices in ``arkit.ICT_NAMES``, ``rest`` (3,
    rows, cols) the training identities' mean rest features (stands in for a clip's), ``scale`` (3,) the features'
    spread per plane, ``gain`` () the calibrated response's gain."""

    def __init__(self, n_channels: int):
        super().__init__()
        r, c = PATCH_SHAPE
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(N_FEATURES, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Dropout(0.3),
            torch.nn.Linear(32 * ((r + 3) // 4) * ((c + 3) // 4), n_channels))
        self.register_buffer("ict_index", torch.zeros(n_channels, dtype=torch.long))
        self.register_buffer("rest", torch.zeros(N_FEATURES, r, c))
        self.register_buffer("scale", torch.ones(N_FEATURES))
        self.register_buffer("gain", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # minus the reading of the rest patch itself (features 0): a face at rest reads 0, not the training mean
        return self.net(x / self.scale[:, None, None]) - self.net(torch.zeros_like(x[:1]))


class MouthImageRegressor:
    """The shipped ``MouthImageNet`` with its patch features: patches -> calibrated ICT weights of ``channels``."""

    def __init__(self, net: MouthImageNet):
        self.net = net.eval()
        self.channels = tuple(arkit.ICT_NAMES[i] for i in net.ict_index.tolist())

    @classmethod
    def load(cls, model_dir: Path) -> Optional["MouthImageRegressor"]:
        """The regressor shipped in ``model_dir`` (None when the model has none)."""
        path = Path(model_dir) / FILE_NAME
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = MouthImageNet(len(state["ict_index"]))
        net.load_state_dict(state)
        return cls(net)

    def linear(self, patches: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(B, rows, cols, 3) patches, optional (3, rows, cols) rest features (default: the training identities'
        mean) -> (B, C) the network's readings (uncalibrated)."""
        f = torch.as_tensor(patch_features(patches))
        f = f - (self.net.rest if rest is None else torch.as_tensor(rest))
        with torch.no_grad():
            return self.net(f).numpy()

    def __call__(self, patches: np.ndarray, rest: Optional[np.ndarray] = None) -> np.ndarray:
        """(B, rows, cols, 3) patches -> (B, C) ICT weights of ``channels`` in [0, 1]."""
        gain = float(self.net.gain)
        return np.clip(gain * (self.linear(patches, rest) - DEAD_ZONE), 0.0, 1.0).astype(np.float32)


__all__ = ["FILE_NAME", "PATCH_SHAPE", "MouthImageNet", "MouthImageRegressor", "mouth_patch", "patch_features",
           "patch_grid", "patch_outside", "rest_patch_features"]
