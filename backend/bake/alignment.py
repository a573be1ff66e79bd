"""How well the posed mesh matches the image at the moving facial features, frame by frame: the bake's alignment
weights.

The tracked mesh's brows, lids and lips follow the face only as far as the model's expressions reach (a raised brow,
pressed or rolled lips: the mesh barely moves), so a bake that averages every frame smears them over the mesh. The
detector's points on those features say where they are in each frame. Each point is tied to the mesh vertex that
lies under it in the most frames (``landmark_vertices``); in a frame where the point is far from its vertex's
projection, the mesh and the image disagree there, and the observations of the vertices around it weigh less
(``feature_weights``). Each feature's colour then comes from the frames where the mesh and the image agree on it.
Arrays are (T, …) for T frames, V mesh vertices and L feature points.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..contracts import landmark_tables as L


def feature_landmarks(n_points: int) -> np.ndarray:
    """Detector indices of the brows, eyelids and lips in a landmark scheme of ``n_points`` points (MediaPipe's 478,
    or iBUG's 68 through ``landmark_tables.IBUG68_FROM_MEDIAPIPE``); empty for any other scheme."""
    features = set(L.MP_BROWS) | set(L.MP_EYELIDS) | set(L.MP_LIPS)
    if n_points >= max(features) + 1:
        return np.array(sorted(features), np.int64)
    if n_points == len(L.IBUG68_FROM_MEDIAPIPE):
        return np.array([k for k, m in enumerate(L.IBUG68_FROM_MEDIAPIPE) if m in features], np.int64)
    return np.zeros(0, np.int64)


def landmark_vertices(uv: np.ndarray, visible: np.ndarray, points: np.ndarray, tolerance_px: np.ndarray,
                      max_candidates: int = 64) -> np.ndarray:
    """The vertex under each feature point in the most frames.

    uv (T, V, 2) projected vertices (pixels), visible (T, V) bool, points (T, L, 2) detections (NaN: none),
    tolerance_px (T,). Candidates: the nearest visible vertex to the point in each of at most ``max_candidates``
    frames spread over the clip (bounded memory for long re-bakes; one k-d tree over them, the frame index as a
    far-apart third coordinate). Each candidate scores the truncated quadratic ``min(r / (2 tolerance), 1) ** 2`` of
    its distance ``r`` to the point, summed over all frames (1 where either is missing): the lowest score is the
    vertex the point sits on in the most frames, whatever the others show.
    -> (L,) vertex indices, -1 for a point never detected on a visible vertex."""
    from scipy.spatial import cKDTree
    T, V, _ = uv.shape
    found = np.isfinite(points).all(-1)                                    # (T, L)
    pick = np.unique(np.round(np.linspace(0, T - 1, min(T, max_candidates))).astype(np.int64))
    t_vis, v_vis = np.nonzero(visible[pick])
    if not len(t_vis) or not found.any():
        return np.full(points.shape[1], -1, np.int64)
    far = 10.0 * (np.abs(uv[visible]).max() + np.nanmax(np.abs(points)) + 1)
    tree = cKDTree(np.c_[uv[pick[t_vis], v_vis], t_vis * far])
    here = found[pick]
    t_pt = np.broadcast_to(np.arange(len(pick))[:, None], here.shape)
    _, k = tree.query(np.c_[points[pick][here], t_pt[here] * far])
    candidates = np.full(here.shape, -1, np.int64)                          # (C, L)
    candidates[here] = v_vis[k]
    cand = candidates.T                                                     # (L, C)
    c = np.maximum(cand, 0)
    r = np.linalg.norm(uv[:, c] - points[:, :, None], axis=-1)              # (T, L, C)
    ok = visible[:, c] & found[:, :, None] & (cand >= 0)[None]
    cost = np.where(ok, np.minimum(r / (2 * tolerance_px[:, None, None]), 1.0) ** 2, 1.0).sum(0)
    cost[cand < 0] = np.inf
    best = np.take_along_axis(cand, np.argmin(cost, 1)[:, None], 1)[:, 0]
    return np.where(np.isfinite(cost.min(1)), best, -1)


def feature_weights(residual: np.ndarray, anchors: np.ndarray, vertices: np.ndarray, tolerance: float,
                    radius: float) -> np.ndarray:
    """(T, V) in [0, 1]: each vertex's observation weight from the alignment of the feature points around it.

    residual (T, L) each point's distance to its vertex's projection in units of the head's size in the image (NaN:
    unknown), anchors (L, 3) the points' vertices and vertices (V, 3), in one frame's posed space (metres).
    A point governs the vertices within ``radius`` of its vertex, fully at its vertex and falling linearly to 0
    at ``radius``; a vertex's local residual is the governing points' mean, weighted so. Against the local
    residual of its best-aligned quarter of frames (at least ``tolerance``) a frame's weight is
    ``min(1, (best / residual) ** 2)``; vertices that no point governs keep weight 1."""
    from scipy import sparse
    from scipy.spatial import cKDTree
    T, V = len(residual), len(vertices)
    out = np.ones((T, V), np.float32)
    if not len(anchors):
        return out
    tree = cKDTree(anchors)
    pairs = cKDTree(vertices).sparse_distance_matrix(tree, radius, output_type="coo_matrix")
    if not pairs.nnz:
        return out
    G = sparse.csr_matrix((1.0 - pairs.data / radius, (pairs.row, pairs.col)), shape=(V, len(anchors)))   # (V, L)
    known = np.isfinite(residual)
    num = (G @ np.where(known, residual, 0.0).T).T                          # (T, V)
    den = (G @ known.T.astype(np.float64)).T
    governed = np.asarray(G.sum(1)).ravel() > 0
    local = np.where(den > 1e-9, num / np.maximum(den, 1e-12), np.nan)[:, governed]
    with warnings.catch_warnings():     # a vertex no frame measures: all-NaN column, weight 1 below
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.maximum(np.nan_to_num(np.nanpercentile(local, 25, axis=0), nan=tolerance), tolerance)
    w = np.where(np.isfinite(local), np.minimum(1.0, (best / np.maximum(local, 1e-12)) ** 2), 1.0)
    share = np.minimum(np.asarray(G.sum(1)).ravel()[governed], 1.0)
    out[:, governed] = 1 - share * (1 - w)
    return out
