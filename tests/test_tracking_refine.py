"""Stage 2 (joint refinement) on a long still clip: it smooths the per-frame fits without moving frames away from
their landmarks, whatever their position in the clip."""
import dataclasses

import numpy as np
import torch

from test_tracking_devices import tracker  # noqa: F401  (fixture)
from test_tracking_pipeline import tiny_model  # noqa: F401  (fixture)


def test_refinement_keeps_late_frames_on_their_landmarks(tracker):  # noqa: F811
    """40 frames of a still head whose stage-1 poses jitter by about a millimetre, refined in batches of 4.

    Each batch's step must move that batch only: with one optimised tensor for the whole clip, Adam's stale first
    moment moved every frame at every later batch's step as well, so frames drifted off their landmarks the more
    batches came after their own (cap12_edit 0:250: 2.1 px after stage 1, 5.8 px after stage 2 at the end).
    """
    from backend.tracking.tracker import FrameObs, FrameState
    tr, obs, truth = tracker
    tr.preset = dataclasses.replace(tr.preset, stage2_epochs=3, stage2_batch=4)
    T = 40
    frames = [FrameObs(i, i / 25, obs.landmarks, None, None, obs.face_size) for i in range(T)]
    rng = np.random.default_rng(0)
    jitter_t = tr.tensor(rng.normal(0, 0.001, (T, 3)))     # metres
    jitter_r = tr.tensor(rng.normal(0, 0.004, (T, 3)))     # radians
    stage1 = [FrameState(truth.p_ex.clone(), truth.omega + jitter_r[i], truth.trans + jitter_t[i]) for i in range(T)]
    refined = tr.refine_all(frames, stage1)

    def errors(states):
        """(T,) mean landmark error, px"""
        with torch.no_grad():
            lms = tr.tensor(obs.landmarks[tr.lm_idx])[None]
            res = tr.posed_landmarks(tr.z_geo(), torch.stack([s.p_ex for s in states]))
            uv = tr.project(res.points, torch.stack([s.omega for s in states]), torch.stack([s.trans for s in states]))
        return (uv - lms).norm(dim=-1).mean(-1).numpy()

    before, after = errors(stage1), errors(refined)
    for part in np.array_split(np.arange(T), 4):   # early to late quarters of the clip
        assert after[part].mean() < before[part].mean(), (before[part].mean(), after[part].mean())
    jerk = [float(np.abs(np.diff(torch.stack([s.trans for s in st]).numpy(), 2, axis=0)).mean())
            for st in (stage1, refined)]
    assert jerk[1] < 0.7 * jerk[0], jerk


def test_landmark_read_channels_go_through_the_temporal_model(tracker):  # noqa: F811
    """The channels read from the landmarks (blinks, brows) are smoothed like the others: the regressor's
    frame-to-frame flicker on a still face goes, a 3-frame blink keeps its height at its frame (lag 0)."""
    from backend.tracking.tracker import FrameObs
    tr, obs, truth = tracker
    T, blink_frame = 40, 20
    frames = [FrameObs(i, i / 25, obs.landmarks, None, None, obs.face_size) for i in range(T)]
    n_ex = truth.p_ex.shape[0]
    read = torch.zeros(n_ex, dtype=torch.bool)
    read[0] = True
    tr.codes.landmark_channels = read
    rng = np.random.default_rng(0)
    flicker = 0.2 + 0.02 * rng.standard_normal(T)           # a brow held at 0.2, read with noise
    blink = np.zeros(T)
    blink[blink_frame - 1: blink_frame + 2] = (0.5, 1.0, 0.5)
    p_ex = torch.zeros(T, n_ex)
    p_ex[:, 0] = tr.tensor(np.clip(flicker + blink, 0, 1))
    states = tr.smooth_states(frames, p_ex, truth.omega.repeat(T, 1), truth.trans.repeat(T, 1))
    out = torch.stack([s.p_ex for s in states])[:, 0].numpy()
    quiet = np.r_[0:blink_frame - 3, blink_frame + 4:T]
    assert np.abs(np.diff(out[quiet], 2)).mean() < 0.5 * np.abs(np.diff(p_ex[quiet, 0].numpy(), 2)).mean()
    assert int(np.argmax(out)) == blink_frame and out[blink_frame] > 0.93 * p_ex[blink_frame, 0].item()
