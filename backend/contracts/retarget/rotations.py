"""Vectorised rotation conversions over time: (T, 3, 3) matrices, (T, 4) quaternions, (T, 3) Euler angles.

Quaternions are (w, x, y, z), Blender's component order. Euler orders are Blender's: order ``"XYZ"`` applies X
first, i.e. R = Rz · Ry · Rx. Every conversion returns curves that are continuous over time (quaternion signs
chosen so neighbours agree, Euler angles unwrapped), so they can be keyframed directly.
"""

from __future__ import annotations

import numpy as np

EULER_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
_AXIS = {"X": 0, "Y": 1, "Z": 2}


def axis_rotations(axis: int, angles: np.ndarray) -> np.ndarray:
    """(T,) angles in radians → (T, 3, 3) right-handed rotations about coordinate axis 0, 1 or 2."""
    angles = np.asarray(angles, dtype=np.float64)
    c, s = np.cos(angles), np.sin(angles)
    out = np.zeros(angles.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    out[..., axis, axis] = 1.0
    out[..., i, i] = c
    out[..., j, j] = c
    out[..., j, i] = s
    out[..., i, j] = -s
    return out


def euler_to_matrix(angles: np.ndarray, order: str = "XYZ") -> np.ndarray:
    """(T, 3) angles (about X, Y, Z, radians) → (T, 3, 3) with Blender's ``order`` (first letter applied first)."""
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    out = np.broadcast_to(np.eye(3), (len(angles), 3, 3)).copy()
    for letter in order:
        axis = _AXIS[letter]
        out = axis_rotations(axis, angles[:, axis]) @ out
    return out


def matrix_to_euler(rot: np.ndarray, order: str = "XYZ") -> np.ndarray:
    """(T, 3, 3) proper rotations → (T, 3) angles about X, Y, Z for Blender's ``order``, unwrapped over time.

    With axes i, j, k applied in that order (R = R_k · R_j · R_i) and s = +1 for cyclic orders (XYZ, YZX, ZXY),
    −1 otherwise: θ_j = asin(−s·R[k,i]), θ_i = atan2(s·R[k,j], R[k,k]), θ_k = atan2(s·R[j,i], R[i,i]).
    """
    if order not in EULER_ORDERS:
        raise ValueError(f"Euler order must be one of {EULER_ORDERS}, got {order!r}")
    r = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3)
    i, j, k = (_AXIS[a] for a in order)
    s = 1.0 if order in ("XYZ", "YZX", "ZXY") else -1.0
    middle = np.arcsin(np.clip(-s * r[:, k, i], -1.0, 1.0))
    regular = np.abs(np.cos(middle)) > 1e-6
    first = np.where(regular, np.arctan2(s * r[:, k, j], r[:, k, k]), np.arctan2(-s * r[:, j, k], r[:, j, j]))
    last = np.where(regular, np.arctan2(s * r[:, j, i], r[:, i, i]), 0.0)  # gimbal lock: all of it in `first`
    out = np.empty((len(r), 3))
    out[:, i], out[:, j], out[:, k] = first, middle, last
    return np.unwrap(out, axis=0) if len(out) > 1 else out


def matrix_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """(T, 3, 3) proper rotations → (T, 4) unit quaternions (w, x, y, z), signs continuous over time."""
    r = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3)
    m00, m11, m22 = r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]
    # Four candidate formulas; each row uses the one with the largest (best conditioned) pivot.
    candidates = np.stack([
        np.stack([1 + m00 + m11 + m22, r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], 1),
        np.stack([r[:, 2, 1] - r[:, 1, 2], 1 + m00 - m11 - m22, r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0]], 1),
        np.stack([r[:, 0, 2] - r[:, 2, 0], r[:, 0, 1] + r[:, 1, 0], 1 - m00 + m11 - m22, r[:, 1, 2] + r[:, 2, 1]], 1),
        np.stack([r[:, 1, 0] - r[:, 0, 1], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1], 1 - m00 - m11 + m22], 1),
    ], 1)  # (T, 4 formulas, 4 components); formula f has 4·q_f² on its pivot
    pivot = np.argmax(np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                                1 - m00 - m11 + m22], 1), axis=1)
    q = candidates[np.arange(len(r)), pivot]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return continuous_quaternions(q)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive quaternions have a non-negative dot product (and the first has w ≥ 0)."""
    q = np.array(q, dtype=np.float64).reshape(-1, 4)
    if not len(q):
        return q
    dots = np.einsum("ij,ij->i", q[1:], q[:-1])
    flips = np.concatenate([[q[0, 0] < 0], dots < 0])
    sign = np.where(np.cumsum(flips) % 2 == 1, -1.0, 1.0)
    return q * sign[:, None]


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions (w, x, y, z; normalised here) → (T, 3, 3)."""
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], 1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], 1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1),
    ], 1)


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions → (T, 4) Blender axis-angle (angle, x, y, z); the identity gets the +Y axis."""
    q = continuous_quaternions(q)
    vec = q[:, 1:]
    sin_half = np.linalg.norm(vec, axis=1)
    angle = 2.0 * np.arctan2(sin_half, q[:, 0])
    axis = np.where(sin_half[:, None] > 1e-12, vec / np.maximum(sin_half, 1e-12)[:, None], [0.0, 1.0, 0.0])
    return np.concatenate([angle[:, None], axis], axis=1)


def rotation_fraction(rot: np.ndarray, fraction: float) -> np.ndarray:
    """(T, 3, 3) rotations → the same rotations scaled to ``fraction`` of their angle about the same axis."""
    q = matrix_to_quaternion(rot)
    half = np.arctan2(np.linalg.norm(q[:, 1:], axis=1), q[:, 0])
    sin_half = np.sin(half)
    axis = np.where(sin_half[:, None] > 1e-12, q[:, 1:] / np.maximum(sin_half, 1e-12)[:, None], 0.0)
    scaled = np.concatenate([np.cos(fraction * half)[:, None], np.sin(fraction * half)[:, None] * axis], axis=1)
    return quaternion_to_matrix(scaled)


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) angle in degrees of the rotation between (T, 3, 3) rotations ``a`` and ``b`` (atan2 of the sine and
    cosine parts, accurate for small angles where arccos of the trace is not)."""
    rel = np.einsum("tji,tjk->tik", np.asarray(a, np.float64), np.asarray(b, np.float64))
    sin = 0.5 * np.linalg.norm(np.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0],
                                         rel[:, 1, 0] - rel[:, 0, 1]], 1), axis=1)
    cos = 0.5 * (np.trace(rel, axis1=1, axis2=2) - 1.0)
    return np.degrees(np.arctan2(sin, cos))
