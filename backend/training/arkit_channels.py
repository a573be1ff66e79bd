"""Calibrate the per-channel ARKit output table (``backend.tracking.channel_table``) on the tuning clips.

    # 1. each source's per-frame readings of result packages of the expression clips (one .npz per clip)
    python -m backend.training.arkit_channels readings --cache /work/cache/expr23 --clips 0 1 ... \
        --preset draft --label s13g --out /work/cache/readings/tune_draft
    # 2. the table, chosen per channel by cross-validation over the tuning clips
    python -m backend.training.arkit_channels calibrate /work/cache/readings/tune_draft \
        --out backend/models/builtin/arkit_channels.json
    # another preset's own table: readings of its tracks (--preset standard --label ...), written to the file the
    # tracker reads for it (``channel_table.table_file``)
    python -m backend.training.arkit_channels calibrate /work/cache/readings/tune_standard \
        --out backend/models/builtin/arkit_channels_standard.json
    # what each source's plain reading gives per channel (which channels a reader carries at all)
    python -m backend.training.arkit_channels sources /work/cache/readings/tune_draft --channels jawOpen mouthClose
    # 3. a table's output beside all-zeros and the packages' own output (e.g. on the held-out clips, once)
    python -m backend.training.arkit_channels evaluate /work/cache/readings/held_draft \
        --table backend/models/builtin/arkit_channels.json
    # the tuning clips out of fold: each clip's output from the choices calibrate makes on the other clips
    python -m backend.training.arkit_channels evaluate /work/cache/readings/tune_draft --out-of-fold

A readings file holds ``truth`` (T, 52) (the clip's ICT weights through the ICT->ARKit map), ``package`` (T, 52) (the
package's own ARKit output, NaN rows where it has none) and one (T, 52) array per source, NaN where the source has no
reading: ``source_<name>``. A new reader is a new source: add its readings to the files (``readings`` writes the ones
``CodeSpace.arkit_readings`` returns) and calibrate again.

Calibration, per channel (a Left/Right pair together: the readers treat a face and its mirror image alike, and the
pair doubles the data): candidates are the blends of the channel's sources on a share grid (``SHARE_STEP``) with a
response (``DEAD_ZONES`` x ``GAINS``), and all-zeros. A candidate's loss is the mean of its mean absolute error over the
(clip, channel) pairs where the channel is active (true peak >= ``channel_metrics.ACTIVE_PEAK``) and over the others, so
a false reading on an idle channel costs as much as a missed one on an active channel; on the blink channels a candidate
may not find fewer blink events than a source's plain reading does, nor fewer than ``EVENT_FLOOR`` (90 %) of them. The choice among the readings
is cross-validated leaving one clip out: the channel ships the candidate chosen on all clips only when the choice's
out-of-fold loss beats all-zeros'; otherwise it ships 0.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from ..contracts import arkit
from ..evaluation.channel_metrics import ACTIVE_PEAK
from ..tracking.channel_table import MODEL_SOURCE, ChannelTable, blend, respond

SOURCE_PREFIX = "source_"
SHARE_STEP = 0.25
DEAD_ZONES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# up to 6: the mouth and jaw images' raw readings (``training.region_image``: gain 1, no dead zone) follow at
# 0.2-0.4 of the true height on the tuning clips (frown, dimple, stretch; backend/evaluation/README.md, session 14)
GAINS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# blink events (runs of true >= 0.5, found when the output reaches 0.5 within a frame: ``channel_metrics``) are a goal
# of their own, at least 90 % found. Most last one frame at a true 0.5-0.65, so the loss alone prefers a response
# that reads them just under 0.5 (the tuning clips: 24 of 30 out of fold, session 17); the blink channels' choice is
# the least loss among the candidates that find at least this share of the clips' events (or as many as any finds)
EVENT_FLOOR = 0.9


# ---- readings -------------------------------------------------------------------------------------------------------
def package_readings(package: Path, clip_dir: Path, model_dir: Path) -> dict:
    """{"truth", "package", "source_<name>"...} (T, 52) of one expression clip's result package: the readings the
    tracker's ``CodeSpace`` of this tree takes from the package's fits, the clip's MediaPipe points and frames."""
    import torch

    from ..contracts.result_format import TRACKER_STATE, load_npz
    from ..evaluation import baselines
    from ..evaluation.benchmark import package_arkit
    from ..evaluation.expression_benchmark import arkit_truth, clip_mediapipe_points
    from ..model import load_model
    from ..model.checkpoint import load_encoders
    from ..tracking.codes import CodeSpace
    from ..tracking.expression_init import LandmarkExpressionRegressor
    from ..tracking.region_image import load_regressors, region_patches

    truth = arkit_truth(np.load(clip_dir / "gt.npz")["w_ex"])
    T = len(truth)
    pts = clip_mediapipe_points(clip_dir, T)
    ok = np.isfinite(pts).all((1, 2))
    model = load_model(model_dir)
    enc, reg = load_encoders(model_dir)
    images = load_regressors(model_dir)
    codes = CodeSpace(model, enc, reg, LandmarkExpressionRegressor.load(model_dir), images)
    P = [p[:, :2].astype(np.float32) if k else None for p, k in zip(pts, ok)]
    D = [p[:, 2].astype(np.float32) if k else None for p, k in zip(pts, ok)]
    codes.set_landmark_rest([p for p in P if p is not None], [d for d in D if d is not None])
    patches = {}
    if images:
        frames = baselines.read_video_frames(clip_dir / "clip.mp4", max_frames=T)
        cut = [region_patches(f, p, [r.region for r in images.values()]) if k else None
               for f, p, k in zip(frames, pts, ok)]
        patches = {n: [c[n].astype(np.float16) if c is not None else None for c in cut] for n in images}
        codes.set_image_rest(lambda n: np.stack([p for p in patches[n] if p is not None]))
    state = load_npz(package / TRACKER_STATE)
    ids = state["frame_ids"]
    rows = ids[ids < T]
    p_ex = torch.as_tensor(state["p_ex"][ids < T], dtype=torch.float32)
    points, depths = [P[k] for k in rows], [D[k] for k in rows]
    readings = codes.arkit_readings(p_ex, codes.landmark_readings(points, depths),
                                    codes.image_readings({n: [p[k] for k in rows] for n, p in patches.items()}),
                                    codes.landmark_readings(points, depths, linear=True))
    out = {"truth": truth.astype(np.float32), "package": np.full((T, 52), np.nan, np.float32)}
    for i, w in package_arkit(package).items():
        if i < T:
            out["package"][i] = w
    for name, r in readings.items():
        full = np.full((T, 52), np.nan, np.float32)
        full[rows] = r
        out[SOURCE_PREFIX + name] = full
    return out


