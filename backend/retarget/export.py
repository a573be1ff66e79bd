"""``python -m backend export``: a result package's performance to an exchange format (numpy only, no torch)."""

from __future__ import annotations

from pathlib import Path

from . import llf_csv
from .performance import from_package
from .smoothing import SmoothingSettings, smooth_performance

FORMATS = ("llf-csv",)


def export_package(package: str | Path, out: str | Path, fmt: str = "llf-csv", fps: float | None = None,
                   smoothing: SmoothingSettings | None = None) -> tuple[Path, int]:
    """Write the package's tracked frames to ``out`` in format ``fmt``; returns (path, rows written).

    ``fps`` resamples to that many rows per second of the clip (default: one row per tracked frame, at the
    clip's rate); ``smoothing`` is applied first. The package is only read.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    perf = from_package(package)
    perf.require_arkit()
    if smoothing is not None:
        perf = smooth_performance(perf, smoothing)
    if fps:
        perf = perf.resampled(fps)
    return llf_csv.write_llf_csv(out, perf), len(perf)
