"""The Live Link Face CSV (Epic's iPhone app; read by Unreal, Faceit, KeenTools, Rokoko and others).

Columns: ``Timecode``, ``BlendShapeCount`` (61), the 52 ARKit channels in PascalCase **in Live Link Face's own
order** (``LLF_CHANNELS``: it swaps JawLeft/JawRight and MouthLeft/MouthRight relative to Apple's list), then
``LLF_POSE_COLUMNS``: head and eye yaw, pitch and roll in radians. One row per frame.

Timecode ``HH:MM:SS:FF.fff``: FF counts frames within the second at the integer timecode rate, ``.fff`` is the
sub-frame fraction (an app recording at 59.94 fps writes ``19.804``, ``20.805``, …, frames at a 60 fps
timecode). Files from the app start at the phone's time of day. We write the clip's own timeline: frame n of
a clip at ``fps`` is written at timecode rate round(fps), so the timecode follows the clip whatever the Blender
scene's rate.

Head angles in character axes (Z up, face towards −Y): R = Rz(yaw) · Rx(pitch) · Ry(roll) (Blender Euler
order ``YXZ``): positive yaw turns the face to the subject's left, positive pitch looks down, positive roll
tilts the head towards the subject's left shoulder. Channels the tracker does not drive (tongue, eye gaze and
the eye rotations) are written as 0.

Reading is by column name, case-insensitively (takes from the app spell ``BlendshapeCount``); missing ARKit
columns read as 0 and are reported.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import arkit
from ..result_format import write_text_atomic
from . import rotations
from .names import pascal_case
from .performance import Performance, RetargetError

LLF_CHANNELS = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)
"""The 52 channel columns in Live Link Face's order."""
assert sorted(LLF_CHANNELS) == sorted(pascal_case(n) for n in arkit.ARKIT_NAMES)
LLF_POSE_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                    "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
LLF_COLUMNS = ("Timecode", "BlendShapeCount") + LLF_CHANNELS + LLF_POSE_COLUMNS
BLEND_SHAPE_COUNT = len(LLF_CHANNELS) + len(LLF_POSE_COLUMNS)  # 61
HEAD_EULER_ORDER = "YXZ"  # R = Rz(yaw) · Rx(pitch) · Ry(roll)
STANDARD_TIMECODE_RATES = (24, 25, 30, 48, 50, 60, 100, 120)
_ARKIT_COLUMN = [arkit.ARKIT_INDEX[name[:1].lower() + name[1:]] for name in LLF_CHANNELS]
_TIMECODE = re.compile(r"\s*(\d+):(\d\d):(\d\d)[:;](\d+)(\.\d+)?\s*")


def head_angles(rotation: np.ndarray) -> np.ndarray:
    """(T, 3, 3) head rotations (character axes) → (T, 3) yaw, pitch, roll in radians."""
    about_xyz = rotations.matrix_to_euler(rotation, HEAD_EULER_ORDER)
    return about_xyz[:, [2, 0, 1]]


def head_rotation(angles: np.ndarray) -> np.ndarray:
    """(T, 3) yaw, pitch, roll in radians → (T, 3, 3) head rotations in character axes."""
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    return rotations.euler_to_matrix(angles[:, [1, 2, 0]], HEAD_EULER_ORDER)


def timecode_rate(fps: float) -> int:
    """The integer frame count per timecode second for a clip at ``fps`` (29.97 → 30)."""
    return max(1, int(round(fps)))


def format_timecode(frame: float, rate: int) -> str:
    """Frame number ``frame`` (may be fractional) at ``rate`` frames per second → ``HH:MM:SS:FF.fff``."""
    whole = int(math.floor(frame + 1e-9))
    sub = int(round((frame - whole) * 1000))
    if sub == 1000:
        whole, sub = whole + 1, 0
    seconds, ff = divmod(whole, rate)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.{sub:03d}"


def parse_timecode(text: str) -> tuple[int, float]:
    """``HH:MM:SS:FF.fff`` → (whole seconds, frames within the second incl. the sub-frame fraction)."""
    match = _TIMECODE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a timecode HH:MM:SS:FF[.fff]")
    hh, mm, ss, ff = (int(g) for g in match.groups()[:4])
    return (hh * 60 + mm) * 60 + ss, ff + float(match.group(5) or 0.0)