def load_readings(folder: Path) -> dict[str, dict]:
    """{clip: {"truth", "package", "sources": {name: (T, 52)}}} of a folder of readings files."""
    out = {}
    for f in sorted(Path(folder).glob("*.npz")):
        with np.load(f) as d:
            out[f.stem] = {"truth": d["truth"].astype(np.float64), "package": d["package"].astype(np.float64),
                           "sources": {k[len(SOURCE_PREFIX):]: d[k].astype(np.float64) for k in d.files
                                       if k.startswith(SOURCE_PREFIX)}}
    if not out:
        raise FileNotFoundError(f"no readings files (*.npz) in {folder}")
    return out


# ---- calibration ----------------------------------------------------------------------------------------------------
def share_grid(sources: list[str], step: float = SHARE_STEP) -> list[dict[str, float]]:
    """Every split of 1 among ``sources`` in steps of ``step`` (sources at share 0 left out)."""
    n = round(1 / step)
    out = []
    for parts in itertools.product(range(n + 1), repeat=len(sources)):
        if sum(parts) == n:
            out.append({s: k / n for s, k in zip(sources, parts) if k})
    return out


def candidates(sources: list[str]) -> list[dict]:
    """All-zeros first, then every (shares, dead zone, gain) on the grids (ties keep the earlier: the lower gain, the
    smaller dead zone)."""
    out = [{"shares": {}, "dead_zone": 0.0, "gain": 1.0}]
    for g, d, sh in itertools.product(GAINS, DEAD_ZONES, share_grid(sources)):
        out.append({"shares": sh, "dead_zone": d, "gain": g})
    return out


