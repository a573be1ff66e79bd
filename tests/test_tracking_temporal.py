"""Stage 2's temporal model (backend/tracking/temporal.py, issue 23): noise out, fast events kept, no lag."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from backend.evaluation.channel_metrics import best_lag, jitter
from backend.tracking.temporal import (TemporalSmoothing, _banded_system, second_difference_weights,
                                       smooth_rotations, smooth_tracks)

FPS = 25.0


def _blinks(T=120, shapes=((0.6, 1.0, 0.5), (0.5, 1.0, 1.0, 0.6, 0.2), (0.3, 0.7, 0.9, 1.0, 0.8, 0.4)),
            starts=(20, 55, 90)):
    """(T,) a channel at rest with blinks of 3, 5 and 6 frames."""
    y = np.zeros(T)
    for s, shape in zip(starts, shapes):
        y[s:s + len(shape)] = shape
    return y


def test_banded_system_is_identity_plus_weighted_second_difference_penalty():
    T = 9
    w = np.random.default_rng(0).random(T - 2)
    D = np.zeros((T - 2, T))
    for r in range(T - 2):
        D[r, r:r + 3] = (1.0, -2.0, 1.0)
    ab = _banded_system(w, T)
    dense = np.diag(ab[2]) + np.diag(ab[1, 1:], 1) + np.diag(ab[1, 1:], -1) + np.diag(ab[0, 2:], 2) \
        + np.diag(ab[0, 2:], -2)
    np.testing.assert_allclose(dense, np.eye(T) + D.T @ np.diag(w) @ D, atol=1e-12)


@pytest.mark.parametrize("noise", [0.01, 0.03, 0.06])
def test_noise_is_removed_and_blinks_keep_their_height_and_frames(noise):
    clean = _blinks()
    t = np.arange(len(clean)) / FPS
    y = clean + np.random.default_rng(1).normal(0.0, noise, len(clean))
    x = smooth_tracks(y[:, None], t, TemporalSmoothing())[:, 0]
    rest = np.r_[0:18, 35:53, 70:88, 105:120]
    assert jitter(x[rest, None, None]) < 0.25 * jitter(y[rest, None, None])          # the noise between events
    for s, n in ((20, 3), (55, 5), (90, 6)):
        peak = slice(s, s + n)
        assert x[peak].max() > 0.93 * y[peak].max()                                   # full height
        assert np.argmax(x[peak]) == np.argmax(clean[peak])                           # at its frame
    assert best_lag(clean, x) == 0
    # without the event mask the same smoothing blunts the 3-frame blink
    blunt = smooth_tracks(y[:, None], t, TemporalSmoothing(event_threshold=math.inf))[:, 0]
    assert blunt[20:23].max() < 0.8 * y[20:23].max()


def test_slow_motion_passes_and_gaps_are_coupled_less():
    t = np.arange(100) / FPS
    slow = np.sin(2 * np.pi * t / 2.0)[:, None]                                       # a 2 s period
    np.testing.assert_allclose(smooth_tracks(slow, t, TemporalSmoothing()), slow, atol=0.02)
    gapped = np.r_[t[:10], t[11:]]                                                    # one frame without a face
    g = second_difference_weights(gapped)
    assert g[7] == 1.0 and g[8] == pytest.approx(1 / 16) and g[9] == pytest.approx(1 / 16) and g[10] == 1.0


def test_rotations_near_pi_are_smoothed_across_the_axis_angle_branches():
    """A head facing the camera (rotation pi about x) turning slowly, with noise; every other frame's axis-angle
    on the other branch (the same rotation): the smoothed rotations follow the true turn, not the flips."""
    T = 40
    t = np.arange(T) / FPS
    rng = np.random.default_rng(2)
    truth = Rotation.from_euler("x", np.pi) * Rotation.from_euler("y", 0.3 * np.sin(t)[:, None])
    noisy = truth * Rotation.from_rotvec(rng.normal(0.0, 0.01, (T, 3)))
    omega = noisy.as_rotvec()
    theta = np.linalg.norm(omega, axis=1, keepdims=True)
    flipped = omega - 2 * np.pi * omega / theta                                       # same rotation, other branch
    omega[1::2] = flipped[1::2]
    assert np.linalg.norm(np.diff(omega, axis=0), axis=1).max() > 3.0                 # the parameters jump
    out = Rotation.from_rotvec(smooth_rotations(omega, t, TemporalSmoothing(event_threshold=math.inf)))
    err_in = (noisy.inv() * truth).magnitude()
    err_out = (out.inv() * truth).magnitude()
    assert err_out.mean() < 0.5 * err_in.mean()