def to_csv_text(perf: Performance) -> str:
    """The CSV text of ``perf`` (requires ARKit channels; a missing head pose writes zero angles)."""
    weights = perf.require_arkit()
    rate = timecode_rate(perf.fps)
    frames = perf.times_s * rate
    pose = np.zeros((len(perf), len(LLF_POSE_COLUMNS)))
    if perf.head_rotation is not None:
        pose[:, :3] = head_angles(perf.head_rotation)
    values = np.concatenate([weights[:, _ARKIT_COLUMN], pose], axis=1)
    out = io.StringIO()
    out.write(",".join(LLF_COLUMNS) + "\n")
    for frame, row in zip(frames, values):
        out.write(f"{format_timecode(frame, rate)},{BLEND_SHAPE_COUNT}," + ",".join(f"{v:.10f}" for v in row) + "\n")
    return out.getvalue()


def write_llf_csv(path: str | Path, perf: Performance) -> Path:
    """Write ``perf`` as a Live Link Face CSV (atomically); returns the path."""
    path = Path(path)
    write_text_atomic(path, to_csv_text(perf))
    return path


@dataclass(frozen=True)
class LlfTake:
    """A CSV take as read."""

    performance: Performance
    """Times count from timecode 00:00:00:00 (a take from the app starts at its time of day)."""
    timecode_rate: int
    """Frames per timecode second (from ``fps`` or the largest FF in the file)."""
    missing_channels: tuple[str, ...]
    """ARKit channels the file has no column for (read as 0)."""


def read_llf_csv(path: str | Path, fps: float | None = None) -> LlfTake:
    """Read a Live Link Face CSV by column name. ``fps`` is the timecode rate; default: the smallest standard
    rate above the largest FF in the file (60 for takes from the app)."""
    path = Path(path)
    hint = "Pick a CSV written by Live Link Face or by `python -m backend export --format llf-csv`."
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RetargetError(f"cannot read {path} ({exc})", hint) from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise RetargetError(f"{path.name} is empty", hint)
    header = [cell.strip().lower() for cell in rows[0]]
    column = {name: i for i, name in reversed(list(enumerate(header)))}
    if "timecode" not in column:
        raise RetargetError(f"{path.name} has no Timecode column; it is not a Live Link Face CSV", hint)
    channels = [n for n in arkit.ARKIT_NAMES if n.lower() in column]
    if not channels:
        raise RetargetError(f"{path.name} has no ARKit channel columns (EyeBlinkLeft, JawOpen, …)", hint)
    body = rows[1:]
    if not body:
        raise RetargetError(f"{path.name} has a header but no frames", hint)
    try:
        stamps = [parse_timecode(row[column["timecode"]]) for row in body]
        wanted = [column[n.lower()] for n in channels] + [column.get(c.lower(), -1) for c in LLF_POSE_COLUMNS[:3]]
        table = np.array([[float(row[i]) if i >= 0 else 0.0 for i in wanted] for row in body], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise RetargetError(f"{path.name}: a row cannot be read ({exc})", hint) from None
    seconds = np.array([s for s, _ in stamps], dtype=np.float64)
    within = np.array([f for _, f in stamps], dtype=np.float64)
    rate = int(round(fps)) if fps else next((r for r in STANDARD_TIMECODE_RATES if r > within.max()),
                                            int(math.floor(within.max())) + 1)
    times = seconds + within / rate
    if np.any(np.diff(times) < 0):
        raise RetargetError(f"{path.name}: timecodes go backwards", "The rows must be in time order.")
    weights = np.zeros((len(body), len(arkit.ARKIT_NAMES)))
    weights[:, [arkit.ARKIT_INDEX[n] for n in channels]] = table[:, : len(channels)]
    rotation = head_rotation(table[:, len(channels):])
    perf = Performance(times, float(fps or rate), weights, rotation, None)
    missing = tuple(n for n in arkit.ARKIT_NAMES if n not in channels)
    return LlfTake(perf, rate, missing)
