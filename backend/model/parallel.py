"""Chunk-level parallelism for no-grad evaluation.

With several intra-op (OpenMP) threads, every small matmul of the segmented ensemble opens a parallel region;
on a busy CPU (Blender running beside the backend, other jobs) one descheduled thread stalls each region.
Evaluating independent chunks in Python threads with one intra-op thread each avoids those barriers entirely
(PyTorch ops release the GIL) and is at least as fast on an idle machine.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, TypeVar

import torch

T = TypeVar("T")

_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed large blocks in the C heap instead of returning them to the OS (glibc only, once per process).

    Every layer of the ensemble allocates activation tensors of several MB; with glibc's defaults these are
    mmap-ed and unmapped on free, so each new tensor pays page faults on first touch (~1-3 ns per float, as much
    as the softplus itself).  Raising the mmap / trim thresholds lets the next chunk reuse the same pages
    (measured +5-30% on the query / tracking-step throughput).  The backend runs in its own process, so the
    process-wide setting is harmless; MONONPHM_TUNE_MALLOC=0 disables it.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("MONONPHM_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
        ok &= libc.mallopt(M_TOP_PAD, 64 << 20)
        return bool(ok)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the defaults
        return False


tune_allocator()

_FTZ = threading.local()
_FTZ_ENABLED = os.environ.get("MONONPHM_FLUSH_DENORMALS", "1") != "0"


class flush_denormals:
    """Context manager / decorator: flush denormal floats to zero (FTZ/DAZ) on the calling thread while inside.

    softplus(beta=100) evaluates exp(beta * z), which is denormal for z < -0.87 (common in deep hidden layers);
    x86 handles denormal operands in microcode, ~10x slower per element.  Flushing changes values by < 1e-37
    (float32; < 1e-307 float64) and made a deformation evaluation 1.7x faster.  The CPU mode is per thread and
    is restored (switched off) when the outermost scope of the thread exits, so it never leaks into other
    libraries running on the caller's thread (MediaPipe/XNNPACK fail to start under FTZ).
    `_FTZ.on` tells whether the current thread is inside a scope.  MONONPHM_FLUSH_DENORMALS=0 disables it.
    """

    def __enter__(self):
        depth = getattr(_FTZ, "depth", 0)
        if depth == 0 and _FTZ_ENABLED:
            torch.set_flush_denormal(True)
            _FTZ.on = True
        _FTZ.depth = depth + 1
        return self

    def __exit__(self, *exc):
        _FTZ.depth -= 1
        if _FTZ.depth == 0 and getattr(_FTZ, "on", False):
            torch.set_flush_denormal(False)
            _FTZ.on = False
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*a, **k):
            with flush_denormals():
                return fn(*a, **k)
        return wrapped


def set_threads(n: int) -> int:
    """Use n intra-op (OpenMP) threads, whose workers flush denormals; returns n (at least 1).

    `flush_denormals` can only switch the calling thread, but ops on torch's own threads (one autograd graph,
    large elementwise ops) run half their work on OpenMP workers, where softplus(beta=100) then hits denormals
    (measured 4.5 vs 1.8 ns per element).  A new thread starts with its creator's FTZ/DAZ mode (Linux), and OpenMP
    creates its workers at the first parallel region: so the workers are created here, inside a flushing scope,
    and keep the mode; the calling thread is restored afterwards.  Call it before any parallel torch work of the
    process (the CLI and the benchmarks do); workers that already exist keep their mode.
    """
    n = max(1, int(n))
    with flush_denormals():
        torch.set_num_threads(n)
        if n > 1:
            torch.ones(1 << 20).add_(1.0)  # above the intra-op grain size: opens a parallel region
    return n


def _chunk_bounds(n: int, chunk: int, min_chunk: int, workers: int) -> List[tuple]:
    """(start, stop) chunks of range(n); with several workers, at most ceil(n / workers) and at least min_chunk."""
    if workers > 1:
        chunk = max(min_chunk, min(chunk, -(-n // workers)))
    return [(s, min(n, s + chunk)) for s in range(0, n, chunk)]


def _on_worker_threads(run: Callable, bounds: Sequence, workers: int) -> List:
    """[run(b) for b in bounds] on ``workers`` Python threads, each with one intra-op torch thread."""
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(run, bounds))
    finally:
        torch.set_num_threads(workers)


def map_chunks(fn: Callable[[int, int], T], n: int, chunk: int, inference: bool = True,
               threads: bool = True) -> List[T]:
    """[fn(start, stop) for each chunk of range(n)], run on torch.get_num_threads() Python threads (threads=False:
    in order on the calling thread, e.g. for a GPU, whose kernels run asynchronously anyway)."""
    workers = torch.get_num_threads() if threads else 1
    bounds = _chunk_bounds(n, chunk, 256, workers)
    if workers <= 1 or len(bounds) <= 1:
        with flush_denormals():
            return [fn(s, e) for s, e in bounds]

    def run(b):
        with flush_denormals():
            if inference:
                with torch.inference_mode():
                    return fn(*b)
            with torch.no_grad():
                return fn(*b)

    return _on_worker_threads(run, bounds, workers)


def backward_in_chunks(loss_fn: Callable[[int, int], torch.Tensor], n: int, chunk: int) -> float:
    """Sum over chunks of loss_fn(start, stop).backward(), chunks run on torch.get_num_threads() Python threads.

    For losses that are sums over independent items (rays, points): each chunk builds and back-propagates its own
    graph with one intra-op thread; gradients accumulate into the shared leaves (codes, parameters), which
    autograd serialises.  Returns the total loss value.  Use it instead of one big graph on multi-core CPUs.
    """
    workers = torch.get_num_threads()
    bounds = _chunk_bounds(n, chunk, 64, workers)

    def run(b):
        with flush_denormals(), torch.enable_grad():
            loss = loss_fn(*b)
            loss.backward()
        return float(loss.detach())

    if workers <= 1 or len(bounds) <= 1:
        return sum(run(b) for b in bounds)
    return sum(_on_worker_threads(run, bounds, workers))
