"""ARKit blendshape channel names and the ICT-FaceKit -> ARKit mapping (numpy only, no torch).

This is the ONE table of the project for expression channels. The Blender add-on imports it, so it must stay
free of torch and of any heavy import.

* ``ARKIT_NAMES``: Apple's 52 ``ARFaceAnchor.BlendShapeLocation`` names in the order of Apple's documentation
  (left eye, right eye, mouth and jaw, eyebrows, cheeks, nose, tongue).
* ``ICT_TO_ARKIT``: ICT-FaceKit expression name -> (ARKit name, weight). ICT's ``_L``/``_R`` suffixes become
  ``Left``/``Right``. ICT splits ``browInnerUp`` and ``cheekPuff`` into halves; each half contributes 0.5, i.e. the
  ARKit channel is the mean of the two halves. ARKit ``tongueOut`` has no ICT source and stays 0.
* ``ict_to_arkit(weights, ict_names)``: (..., 53) ICT weights -> (..., 52) ARKit weights.
* ``arkit_to_ict(weights, ict_names)``: the inverse used by the synthetic generator (halves get the full value).
"""
from __future__ import annotations

import numpy as np

ARKIT_NAMES = (
    # left eye
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft",
    # right eye
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight",
    "eyeWideRight",
    # mouth and jaw
    "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft",
    "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    # eyebrows
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    # cheeks
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    # nose
    "noseSneerLeft", "noseSneerRight",
    # tongue
    "tongueOut",
)
assert len(ARKIT_NAMES) == 52 and len(set(ARKIT_NAMES)) == 52
ARKIT_INDEX = {n: i for i, n in enumerate(ARKIT_NAMES)}

# ICT-FaceKit's 53 expression names (order of the FaceKit's expression OBJs / the npz `expression_names`).
ICT_NAMES = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "cheekPuff_L",
    "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R",
    "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L",
    "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimple_L", "mouthDimple_R", "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft",
    "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R",
    "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)

_SPLIT = {"browInnerUp", "cheekPuff"}  # ICT halves that ARKit has as one channel


def _map_one(ict_name: str) -> tuple[str, float]:
    base, side = ict_name, ""
    if ict_name.endswith("_L"):
        base, side = ict_name[:-2], "Left"
    elif ict_name.endswith("_R"):
        base, side = ict_name[:-2], "Right"
    if base in _SPLIT:
        return base, 0.5
    return base + side, 1.0


def mirror_name(ict_name: str) -> str:
    """The ICT channel of the face's other side (``eyeBlink_L`` <-> ``eyeBlink_R``); a middle channel itself."""
    for a, b in (("_L", "_R"), ("_R", "_L")):
        if ict_name.endswith(a):
            return ict_name[: -len(a)] + b
    return ict_name


ICT_TO_ARKIT = {n: _map_one(n) for n in ICT_NAMES}
assert all(a in ARKIT_INDEX for a, _ in ICT_TO_ARKIT.values())
assert {a for a, _ in ICT_TO_ARKIT.values()} == set(ARKIT_NAMES) - {"tongueOut"}

# eye-gaze channels: the built-in model has static eyes, they are never driven by geometry
GAZE_ARKIT = tuple(n for n in ARKIT_NAMES if n.startswith("eyeLook"))
# channels the built-in model never drives: the gaze and tongueOut (no ICT source); exports write them as 0
UNDRIVEN_ARKIT = GAZE_ARKIT + ("tongueOut",)


def ict_to_arkit_matrix(ict_names=ICT_NAMES) -> np.ndarray:
    """(len(ict_names), 52) matrix M with arkit = ict @ M. Unknown ICT names raise KeyError."""
    m = np.zeros((len(ict_names), len(ARKIT_NAMES)), dtype=np.float64)
    for i, n in enumerate(ict_names):
        a, w = ICT_TO_ARKIT[str(n)]
        m[i, ARKIT_INDEX[a]] = w
    return m


def ict_to_arkit(weights, ict_names=ICT_NAMES) -> np.ndarray:
    """Map ICT-FaceKit expression weights (..., 53) to ARKit weights (..., 52) in ``ARKIT_NAMES`` order."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[-1] != len(ict_names):
        raise ValueError(f"last axis {w.shape[-1]} != {len(ict_names)} ICT names")
    return w @ ict_to_arkit_matrix(ict_names)


def arkit_to_ict(weights, ict_names=ICT_NAMES) -> np.ndarray:
    """Map ARKit weights (..., 52) to ICT weights (..., len(ict_names)); split channels drive both halves."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[-1] != len(ARKIT_NAMES):
        raise ValueError(f"last axis {w.shape[-1]} != 52")
    m = (ict_to_arkit_matrix(ict_names) > 0).astype(np.float64)
    return w @ m.T