def mirror_units() -> list[tuple[int, ...]]:
    """The channels calibrated together: each Left/Right pair (the readers treat a face and its mirror image alike,
    and the pair doubles the data), every other channel alone."""
    units: dict[str, list[int]] = {}
    for c, n in enumerate(arkit.ARKIT_NAMES):
        stem = n[:-4] if n.endswith("Left") else n[:-5] if n.endswith("Right") else n
        units.setdefault(stem, []).append(c)
    return [tuple(v) for v in units.values()]


def channel_readings(clip: dict, ch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(T,) bool the frames of a clip (``load_readings``' entry) that were tracked (the ``model`` reading is there), and
    source -> (n,) channel ``ch``'s readings on them."""
    tracked = np.isfinite(clip["sources"][MODEL_SOURCE][:, ch])
    return tracked, {s: r[tracked, ch] for s, r in clip["sources"].items()}


def candidate_output(cand: dict, readings: dict[str, np.ndarray], tracked: np.ndarray, blends: dict | None = None
                     ) -> np.ndarray:
    """(T,) a candidate row's output of one channel: ``readings`` (source -> (n,) the channel's readings on the
    ``tracked`` frames), 0 on the other frames; ``blends`` caches the blend of each set of shares."""
    blends = {} if blends is None else blends
    key = tuple(sorted(cand["shares"].items()))
    if key not in blends:
        blends[key] = blend(readings, cand["shares"])
    y = np.zeros(len(tracked))
    y[tracked] = respond(blends[key], cand["dead_zone"], cand["gain"])
    return y


def clip_errors(clips: list[dict], channels: tuple[int, ...], cands: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(candidates, clips, channels) mean absolute error of each candidate's output of each channel on each clip, and
    the events it finds there (``channel_metrics.events_found``; 0 on channels other than the blinks)."""
    from ..evaluation.channel_metrics import events_found
    from ..evaluation.expression_benchmark import BLINK_CHANNELS

    err = np.zeros((len(cands), len(clips), len(channels)))
    found = np.zeros(err.shape, int)
    for k, c in enumerate(clips):
        for i, ch in enumerate(channels):
            truth = c["truth"][:, ch]
            tracked, readings = channel_readings(c, ch)
            blends = {}
            for j, cand in enumerate(cands):
                if not cand["shares"]:
                    err[j, k, i] = np.abs(truth).mean()
                    continue
                y = candidate_output(cand, readings, tracked, blends)
                err[j, k, i] = np.abs(y - truth).mean()
                if arkit.ARKIT_NAMES[ch] in BLINK_CHANNELS:
                    found[j, k, i] = events_found(truth, y)[0]
    return err, found


def balanced_loss(err: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(..., clips, channels) errors -> (...,) mean of the mean error over the active (clip, channel) pairs and over
    the idle ones (a side without pairs drops out)."""
    parts = [err[..., m].mean(-1) for m in (active, ~active) if m.any()]
    return np.mean(parts, axis=0)


def calibrate_unit(clips: list[dict], channels: tuple[int, ...]) -> dict:
    """The table row of channels calibrated together (``mirror_units``), with its cross-validation record under
    ``cv``."""
    return unit_choices(clips, channels)[2]


def unit_choices(clips: list[dict], channels: tuple[int, ...]) -> tuple[list[dict], np.ndarray, dict]:
    """(the candidates, (clips,) the index of the candidate each clip's output comes from out of fold (the one
    chosen on the other clips; 0, all-zeros, where the unit ships 0), the table row with its ``cv`` record)."""
    from ..evaluation.channel_metrics import event_runs
    from ..evaluation.expression_benchmark import BLINK_CHANNELS

    sources = sorted(s for s in set().union(*(c["sources"] for c in clips))
                     if any(np.isfinite(c["sources"][s][:, channels]).any() for c in clips if s in c["sources"]))
    cands = candidates(sources)
    err, found = clip_errors(clips, channels, cands)
    active = np.stack([c["truth"][:, channels].max(0) >= ACTIVE_PEAK for c in clips])
    # a response may not lose the blink events that a source's plain reading (no dead zone, gain 1) finds, nor find
    # fewer than ``EVENT_FLOOR`` of them (0 events on other channels: no constraint)
    plain = np.array([not c["shares"] or (c["dead_zone"] == 0 and c["gain"] == 1 and len(c["shares"]) == 1)
                      for c in cands])
    blinks = [ch for ch in channels if arkit.ARKIT_NAMES[ch] in BLINK_CHANNELS]
    events_total = np.array([sum(len(event_runs(c["truth"][:, ch])) for ch in blinks) for c in clips])

    def choose(rest):   # the best reading (not zeros: the alternative it must beat) on the clips ``rest``
        events = found[:, rest].sum((1, 2))
        floor = min(np.ceil(EVENT_FLOOR * events_total[rest].sum() - 1e-9), events[1:].max())
        loss = np.where(events >= max(events[plain].max(), floor), balanced_loss(err[:, rest], active[rest]), np.inf)
        return 1 + int(np.argmin(loss[1:]))

    # leave one clip out: tune the response on the others, score on it
    folds = np.array([choose(np.arange(len(clips)) != k) for k in range(len(clips))])
    oof = err[folds, np.arange(len(clips))]
    oof_events = int(found[folds, np.arange(len(clips))].sum())
    best = choose(np.ones(len(clips), bool))
    loss_oof, loss_zeros = float(balanced_loss(oof, active)), float(balanced_loss(err[0], active))
    ships = loss_oof < loss_zeros and not any(arkit.ARKIT_NAMES[c] in arkit.UNDRIVEN_ARKIT for c in channels)
    row = dict(cands[best]) if ships else dict(cands[0])   # gaze and tongue: no reading of them
    row["cv"] = {"active_pairs": int(active.sum()), "clips": len(clips), "loss_out_of_fold": round(loss_oof, 5),
                 "loss_zeros": round(loss_zeros, 5), "loss_in_fold": round(float(balanced_loss(err[best], active)), 5)}
    if events_total.any():   # the blink channels: events found by the choice in fold and out of fold, of all
        row["cv"].update(events=int(events_total.sum()), events_in_fold=int(found[best].sum()),
                         events_out_of_fold=oof_events)
    return cands, folds if ships else np.zeros_like(folds), row


def out_of_fold(readings: dict[str, dict]) -> dict[str, np.ndarray]:
    """{clip: (T, 52)} each clip's output from the choices made without it: per unit the candidate chosen on the
    other clips, 0 where ``calibrate`` ships the unit 0 (what each row's ``cv.loss_out_of_fold`` summarises)."""
    clips = list(readings.values())
    outs = {key: np.zeros_like(c["truth"], dtype=np.float64) for key, c in readings.items()}
    for unit in mirror_units():
        cands, folds, _ = unit_choices(clips, unit)
        for key, c, j in zip(readings, clips, folds):
            if not cands[j]["shares"]:
                continue
            for ch in unit:
                tracked, channel = channel_readings(c, ch)
                outs[key][:, ch] = candidate_output(cands[j], channel, tracked)
    return outs


def calibrate(readings: dict[str, dict]) -> ChannelTable:
    clips = list(readings.values())
    rows, cv = {}, {}
    for unit in mirror_units():
        row = calibrate_unit(clips, unit)
        record = row.pop("cv")
        for c in unit:
            rows[arkit.ARKIT_NAMES[c]] = row
            cv[arkit.ARKIT_NAMES[c]] = record
    notes = {"clips": sorted(readings), "objective": "mean of the MAE over active clips and over idle clips",
             "share_step": SHARE_STEP, "dead_zones": list(DEAD_ZONES), "gains": list(GAINS), "event_floor": EVENT_FLOOR,
             "cv": cv}
    return ChannelTable(rows, notes)


# ---- evaluation -----------------------------------------------------------------------------------------------------
def evaluate(readings: dict[str, dict], table: ChannelTable | None = None,
             outputs: dict[str, np.ndarray] | None = None) -> dict:
    """{method: channel_metrics.summarise(...) + all_channel_mae} for the table's output (or ``outputs``, {clip: (T,
    52)}, e.g. ``out_of_fold``'s, under the same name), the packages' own output and all-zeros, over the frames every
    package tracked."""
    from ..evaluation import expression_clips as ec
    from ..evaluation import channel_metrics as cm
    from ..evaluation.expression_benchmark import BLINK_CHANNELS

    pairs: dict[str, list] = {"table": [], "package": [], "zeros": []}
    per_clip: dict[str, dict] = {}
    for key, c in readings.items():
        rows = np.isfinite(c["package"]).all(1)
        truth = c["truth"][rows]
        mine = outputs[key][rows] if outputs is not None else table({s: r[rows] for s, r in c["sources"].items()})
        outs = {"table": mine.astype(np.float64),
                "package": c["package"][rows], "zeros": np.zeros_like(truth)}
        per_clip[key] = {}
        for m, y in outs.items():
            ps = cm.clip_pairs(key, arkit.ARKIT_NAMES, truth, y, BLINK_CHANNELS)
            pairs[m] += ps
            per_clip[key][m] = {"all_channel_mae": float(np.abs(y - truth).mean()),
                                **{k: v for k, v in cm.summarise(ps, ec.arkit_groups())["overall"].items()}}
    groups = ec.arkit_groups()
    out = {}
    for m, ps in pairs.items():
        s = cm.summarise(ps, groups)
        s["all_channel_mae"] = float(np.mean([per_clip[k][m]["all_channel_mae"] for k in per_clip]))
        # the same mean of groups with the pairs whose output is constant (a zeroed channel: no correlation) left
        # out instead of counted as 0 (a group without a defined pair drops out)
        by_group = [[p.correlation for p in ps if p.channel in names and np.isfinite(p.correlation)]
                    for names in groups.values()]
        means = [np.mean(g) for g in by_group if g]
        s["overall"]["correlation_defined_only"] = float(np.mean(means)) if means else float("nan")
        s["pairs"] = [p.__dict__ for p in ps]
        out[m] = s
    out["per_clip"] = per_clip
    return out


def source_report(readings: dict[str, dict], channels=None) -> dict[str, dict[str, dict]]:
    """{channel: {source: {"pairs", "correlation", "mae", "zeros_mae", "peak_ratio", "idle_mean"}}}: what each source's
    plain reading (no response) gives on each channel, over the frames it reads: over the active (clip, channel) pairs
    the mean correlation (a constant reading's counted as 0, as ``channel_metrics.summarise`` does), MAE beside
    all-zeros' and median peak ratio (``channel_metrics.pair_metrics``), and its mean reading on the idle pairs (a
    false reading there costs as much as a miss; ``calibrate``). Channels without an active pair are left out."""
    from ..evaluation.channel_metrics import pair_metrics

    names = arkit.ARKIT_NAMES if channels is None else channels
    sources = sorted(set().union(*(r["sources"] for r in readings.values())))
    out = {}
    for name in names:
        c = arkit.ARKIT_NAMES.index(name)
        rows = {}
        for source in sources:
            active, idle = [], []
            for key, r in readings.items():
                x = r["sources"].get(source)
                have = np.isfinite(x[:, c]) if x is not None else np.zeros(len(r["truth"]), bool)
                if not have.any():
                    continue
                truth, read = r["truth"][have, c], x[have, c]
                if truth.max() >= ACTIVE_PEAK:
                    active.append(pair_metrics(key, name, truth, read))
                else:
                    idle.append(read.mean())
            if active:
                rows[source] = {"pairs": len(active),
                                "correlation": float(np.mean(np.nan_to_num([p.correlation for p in active]))),
                                "mae": float(np.mean([p.mae for p in active])),
                                "zeros_mae": float(np.mean([p.zeros_mae for p in active])),
                                "peak_ratio": float(np.median([p.peak_ratio for p in active])),
                                "idle_mean": float(np.mean(idle)) if idle else float("nan")}
        if rows:
            out[name] = rows
    return out


def format_sources(report: dict[str, dict[str, dict]]) -> str:
    """Markdown of ``source_report``: a row per channel, a cell per source."""
    sources = sorted(set().union(*report.values()))
    lines = ["| channel | pairs | zeros MAE | " + " | ".join(f"{s}: corr / MAE / peak / idle" for s in sources) + " |",
             "|---|---|---|" + "---|" * len(sources)]
    for name, rows in report.items():
        first = next(iter(rows.values()))
        cells = [f"{r['correlation']:.2f} / {r['mae']:.3f} / {r['peak_ratio']:.2f} / {r['idle_mean']:.3f}"
                 if (r := rows.get(s)) else "–" for s in sources]
        lines.append(f"| {name} | {first['pairs']} | {first['zeros_mae']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(table: ChannelTable) -> str:
    """Markdown: per channel, what ships (sources and shares, or 0), the response and the cross-validation record."""
    cv = table.notes.get("cv", {})
    lines = ["| channel | ships | dead zone | gain | out-of-fold loss / zeros (active tuning pairs of its unit) |",
             "|---|---|---|---|---|"]
    for name, row in table.channels.items():
        ships = " + ".join(f"{s} {v:.2f}" for s, v in sorted(row["shares"].items())) or "**0**"
        rec = cv.get(name)
        rec = f"{rec['loss_out_of_fold']:.4f} / {rec['loss_zeros']:.4f} ({rec['active_pairs']})" if rec else "–"
        resp = (f"{row['dead_zone']:.2f}", f"{row['gain']:.1f}") if row["shares"] else ("–", "–")
        lines.append(f"| {name} | {ships} | {resp[0]} | {resp[1]} | {rec} |")
    return "\n".join(lines)


def format_evaluation(res: dict) -> str:
    """Markdown: per group and per clip, corr / MAE of the table's output, the packages' and all-zeros."""
    methods = ("package", "table")
    out = ["| group | pairs | zeros MAE | " + " | ".join(f"{m} corr / MAE" for m in methods) + " |",
           "|---|---|---|" + "---|" * len(methods)]
    for g, z in res["zeros"]["groups"].items():
        cells = [f"{res[m]['groups'][g]['correlation']:.2f} / {res[m]['groups'][g]['mae']:.3f}" for m in methods]
        out.append(f"| {g} | {z['pairs']} | {z['mae']:.3f} | " + " | ".join(cells) + " |")
    cells = [f"{res[m]['overall']['correlation']:.3f} / {res[m]['overall']['mae']:.4f}" for m in methods]
    out.append(f"| **mean of groups** | {res['zeros']['overall']['pairs']} | {res['zeros']['overall']['mae']:.4f} | "
               + " | ".join(cells) + " |")
    out += ["", "| clip | zeros MAE | " + " | ".join(f"{m} corr / MAE / all-channel MAE" for m in methods) + " |",
            "|---|---|" + "---|" * len(methods)]
    for key, pc in res["per_clip"].items():
        cells = [f"{pc[m]['correlation']:.2f} / {pc[m]['mae']:.3f} / {pc[m]['all_channel_mae']:.4f}" for m in methods]
        out.append(f"| {key} | {pc['zeros']['mae']:.3f} | " + " | ".join(cells) + " |")
    out += ["", "| output | mean corr (zeroed pairs as 0) | mean corr (defined pairs only) | MAE | zeros MAE | "
            "blink events | lag-0 share | peak ratio | all-channel MAE |", "|---|---|---|---|---|---|---|---|---|"]
    for m in ("package", "table", "zeros"):
        o = res[m]["overall"]
        out.append(f"| {m} | {o['correlation']:.3f} | {o['correlation_defined_only']:.3f} | {o['mae']:.4f} | "
                   f"{o['zeros_mae']:.4f} | {o['events_found']}/{o['events']} | {o['lag0']:.2f} | "
                   f"{o['peak_ratio']:.2f} | {res[m]['all_channel_mae']:.4f} |")
    out.append("")
    for m in methods:
        jaw = [f"{p['clip']} {p['peak_ratio']:.2f}" for p in res[m]["pairs"] if p["channel"] == "jawOpen"]
        out.append(f"jawOpen peak ratio ({m}): " + ", ".join(jaw))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("readings", help="per-source readings of expression clips' result packages")
    r.add_argument("--cache", type=Path, required=True, help="the expression clips' folder (expr_*)")
    r.add_argument("--heldout", action="store_true", help="the held-out seed range (default: tuning)")
    r.add_argument("--clips", type=int, nargs="+", required=True)
    r.add_argument("--preset", default="draft")
    r.add_argument("--label", required=True, help="packages track_<preset>_<label>")
    r.add_argument("--model", type=Path, default=None, help="model folder (default: the built-in model)")
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("calibrate", help="choose the table from a folder of readings")
    c.add_argument("readings", type=Path)
    c.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate", help="a table's output beside all-zeros and the packages' own output")
    e.add_argument("readings", type=Path)
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", type=Path)
    which.add_argument("--out-of-fold", action="store_true",
                       help="instead of a table: each clip's output from the calibration on the other clips")
    e.add_argument("--json", type=Path, default=None)
    o = sub.add_parser("sources", help="what each source's plain reading gives per channel (active and idle pairs)")
    o.add_argument("readings", type=Path)
    o.add_argument("--channels", nargs="+", default=None, help="ARKit channel names (default: all)")
    f = sub.add_parser("show", help="a table as markdown")
    f.add_argument("table", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "readings":
        from .. import BUILTIN_MODEL_DIR
        from ..evaluation import expression_clips as ec

        a.out.mkdir(parents=True, exist_ok=True)
        for i in a.clips:
            spec = ec.ExpressionClipSpec(index=i, seed_base=ec.HELDOUT_SEED_BASE if a.heldout else ec.TUNE_SEED_BASE)
            package = a.cache / spec.key / f"track_{a.preset}_{a.label}"
            arrays = package_readings(package, a.cache / spec.key, a.model or BUILTIN_MODEL_DIR)
            np.savez_compressed(a.out / f"{spec.key}.npz", **arrays)
            rows = np.isfinite(arrays["package"]).all(1)
            print(f"{spec.key}: {rows.sum()} frames, sources {[k for k in arrays if k.startswith(SOURCE_PREFIX)]}",
                  flush=True)
    elif a.cmd == "sources":
        print(format_sources(source_report(load_readings(a.readings), a.channels)))
    elif a.cmd == "show":
        print(format_table(ChannelTable.from_json(json.loads(a.table.read_text()))))
    elif a.cmd == "calibrate":
        table = calibrate(load_readings(a.readings))
        table.save(a.out)
        print(f"{a.out}: {52 - len(table.zeroed())} channels ship a reading, {len(table.zeroed())} ship 0")
    else:
        readings = load_readings(a.readings)
        if a.out_of_fold:
            res = evaluate(readings, outputs=out_of_fold(readings))
        else:
            res = evaluate(readings, ChannelTable.from_json(json.loads(a.table.read_text())))
        print(format_evaluation(res))
        if a.json:
            a.json.write_text(json.dumps(res, default=float, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
