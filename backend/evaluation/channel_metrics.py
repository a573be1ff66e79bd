"""Per-channel expression metrics (numpy only): does the tracked ARKit curve follow the true one over time?

A clip's channels are mostly 0 most of the time, so an all-channel mean error rewards predicting zeros. These metrics
are taken per (clip, channel) pair where the channel is *active* (true peak >= ``ACTIVE_PEAK``), beside the all-zeros
prediction:

- ``correlation``: Pearson correlation over time (NaN when either curve is constant: undefined, not 0);
- ``mae``: mean absolute error over the clip's frames;
- ``peak_ratio``: tracked peak / true peak (1 = full amplitude; catches a curve with the right shape but half height);
- ``lag``: the shift (frames) that maximises the cross-correlation of the mean-removed curves; positive = the
  tracked curve comes late;
- blink events: runs of true >= ``EVENT_LEVEL``, found when the tracked curve reaches ``EVENT_LEVEL`` within
  ``EVENT_TOLERANCE`` frames of the run.

``jitter``: mean |second difference| of 2-D point tracks (px / frame^2), for the mesh-vs-detector comparison on
real clips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVE_PEAK = 0.2      # a channel is active in a clip when its true peak reaches this
EVENT_LEVEL = 0.5      # blink events: true >= this; found when tracked >= this ...
EVENT_TOLERANCE = 1    # ... within this many frames of the event
MAX_LAG = 5            # cross-correlation search range (frames)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (T,) curves; NaN if either is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else float("nan")


def best_lag(truth: np.ndarray, tracked: np.ndarray, max_lag: int = MAX_LAG) -> int:
    """The shift k in [-max_lag, max_lag] maximising sum_t truth[t] tracked[t + k] of the mean-removed curves
    (k > 0: the tracked curve lags behind). Ties go to the smallest |k|; 0 for a constant tracked curve."""
    a = np.asarray(truth, np.float64) - np.mean(truth)
    b = np.asarray(tracked, np.float64) - np.mean(tracked)
    T = len(a)
    lags = np.arange(-max_lag, max_lag + 1)
    # zero-padded cross-correlation, one shift per row (T <= a few hundred frames)
    pad = np.concatenate([np.zeros(max_lag), b, np.zeros(max_lag)])
    idx = np.arange(T)[None] + max_lag + lags[:, None]
    cc = (a[None] * pad[idx]).sum(1)
    best = np.flatnonzero(cc >= cc.max() - 1e-12)
    return int(lags[best[np.argmin(np.abs(lags[best]))]])


def event_runs(truth: np.ndarray, level: float = EVENT_LEVEL) -> list[tuple[int, int]]:
    """(start, end) inclusive frame ranges where truth >= level."""
    on = np.concatenate([[False], np.asarray(truth) >= level, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def events_found(truth: np.ndarray, tracked: np.ndarray, level: float = EVENT_LEVEL,
                 tolerance: int = EVENT_TOLERANCE) -> tuple[int, int]:
    """(found, total) events of ``truth`` (runs >= level) that ``tracked`` reaches within ``tolerance`` frames."""
    runs = event_runs(truth, level)
    hit = np.asarray(tracked) >= level
    found = sum(bool(hit[max(0, s - tolerance): e + tolerance + 1].any()) for s, e in runs)
    return found, len(runs)


@dataclass
class PairMetrics:
    """Metrics of one active (clip, channel) pair."""

    clip: str
    channel: str
    true_peak: float
    correlation: float
    mae: float
    zeros_mae: float
    peak_ratio: float
    lag: int
    events: int = 0
    events_found: int = 0


def pair_metrics(clip: str, channel: str, truth: np.ndarray, tracked: np.ndarray,
                 count_events: bool = False) -> PairMetrics:
    """Metrics of one channel's curves truth/tracked (T,); events only when ``count_events`` (blink channels)."""
    truth = np.asarray(truth, np.float64)
    tracked = np.asarray(tracked, np.float64)
    peak = float(truth.max())
    found, total = events_found(truth, tracked) if count_events else (0, 0)
    return PairMetrics(clip, channel, peak, pearson(truth, tracked), float(np.abs(tracked - truth).mean()),
                       float(np.abs(truth).mean()), float(tracked.max() / peak) if peak > 0 else float("nan"),
                       best_lag(truth, tracked), total, found)


