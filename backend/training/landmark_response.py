"""How far MediaPipe's points follow each ICT expression channel: the limit of any reading from the points.

    python -m backend.training.landmark_response --cache /work/cache/expr23/train [--identities 625] \
        [--clips-cache /work/cache/expr23 --clips 0 1 ... 28]   # d' on the tuning clips (the renders' responses)

Why: the landmark regressor (``tracking.expression_init``) reads some channels at ~0 (jaw side and forward, lips
pressed, squint). That is either the map's fault (its ridge, dead zone, gain, the rest subtraction) or the points'
(the detector does not move them). This measures the points alone, with no map: on rendered ICT heads (the
regressor's own training renders, raw and through H.264) and optionally on expression clips, each frame's features
(``landmark_features`` minus its identity's or clip's rest, as the regressor reads them) are fitted by least squares
as a sum of per-channel responses to the true ICT weights (every channel at once, so channels drawn together are
told apart). Per channel:

- ``gain``: the response projected on the ICT mesh's own displacement of those points (``ict_point_deltas``): the
  share of the true motion the detector's points make (1: they follow the mesh);
- ``cos``: the angle between the two (how alike the motions are);
- ``d_prime``: the response's length over the spread of what the weights leave unexplained (identity, pose, the
  detector's noise), along the response: how many noise widths a weight of 1 moves the points, for the best linear
  reading of this channel that knows its direction. A weight of 0.5 at d' 1.5 is within the noise of a face at rest.

Training code: needs the ICT-FaceKit model (``ict_point_deltas``); inference never imports it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..contracts import arkit

# inverse-distance weights over this many mesh vertices nearest each MediaPipe point on the ICT mean head
NEAREST_VERTICES = 4


def ict_point_deltas(ict) -> np.ndarray:
    """(53, 1404) each ICT expression channel's displacement of MediaPipe's 468 points on the ICT mean head, in the
    regressor's feature units (MediaPipe's axes: x right, y down, depth away; eye-corner distances), as
    ``landmark_features`` of the posed mean head would change. ``ict``: ``training.data.ICTModel``."""
    from scipy.spatial import cKDTree

    from ..contracts.landmark_tables import mediapipe_ict_positions
    from ..tracking.expression_init import N_POINTS, template

    dist, nearest = cKDTree(ict.neutral).query(mediapipe_ict_positions()[:N_POINTS], k=NEAREST_VERTICES)
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(1, keepdims=True)
    deltas = np.einsum("pk,epkc->epc", w, ict.ex_basis[:, nearest]) * np.array([1.0, -1.0, -1.0])
    tpl = template()
    return (deltas / np.linalg.norm(tpl[263] - tpl[33])).reshape(len(deltas), -1)


def channel_response(features: np.ndarray, weights: np.ndarray, deltas: np.ndarray,
                     response: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-channel response of the points (see the module docstring).

    ``features`` (N, F) rest-relative features, ``weights`` (N, C) the true ICT weights, ``deltas`` (C, F) the mesh's
    displacement per unit weight. Channels never drawn (all weights 0, e.g. gaze) get NaN. ``response`` (C, F),
    optional: another set's responses (``"response"`` of its result) to score on these frames instead of their own,
    for a few clips whose channels are drawn together (L and R at once) and so cannot be told apart; the spread along
    it is still what these frames' own least-squares fit leaves (a unique residual however collinear the weights).
    Returns (C,) arrays ``mesh_norm`` |delta|, ``response_norm`` |response|, ``gain``, ``cos``, ``d_prime``, and
    ``response`` (C, F)."""
    X = np.asarray(features, np.float64)
    Y = np.asarray(weights, np.float64)
    D = np.asarray(deltas, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or D.shape != (Y.shape[1], X.shape[1]):
        raise ValueError(f"shapes: features (N, F), weights (N, C), deltas (C, F); got {X.shape}, {Y.shape}, "
                         f"{D.shape}")
    drawn = np.flatnonzero(np.abs(Y).max(0) > 0)
    G = np.c_[Y[:, drawn], np.ones(len(Y))]
    coef = np.linalg.lstsq(G, X, rcond=None)[0]
    resid = X - G @ coef
    full = np.full(D.shape, np.nan)
    full[drawn] = coef[:-1]
    if response is not None:
        full = np.asarray(response, np.float64)
        drawn = drawn[np.isfinite(full[drawn]).all(1)]
    out = {k: np.full(Y.shape[1], np.nan) for k in ("mesh_norm", "response_norm", "gain", "cos", "d_prime")}
    out["mesh_norm"] = np.linalg.norm(D, axis=1)
    out["response"] = full
    for c in drawn:
        r, d = full[c], D[c]
        n = np.linalg.norm(r)
        out["response_norm"][c] = n
        out["gain"][c] = r @ d / max(d @ d, 1e-12)
        out["cos"][c] = r @ d / max(n * np.linalg.norm(d), 1e-12)
        out["d_prime"][c] = n / max((resid @ (r / max(n, 1e-12))).std(), 1e-12)
    return out


def rest_relative(points: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, >=468, 3) MediaPipe points (no NaN) of frames grouped by identity or clip (``groups`` (N,)) -> (N, 1404)
    their features minus their group's rest (``rest_features``: the median), as the regressor reads them."""
    from ..tracking.expression_init import landmark_features

    X = landmark_features(points).astype(np.float64)
    for g in np.unique(groups):
        X[groups == g] -= np.median(X[groups == g], 0)
    return X


def training_frames(cache: Path, n_ids: int, frames_per_id: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Rest-relative features (N, 1404) and ICT weights (N, 53) of the cached training renders, raw and through
    H.264 (``expression_init.generate``'s patch chunks; both kinds must be cached: nothing is rendered here)."""
    from .expression_init import CHUNK

    feats, weights = [], []
    for kind in ("_patches", "_patches_video"):
        for first in range(0, n_ids, CHUNK):
            path = Path(cache) / f"chunk_{first:05d}_{frames_per_id}{kind}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is not cached (render it with training.expression_init / "
                                        "training.region_image first)")
            with np.load(path, allow_pickle=False) as d:
                pts, w, ids = d["points"], d["weights"], d["identity"]
            ok = np.isfinite(pts).all((1, 2))
            feats.append(rest_relative(pts[ok], ids[ok]))
            weights.append(w[ok])
    return np.concatenate(feats), np.concatenate(weights).astype(np.float64)


def clip_frames(cache: Path, clips: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rest-relative features (N, 1404) and true ICT weights (N, 53) of tuning expression clips (MediaPipe in video
    mode, as the tracker runs it: the clip's cached ``mp_video.npz`` or detected now)."""
    from ..evaluation import expression_clips as ec
    from ..evaluation.expression_benchmark import clip_mediapipe_points

    feats, weights = [], []
    for k in clips:
        folder = Path(cache) / ec.ExpressionClipSpec(index=k, seed_base=ec.TUNE_SEED_BASE).key
        w = np.load(folder / "gt.npz")["w_ex"]
        pts = clip_mediapipe_points(folder, len(w))
        ok = np.isfinite(pts).all((1, 2))
        feats.append(rest_relative(pts[ok], np.zeros(int(ok.sum()))))
        weights.append(w[ok])
    return np.concatenate(feats), np.concatenate(weights).astype(np.float64)


def format_response(responses: dict[str, dict[str, np.ndarray]]) -> str:
    """Markdown table: one row per drawn ICT channel (weakest d' of the first set first), one column group per set."""
    sets = list(responses)
    first = responses[sets[0]]
    order = [c for c in np.argsort(first["d_prime"]) if np.isfinite(first["d_prime"][c])]
    head = "| channel | mesh |delta| | " + " | ".join(f"{s}: gain / cos / d'" for s in sets) + " |"
    lines = [head, "|" + "---|" * (2 + len(sets))]
    for c in order:
        cells = [f"{r['gain'][c]:.2f} / {r['cos'][c]:.2f} / {r['d_prime'][c]:.1f}" for r in responses.values()]
        lines.append(f"| {arkit.ICT_NAMES[c]} | {first['mesh_norm'][c]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True, help="the regressor's cached training renders")
    ap.add_argument("--identities", type=int, default=625)
    ap.add_argument("--clips-cache", type=Path, default=None, help="expression clips' folder (expr_*), optional")
    ap.add_argument("--clips", type=int, nargs="+", default=[])
    a = ap.parse_args(argv)
    from .data import ICTModel

    deltas = ict_point_deltas(ICTModel())
    try:
        responses = {"training renders": channel_response(*training_frames(a.cache, a.identities), deltas)}
        if a.clips_cache is not None and a.clips:   # the renders' responses, against the clips' own spread
            responses["clips"] = channel_response(*clip_frames(a.clips_cache, a.clips), deltas,
                                                  responses["training renders"]["response"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_response(responses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
