"""``python -m backend batch``: every clip one Ray task writing its own result package; one JSON-lines stream.

The driver (this process) starts a local Ray with ``--workers`` slots of ``--threads`` CPUs each, or joins a
cluster (``--ray-address``), submits one task per clip that is not finished yet, and relays the tasks' protocol
events, tagged with their ``clip``, to stdout. Each task is ``run_track`` on its package folder, so a task that
starts again (a retry after its worker died, or a re-run of the batch) resumes from the frames its package holds.

Ray retries a task whose worker process dies (``MAX_RETRIES``); an error the tracker raises (no face, bad file) is
reported for that clip and the batch goes on. Cancel (SIGTERM, CTRL_BREAK, Ctrl-C) interrupts every running task,
which marks its package ``cancelled`` with its finished frames kept; a re-run resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..openmp_env import GOMP_SPINCOUNT
from ..protocol import BackendError, BadInputError, Cancelled, EventWriter, install_cancel_handler
from ..result_format import PackageError, read_manifest
from .inputs import BatchClip, assign_folders, expand_inputs

log = logging.getLogger("backend.batch")

MAX_RETRIES = 3                   # attempts after a worker process died (node lost, out of memory, killed)
CANCEL_GRACE_S = 10.0             # running tasks get this long to mark their packages cancelled
POLL_S = 0.2                      # how often the driver relays events
CONNECT_TIMEOUT_S = 10.0          # a cluster address that does not answer within this is refused
OBJECT_STORE_BYTES = 80 * 2**20   # local Ray: only events and frame counts travel through it (Ray's minimum 75 MB)
RAY_MISSING_HINT = "Install the batch requirements into the backend environment: pip install -r requirements-batch.txt"


@dataclass(frozen=True)
class BatchConfig:
    """How the batch runs (the track flags travel separately, as for ``track``)."""

    out_root: Path
    """Folder holding one result package per clip; with ``ray_address`` it must be on storage every node mounts."""
    ray_address: str | None = None
    """Ray cluster to join (``ray://HOST:10001`` or ``HOST:6379``); None starts a local Ray."""
    workers: int = 0
    """Local Ray only: clips tracked at once (0 = logical CPUs // threads)."""
    threads: int = 1
    """Torch threads of each task, also the CPUs Ray reserves for it."""
    overwrite: bool = False
    """Re-track finished packages too (``track --overwrite``) instead of skipping them."""

    def local_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // self.threads)


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    threads = int(args.threads or 0) or 1
    if args.workers and args.ray_address:
        raise BadInputError("--workers applies to the local Ray only",
                            "Drop --workers: on a cluster, Ray runs as many clips at once as its CPUs allow.")
    if args.workers < 0 or threads < 0:
        raise BadInputError("--workers and --threads must be positive", "For example: --workers 2 --threads 1.")
    return BatchConfig(Path(args.out_root).resolve(), args.ray_address, int(args.workers), threads,
                       bool(args.overwrite))


# --- the task ---------------------------------------------------------------------------------------------------

class EventRelay:
    """Ray actor: protocol lines from the tasks, in the order they were put, until the driver drains them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def put(self, line: str) -> None:
        self._lines.append(line)

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


class _RelayStream:
    """A text stream for EventWriter that hands each line to the relay (synchronously: a task's events reach the
    relay before its result reaches the driver)."""

    def __init__(self, relay) -> None:
        self._relay = relay

    def write(self, text: str) -> None:
        import ray

        ray.get(self._relay.put.remote(text.rstrip("\n")))

    def flush(self) -> None:
        pass


def track_clip(track_args: argparse.Namespace, clip: str, relay) -> int:
    """Task body: track one clip into its package (resuming it); returns the package's frame count."""
    from ..tracking import run_track

    events = EventWriter(_RelayStream(relay), clip=clip)
    events.clip_state(clip, "running", track_args.out, track_args.input, socket.gethostname(), os.getpid())
    path = run_track(track_args, events)
    return len(read_manifest(path)["frames"])


# --- the driver -------------------------------------------------------------------------------------------------

def run_batch(args: argparse.Namespace, events: EventWriter) -> tuple[Path, int]:
    """Track ``args.inputs`` into packages under ``args.out_root``; ``args`` also holds the track flags.

    Uses the Ray this process is already connected to, if any (tests, embedding); otherwise starts or joins one and
    shuts it down at the end. Returns the output root and the frames its clips' packages hold; raises BackendError
    when any clip failed.
    """
    config = config_from_args(args)
    clips = assign_folders(expand_inputs(args.inputs), config.out_root)
    try:
        import ray
    except ImportError:
        raise BadInputError("the batch command needs Ray, which is not installed", RAY_MISSING_HINT) from None
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, config)
        install_cancel_handler()  # ray.init replaced the SIGTERM handler of the driver
    try:
        if config.ray_address:
            check_shared_storage(ray, config.out_root, [c.source for c in clips])
        return _run_clips(ray, config, clips, args, events)
    finally:
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


