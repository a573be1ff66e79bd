"""ARKit channel names in the conventions rigs use, and the editable channel → shape-key mapping.

Conventions (``PRESETS``; Left/Right is always the subject's side):

- ``arkit``: Apple's camelCase names, ``eyeBlinkLeft`` (``backend.contracts.arkit.ARKIT_NAMES``).
- ``livelink``: Live Link Face's PascalCase, ``EyeBlinkLeft`` (the CSV columns; see ``llf_csv``).
- ``lr_suffix``: ``_L``/``_R`` suffixes, ``eyeBlink_L``, with ``browInnerUp`` and ``cheekPuff`` split into halves
  as in ICT-FaceKit (its 53 expression names, ``backend.contracts.arkit.ICT_NAMES``).
- ``metahuman``: the ARKit curve names MetaHuman's face animation blueprint reads (its ``mh_arkit_mapping_pose``
  poses): the PascalCase names of Live Link Face.

Binding a target is case-insensitive and ignores ``_``, ``.``, ``-`` and spaces, so ``EyeBlinkLeft``,
``eyeblinkleft`` and ``eye_blink_left`` are one name, and ``_L``/``.L``/``Left`` suffixes are interchangeable.
A channel the target has only as halves (``browInnerUp_L`` + ``browInnerUp_R``) drives both.

Mapping file (JSON, ``MAPPING_FORMAT``)::

    {"format": "mononphm-arkit-mapping", "version": 1,
     "channels": {"jawOpen": [{"target": "JawOpen", "gain": 1.0, "offset": 0.0}],
                  "browInnerUp": [{"target": "browInnerUp_L"}, {"target": "browInnerUp_R"}]}}

A target key's value is ``gain · weight + offset`` (summed when several channels drive one key), clipped by
the target to its slider range. Channels that are not listed drive nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .. import arkit
from .performance import RetargetError

PRESETS = ("arkit", "livelink", "lr_suffix", "metahuman")
MAPPING_FORMAT = "mononphm-arkit-mapping"
MAPPING_VERSION = 1

SPLIT_CHANNELS = tuple(sorted({name for name, weight in arkit.ICT_TO_ARKIT.values() if weight != 1.0}))
"""ARKit channels that ICT-FaceKit (and other ``_L``/``_R`` rigs) split into left and right halves."""

_SIDES = (("Left", "_L"), ("Right", "_R"))


def pascal_case(name: str) -> str:
    """``eyeBlinkLeft`` → ``EyeBlinkLeft``."""
    return name[:1].upper() + name[1:]


def preset_names(channel: str, preset: str) -> tuple[str, ...]:
    """The target name(s) of ARKit ``channel`` in convention ``preset`` (two for split channels in lr_suffix)."""
    if channel not in arkit.ARKIT_INDEX:
        raise KeyError(f"{channel!r} is not an ARKit channel")
    if preset == "arkit":
        return (channel,)
    if preset in ("livelink", "metahuman"):
        return (pascal_case(channel),)
    if preset == "lr_suffix":
        if channel in SPLIT_CHANNELS:
            return channel + "_L", channel + "_R"
        for word, suffix in _SIDES:
            if channel.endswith(word):
                return (channel[: -len(word)] + suffix,)
        return (channel,)
    raise ValueError(f"unknown name preset {preset!r}; choose one of {PRESETS}")


def normalised(name: str) -> str:
    """The comparison form of a name: lower case, separators dropped, ``_L``/``.L`` → ``left`` (``_R`` → right)."""
    match = re.fullmatch(r"(.*?)[_.\- ]([LlRr])", name.strip())
    if match:
        name = match.group(1) + ("Left" if match.group(2) in "Ll" else "Right")
    return re.sub(r"[_.\- ]", "", name).lower()


@dataclass(frozen=True)
class Target:
    """One shape key (or other named channel) a channel drives."""

    key: str
    """The target's exact name (shape key name on the mesh)."""
    gain: float = 1.0
    """Multiplies the ARKit weight (intensity)."""
    offset: float = 0.0
    """Added after the gain (e.g. a resting value)."""


