"""Tracking: monocular clip -> per-frame MonoNPHM fits -> result package (``run_track``).

Modules: video (PyAV decode), landmarks (MediaPipe / face-alignment), masks (segmentation labels), camera
(intrinsics, PnP), raster (numpy rasteriser), renderer (NeuS volume rendering + SH), tracker (stages, presets),
run (CLI entry, result writing, resume).
"""


def run_track(args, events):
    """Entry point of ``python -m backend track`` (see docs/backend-cli.md); returns the result package path."""
    from .run import run_track as _run
    return _run(args, events)
