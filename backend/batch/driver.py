"""``python -m backend batch``: every clip Ray tasks writing its own result package; one JSON-lines stream.

The driver (this process) starts a local Ray with ``--workers`` slots of ``--threads`` CPUs each, or joins a
cluster (``--ray-address``), submits the steps of every clip that is not finished yet, and relays the tasks'
protocol events, tagged with their ``clip``, to stdout. A clip is one task, ``run_track`` on its package folder; a
long clip (``--chunk-frames``) is several (``chunks``). Every step resumes from what its package holds, so a task
that starts again (a retry after its worker died, or a re-run of the batch) continues where it stopped.

Ray retries a task whose worker process dies (``MAX_RETRIES``); an error the tracker raises (no face, bad file) is
reported for that clip and the batch goes on. Cancel (SIGTERM, CTRL_BREAK, Ctrl-C) interrupts every running task,
which marks its package ``cancelled`` with its finished frames kept; a re-run resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..contracts.protocol import (CANCEL_HINT, BackendError, BadInputError, Cancelled, EventWriter,
                                  install_cancel_handler)
from ..contracts.result_format import PackageError, ResultWriter, read_manifest_or_none
from ..contracts.track_config import TrackConfig, add_track_arguments
from ..openmp_env import GOMP_SPINCOUNT
from . import chunks
from .inputs import BatchClip, assign_folders, expand_inputs

MAX_RETRIES = 3                   # attempts after a worker process died (node lost, out of memory, killed)
CANCEL_GRACE_S = 5.0              # running tasks get this long to mark their packages cancelled (add-on: 10 s)
CANCEL_SIGNAL_WAIT_S = 2.0        # a Ray error this soon before the driver's own cancel signal is part of the cancel
POLL_S = 0.2                      # how often the driver relays events
CONNECT_TIMEOUT_S = 10.0          # a cluster address that does not answer within this is refused
OBJECT_STORE_BYTES = 80 * 2**20   # local Ray: only events and frame counts travel through it (Ray's minimum 75 MB)
CANCEL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGBREAK") if hasattr(signal, name))
TRACK, PREPARE, CHUNK, REFINE, REWRITE, FINISH = "track", "prepare", "chunk", "refine", "rewrite", "finish"
STEPS = {PREPARE: chunks.prepare_clip, CHUNK: chunks.track_chunk, REFINE: chunks.refine_clip,
         REWRITE: chunks.rewrite_chunk, FINISH: chunks.finish_clip}   # a chunked clip's steps (``_Batch``)
RAY_MISSING_HINT = ("Tick 'Batches on Ray' in the add-on's preferences and run Set Up Backend again, or install the "
                    "batch requirements into the backend environment: pip install -r requirements-batch.txt")


@dataclass(frozen=True)
class BatchConfig:
    """How the batch runs; the tracking settings of every clip are one ``TrackConfig`` (its input and out unused)."""

    out_root: Path
    """Folder holding one result package per clip; with ``ray_address`` it must be on storage every node mounts."""
    ray_address: str | None = None
    """Ray cluster to join (``ray://HOST:10001``, or ``HOST:6379`` on a node); None starts a local Ray."""
    workers: int = 0
    """Local Ray only: tasks run at once (0 = logical CPUs // threads)."""
    chunk_frames: int = 0
    """Clips with more selected frames are tracked in chunks of this many frames on the workers (0 = never)."""

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "BatchConfig":
        if args.workers and args.ray_address:
            raise BadInputError("--workers applies to the local Ray only",
                                "Drop --workers: on a cluster, Ray runs as many clips at once as its CPUs allow.")
        if args.workers < 0 or args.chunk_frames < 0:
            raise BadInputError("--workers and --chunk-frames must not be negative",
                                "For example: --workers 2 --chunk-frames 500.")
        return cls(Path(args.out_root).resolve(), args.ray_address, int(args.workers), int(args.chunk_frames))


def task_threads(track: TrackConfig) -> int:
    """Torch threads of each task, also the CPUs Ray reserves for it: ``--threads``, 1 for ``--threads 0`` (tasks
    share the machine's cores, so one thread each keeps every core busy without oversubscribing it)."""
    return track.threads or 1


class _FlagParser(argparse.ArgumentParser):
    """Parses a clip's own track flags; raises ValueError where argparse would end the process."""

    def error(self, message: str):
        raise ValueError(message)


def clip_config(track: TrackConfig, clip: BatchClip) -> TrackConfig:
    """A clip's track settings: the command's, its own flags (``BatchClip.flags``) on top, its input and package,
    and the threads its task runs with (``task_threads``)."""
    config = track
    if clip.flags:
        parser = _FlagParser(prog=clip.name, add_help=False)
        add_track_arguments(parser, exclude=("input", "out"))
        parser.set_defaults(**{f.name: getattr(track, f.name) for f in dataclasses.fields(track)})
        try:
            config = TrackConfig.from_namespace(parser.parse_args(list(clip.flags)))
            config.check()
        except ValueError as exc:
            raise BadInputError(f"the flags given for {clip.source} are not track flags: {exc}",
                                "Fix its line of the input list: the input, a tab, then track flags (for example "
                                "--frames 0:500 --preset standard).") from None
    return dataclasses.replace(config, input=str(clip.source), out=str(clip.out), threads=task_threads(config))


# --- the task ---------------------------------------------------------------------------------------------------

class EventRelay:
    """Ray actor: protocol lines from the tasks, in the order each task put them, until the driver drains them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def put(self, line: str) -> None:
        self._lines.append(line)

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


class _RelayStream:
    """A text stream for EventWriter that hands each line to the relay without waiting for it (Ray runs one
    caller's calls to an actor in order); ``close`` waits for the last one, so that a task's events reach the relay
    before its result reaches the driver. (Measured on the 2-core host: a synchronous call per event took 1.4 ms
    of the task's time, this way 0.5 ms.)"""

    def __init__(self, relay) -> None:
        self._relay = relay
        self._last = None

    def write(self, text: str) -> None:
        self._last = self._relay.put.remote(text.rstrip("\n"))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        import ray

        if self._last is not None:
            ray.get(self._last)


def run_step(step: str, config: TrackConfig, clip: str, relay, preset, chunk: tuple[int, int, int] | None):
    """Task body: one step of one clip (see ``_Batch``), its protocol events tagged with the clip."""
    # Ray cancels a running task by simulating SIGINT in the worker; a worker started from a background shell job
    # inherits SIGINT ignored, and would never see it. (SIGTERM keeps Ray's meaning, the worker's end, so that a
    # worker Ray stops is retried.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stream = _RelayStream(relay)
    events = EventWriter(stream, clip=clip)
    events.clip_state(clip, "running", config.out, config.input, socket.gethostname(), os.getpid())
    try:
        if step == TRACK:
            from ..tracking import run_track

            return run_track(config, events, preset).frames
        return STEPS[step](config, *(chunk or ()), events, preset)
    finally:
        stream.close()


# --- the driver -------------------------------------------------------------------------------------------------

def run_batch(inputs: Sequence[str], batch: BatchConfig, track: TrackConfig, events: EventWriter,
              preset=None) -> tuple[Path, int]:
    """Track ``inputs`` (paths or ``@list.txt``) into packages under ``batch.out_root``, each with ``track``'s
    settings (``preset``: the stage settings, as for ``run_track``).

    Uses the Ray this process is already connected to, if any (tests, embedding); otherwise starts or joins one and
    shuts it down at the end. Returns the output root and the frames its clips' packages hold; raises BackendError
    when any clip failed.
    """
    runs = [_Clip(clip, clip_config(track, clip)) for clip in assign_folders(expand_inputs(inputs), batch.out_root)]
    if batch.chunk_frames and any(run.config.overwrite for run in runs):
        raise BadInputError("--overwrite cannot re-track clips in chunks",
                            "Delete the packages to re-track, or drop --chunk-frames.")
    try:
        import ray
    except ImportError:
        raise BadInputError("the batch command needs Ray, which is not installed", RAY_MISSING_HINT) from None
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, batch, max(run.config.threads for run in runs))
    cancel = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in CANCEL_SIGNALS}
    install_cancel_handler(cancel.set)   # after ray.init, which replaces the driver's SIGTERM handler
    try:
        if batch.ray_address:
            check_shared_storage(ray, batch.out_root, [run.clip.source for run in runs])
        return _Batch(ray, batch, events, preset, cancel).run(runs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            ray.shutdown()


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with a clear message when a ``HOST:PORT`` or ``ray://HOST:PORT`` address does not answer (ray.init
    would retry for minutes); ``auto`` (a node of this machine's cluster) is left to Ray."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise BadInputError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc})",
                            "Check the address (ray://HEAD:10001 for Ray Client, HEAD:6379 on a node of the "
                            "cluster) and that the head is running and reachable from this machine.") from None


def _start_ray(ray, config: BatchConfig, threads: int) -> None:
    # Workers import torch before the backend could set the OpenMP spin limit, so they get it from the environment.
    env = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", GOMP_SPINCOUNT)}
    # A local Ray started here reports nothing to Ray's usage statistics (a studio's machines, often offline).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    backend_dir = str(Path(__file__).resolve().parents[1])
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if config.ray_address:
            check_reachable(config.ray_address)
            # The cluster's nodes get this backend's code (its built-in model included): results match the driver's.
            ray.init(address=config.ray_address, runtime_env={"py_modules": [backend_dir], "env_vars": env}, **common)
        else:
            slots = config.workers or max(1, (os.cpu_count() or 1) // threads)
            # No runtime_env: the workers inherit this environment (through the raylet), so Ray can hand the tasks
            # to the workers it prestarts during ray.init; a job with a runtime_env gets workers started only when
            # its first tasks arrive (measured under load 13: 4.8-5.2 s after ray.init, against 0.03 s).
            with _environment(dict(env, PYTHONPATH=os.pathsep.join(
                    filter(None, [str(Path(backend_dir).parent), os.environ.get("PYTHONPATH")])))):
                # "local": a private Ray even when one already runs on this machine (plain ray.init() would join it)
                ray.init(address="local", num_cpus=slots * threads, object_store_memory=OBJECT_STORE_BYTES, **common)
    except ConnectionError as exc:
        raise BadInputError(f"cannot join the Ray cluster at {config.ray_address}: {exc}",
                            "Check the address (ray://HEAD:10001 or HEAD:6379), that this machine reaches it, and, "
                            "for a cluster with token authentication, RAY_AUTH_MODE=token with the cluster's token "
                            "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; ray get-auth-token on the "
                            "head prints it).") from None


@contextlib.contextmanager
def _environment(values: dict):
    """``os.environ`` with ``values`` set while the body runs (the processes it starts keep them)."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_shared_storage(ray, out_root: Path, sources: Sequence[Path]) -> None:
    """Refuse a cluster on which some node does not see ``out_root`` (a probe file written here) or an input."""
    out_root.mkdir(parents=True, exist_ok=True)
    probe = out_root / f".batch-probe-{uuid.uuid4().hex}"
    probe.write_text(probe.name)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        sees = ray.remote(num_cpus=0)(_node_sees)
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(probe), probe.name, [str(s) for s in sources]) for n in nodes])
    finally:
        probe.unlink(missing_ok=True)
    for node, missing in zip(nodes, seen):
        if missing:
            raise BadInputError(
                f"node {node.get('NodeManagerHostname') or node.get('NodeManagerAddress')} of the Ray cluster does "
                f"not see {missing[0]}",
                "Put the inputs and --out-root on storage every node mounts at the same path (NFS, SMB, a cloud "
                "file system), and give those paths.")


def _node_sees(probe: str, text: str, sources: list[str]) -> list[str]:
    """On one node: the paths it cannot see (the probe must also hold the driver's text)."""
    missing = [s for s in sources if not os.path.exists(s)]
    try:
        ok = Path(probe).read_text() == text
    except OSError:
        ok = False
    return ([str(Path(probe).parent)] if not ok else []) + missing


@dataclass
class _Clip:
    """A clip of the batch in the driver: its settings and where its steps stand."""

    clip: BatchClip
    config: TrackConfig                   # the clip's track settings (input, out, threads)
    plan: chunks.ChunkPlan | None = None  # chunked clips, once prepared
    chunks_left: int = 0                  # CHUNK or REWRITE steps still running
    failed: bool = False


class _Batch:
    """Submits the steps of every clip, relays their events, and reports each clip once it is complete or failed.

    A clip is one ``TRACK`` step; with ``chunk_frames``, ``PREPARE``, one ``CHUNK`` per unfinished range, the
    driver's stitch, ``REFINE`` (the joint refinement), one ``REWRITE`` per range, the driver's stitch, ``FINISH``
    (``chunks``).
    """

    def __init__(self, ray, batch: BatchConfig, events: EventWriter, preset, cancel: threading.Event) -> None:
        self.ray, self.batch, self.events, self.preset = ray, batch, events, preset
        self.cancel = cancel             # set by SIGTERM / SIGINT / CTRL_BREAK
        self.relay = ray.remote(num_cpus=0)(EventRelay).remote()
        self.task = ray.remote(max_retries=MAX_RETRIES)(run_step)
        self.pending: dict = {}          # ObjectRef -> (_Clip, step)
        self.finished = self.frames = 0
        self.failed: list[str] = []

    def run(self, runs: list[_Clip]) -> tuple[Path, int]:
        from ray.exceptions import RayError

        for run in runs:
            done = None if run.config.overwrite else _complete_frames(run.clip)
            if done is not None:
                self.events.clip_state(run.clip.name, "skipped", run.clip.out, run.clip.source)
                self.finished, self.frames = self.finished + 1, self.frames + done
                continue
            self._submit(run, PREPARE if self.batch.chunk_frames else TRACK)
        total = len(runs)
        self.events.progress("batch", self.finished, total, message=f"{total - self.finished} clips to track")
        try:
            while self.pending:
                if self.cancel.is_set():
                    raise Cancelled("cancelled", CANCEL_HINT)
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_S)
                _relay(self.ray, self.relay, self.events)
                for ref in ready:
                    self._step_done(ref, total)
        except RayError:
            # The add-on's Cancel signals the whole process group: a local Ray's processes may stop before this
            # loop sees its own signal.
            if not self.cancel.wait(CANCEL_SIGNAL_WAIT_S):
                raise
            _cancel(self.ray, self.pending, self.relay, self.events)
            _mark_cancelled(runs)
            raise Cancelled("cancelled", CANCEL_HINT) from None
        except (Cancelled, KeyboardInterrupt):
            _cancel(self.ray, self.pending, self.relay, self.events)
            _mark_cancelled(runs)
            raise
        if self.failed:
            raise BackendError(f"{len(self.failed)} of {total} clips failed: {', '.join(self.failed)}",
                               "Their error events say why; run the same command again to retry them (finished "
                               "clips are skipped, partial ones resume).")
        return self.batch.out_root, self.frames

    def _submit(self, run: _Clip, step: str, chunk: tuple[int, int, int] | None = None) -> None:
        ref = self.task.options(num_cpus=run.config.threads).remote(step, run.config, run.clip.name, self.relay,
                                                                   self.preset, chunk)
        self.pending[ref] = (run, step)

    def _step_done(self, ref, total: int) -> None:
        run, step = self.pending.pop(ref)
        value = _outcome(self.ray, ref, run.clip, self.events)
        if run.failed:      # another step of this clip failed before: already reported
            return
        if value is not None and step in (PREPARE, CHUNK, REFINE, REWRITE):
            try:
                self._next_steps(run, step, value)
                return
            except BackendError as exc:   # the driver's own part (a part-package it cannot read, …)
                self.events.error(exc.message, exc.hint, exc.code, clip=run.clip.name)
                value = None
        if value is None:
            run.failed = True
            self.failed.append(run.clip.name)
            self.events.clip_state(run.clip.name, "failed", run.clip.out, run.clip.source)
        else:               # TRACK, FINISH: the package is complete
            if step == FINISH:
                chunks.remove_work_folder(run.clip.out)
            self.events.emit("result", path=str(run.clip.out), frames_done=value, clip=run.clip.name)
            self.events.clip_state(run.clip.name, "complete", run.clip.out, run.clip.source)
            self.finished, self.frames = self.finished + 1, self.frames + value
        self.events.progress("batch", self.finished + len(self.failed), total, message=f"{run.clip.name} done")

    def _next_steps(self, run: _Clip, step: str, value: int) -> None:
        """After PREPARE (``value``: selected frames): a CHUNK per unfinished range; after the last CHUNK: the stitch
        and REFINE; after REFINE (``value``: frames refined): a REWRITE per range; after the last REWRITE: the stitch
        and FINISH. A clip of one range goes from PREPARE to FINISH, which then tracks it as ``track`` does."""
        if step == PREPARE:
            run.plan = chunks.ChunkPlan(value, self.batch.chunk_frames)
            if len(run.plan.ranges) == 1:
                self._submit(run, FINISH)
                return
            self._submit_each(run, CHUNK, chunks.unfinished_parts(run.clip.out, run.plan))
        elif step == REFINE:
            self._submit_each(run, REWRITE, [(k, *r) for k, r in enumerate(run.plan.ranges)] if value else [])
        else:
            run.chunks_left -= 1
        if run.chunks_left:
            return
        # the driver is the package's only writer between the steps: it stitches the parts' frames into it
        if step in (PREPARE, CHUNK):
            chunks.stitch_parts(run.clip.out, run.plan)
            self._submit(run, REFINE)
        else:
            chunks.stitch_parts(run.clip.out, run.plan, rewritten=True)
            self._submit(run, FINISH)

    def _submit_each(self, run: _Clip, step: str, chunks_todo: list[tuple[int, int, int]]) -> None:
        run.chunks_left = len(chunks_todo)
        for chunk in chunks_todo:
            self._submit(run, step, chunk)


def _mark_cancelled(runs: list[_Clip]) -> None:
    """After a cancel: packages left ``running`` (a chunked clip between its steps, a task that stopped before it
    could mark its package) are marked ``cancelled``; one whose lock a task still holds is left to that task."""
    for run in runs:
        manifest = read_manifest_or_none(run.clip.out)
        if manifest and manifest["state"] == "running":
            try:
                ResultWriter(run.clip.out, manifest).finish("cancelled")
            except PackageError:
                pass


def _complete_frames(clip: BatchClip) -> int | None:
    """Frames of the clip's package when it is complete (a re-run skips it), else None."""
    manifest = read_manifest_or_none(clip.out)
    return len(manifest["frames"]) if manifest and manifest["state"] == "complete" else None


def _relay(ray, relay, events: EventWriter) -> None:
    for line in ray.get(relay.drain.remote()):
        data = json.loads(line)
        events.emit(data.pop("type"), **data)


def _outcome(ray, ref, clip: BatchClip, events: EventWriter):
    """A finished step's value, or None when it failed (its error reported for the clip; the batch goes on)."""
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, BackendError):
            events.error(cause.message, cause.hint, cause.code, clip=clip.name)
        else:
            print(f"clip {clip.name}: {exc}", file=sys.stderr)  # the worker's traceback, for the log
            events.error(f"Internal error: {type(cause).__name__}: {cause}",
                         "See the backend log for details and report it with the log attached.", clip=clip.name)
    except RayError as exc:  # its worker died more often than MAX_RETRIES
        events.error(f"the worker tracking {clip.name} stopped {MAX_RETRIES + 1} times ({exc})",
                     "Check the nodes' memory and logs; run the same command again to resume the clip.", clip=clip.name)
    return None


def _cancel(ray, pending: dict, relay, events: EventWriter) -> None:
    """Interrupt every task (KeyboardInterrupt in it: its package is marked cancelled), then stop stragglers.

    Ray may be stopping too (a signal to the whole process group): its errors then end the cancel quietly, the
    packages keep their finished frames either way."""
    from ray.exceptions import RayError

    try:
        for ref in pending:
            ray.cancel(ref)
        end = time.monotonic() + CANCEL_GRACE_S
        waiting = list(pending)
        while waiting and time.monotonic() < end:
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S)
        _relay(ray, relay, events)
        for ref in waiting:
            ray.cancel(ref, force=True)
    except RayError:
        pass
