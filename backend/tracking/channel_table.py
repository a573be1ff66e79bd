"""The per-channel ARKit output table: which reading each of the 52 channels ships, and its response.

The tracker has several readings of the ARKit weights of a frame, each a (B, 52) array with NaN where it has none
(``CodeSpace.arkit_readings``): ``model`` (the model's ARKit regressor on the fitted codes, the ICT->ARKit map for the
channels the landmarks feed; every frame), ``landmarks`` (the landmark regressor's ICT weights through the map; frames
with a face), ``landmarks_linear`` (the same regressor's linear reading, without its own dead zone and gain, which
cut a jaw moved aside), ``<region>_image`` (each face region's image regressor in the model folder, ``region_image``: the
built-in folder has ``mouth_image``, ``jaw_image``, ``lids_image`` and ``brows_image``; frames with a face). Per channel the table gives ``shares`` (source -> share, summing to
1; empty: the channel ships 0) and a response: the blend x of the sources that have a reading on a frame (their
shares renormalised; the model's value where none has) becomes ``clip(gain * (x - dead_zone) / (1 - dead_zone), 0,
1)``. Readings under the dead zone are the reader's noise on a face at rest.

A model folder holds one table per preset, because the presets fit differently and so read differently (the
standard preset's colour term moves the codes the ``model`` reading comes from): ``arkit_channels.json`` is the draft
preset's, ``arkit_channels_<preset>.json`` another preset's own (``table_file``). A preset without its own table
uses draft's (so a folder with only ``arkit_channels.json`` uses it for every preset); a model folder without any
table ships the model's reading unchanged. The built-in tables (``backend/models/builtin/``) are written by
``backend.training.arkit_channels`` from the readings of the tuning clips tracked with their preset, choosing per
channel by cross-validation over clips; a channel whose reading does not beat all-zeros out of fold ships 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..contracts import arkit

FILE_NAME = "arkit_channels.json"   # the draft preset's table, and that of every preset without its own
BASE_PRESET = "draft"               # the preset ``FILE_NAME`` is calibrated on
FORMAT = "mononphm-arkit-channels"
MODEL_SOURCE = "model"   # the reading every tracked frame has: the fallback where a channel's sources have none


def table_file(preset: str) -> str:
    """The file name of ``preset``'s own table in a model folder (``FILE_NAME`` for draft)."""
    return FILE_NAME if preset == BASE_PRESET else f"{Path(FILE_NAME).stem}_{preset}.json"


def table_path(model_dir: Path, preset: str = BASE_PRESET) -> Optional[Path]:
    """The table ``preset`` uses in ``model_dir``: its own, else draft's; None when the folder has neither."""
    for name in (table_file(preset), FILE_NAME):
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    return None


def blend(readings: Mapping[str, np.ndarray], shares: Mapping[str, float]) -> np.ndarray:
    """(B,) or (B, C) blend of ``readings`` (source -> array, NaN where it has none) by ``shares``, renormalised over
    the sources with a reading on each entry; the ``model`` reading where none has (0 where that is missing too)."""
    ref = next(iter(readings.values()))
    num = np.zeros(ref.shape, np.float64)
    den = np.zeros(ref.shape, np.float64)
    for name, share in shares.items():
        x = readings.get(name)
        if x is None or share <= 0:
            continue
        have = np.isfinite(x)
        num += share * np.where(have, x, 0.0)
        den += share * have
    fallback = readings.get(MODEL_SOURCE)
    fallback = np.zeros(ref.shape) if fallback is None else np.nan_to_num(fallback)
    return np.where(den > 0, num / np.maximum(den, 1e-12), fallback)


def respond(x: np.ndarray, dead_zone: float, gain: float) -> np.ndarray:
    """The channel response: ``clip(gain * (x - dead_zone) / (1 - dead_zone), 0, 1)`` (at gain 1 a full reading
    stays 1)."""
    return np.clip(gain * (np.asarray(x, np.float64) - dead_zone) / (1.0 - dead_zone), 0.0, 1.0)


class ChannelTable:
    """Per ARKit channel: ``shares`` (source -> share), ``dead_zone`` and ``gain`` (see the module docstring).
    ``notes``: the calibration's record (clips, out-of-fold errors), carried through ``to_json`` untouched."""

    def __init__(self, channels: Mapping[str, Mapping], notes: Optional[Mapping] = None):
        missing = set(arkit.ARKIT_NAMES) - set(channels)
        unknown = set(channels) - set(arkit.ARKIT_NAMES)
        if missing or unknown:
            raise ValueError(f"an ARKit channel table needs the 52 ARKit channels: missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}")
        self.channels = {}
        for name in arkit.ARKIT_NAMES:
            row = channels[name]
            shares = {str(k): float(v) for k, v in dict(row.get("shares", {})).items() if float(v) != 0}
            dead_zone, gain = float(row.get("dead_zone", 0.0)), float(row.get("gain", 1.0))
            if (any(not math.isfinite(v) or v < 0 for v in shares.values())
                    or (shares and abs(sum(shares.values()) - 1) > 1e-6)):
                raise ValueError(f"{name}: shares must be non-negative and sum to 1 (or be empty), got {shares}")
            if not (0.0 <= dead_zone < 1.0 and 0.0 < gain < 1e3):
                raise ValueError(f"{name}: dead_zone must lie in [0, 1) and gain in (0, 1000), got {dead_zone}, {gain}")
            self.channels[name] = {"shares": shares, "dead_zone": dead_zone, "gain": gain}
        self.notes = dict(notes or {})

    @classmethod
    def model_only(cls) -> "ChannelTable":
        """Every channel ships the model's reading unchanged (a model folder without a table)."""
        return cls({n: {"shares": {MODEL_SOURCE: 1.0}} for n in arkit.ARKIT_NAMES})

    @classmethod
    def from_json(cls, data: Mapping) -> "ChannelTable":
        if data.get("format") != FORMAT:
            raise ValueError(f"not an ARKit channel table (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(data["channels"], data.get("notes"))

    @classmethod
    def load(cls, model_dir: Path, preset: str = BASE_PRESET) -> "ChannelTable":
        """The table ``preset`` uses in ``model_dir`` (``table_path``: its own, else draft's; ``model_only`` when the
        folder has none)."""
        path = table_path(model_dir, preset)
        if path is None:
            return cls.model_only()
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "channels": self.channels, "notes": self.notes}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    def zeroed(self) -> tuple[str, ...]:
        """The channels that ship 0."""
        return tuple(n for n, row in self.channels.items() if not row["shares"])

    def sources(self) -> tuple[str, ...]:
        """The readings the table uses."""
        return tuple(sorted({s for row in self.channels.values() for s in row["shares"]}))

    def __call__(self, readings: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, 52) float32 ARKit output from ``readings`` (source -> (B, 52), NaN where it has no reading; a source
        the table names but ``readings`` lacks counts as having none)."""
        if MODEL_SOURCE not in readings:
            raise ValueError(f"the {MODEL_SOURCE!r} reading is required (the fallback of every channel)")
        B = len(readings[MODEL_SOURCE])
        out = np.zeros((B, len(arkit.ARKIT_NAMES)), np.float32)
        for c, name in enumerate(arkit.ARKIT_NAMES):
            row = self.channels[name]
            if row["shares"]:
                x = blend({s: r[:, c] for s, r in readings.items()}, row["shares"])
                out[:, c] = respond(x, row["dead_zone"], row["gain"])
        return out


__all__ = ["BASE_PRESET", "ChannelTable", "FILE_NAME", "MODEL_SOURCE", "blend", "respond", "table_file", "table_path"]
