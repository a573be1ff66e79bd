"""Numeric layouts for the Blender import (bpy-free, numpy only): keyframe arrays, pose decomposition,
frame mapping and quality thresholds."""

from __future__ import annotations

import numpy as np

from ..contracts import contract

rotations = contract("contracts.retarget.rotations")

# F-curve keyframe interpolation enum values (Blender's BEZT_IPO_*).
CONSTANT, LINEAR, BEZIER = 0, 1, 2


def pile_keyframes(scene_frames: np.ndarray) -> list[np.ndarray]:
    """One ``(n, 2)`` keyframe array per tracked frame for its shape key: 0 → 1 → 0 over the previous, this and
    the next tracked frame. With a stride, LINEAR interpolation blends neighbouring keys linearly (weights sum
    to 1 between tracked frames). The first/last key hold 1 before/after the tracked range (constant
    extrapolation)."""
    frames = np.asarray(scene_frames, dtype=np.float32)
    out = []
    n = len(frames)
    for i in range(n):
        points = []
        if i > 0:
            points.append((frames[i - 1], 0.0))
        points.append((frames[i], 1.0))
        if i < n - 1:
            points.append((frames[i + 1], 0.0))
        out.append(np.asarray(points, dtype=np.float32))
    return out


def decompose_similarity(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, 4, 4) world matrices → location (T, 3), rotation (T, 3, 3) proper rotations, scale (T, 3)."""
    m = np.asarray(matrices, dtype=np.float64)
    loc = m[:, :3, 3].copy()
    lin = m[:, :3, :3]
    scale = np.linalg.norm(lin, axis=1)  # column norms
    rot = lin / np.where(scale == 0, 1.0, scale)[:, None, :]
    det = np.linalg.det(rot)
    flip = det < 0
    if flip.any():  # keep a proper rotation; a reflection goes into the x scale
        rot[flip, :, 0] *= -1
        scale[flip, 0] *= -1
    return loc, rot, scale


def rotations_to_euler_xyz(rot: np.ndarray) -> np.ndarray:
    """(T, 3, 3) → (T, 3) Euler XYZ angles (Blender's 'XYZ' order: R = Rz · Ry · Rx), unwrapped over time so
    F-curves never jump by 2π."""
    return rotations.matrix_to_euler(rot, "XYZ")


def euler_xyz_to_matrix(eul: np.ndarray) -> np.ndarray:
    return rotations.euler_to_matrix(eul, "XYZ")


def keyframe_co(frames: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interleaved (frame, value) float32 array for ``keyframe_points.foreach_set('co', …)``; NaN rows dropped."""
    frames = np.asarray(frames, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    keep = np.isfinite(values)
    return np.stack([frames[keep], values[keep]], axis=1)


def bad_frames(scene_frames: np.ndarray, errors: np.ndarray, threshold: float) -> list[tuple[int, float]]:
    """(scene frame, error) of frames whose landmark error exceeds ``threshold`` (NaN never counts)."""
    errors = np.asarray(errors, dtype=np.float64)
    hit = np.isfinite(errors) & (errors > threshold)
    return [(int(f), float(e)) for f, e in zip(np.asarray(scene_frames)[hit], errors[hit])]


def fps_and_base(fps: float) -> tuple[int, float]:
    """Blender's integer fps + fps_base for a real frame rate (29.97 → 30, 1.001)."""
    if fps <= 0:
        raise ValueError("fps must be positive")
    whole = max(1, int(round(fps)))
    return whole, whole / float(fps)

