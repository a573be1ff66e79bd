"""Stage 2's temporal model: zero-lag, event-preserving smoothing of the per-frame fits (issue 23).

The per-frame fits carry noise that the landmarks do not: each frame's optimiser, and stage 2's landmark refinement,
stop after a few Adam steps whose size is set by the learning rate, not by the residual (cap12_edit 0:125, draft:
the projected mesh points jitter 0.87 px/frame^2 against 0.36 for MediaPipe's points; the translation alone, with
expression and rotation held, 0.71). Stage 2 therefore ends by smoothing every parameter track with an
event-preserving Whittaker smoother (penalised least squares on the second difference):

    min_x  sum_t (x_t - y_t)^2 + strength * sum_t g_t w_t (x_{t-1} - 2 x_t + x_{t+1})^2

solved exactly (banded, O(T) per track). The penalty switches off (w_t = 0) within a frame of every innovation far
above the noise: a measured second difference above ``event_threshold`` times its noise level (from the track's own
median absolute second difference), so a blink's 3-6 frames, a jaw drop or a quick turn pass through at full
height (``event_mask``); elsewhere w_t = 1. Reweighting from the smoothed estimate instead (robust IRLS) feeds on
itself: a smeared event has smaller second differences, so it is smeared further (a noisy 5-frame blink came out at
0.57 of its height). The smoother is symmetric in time: no lag.
``g_t`` couples frames further apart than the clip's frame interval less (frames without a face).

Rotations are smoothed in the tangent space of the clip's mean rotation (``smooth_rotations``): the axis-angle
parameters of a head facing the camera sit at an angle near pi, where the same rotation has two far-apart
parameter vectors (a synthetic head at zero pitch flips between them from frame to frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 1.4826 x the median absolute deviation estimates a Gaussian's sigma; white noise's second difference has sqrt(6)
# times the noise's sigma
_MAD_TO_SIGMA = 1.4826
_SECOND_DIFFERENCE_GAIN = np.sqrt(6.0)


@dataclass(frozen=True)
class TemporalSmoothing:
    """Settings of ``smooth_tracks`` (``Preset.smooth_pose``, ``Preset.smooth_expression``)."""

    # weight of the squared second difference (frames): motion at a period of 8 frames keeps half its height at 3,
    # 11 frames at 10, 15 frames at 30; slower motion passes nearly whole
    strength: float = 10.0
    # measured second differences above this many noise levels switch the penalty off (inf: never)
    event_threshold: float = 3.0


def second_difference_weights(times: np.ndarray) -> np.ndarray:
    """(T - 2,) coupling g of each frame triple: 1 for frames at the clip's usual interval (the median gap),
    (interval / widest gap)^4 across wider gaps (frames without a face): a second difference grows with the gap
    squared for the same motion."""
    gaps = np.diff(np.asarray(times, np.float64))
    widest = np.maximum(gaps[1:], gaps[:-1])
    return np.minimum((np.median(gaps) / np.maximum(widest, 1e-9)) ** 4, 1.0)


def noise_level(values: np.ndarray, floor: np.ndarray | float = 0.0) -> np.ndarray:
    """(D,) the noise sigma of each track (T, D): its median absolute second difference / (0.6745 sqrt 6), at least
    ``floor`` (a track at rest, e.g. an expression weight held at 0, has none of its own)."""
    d2 = np.diff(np.asarray(values, np.float64), n=2, axis=0)
    return np.maximum(_MAD_TO_SIGMA * np.median(np.abs(d2), axis=0) / _SECOND_DIFFERENCE_GAIN, floor)


def _banded_system(weights: np.ndarray, T: int) -> np.ndarray:
    """(3, T) upper banded form (``scipy.linalg.solveh_banded``) of I + D^T diag(weights) D, D the (T - 2, T)
    second-difference operator."""
    w = np.pad(weights, 2)   # w[r + 2] = weight of row r (rows r..r+2 of x)
    ab = np.zeros((3, T))
    ab[2] = 1.0 + w[:-2] + 4.0 * w[1:-1] + w[2:]
    ab[1, 1:] = -2.0 * (w[1:-2] + w[2:-1])
    ab[0, 2:] = weights
    return ab


def event_mask(values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """(T - 2, D) True on the frame triples of an event: within one frame of a second difference of ``values``
    (T, D) above ``threshold`` (D,)."""
    big = np.abs(np.diff(np.asarray(values, np.float64), n=2, axis=0)) > threshold
    out = big.copy()
    out[1:] |= big[:-1]
    out[:-1] |= big[1:]
    return out


def smooth_tracks(values: np.ndarray, times: np.ndarray, settings: TemporalSmoothing,
                  floor: np.ndarray | float = 0.0) -> np.ndarray:
    """values (T, D) -> (T, D) smoothed (module docstring), each column on its own noise level (``noise_level``
    with ``floor``); times (T,) s, increasing."""
    from scipy.linalg import solveh_banded

    y = np.asarray(values, np.float64)
    T, D = y.shape
    if T < 3 or D == 0 or settings.strength <= 0:
        return y.copy()
    coupling = settings.strength * second_difference_weights(times)
    if np.isfinite(settings.event_threshold):
        events = event_mask(y, settings.event_threshold * _SECOND_DIFFERENCE_GAIN * noise_level(y, floor))
    else:
        events = np.zeros((T - 2, D), bool)
    weights = np.where(events, 0.0, coupling[:, None])
    return np.stack([solveh_banded(_banded_system(weights[:, d], T), y[:, d]) for d in range(D)], 1)


def smooth_rotations(omega: np.ndarray, times: np.ndarray, settings: TemporalSmoothing,
                     floor: float = 0.0) -> np.ndarray:
    """Axis-angle rotations (T, 3) smoothed as ``smooth_tracks`` in the tangent space of their mean rotation
    (module docstring) -> (T, 3) axis-angle, each rotation's smoothed value (not necessarily its input's branch)."""
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(np.asarray(omega, np.float64))
    mean = R.mean()
    tangent = (mean.inv() * R).as_rotvec()
    return (mean * Rotation.from_rotvec(smooth_tracks(tangent, times, settings, floor))).as_rotvec()
