"""A facial performance on a clip's timeline: ARKit weights and the head pose, from any source.

The retargeting code (Blender bakes, the Live Link Face CSV, smoothing) works on ``Performance`` only, so a
result package and a CSV take drive a rig the same way.

Head pose axes are the *character* axes of the Blender scene (docs/conventions.md): Z up, the face looking
along −Y, +X the subject's left. A head looking straight into the camera has the identity rotation: the
tracked head's world rotation in Blender (``conventions.head_world_matrices``) is already in these axes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import arkit as arkit_names
from .. import conventions, result_format
from ..protocol import BadInputError
from . import rotations


class RetargetError(BadInputError):
    """A performance, mapping or take that cannot be used; ``message`` says what, ``hint`` what to do."""

    code = "bad_input"


NO_ARKIT_MESSAGE = ("this result has no ARKit channels (results of official MonoNPHM checkpoints carry none: "
                    "only the built-in model predicts them)")
NO_ARKIT_HINT = ("Track with the built-in model to get expression channels, or retarget the head pose only; "
                 "the per-frame shape keys of the head itself are unaffected.")


@dataclass(frozen=True)
class Performance:
    """Per-frame performance samples, in time order.

    ``arkit``, ``head_rotation`` and ``head_location`` are None where the source has no such data.
    """

    times_s: np.ndarray
    """(T,) float64 seconds on the clip's timeline (source frame index / clip fps for a result package)."""
    fps: float
    """The clip's frame rate: the rate of the timeline ``times_s`` counts on (CSV timecode, frame numbers)."""
    arkit: np.ndarray | None = None
    """(T, 52) float64 weights in ``backend.contracts.arkit.ARKIT_NAMES`` order, nominally 0..1."""
    head_rotation: np.ndarray | None = None
    """(T, 3, 3) float64 head orientation in character axes (identity = facing the camera)."""
    head_location: np.ndarray | None = None
    """(T, 3) float64 head position in metres, character axes (camera at the origin)."""

    def __post_init__(self) -> None:
        t = len(self.times_s)
        for name, shape in (("arkit", (t, len(arkit_names.ARKIT_NAMES))), ("head_rotation", (t, 3, 3)),
                            ("head_location", (t, 3))):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"Performance.{name} has shape {value.shape}, expected {shape}")
        if self.fps <= 0:
            raise ValueError(f"Performance.fps must be positive, got {self.fps}")

    def __len__(self) -> int:
        return len(self.times_s)

    @property
    def frame_numbers(self) -> np.ndarray:
        """(T,) float64 frame numbers on the clip's timeline (times × fps)."""
        return self.times_s * self.fps

    def require_arkit(self) -> np.ndarray:
        """The ARKit weights, or a RetargetError that says the source has none (never zeros)."""
        if self.arkit is None:
            raise RetargetError(NO_ARKIT_MESSAGE, NO_ARKIT_HINT)
        return self.arkit

    def require_head_pose(self) -> np.ndarray:
        if self.head_rotation is None:
            raise RetargetError("this performance has no head pose", "Use a result package or a CSV with HeadYaw, "
                                "HeadPitch and HeadRoll columns.")
        return self.head_rotation

    def scene_frames(self, start: float, scene_fps: float | None = None, *, from_first: bool = False) -> np.ndarray:
        """(T,) scene frames: ``start`` + clip time × scene fps (default: the clip's fps, i.e. the frame numbers).

        ``from_first`` counts from the first sample instead of the clip's time 0 (a CSV take's wall-clock
        timecode)."""
        rate = self.fps if scene_fps is None else float(scene_fps)
        times = self.times_s - (self.times_s[0] if from_first and len(self) else 0.0)
        return np.round(float(start) + times * rate, 6)  # whole frames stay whole despite float error in times

    def resampled(self, fps: float) -> "Performance":
        """The performance sampled every 1/``fps`` s over its time span (linear in time; rotations by normalised
        quaternion interpolation). The result's ``fps`` is the new rate."""
        if fps <= 0:
            raise ValueError("fps must be positive")
        if len(self) < 2:
            return replace(self, fps=float(fps))
        start, end = self.times_s[0], self.times_s[-1]
        times = start + np.arange(int(np.floor((end - start) * fps + 1e-6)) + 1) / fps

        def interp(values: np.ndarray) -> np.ndarray:
            flat = values.reshape(len(self), -1)
            return np.stack([np.interp(times, self.times_s, column) for column in flat.T], 1)

        rotation = None
        if self.head_rotation is not None:
            rotation = rotations.quaternion_to_matrix(interp(rotations.matrix_to_quaternion(self.head_rotation)))
        return Performance(times, float(fps), None if self.arkit is None else interp(self.arkit), rotation,
                           None if self.head_location is None else interp(self.head_location))


def relative_head_motion(perf: Performance, neutral: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Head motion relative to sample ``neutral``, in the neutral head's own axes.

    Returns rotations D (T, 3, 3) with R_t = R_n · D_t (a nod stays a nod about the character's X axis even
    when the neutral frame is turned) and displacements (T, 3) in metres, R_nᵀ (x_t − x_n), or None without
    head locations. D is the identity at the neutral sample.
    """
    rot = perf.require_head_pose()
    if not 0 <= neutral < len(perf):
        raise RetargetError(f"neutral sample {neutral} is outside the performance (0..{len(perf) - 1})",
                            "Pick a neutral frame inside the tracked range.")
    base = rot[neutral]
    delta = np.einsum("ji,tjk->tik", base, rot)
    if perf.head_location is None:
        return delta, None
    return delta, (perf.head_location - perf.head_location[neutral]) @ base


def calibrated_weights(weights: np.ndarray, neutral: int | None) -> np.ndarray:
    """ARKit weights with sample ``neutral``'s expression removed: (w − n) / (1 − n), clipped to [0, 1] (a channel
    the neutral face already holds at n still reaches 1). None returns the weights unchanged."""
    weights = np.asarray(weights, dtype=np.float64)
    if neutral is None:
        return weights
    base = np.clip(weights[neutral], 0.0, 0.99)
    return np.clip((weights - base) / (1.0 - base), 0.0, 1.0)


def from_package(root: str | Path) -> Performance:
    """The tracked (and interpolated) frames of a result package; ``arkit`` is None when it has none, and the
    channels the model does not drive (``arkit.UNDRIVEN_ARKIT``: gaze, tongue) are 0."""
    package = result_format.ResultPackage(root)
    usable = [i for i, record in enumerate(package.frames) if record["status"] in result_format.USABLE_STATUSES]
    if not usable:
        raise RetargetError(f"{package.root} holds no tracked frames", "Track the clip (or resume tracking) first.")
    pose_keys = ["scale", "rotation", "translation"]
    try:
        arrays = package.frame_arrays(pose_keys + ["arkit"])
    except result_format.PackageError:  # no ARKit channels (official checkpoints): the pose alone
        arrays = package.frame_arrays(pose_keys)
    arrays = {key: value[usable] for key, value in arrays.items()}
    world = conventions.head_world_matrices(arrays["scale"], arrays["rotation"], arrays["translation"])
    linear = world[:, :3, :3]
    rotation = linear / np.linalg.norm(linear, axis=1, keepdims=True)
    arkit = None
    if "arkit" in arrays:
        arkit = arrays["arkit"].astype(np.float64)
        arkit[:, [arkit_names.ARKIT_INDEX[n] for n in arkit_names.UNDRIVEN_ARKIT]] = 0.0  # regressor noise only
    return Performance(package.times_s[usable], package.fps, arkit, rotation, world[:, :3, 3].copy())

