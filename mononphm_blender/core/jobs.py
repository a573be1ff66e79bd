"""Backend subprocess jobs, without bpy.

A reader thread turns the child's stdout (protocol JSON lines) into events on a queue; ``poll()`` — called on
Blender's main thread from a timer, or directly by tests — drains the queue and updates ``status``. No bpy call
happens in a thread. stderr goes to a log file. The child runs in its own process group so Cancel stops the
whole tree (POSIX: ``start_new_session`` + ``killpg(SIGTERM)``; Windows: ``CREATE_NEW_PROCESS_GROUP`` +
``CTRL_BREAK_EVENT``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..contracts import protocol, result_format

RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
CANCEL_GRACE_S = 10.0
IS_WINDOWS = os.name == "nt"


@dataclass
class JobStatus:
    state: str = RUNNING
    stage: str = ""
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    frames_done: int = 0
    message: str = ""
    error: str = ""
    hint: str = ""
    exit_code: int | None = None
    result_path: str = ""
    warnings: list[str] = field(default_factory=list)
    device: str = ""  # the device the run computes on, from the backend's device event, e.g. "cuda (NVIDIA H100)"

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def friendly_error(message: str, log_path: str | os.PathLike | None) -> tuple[str, str]:
    """Turn well-known failures into an actionable hint."""
    text = message + "\n" + (log_tail(log_path, 50) if log_path else "")
    if "CUDA out of memory" in text or "OutOfMemoryError" in text:
        return message or "Out of GPU memory.", "Choose the draft preset, a smaller frame range, or device CPU."
    if "No module named 'torch'" in text:
        return message or "torch is not installed in the backend environment.", \
            "Open the add-on preferences and run 'Set up backend', or pick another interpreter."
    return message, ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id still runs (and is not a zombie, on Linux)."""
    if pid <= 0:
        return False
    if IS_WINDOWS:
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000 | 0x100000, False, pid)  # QUERY_LIMITED | SYNCHRONIZE
        if not handle:
            return False
        try:
            return ctypes.windll.kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            ctypes.windll.kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def signal_group(pid: int, kill: bool = False, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM (or SIGKILL) the process group ``pid`` leads; CTRL_BREAK on Windows."""
    try:
        if IS_WINDOWS:
            if kill:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
            elif proc is not None:
                proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                os.kill(pid, signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def events_path_for(log_path: str | os.PathLike) -> Path:
    """The backend's stdout (protocol JSON lines) is kept next to its log."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.stem + ".events.jsonl")


class EventTail:
    """Reads complete protocol lines appended to a file since the last call."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read(self) -> list:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for raw in lines:
            event = protocol.parse_line(raw.decode("utf-8", "replace"))
            if event is not None:
                out.append(event)
        return out


class BackendJob:
    """One run of ``python -m backend …`` (or any command speaking the protocol)."""

    def __init__(self, argv: Sequence[str], *, log_path: str | os.PathLike, cwd: str | os.PathLike | None = None,
                 env: dict | None = None, out_dir: str | os.PathLike | None = None) -> None:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, never a shell string")
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = env
        self.out_dir = Path(out_dir) if out_dir else None
        self.events_path = events_path_for(self.log_path)
        self.status = JobStatus()
        self.proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._cancel_time: float | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def start(self) -> "BackendJob":
        """Start the child: stdout (protocol lines) → the events file, stderr → the log file.

        Files instead of a pipe: the backend keeps running (and writing) when Blender quits, and a reopened
        .blend re-attaches by reading the same events file (AttachedJob).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(("$ " + " ".join(self.argv) + "\n").encode("utf-8", "replace"))
        log.flush()
        events = open(self.events_path, "wb")
        kwargs: dict = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        try:
            self.proc = subprocess.Popen(self.argv, stdout=events, stderr=log, stdin=subprocess.DEVNULL,
                                         cwd=self.cwd, env=self.env, **kwargs)
        except OSError as exc:
            self.status.state = FAILED
            self.status.error = f"Cannot start the backend: {exc}"
            self.status.hint = "Check the backend interpreter in the add-on preferences."
            return self
        finally:
            log.close()  # the child holds its own copies of the descriptors
            events.close()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="mononphm-backend-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:  # reader thread: no bpy here
        assert self.proc is not None
        tail = EventTail(self.events_path)
        while True:
            exited = self.proc.poll() is not None
            for event in tail.read():
                self._queue.put(event)
            if exited:
                break
            time.sleep(0.05)
        self._queue.put(protocol.Event("exit", {"code": self.proc.wait()}))

    def poll(self) -> list:
        """Drain pending events (main thread); returns them after updating ``status``."""
        events = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            self._apply(event)
        if (self._cancel_time is not None and not self.status.finished
                and time.monotonic() - self._cancel_time > CANCEL_GRACE_S and self.proc is not None):
            signal_group(self.proc.pid, kill=True, proc=self.proc)
            self._cancel_time = float("inf")
        return events

    def _apply(self, event) -> None:
        st = self.status
        if event.type == "progress":
            st.stage = str(event.get("stage") or "")
            st.done = int(event.get("done") or 0)
            st.total = int(event.get("total") or 0)
            st.eta_s = event.get("eta_s")
            st.message = str(event.get("message") or "")
            if event.get("frame") is not None or st.stage == "tracking":
                st.frames_done = max(st.frames_done, st.done)
        elif event.type == "warning":
            st.warnings.append(str(event.get("message", "")))
        elif event.type == "device":
            st.device = f"{event.get('device')} ({event.get('name')})"
        elif event.type == "result":
            st.result_path = str(event.get("path") or "")
            st.frames_done = int(event.get("frames_done") or st.frames_done)
        elif event.type == "error":
            st.error = str(event.get("message") or "Backend error")
            st.hint = str(event.get("hint") or "")
            if event.get("code") == "cancelled":
                self._cancel_time = self._cancel_time or time.monotonic()
        elif event.type == "exit":
            code = int(event.get("code"))
            st.exit_code = code
            if code == protocol.ExitCode.OK and not st.error:
                st.state = FINISHED
            elif self._cancel_time is not None or code == protocol.ExitCode.CANCELLED:
                st.state = CANCELLED
                st.error = st.error or "Cancelled."
            else:
                st.state = FAILED
                if not st.error:
                    st.error = f"The backend exited with code {code}"
                message, hint = friendly_error(st.error, self.log_path)
                st.error, st.hint = message, (hint or st.hint)

    def cancel(self) -> None:
        """Ask the process group to stop (finished frames stay on disk); SIGKILL after a grace period."""
        if self.proc is None or self.status.finished:
            return
        self._cancel_time = time.monotonic()
        signal_group(self.proc.pid, proc=self.proc)

    def wait(self, timeout: float = 60.0, on_events: Callable | None = None) -> JobStatus:
        """Block until finished, polling (for tests and scripts, never from the UI)."""
        end = time.monotonic() + timeout
        while not self.status.finished:
            events = self.poll()
            if on_events and events:
                on_events(events)
            if time.monotonic() > end:
                raise TimeoutError(f"job {self.argv} still running after {timeout} s")
            time.sleep(0.02)
        return self.status


class AttachedJob:
    """A backend run started by an earlier Blender session (found again after reopening the .blend).

    There is no pipe any more: progress comes from the result package on disk and liveness from the pid.
    """

    def __init__(self, pid: int, *, log_path: str | os.PathLike, out_dir: str | os.PathLike, total: int = 0) -> None:
        self.pid = int(pid)
        self.log_path = Path(log_path)
        self.out_dir = Path(out_dir)
        self.status = JobStatus(total=total, stage="track")
        self._cancel_time: float | None = None
        self._tail = EventTail(events_path_for(self.log_path))

    @classmethod
    def follow(cls, pid: int, *, log_path: str | os.PathLike, out_dir: str | os.PathLike,
               total: int = 0) -> "AttachedJob":
        """The run of process ``pid`` while it still runs the backend, else the record its events file keeps."""
        alive = pid > 0 and pid_alive(pid) and process_looks_like_backend(pid)
        return cls(pid if alive else 0, log_path=log_path, out_dir=out_dir, total=total)

    def _manifest(self) -> dict | None:
        try:
            return result_format.read_manifest(self.out_dir)
        except result_format.PackageError:
            return None

    def poll(self) -> list:
        events = self._tail.read()
        for event in events:
            BackendJob._apply(self, event)
        manifest = self._manifest()
        st = self.status
        if manifest is not None:
            st.frames_done = max(st.frames_done, len(manifest.get("frames", [])))
        if pid_alive(self.pid):
            if self._cancel_time is not None and time.monotonic() - self._cancel_time > CANCEL_GRACE_S:
                signal_group(self.pid, kill=True)
                self._cancel_time = float("inf")
            return events
        last = self._tail.read()   # written between the first read and the process's end
        for event in last:
            BackendJob._apply(self, event)
        events += last
        state = (manifest or {}).get("state")
        if self._cancel_time is not None or state == "cancelled" or st.error == "Cancelled.":
            st.state, st.error = CANCELLED, st.error or "Cancelled."
        elif state == "complete" or (st.result_path and not st.error):
            st.state, st.result_path = FINISHED, st.result_path or str(self.out_dir)
        else:
            st.state = FAILED
            if not st.error:
                st.error = "The backend stopped while Blender was closed"
            st.error, hint = friendly_error(st.error, self.log_path)
            st.hint = hint or st.hint
        return events + [protocol.Event("exit", {"code": None})]

    def cancel(self) -> None:
        if not self.status.finished:
            self._cancel_time = time.monotonic()
            signal_group(self.pid)


def process_looks_like_backend(pid: int) -> bool:
    """Guard against pid reuse after a reboot: on Linux check the command line mentions the backend."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return pid_alive(pid)
    try:
        text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return "backend" in text or "fake" in text


def run_handshake(argv: Sequence[str], *, cwd=None, env=None, timeout: float = 120.0) -> dict:
    """Run ``… --version --json`` and return its JSON object; raises RuntimeError with a readable message."""
    try:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RuntimeError(f"interpreter not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the backend did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run {argv[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError("backend check failed: " + (" | ".join(tail) or f"exit code {proc.returncode}"))
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            if data.get("protocol") not in protocol.COMPATIBLE_PROTOCOLS:
                raise RuntimeError(f"backend speaks protocol {data.get('protocol')}, this add-on "
                                   f"{protocol.PROTOCOL_VERSION}; update the add-on or the backend")
            return data
    raise RuntimeError("the backend printed no version information")


def run_validate(argv: Sequence[str], *, cwd=None, env=None, timeout: float = 300.0) -> tuple[str, str] | None:
    """Run ``… validate PACKAGE``: None when the package passes, else its error (message, hint); raises
    RuntimeError when the backend cannot be run."""
    try:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run the backend's package check: {exc}") from None
    events = [protocol.parse_line(line) for line in proc.stdout.splitlines()]
    errors = [e for e in events if e is not None and e.type == "error"]
    if proc.returncode == 0 and not errors:
        return None
    if errors:
        return errors[-1].get("message", ""), errors[-1].get("hint", "")
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise RuntimeError(f"the backend's package check failed: {tail[0]}")


class Handshake:
    """``run_handshake`` in a thread, so the UI never waits for torch to import."""

    def __init__(self, argv: Sequence[str], *, cwd=None, env=None) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self.result: dict | None = None
        self.error: str = ""
        self.done = False

        def work() -> None:
            try:
                self._queue.put(("ok", run_handshake(argv, cwd=cwd, env=env)))
            except RuntimeError as exc:
                self._queue.put(("error", str(exc)))

        threading.Thread(target=work, name="mononphm-handshake", daemon=True).start()

    def poll(self) -> bool:
        """True once finished (main thread)."""
        if not self.done:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                return False
            self.done = True
            if kind == "ok":
                self.result = value
            else:
                self.error = value
        return True
