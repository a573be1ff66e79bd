"""Errors raised by the tracking package (subclasses of the protocol's error classes, so the CLI maps them to the
documented exit codes and JSON ``error`` events)."""
from __future__ import annotations

from ..contracts.protocol import BackendError, BadInputError


class TrackingInputError(BadInputError):
    """The input clip/image cannot be read or is unusable (corrupt, empty, unsupported, bad frame range)."""

    def __init__(self, message: str, hint: str = "Check the input file; supported: mp4, mov, mkv, webm, gif, "
                                                 "an image folder, or one image.") -> None:
        super().__init__(message, hint)


class NoFaceError(BadInputError):
    """No face was found in any frame of the clip."""

    def __init__(self, message: str = "No face was found in any frame of the clip.",
                 hint: str = "Use a clip where one face is clearly visible (frontal or three-quarter view, "
                             "at least ~80 px tall), or choose another frame range.") -> None:
        super().__init__(message, hint)


class TrackingModelError(BackendError):
    """The built-in head model is missing or damaged (an installation problem; a damaged ``--model`` folder is
    bad input)."""
