"""Per-channel expression metrics on known curves, and the expression clips' recipe (issue 23)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.contracts import arkit
from backend.evaluation import channel_metrics as cm


def bump(T, centre, half):
    x = np.clip((np.arange(T) - centre) / half, -1, 1)
    return 0.5 * (1 + np.cos(np.pi * x))


def test_pearson_mae_peak_ratio_on_a_scaled_curve():
    truth = 0.8 * bump(60, 30, 6)
    p = cm.pair_metrics("c", "jawOpen", truth, 0.5 * truth)
    assert p.correlation == pytest.approx(1.0)
    assert p.peak_ratio == pytest.approx(0.5)
    assert p.mae == pytest.approx(0.5 * truth.mean())
    assert p.zeros_mae == pytest.approx(truth.mean())
    assert p.lag == 0
    assert cm.pair_metrics("c", "jawOpen", truth, 0.8 - truth).correlation == pytest.approx(-1.0)
    assert np.isnan(cm.pair_metrics("c", "jawOpen", truth, np.zeros(60)).correlation)  # constant: undefined


@pytest.mark.parametrize("shift", [-3, -1, 0, 2, 4])
def test_lag_is_the_shift_of_the_tracked_curve(shift):
    truth = bump(60, 30, 5)
    assert cm.best_lag(truth, bump(60, 30 + shift, 5)) == shift


def test_blink_events_found_within_one_frame():
    truth = np.zeros(40)
    truth[[10, 11]] = [0.7, 0.9]          # event 1: frames 10-11
    truth[30] = 0.6                       # event 2: frame 30
    truth[20] = 0.4                       # below the event level: not an event
    assert cm.event_runs(truth) == [(10, 11), (30, 30)]
    tracked = np.zeros(40)
    tracked[12] = 0.55                    # one frame late: found
    tracked[33] = 0.9                     # three frames late: missed
    assert cm.events_found(truth, tracked) == (1, 2)
    tracked[29] = 0.5                     # one frame early, at the level: found
    assert cm.events_found(truth, tracked) == (2, 2)


def test_clip_pairs_keep_active_channels_and_summaries_average_groups():
    T = 50
    names = ("eyeBlinkLeft", "eyeBlinkRight", "jawOpen", "mouthSmileLeft")
    truth = np.zeros((T, 4))
    truth[:, 0] = bump(T, 20, 2)
    truth[:, 1] = 0.1 * bump(T, 20, 2)     # inactive (peak < 0.2)
    truth[:, 2] = 0.6 * bump(T, 30, 8)
    tracked = np.zeros((T, 4))
    tracked[:, 2] = truth[:, 2]            # jaw perfect, blink missed
    pairs = cm.clip_pairs("c", names, truth, tracked, event_channels=("eyeBlinkLeft",))
    assert [p.channel for p in pairs] == ["eyeBlinkLeft", "jawOpen"]
    s = cm.summarise(pairs, {"blink": ("eyeBlinkLeft", "eyeBlinkRight"), "jaw": ("jawOpen",),
                             "smile": ("mouthSmileLeft",)})
    assert set(s["groups"]) == {"blink", "jaw"}                 # groups without active pairs are left out
    assert s["groups"]["jaw"]["correlation"] == pytest.approx(1.0)
    assert s["groups"]["jaw"]["mae"] == pytest.approx(0.0)
    assert s["groups"]["blink"]["event_recall"] == 0.0
    assert s["overall"]["events"] == 1 and s["overall"]["events_found"] == 0
    assert s["overall"]["mae"] == pytest.approx(0.5 * truth[:, 0].mean())  # mean of the two groups
    assert s["groups"]["blink"]["correlation"] == 0.0           # a constant tracked curve counts as 0
    assert s["worst_group"][0] == "blink"


def test_jitter_is_zero_for_constant_velocity_and_measures_second_differences():
    t = np.arange(10, dtype=float)
    line = np.stack([3 * t, -t], -1)[:, None]                   # (T, 1, 2) constant velocity
    assert cm.jitter(line) == pytest.approx(0.0)
    shaky = line.copy()
    shaky[5, 0, 0] += 1.0                                       # one 1-px outlier: |d2| = 1, 2, 1 around it
    assert cm.jitter(shaky) == pytest.approx(4.0 / 8)


def test_expression_clip_recipe_covers_every_group():
    ec = pytest.importorskip("backend.evaluation.expression_clips")
    seen = [g for i in range(ec.GROUP_CLIPS) for g in ec.ExpressionClipSpec(index=i).groups()]
    assert all(seen.count(g) == 3 for g in ec.GROUP_NAMES)
    quick = {g for i in range(ec.QUICK_CLIPS) for g in ec.ExpressionClipSpec(index=i).groups()}
    assert quick == set(ec.GROUP_NAMES)
    groups = ec.arkit_groups()
    assert groups["brow_inner_up"] == ("browInnerUp",) and set(groups["blink"]) == {"eyeBlinkLeft", "eyeBlinkRight"}
    assert {c for g in groups.values() for c in g} == set(arkit.ARKIT_NAMES) - set(arkit.GAZE_ARKIT) - {"tongueOut"}
    rng = np.random.default_rng(0)
    spec = ec.ExpressionClipSpec(index=0)                       # blink, squint, wide
    w = ec.expression_track(spec, rng)
    assert w.shape == (60, 53) and w.min() >= 0 and w.max() <= 1
    blink = w[:, [arkit.ICT_NAMES.index("eyeBlink_L"), arkit.ICT_NAMES.index("eyeBlink_R")]].max(1)
    assert 0.3 <= blink.max() and 2 <= (blink > 0).sum() <= 12  # one or two blinks of 3-6 frames
