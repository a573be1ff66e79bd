"""Small numpy geometry helpers shared by tracking, training and evaluation (no torch)."""

from __future__ import annotations

import numpy as np


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) with ``dst ≈ s · R · src + t`` for corresponding points.

    src, dst: (N, 3). Returns s (float), R (3, 3) a proper rotation, t (3,).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    a, b = src - mean_src, dst - mean_dst
    U, S, Vt = np.linalg.svd(b.T @ a)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))  # reflections are not rotations
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / max((a ** 2).sum(), 1e-30))
    return s, R, mean_dst - s * R @ mean_src
