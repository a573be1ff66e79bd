"""Pinhole intrinsics and rigid head-pose initialisation (PnP).

Conventions (docs/conventions.md): OpenCV camera (x right, y down, z forward), pixel centres at i + 0.5.
Internally poses act on NPHM units: ``x_cam[m] = R @ (NPHM_UNIT_M * x_nphm) + t``; the result package stores
``scale = 1``, ``R``, ``t`` with model points in metres (the absolute scale comes from the identity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..contracts.conventions import DEFAULT_HORIZONTAL_FOV_DEG, NPHM_UNIT_M, Intrinsics
from .errors import TrackingInputError

MIN_FOV_DEG, MAX_FOV_DEG = 1.0, 179.0  # --fov bounds (exclusive): a pinhole camera's horizontal field of view


def make_intrinsics(src_width: int, src_height: int, out_width: int, out_height: int, fx=None, fy=None, cx=None,
                    cy=None, fov_deg=None) -> Intrinsics:
    """Intrinsics of the tracked (possibly downscaled) images from user values given in source pixels.

    ``fx`` alone implies ``fy = fx``; a missing principal point is the image centre; without ``fx`` the horizontal
    field of view ``fov_deg`` (default 50 degrees, strictly between 1 and 179) is used. Values no camera can have are
    a TrackingInputError.
    """
    if fov_deg is not None and not (MIN_FOV_DEG < float(fov_deg) < MAX_FOV_DEG):
        raise TrackingInputError(f"--fov {fov_deg:g} is outside the horizontal fields of view a camera can have "
                                 f"({MIN_FOV_DEG:g}..{MAX_FOV_DEG:g} degrees, exclusive)",
                                 "Give the lens's horizontal field of view in degrees (e.g. --fov 50), or --fx.")
    for name, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if value is not None and not (math.isfinite(value) and (value > 0 or name in ("cx", "cy"))):
            kind = "focal length" if name[0] == "f" else "principal point"
            raise TrackingInputError(f"--{name} {value:g} is not a valid {kind}",
                                     "Focal lengths are positive pixels of the source video; cx, cy finite pixels.")
    if fx is None:
        if fy is not None:
            fx = fy
        else:
            return Intrinsics.from_fov(out_width, out_height, DEFAULT_HORIZONTAL_FOV_DEG if fov_deg is None
                                       else float(fov_deg))
    fy = fx if fy is None else fy
    cx = src_width / 2.0 if cx is None else cx
    cy = src_height / 2.0 if cy is None else cy
    src = Intrinsics(float(fx), float(fy), float(cx), float(cy), int(src_width), int(src_height))
    return src.resized(out_width, out_height)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(…, 3) camera points -> (…, 2) pixels."""
    z = np.clip(points_cam[..., 2:3], 1e-9, None)
    uv = points_cam[..., :2] / z
    return uv * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def rodrigues(rvec: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3, 3) rotation."""
    th = float(np.linalg.norm(rvec))
    if th < 1e-12:
        return np.eye(3)
    k = rvec / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * Kx + (1 - math.cos(th)) * Kx @ Kx


def rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64))[0].reshape(3)


@dataclass
class PnPResult:
    R: np.ndarray        # (3, 3) model -> camera rotation
    t: np.ndarray        # (3,) metres
    rmse_px: float       # reprojection RMSE over the used points
    ok: bool


def solve_pnp(points_model: np.ndarray, points_px: np.ndarray, K: np.ndarray, weights: Optional[np.ndarray] = None,
              init: Optional[Tuple[np.ndarray, np.ndarray]] = None, scale: float = NPHM_UNIT_M) -> PnPResult:
    """Rigid pose from 3D model points (N, 3, model units) and their detections (N, 2, px).

    EPnP for the initial guess (or ``init`` = (R, t) from the previous frame), then Levenberg–Marquardt refinement.
    A pose with the head behind the camera is rejected (``ok=False``).
    """
    import cv2
    P = np.ascontiguousarray(np.asarray(points_model, np.float64) * scale)
    uv = np.ascontiguousarray(np.asarray(points_px, np.float64))
    if weights is not None:
        keep = np.asarray(weights) > 0
        P, uv = P[keep], uv[keep]
    if len(P) < 6:
        return PnPResult(np.eye(3), np.array([0, 0, 1.0]), float("inf"), False)
    K = np.asarray(K, np.float64)
    dist = np.zeros(4)
    if init is not None:
        rvec0 = rotation_to_axis_angle(init[0]).reshape(3, 1)
        tvec0 = np.asarray(init[1], np.float64).reshape(3, 1)
        ok, rvec, tvec = cv2.solvePnP(P, uv, K, dist, rvec0.copy(), tvec0.copy(), True, cv2.SOLVEPNP_ITERATIVE)
    else:
        ok, rvec, tvec = cv2.solvePnP(P, uv, K, dist, flags=cv2.SOLVEPNP_EPNP)
        if ok:
            ok, rvec, tvec = cv2.solvePnP(P, uv, K, dist, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    R = cv2.Rodrigues(rvec)[0]
    t = tvec.reshape(3)
    cam = P @ R.T + t
    ok = bool(ok) and bool(np.all(cam[:, 2] > 0))
    err = project(cam, K) - uv
    rmse = float(np.sqrt(np.mean(np.sum(err ** 2, -1))))
    return PnPResult(R, t, rmse, ok)


def look_at_pose(distance_m: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0,
                 offset_m=(0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray]:
    """A model->camera pose that looks at the head from ``distance_m`` (frontal at zero angles).

    Model axes are +x subject's left (image right), +y up, +z out of the face; OpenCV camera looks along +z with y
    down, so the frontal rotation is diag(1, -1, -1).
    """
    base = np.diag([1.0, -1.0, -1.0])
    ry, rp, rr = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    Ry = rodrigues(np.array([0, ry, 0]))
    Rx = rodrigues(np.array([rp, 0, 0]))
    Rz = rodrigues(np.array([0, 0, rr]))
    R = base @ Rz @ Rx @ Ry
    t = np.array([offset_m[0], offset_m[1], distance_m])
    return R, t
