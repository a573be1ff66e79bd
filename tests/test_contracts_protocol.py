"""backend/contracts/protocol.py: event writer ↔ parser, exit codes, error types."""

import io
import json

import pytest

from backend.contracts import protocol


def test_writer_lines_parse_back():
    buf = io.StringIO()
    w = protocol.EventWriter(buf)
    w.hello("1.2.3")
    w.progress("track", 0, 10, frame=0, message="start")
    w.progress("track", 5, 10, frame=4)
    w.warning("low light", code="dark")
    w.result("/tmp/out", 10)
    w.error("boom", "do this", code="bad_input")
    events = [protocol.parse_line(line) for line in buf.getvalue().splitlines()]
    assert [e.type for e in events] == ["hello", "progress", "progress", "warning", "result", "error"]
    assert events[0].get("protocol") == protocol.PROTOCOL_VERSION and events[0].get("backend") == "1.2.3"
    p = events[2]
    assert (p.get("stage"), p.get("done"), p.get("total"), p.get("frame")) == ("track", 5, 10, 4)
    assert events[1].get("eta_s") is None  # first unit of a stage: no estimate yet
    assert p.get("eta_s") is not None and p.get("eta_s") >= 0
    assert events[4].get("path") == "/tmp/out" and events[4].get("frames_done") == 10
    assert events[5].get("hint") == "do this" and events[5].get("code") == "bad_input"
    for line in buf.getvalue().splitlines():
        assert json.loads(line)["type"]  # every line is one JSON object


def test_numpy_scalars_are_plain_json():
    np = pytest.importorskip("numpy")
    buf = io.StringIO()
    protocol.EventWriter(buf).progress("track", np.int64(3), np.int32(9))
    event = protocol.parse_line(buf.getvalue())
    assert event.get("done") == 3 and event.get("total") == 9


@pytest.mark.parametrize("line", ["hello world", "[1, 2]", '{"no_type": 1}', '{"type": 5}', "{broken"])
def test_non_protocol_lines_become_log_events(line):
    event = protocol.parse_line(line)
    assert event.type == "log" and event.get("message") == line


def test_blank_line_is_none():
    assert protocol.parse_line("   \n") is None


def test_exit_codes_and_errors():
    assert int(protocol.ExitCode.OK) == 0 and int(protocol.ExitCode.CANCELLED) == 3
    assert protocol.BadInputError("x").exit_code == protocol.ExitCode.BAD_INPUT
    assert protocol.Cancelled("x").code == "cancelled"
    err = protocol.BackendError("msg", "hint")
    assert (err.message, err.hint, err.exit_code) == ("msg", "hint", protocol.ExitCode.INTERNAL_ERROR)


def test_auto_threads_leave_room_on_small_machines(monkeypatch):
    from backend.tracking import run

    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(run.os, "getloadavg", lambda: (1.2, 1.0, 1.0))   # another process holds a core
    assert run.auto_threads() == 1
    monkeypatch.setattr(run.os, "getloadavg", lambda: (0.2, 0.3, 0.3))   # idle: both cores
    assert run.auto_threads() == 2
    monkeypatch.delattr(run.os, "getloadavg")                           # no load average (Windows)
    assert run.auto_threads() == 1
    monkeypatch.setattr(run.os, "cpu_count", lambda: 8)
    assert run.auto_threads() == 2
    monkeypatch.setattr(run.os, "cpu_count", lambda: None)
    assert run.auto_threads() == 1


def test_batch_events_carry_their_clip_and_version_1_readers_parse_them():
    buf = io.StringIO()
    protocol.EventWriter(buf, clip="take-2").progress("tracking", 1, 4, frame=0)
    protocol.EventWriter(buf).clip_state("take-2", "complete", "/out/take-2", "/in/take.mp4")
    progress, state = [protocol.parse_line(line) for line in buf.getvalue().splitlines()]
    assert (progress.type, progress.get("clip"), progress.get("done")) == ("progress", "take-2", 1)
    assert (state.get("clip"), state.get("state"), state.get("source")) == ("take-2", "complete", "/in/take.mp4")
    assert 1 in protocol.COMPATIBLE_PROTOCOLS and protocol.PROTOCOL_VERSION in protocol.COMPATIBLE_PROTOCOLS
    with pytest.raises(ValueError, match="clip state"):
        protocol.EventWriter(buf).clip_state("take", "paused", "/out/take", "/in/take.mp4")
