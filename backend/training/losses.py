"""Training losses (reference §3.4) plus direct signed-distance targets near the surface.

Every term is a scalar; `LOSS_WEIGHTS` holds the default weights (reference values where a term exists there).
"""
from __future__ import annotations

import torch

LOSS_WEIGHTS = {
    "surf_sdf": 1.0,        # |SDF| on surface points (face + other)
    "near_sdf": 1.0,        # |SDF - target| on near-surface points (direct targets; |eps| <= 1.5 mm std)
    "off_sdf": 0.3,         # |SDF - approx signed distance| on off-surface / far points (clamped)
    "normals": 0.3,         # ||grad - n|| on a surface subset
    "eikonal": 0.15,        # | ||grad|| - 1 | on surface, off and far subsets
    "space_sdf": 0.01,      # exp(-10 |SDF(far)|)
    "color": 1.0,           # L1 on RGB mapped to [-1, 1]
    "reg_shape": 0.01,      # mean ||z_geo||^2
    "reg_app": 0.005,       # mean ||z_app||^2
    "reg_expr": 0.05,       # mean ||z_exp||^2
    "symm_dist": 0.01,      # mean ||l_geo,2i - l_geo,2i+1||
    "symm_dist_app": 1e-4,
    "anchors": 7.5,         # mean (A_pred - A_gt)^2
    "corresp": 1000.0,      # mean w (x_p + delta(x_p) - x_n)^2, w: lid/brow emphasis (x0.25 after 30 % of the run)
    "reg_zero": 0.0025,     # mean ||delta||^2 at uniform points in [-1.25, 1.25]^3
    "neutral_zero": 0.001,  # mean delta^2 on neutral samples' points and back-of-head points of all samples
    "hyper": 0.05,          # mean |h| (+10x on neutral samples / static points)
    "arkit": 1.0,           # ARKit regressor (separate parameters, detached codes)
}

OFF_CLAMP = 0.1


def symm_dist(loc: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """loc (B, A+1, L) local codes -> mean over pairs of ||l_2i - l_2i+1||."""
    a = loc[:, 0:2 * n_pairs:2]
    b = loc[:, 1:2 * n_pairs:2]
    return torch.linalg.vector_norm(a - b + 1e-12, dim=-1).mean()
