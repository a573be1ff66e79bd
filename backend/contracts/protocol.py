"""Backend command-line protocol: JSON lines on stdout, exit codes, error types.

Contract: docs/backend-cli.md. Imported by the backend (writer side) and the Blender add-on (parser side),
so it needs the standard library only.

Every line the backend prints on stdout is one JSON object with a ``"type"`` key:

- ``progress``: ``stage``, ``frame`` (source index or null), ``done``, ``total``, ``eta_s`` (or null), ``message``
- ``warning``: ``message``, ``code``
- ``result``: ``path`` (the result package), ``frames_done``
- ``error``: ``message``, ``hint``, ``code``
- ``hello`` (first line of every run): ``protocol``, ``backend``
"""

from __future__ import annotations

import enum
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

PROTOCOL_VERSION = 1


class ExitCode(enum.IntEnum):
    """Process exit statuses of ``python -m backend``."""

    OK = 0
    INTERNAL_ERROR = 1
    BAD_INPUT = 2
    CANCELLED = 3


class BackendError(Exception):
    """An error the user can act on: ``message`` says what is wrong, ``hint`` what to do."""

    exit_code = ExitCode.INTERNAL_ERROR
    code = "internal"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInputError(BackendError):
    """Input the user gave (file, flag, package) cannot be used."""

    exit_code = ExitCode.BAD_INPUT
    code = "bad_input"


class Cancelled(BackendError):
    """The run was cancelled (SIGTERM / Ctrl-C). Finished frames are kept."""

    exit_code = ExitCode.CANCELLED
    code = "cancelled"


class _EtaEstimator:
    """Per-stage ETA from the average time per finished unit since the stage began."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.start = 0.0
        self.start_done = 0

    def update(self, stage: str, done: int, total: int | None) -> float | None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.start, self.start_done = stage, now, done
            return None
        units = done - self.start_done
        if not total or units <= 0:
            return None
        return (now - self.start) / units * max(total - done, 0)


class EventWriter:
    """Writes protocol events as JSON lines; thread-safe; flushes every line."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._eta = _EtaEstimator()

    def emit(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, **fields}, allow_nan=False, default=_json_default)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def hello(self, backend_version: str) -> None:
        self.emit("hello", protocol=PROTOCOL_VERSION, backend=backend_version)

    def progress(self, stage: str, done: int, total: int | None, frame: int | None = None,
                 message: str = "") -> None:
        eta = self._eta.update(stage, done, total)
        self.emit("progress", stage=stage, frame=frame, done=done, total=total,
                  eta_s=None if eta is None else round(eta, 1), message=message)

    def warning(self, message: str, code: str = "warning") -> None:
        self.emit("warning", message=message, code=code)

    def result(self, path: str, frames_done: int) -> None:
        self.emit("result", path=str(path), frames_done=frames_done)

    def error(self, message: str, hint: str = "", code: str = "internal") -> None:
        self.emit("error", message=message, hint=hint, code=code)


def _json_default(value: Any) -> Any:
    # numpy scalars and paths reach the writer from backend code; keep the protocol plain JSON.
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@dataclass
class Event:
    """One parsed protocol line."""

    type: str
    data: dict = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def parse_line(line: str) -> Event | None:
    """Parse one stdout line; returns None for blank lines.

    A line that is not a protocol object (a stray print from a library) becomes a ``log`` event instead
    of breaking the reader.
    """
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return Event("log", {"message": line})
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return Event("log", {"message": line})
    return Event(data["type"], data)