def _start_ray(ray, config: BatchConfig) -> None:
    # Workers import torch before the backend could set the OpenMP spin limit, so they get it from the environment.
    env = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", GOMP_SPINCOUNT)}
    backend_dir = str(Path(__file__).resolve().parents[1])
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if config.ray_address:
            check_reachable(config.ray_address)
            # The cluster's nodes get this backend's code (its built-in model included): results match the driver's.
            ray.init(address=config.ray_address, runtime_env={"py_modules": [backend_dir], "env_vars": env}, **common)
        else:
            ray.init(num_cpus=config.local_workers() * config.threads, object_store_memory=OBJECT_STORE_BYTES,
                     runtime_env={"env_vars": dict(env, PYTHONPATH=str(Path(backend_dir).parent))}, **common)
    except ConnectionError as exc:
        raise BadInputError(f"cannot join the Ray cluster at {config.ray_address}: {exc}",
                            "Check the address (ray://HEAD:10001 or HEAD:6379), that this machine reaches it, and "
                            "the cluster's auth token (RAY_AUTH_TOKEN or ~/.ray/auth_token).") from None


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


def _run_clips(ray, config: BatchConfig, clips: list[BatchClip], args, events: EventWriter) -> tuple[Path, int]:
    relay = ray.remote(num_cpus=0)(EventRelay).remote()
    task = ray.remote(num_cpus=config.threads, max_retries=MAX_RETRIES)(track_clip)
    pending: dict = {}
    failed: list[str] = []
    finished = frames = 0
    for clip in clips:
        done = None if config.overwrite else _complete_frames(clip)
        if done is not None:
            events.clip_state(clip.name, "skipped", clip.out, clip.source)
            finished, frames = finished + 1, frames + done
            continue
        track_args = copy.copy(args)
        track_args.input, track_args.out, track_args.threads = str(clip.source), str(clip.out), config.threads
        pending[task.remote(track_args, clip.name, relay)] = clip
    events.progress("batch", finished, len(clips), message=f"{len(pending)} clips to track")
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            _relay(ray, relay, events)
            for ref in ready:
                clip = pending.pop(ref)
                done = _collect(ray, ref, clip, events)
                if done is None:
                    failed.append(clip.name)
                else:
                    finished, frames = finished + 1, frames + done
                events.progress("batch", finished + len(failed), len(clips), message=f"{clip.name} done")
    except (Cancelled, KeyboardInterrupt):
        _cancel(ray, pending, relay, events)
        raise
    if failed:
        raise BackendError(f"{len(failed)} of {len(clips)} clips failed: {', '.join(failed)}",
                           "Their error events say why; run the same command again to retry them (finished clips "
                           "are skipped, partial ones resume).")
    return config.out_root, frames


def _complete_frames(clip: BatchClip) -> int | None:
    """Frames of the clip's package when it is complete (a re-run skips it), else None."""
    try:
        manifest = read_manifest(clip.out)
    except PackageError:
        return None
    return len(manifest["frames"]) if manifest["state"] == "complete" else None


def _relay(ray, relay, events: EventWriter) -> None:
    for line in ray.get(relay.drain.remote()):
        data = json.loads(line)
        events.emit(data.pop("type"), **data)


def _collect(ray, ref, clip: BatchClip, events: EventWriter) -> int | None:
    """Report one finished task: its result, or its error (the batch goes on). Its frame count, None if it failed."""
    from ray.exceptions import RayError, RayTaskError

    try:
        frames = ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, BackendError):
            events.emit("error", message=cause.message, hint=cause.hint, code=cause.code, clip=clip.name)
        else:
            print(f"clip {clip.name}: {exc}", file=sys.stderr)  # the worker's traceback, for the log
            events.emit("error", message=f"Internal error: {type(cause).__name__}: {cause}",
                        hint="See the backend log for details and report it with the log attached.",
                        code="internal", clip=clip.name)
        events.clip_state(clip.name, "failed", clip.out, clip.source)
        return None
    except RayError as exc:  # its worker died more often than MAX_RETRIES
        events.emit("error", message=f"the worker tracking {clip.name} stopped {MAX_RETRIES + 1} times ({exc})",
                    hint="Check the nodes' memory and logs; run the same command again to resume the clip.",
                    code="internal", clip=clip.name)
        events.clip_state(clip.name, "failed", clip.out, clip.source)
        return None
    events.emit("result", path=str(clip.out), frames_done=frames, clip=clip.name)
    events.clip_state(clip.name, "complete", clip.out, clip.source)
    return frames


def _cancel(ray, pending: dict, relay, events: EventWriter) -> None:
    """Interrupt every task (KeyboardInterrupt in it: its package is marked cancelled), then stop stragglers."""
    for ref in pending:
        ray.cancel(ref)
    end = time.monotonic() + CANCEL_GRACE_S
    waiting = list(pending)
    while waiting and time.monotonic() < end:
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S)
    _relay(ray, relay, events)
    for ref in waiting:
        ray.cancel(ref, force=True)