@dataclass(frozen=True)
class ChannelMapping:
    """ARKit channel → the targets it drives; unknown channels are rejected, unlisted ones drive nothing."""

    channels: Mapping[str, tuple[Target, ...]]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.channels) - set(arkit.ARKIT_NAMES))
        if unknown:
            raise RetargetError(f"the mapping names channels that are not ARKit channels: {', '.join(unknown)}",
                                "Use Apple's ARKit names (e.g. jawOpen, eyeBlinkLeft) as the mapping's keys.")

    @property
    def target_keys(self) -> list[str]:
        """Every target key, each once, in channel order."""
        return list(dict.fromkeys(t.key for targets in self.channels.values() for t in targets))

    @property
    def unbound(self) -> list[str]:
        """ARKit channels that drive nothing."""
        return [name for name in arkit.ARKIT_NAMES if not self.channels.get(name)]

    def target_values(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """(T, 52) ARKit weights → {target key: (T,) value}; keys driven by several channels get the sum."""
        weights = np.asarray(weights, dtype=np.float64)
        out: dict[str, np.ndarray] = {}
        for channel, targets in self.channels.items():
            column = weights[:, arkit.ARKIT_INDEX[channel]]
            for target in targets:
                value = target.gain * column + target.offset
                out[target.key] = out[target.key] + value if target.key in out else value
        return out

    def to_json(self) -> str:
        channels = {name: [{"target": t.key, "gain": t.gain, "offset": t.offset} for t in self.channels[name]]
                    for name in arkit.ARKIT_NAMES if name in self.channels}
        return json.dumps({"format": MAPPING_FORMAT, "version": MAPPING_VERSION, "channels": channels}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ChannelMapping":
        """Parse a mapping file; every problem is a RetargetError naming the entry."""
        hint = "Fix the mapping text (see docs/retargeting.md for the format) or build a new one with Auto Map."
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RetargetError(f"the mapping is not valid JSON ({exc})", hint) from None
        if not isinstance(data, dict) or data.get("format") != MAPPING_FORMAT:
            raise RetargetError(f"the mapping is not a '{MAPPING_FORMAT}' document", hint)
        if data.get("version") != MAPPING_VERSION:
            raise RetargetError(f"mapping version {data.get('version')} is not supported (this version reads "
                                f"{MAPPING_VERSION})", hint)
        raw = data.get("channels")
        if not isinstance(raw, dict):
            raise RetargetError("the mapping has no 'channels' object", hint)
        channels = {}
        for name, entries in raw.items():
            if isinstance(entries, (str, dict)):
                entries = [entries]
            if not isinstance(entries, list):
                raise RetargetError(f"mapping entry {name!r} must be a list of targets", hint)
            targets = []
            for entry in entries:
                entry = {"target": entry} if isinstance(entry, str) else entry
                try:
                    targets.append(Target(str(entry["target"]), float(entry.get("gain", 1.0)),
                                          float(entry.get("offset", 0.0))))
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise RetargetError(f"mapping entry {name!r} has a malformed target {entry!r}", hint) from None
            channels[str(name)] = tuple(targets)
        return cls(channels)


def auto_mapping(target_names: Iterable[str]) -> ChannelMapping:
    """Bind every ARKit channel to the target names that spell it in any convention (gain 1, offset 0)."""
    by_normal: dict[str, str] = {}
    for name in target_names:
        by_normal.setdefault(normalised(name), name)
    channels = {}
    for channel in arkit.ARKIT_NAMES:
        whole = by_normal.get(normalised(channel))
        if whole is not None:
            channels[channel] = (Target(whole),)
            continue
        halves = [by_normal.get(normalised(n)) for n in preset_names(channel, "lr_suffix")]
        if len(halves) == 2 and all(halves):
            channels[channel] = tuple(Target(h) for h in halves)
    return ChannelMapping(channels)


def preset_mapping(preset: str) -> ChannelMapping:
    """All 52 channels bound to their names in convention ``preset`` (a template to edit for a new rig)."""
    return ChannelMapping({c: tuple(Target(n) for n in preset_names(c, preset)) for c in arkit.ARKIT_NAMES})