def clip_pairs(clip: str, names, truth: np.ndarray, tracked: np.ndarray, event_channels=(),
               active_peak: float = ACTIVE_PEAK) -> list[PairMetrics]:
    """PairMetrics of every active channel of a clip. truth/tracked (T, C) over channel ``names`` (C,)."""
    truth = np.asarray(truth, np.float64)
    tracked = np.asarray(tracked, np.float64)
    active = np.flatnonzero(truth.max(0) >= active_peak)
    return [pair_metrics(clip, names[c], truth[:, c], tracked[:, c], names[c] in event_channels) for c in active]


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def summarise(pairs: list[PairMetrics], groups: dict[str, tuple[str, ...]]) -> dict:
    """Aggregate pair metrics per channel, per group (mean over its active pairs) and overall.

    Returns {"channels": {name: row}, "groups": {group: row}, "overall": row, "worst_group": (name, row)} where a row
    holds pairs, correlation, mae, zeros_mae, peak_ratio, abs_lag, lag0 (share of pairs with lag 0), events,
    events_found, event_recall (NaN without events). ``overall`` averages the groups (each group counts once, so a
    group with many channels cannot hide one that fails); the worst group is the one with the lowest correlation.
    A pair whose tracked curve is constant (correlation undefined) counts as correlation 0 here.
    """
    def row(ps: list[PairMetrics]) -> dict:
        ev = sum(p.events for p in ps)
        fd = sum(p.events_found for p in ps)
        # a constant tracked curve (e.g. all zeros) has no correlation: it counts as 0, not as missing
        return {"pairs": len(ps), "correlation": _nanmean([np.nan_to_num(p.correlation) for p in ps]),
                "mae": _nanmean([p.mae for p in ps]), "zeros_mae": _nanmean([p.zeros_mae for p in ps]),
                "peak_ratio": _nanmean([p.peak_ratio for p in ps]),
                "abs_lag": _nanmean([abs(p.lag) for p in ps]),
                "lag0": _nanmean([p.lag == 0 for p in ps]),
                "events": ev, "events_found": fd, "event_recall": fd / ev if ev else float("nan")}

    by_channel: dict[str, list[PairMetrics]] = {}
    for p in pairs:
        by_channel.setdefault(p.channel, []).append(p)
    channels = {c: row(ps) for c, ps in by_channel.items()}
    group_rows = {}
    for g, names in groups.items():
        ps = [p for n in names for p in by_channel.get(n, [])]
        if ps:
            group_rows[g] = row(ps)
    keys = ("correlation", "mae", "zeros_mae", "peak_ratio", "abs_lag", "lag0")
    overall = {k: _nanmean([r[k] for r in group_rows.values()]) for k in keys}
    ev = sum(r["events"] for r in group_rows.values())
    fd = sum(r["events_found"] for r in group_rows.values())
    overall.update(pairs=len(pairs), events=ev, events_found=fd, event_recall=fd / ev if ev else float("nan"))
    worst = min(group_rows.items(), key=lambda kv: kv[1]["correlation"]) if group_rows else None
    return {"channels": channels, "groups": group_rows, "overall": overall, "worst_group": worst}


def jitter(tracks: np.ndarray) -> float:
    """Mean |second difference| of point tracks (T, N, 2) in px / frame^2 (NaN frames skipped)."""
    x = np.asarray(tracks, np.float64)
    if len(x) < 3:
        return float("nan")
    d2 = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1)
    return _nanmean(d2)


__all__ = ["ACTIVE_PEAK", "EVENT_LEVEL", "EVENT_TOLERANCE", "PairMetrics", "pearson", "best_lag", "event_runs",
           "events_found", "pair_metrics", "clip_pairs", "summarise", "jitter"]
