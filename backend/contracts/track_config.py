"""The ``track`` command's settings: one dataclass that is the command line (docs/backend-cli.md); stdlib only.

``TrackConfig`` is the schema of ``python -m backend track``: each field is one flag, its docstring the flag's help.
The backend's parser is built from it (``add_track_arguments``, ``TrackConfig.from_namespace``); the add-on builds a
``TrackConfig`` and turns it into an argument list (``TrackConfig.to_argv``); tests and benchmarks build one
directly and hand it to ``backend.tracking.run_track``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

PRESET_NAMES = ("draft", "standard", "high")
"""Speed/quality presets, fastest first (their settings: ``backend.tracking.tracker.PRESETS``)."""
OUTPUT_MODES = ("shape_keys", "meshes", "both")
"""Fixed-topology shape keys, per-frame meshes (USD), or both (the manifest's ``output_mode``)."""
DEVICES = ("auto", "cpu", "cuda", "mps")
"""``--device`` choices; ``auto`` picks the first available of cuda, mps, cpu."""
DETECTORS = ("mediapipe", "face-alignment")
"""Landmark detectors: MediaPipe's 478-point face mesh, or face-alignment's iBUG-68 points."""
FACE_RULES = ("largest", "leftmost", "rightmost")
"""``--face`` rules for which face to track when several are visible (or a point ``X,Y``)."""

_INTRINSICS_GROUP = "camera intrinsics (pixels of the source video); default: --fov"


def _option(choices=None, metavar=None, group=None, positional=False, required=False):
    """A field's command-line details beyond its name, type, default and docstring."""
    return {"choices": choices, "metavar": metavar, "group": group, "positional": positional, "required": required}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrackConfig:
    """Settings of one ``track`` run. Defaults are the command line's defaults."""

    input: str = field(metadata=_option(positional=True))
    """video file (mp4, mov, mkv, webm, gif), image folder, or single image"""
    out: str = field(metadata=_option(required=True))
    """result package folder (created, or resumed if it exists and holds this clip's result with the same settings)"""
    frames: Optional[str] = field(default=None, metadata=_option(metavar="A:B:STEP"))
    """Python slice of 0-based source frame indices (default: all)"""
    max_size: int = field(default=512, metadata=_option(metavar="PX"))
    """downscale so the longer image side is at most PX (intrinsics follow); 0 = keep"""
    fx: Optional[float] = field(default=None, metadata=_option(group=_INTRINSICS_GROUP))
    """focal length in x, pixels"""
    fy: Optional[float] = field(default=None, metadata=_option(group=_INTRINSICS_GROUP))
    """focal length in y, pixels (default: fx)"""
    cx: Optional[float] = field(default=None, metadata=_option(group=_INTRINSICS_GROUP))
    """principal point x, pixels (default: the image centre)"""
    cy: Optional[float] = field(default=None, metadata=_option(group=_INTRINSICS_GROUP))
    """principal point y, pixels (default: the image centre)"""
    fov: Optional[float] = field(default=None, metadata=_option(metavar="DEG", group=_INTRINSICS_GROUP))
    """horizontal field of view when fx is not given (default 50; between 1 and 179)"""
    preset: str = field(default="standard", metadata=_option(choices=PRESET_NAMES))
    """speed/quality trade-off"""
    output: str = field(default="shape_keys", metadata=_option(choices=OUTPUT_MODES))
    """fixed-topology shape keys, per-frame meshes (USD), or both"""
    model: Optional[str] = None
    """project model folder (default: the built-in model)"""
    official_checkpoint: Optional[str] = field(default=None, metadata=_option(metavar="EXP_DIR"))
    """official MonoNPHM experiment folder (configs.yaml + checkpoints/)"""
    checkpoint_epoch: Optional[int] = None
    """epoch of the official checkpoint"""
    mean_anchors: Optional[str] = field(default=None, metadata=_option(metavar="NPY"))
    """official anchors_65.npy (required with --official-checkpoint)"""
    device: str = field(default="auto", metadata=_option(choices=DEVICES))
    """compute device"""
    threads: int = 0
    """CPU threads for torch (0 = auto: 2 on machines with 4 or more logical CPUs or on an idle 2-3 CPU machine,
    else 1)"""
    overwrite: bool = False
    """re-track frames already in the package (keeps the fitted identity)"""
    detector: str = field(default="mediapipe", metadata=_option(choices=DETECTORS))
    """landmark detector"""
    face: str = field(default="largest", metadata=_option(metavar="RULE"))
    """face to track when several are visible: largest, leftmost, rightmost, or X,Y (a point on it in the first
    frame, source pixels)"""
    seed: int = 0
    """random seed (the same seed and settings give the same result)"""
    texture: bool = False
    """also bake the subject's colours into a texture (UV atlas + PNG) from the clip's most frontal, sharp and neutral
    frames, so the imported head is textured (the vertex colours are baked either way)"""
    texture_size: int = field(default=2048, metadata=_option(metavar="PX"))
    """texture width and height in pixels (with --texture)"""

    @classmethod
    def from_namespace(cls, args: argparse.Namespace, **fields) -> "TrackConfig":
        """The config of parsed ``track`` arguments (``add_track_arguments``); ``fields`` give the values of
        arguments the parser did not have (``batch`` sets ``input`` and ``out`` per clip)."""
        return cls(**{f.name: fields[f.name] if f.name in fields else getattr(args, f.name)
                      for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Raise ValueError (a user-facing message) for settings the backend refuses."""
        for name, choices in (("preset", PRESET_NAMES), ("output", OUTPUT_MODES), ("device", DEVICES),
                              ("detector", DETECTORS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)} (got {getattr(self, name)!r})")
        if self.official_checkpoint and not self.mean_anchors:
            raise ValueError("an official checkpoint needs its mean-anchors file (anchors_65.npy)")
        parse_face(self.face)
        check_texture_size(self.texture_size)

    def to_argv(self, exclude: tuple[str, ...] = ()) -> list[str]:
        """The ``track`` arguments that give this config (after ``python -m backend track``), without the fields in
        ``exclude`` (``batch`` gives its own inputs and output root); defaults are left out except preset, output
        and device, which the add-on always states."""
        self.check()
        argv = [] if "input" in exclude else [str(self.input)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("positional") or value is None or f.name in exclude:
                continue
            if value == f.default and f.name not in ("preset", "output", "device"):
                continue
            if isinstance(value, bool):
                argv += [_flag(f.name)] if value else []
            else:
                argv += [_flag(f.name), repr(float(value)) if isinstance(value, float) else str(value)]
        return argv


TEXTURE_SIZE_RANGE = (64, 8192)
"""Texture sizes (pixels, inclusive) the bake accepts."""


def check_texture_size(size: int) -> None:
    """Raise ValueError (a user-facing message) for a texture size outside ``TEXTURE_SIZE_RANGE``."""
    lo, hi = TEXTURE_SIZE_RANGE
    if not lo <= int(size) <= hi:
        raise ValueError(f"texture size {size} is outside {lo}..{hi}; choose e.g. 1024, 2048 or 4096")


def parse_face(text: str) -> str | tuple[float, float]:
    """``--face``: a FACE_RULES name, or ``X,Y`` (a point on the face in the first frame, source pixels) as floats;
    raises ValueError (a user-facing message) for anything else."""
    rule = str(text).strip().lower()
    if rule in FACE_RULES:
        return rule
    try:
        x, y = (float(v) for v in rule.split(","))
    except ValueError:
        raise ValueError(f"--face {text!r} is neither {', '.join(FACE_RULES)} nor a point X,Y") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"--face {text!r}: the point must be finite pixel coordinates")
    return x, y


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass, by field name."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value.strip() for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def add_track_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Add one argument per ``TrackConfig`` field, except those named in ``exclude``, to a sub-command's parser."""
    docs = field_docs(TrackConfig)
    hints = typing.get_type_hints(TrackConfig)
    groups = {}
    for f in dataclasses.fields(TrackConfig):
        if f.name in exclude:
            continue
        meta = f.metadata
        if meta.get("group") and meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        target = groups.get(meta.get("group"), parser)
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
        if meta.get("positional"):
            target.add_argument(f.name, help=docs[f.name])
            continue
        flag = _flag(f.name)
        if kind is bool:
            target.add_argument(flag, action="store_true", help=docs[f.name])
            continue
        kwargs = {"type": kind} if kind in (int, float) else {}
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        for key in ("choices", "metavar"):
            if meta.get(key):
                kwargs[key] = meta[key]
        target.add_argument(flag, help=docs[f.name], **kwargs)
