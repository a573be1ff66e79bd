"""Backend command-line protocol: JSON lines on stdout, exit codes, error types.

Contract: docs/backend-cli.md. Imported by the backend (writer side) and the Blender add-on (parser side),
so it needs the standard library only.

Every line the backend prints on stdout is one JSON object with a ``"type"`` key:

- ``progress``: ``stage``, ``frame`` (source index or null), ``done``, ``total``, ``eta_s`` (or null), ``message``
- ``warning``: ``message``, ``code``
- ``result``: ``path`` (the result package), ``frames_done``, ``timings`` (``track``: seconds per stage)
- ``device`` (``track``, before the model loads): ``device`` (``cpu``, ``cuda``, ``mps``: the one the run uses),
  ``name`` (the GPU's or CPU's name)
- ``error``: ``message``, ``hint``, ``code``
- ``hello`` (first line of every run): ``protocol``, ``backend``
- ``clip_state`` (``batch``): ``clip``, ``state`` (one of ``CLIP_STATES``), ``path`` (its package), ``source``
  (its input), ``host`` and ``pid`` (of the worker, when running)

Version 2 (``batch``) adds the ``clip_state`` event and a ``clip`` field on the events of one clip of a batch; a
version-1 reader parses every line (it ignores unknown types and fields), so readers accept
``COMPATIBLE_PROTOCOLS``.
"""

from __future__ import annotations

import enum
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

PROTOCOL_VERSION = 2
COMPATIBLE_PROTOCOLS = (1, 2)  # versions whose streams this module parses (each one only adds to the last)
CLIP_STATES = ("running", "complete", "skipped", "failed")


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


CANCEL_HINT = "Finished frames are kept; run the same command again to resume."


def install_cancel_handler(on_cancel: Callable[[], None] | None = None) -> None:
    """SIGTERM (and CTRL_BREAK on Windows: the add-on's Cancel) raise Cancelled in the main thread.

    With ``on_cancel``, those signals and Ctrl-C (SIGINT) call it instead: a process that waits inside a library's
    blocking calls (Ray's driver) sets a flag there and raises Cancelled itself between them, since an exception
    raised inside such a call surfaces as the library's error. Call it after any library that installs its own
    SIGTERM handler (Ray's driver does in ``ray.init``).
    """
    def on_signal(signum, frame):  # noqa: ARG001 - signal API
        if on_cancel is None:
            raise Cancelled("cancelled", CANCEL_HINT)
        on_cancel()

    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, on_signal)
    if on_cancel is not None:
        signal.signal(signal.SIGINT, on_signal)


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
    """Writes protocol events as JSON lines; thread-safe; flushes every line.

    ``clip``: the batch clip these events belong to (added to every event as its ``clip`` field), or None.
    """

    def __init__(self, stream: IO[str] | None = None, clip: str | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._eta = _EtaEstimator()
        self._clip = {} if clip is None else {"clip": clip}

    def emit(self, type_: str, **fields: Any) -> None:
        line = json.dumps({"type": type_, **fields, **self._clip}, allow_nan=False, default=_json_default)
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

    def device(self, device: str, name: str) -> None:
        self.emit("device", device=device, name=name)

    def result(self, path: str, frames_done: int, timings: dict | None = None) -> None:
        fields = {} if timings is None else {"timings": {k: round(float(v), 3) for k, v in timings.items()}}
        self.emit("result", path=str(path), frames_done=frames_done, **fields)

    def error(self, message: str, hint: str = "", code: str = "internal", clip: str | None = None) -> None:
        """``clip``: the batch clip that failed (a batch's driver reports its clips' errors)."""
        self.emit("error", message=message, hint=hint, code=code, **({} if clip is None else {"clip": clip}))

    def clip_state(self, clip: str, state: str, path: str, source: str, host: str | None = None,
                   pid: int | None = None) -> None:
        if state not in CLIP_STATES:
            raise ValueError(f"clip state {state!r} not in {CLIP_STATES}")
        self.emit("clip_state", clip=clip, state=state, path=str(path), source=str(source), host=host, pid=pid)


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
