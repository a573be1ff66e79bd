"""Backend command lines (argument lists, never shell strings) and their environment; bpy-free."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..contracts import track_config


def frames_arg(start: int | None, stop: int | None, stride: int = 1) -> str | None:
    """0-based source indices [start, stop] inclusive + stride → ``--frames START:STOP:STEP`` (None = all)."""
    if start is None and stop is None and stride <= 1:
        return None
    if stride < 1:
        raise ValueError("stride must be at least 1")
    a = "" if start is None else str(max(0, int(start)))
    b = "" if stop is None else str(int(stop) + 1)
    return f"{a}:{b}:{int(stride)}"


def track_argv(python: str, config: track_config.TrackConfig) -> list[str]:
    """``python -m backend track …`` for a run's settings; raises ValueError for settings the backend refuses."""
    return [str(python), "-m", "backend", "track", *config.to_argv()]


def bake_argv(python: str, package: str, frames: str | None = None, texture: bool = False) -> list[str]:
    """``python -m backend bake PACKAGE …``: re-bake the subject's colours (and a texture) from ``frames``."""
    argv = [str(python), "-m", "backend", "bake", str(package)]
    if frames:
        argv += ["--frames", frames]
    if texture:
        argv.append("--texture")
    return argv


def batch_argv(python: str, inputs: list[str], out_root: str, config: track_config.TrackConfig,
               workers: int = 0, chunk_frames: int = 0) -> list[str]:
    """``python -m backend batch INPUTS… --out-root DIR`` with ``config``'s tracking flags for every clip (its
    ``input`` and ``out`` are not used; ``workers`` 0 lets the backend choose, ``chunk_frames`` 0 never splits a
    clip); raises ValueError."""
    if not inputs:
        raise ValueError("the batch queue is empty")
    argv = [str(python), "-m", "backend", "batch", *map(str, inputs), "--out-root", str(out_root)]
    if workers:
        argv += ["--workers", str(int(workers))]
    if chunk_frames:
        argv += ["--chunk-frames", str(int(chunk_frames))]
    return argv + config.to_argv(exclude=("input", "out"))


def batch_list(clips: list[tuple[str, track_config.TrackConfig]]) -> str:
    """The text of a batch's ``@list`` file: per clip a line with its input, a tab and its own track flags (the
    backend applies them on top of the command's: ``backend/batch/inputs.py``); raises ValueError."""
    lines = []
    for path, config in clips:
        if any(c in path for c in "\t\r\n"):
            raise ValueError(f"an input whose name holds a tab or line break cannot be queued: {path!r}")
        lines.append(f"{path}\t{shlex.join(config.to_argv(exclude=('input', 'out')))}")
    return "".join(line + "\n" for line in lines)


def version_argv(python: str) -> list[str]:
    return [str(python), "-m", "backend", "--version", "--json"]


def validate_argv(python: str, package: str | os.PathLike) -> list[str]:
    """``python -m backend validate PACKAGE``: every rule of the result format, USD dependencies included."""
    return [str(python), "-m", "backend", "validate", str(package)]


def backend_env(backend_root: str | os.PathLike, base: dict | None = None) -> dict:
    """Environment for the backend: its package importable, unbuffered output, Blender's Python vars removed."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONHOME", "PYTHONEXECUTABLE", "PYTHONSTARTUP"):
        env.pop(key, None)  # Blender may set these for its own interpreter
    root = str(backend_root)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def venv_python(env_dir: str | os.PathLike) -> Path:
    env_dir = Path(env_dir)
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_project_python(repo_root: str | os.PathLike | None) -> Path | None:
    """The development checkout's ``.venv`` interpreter, when it exists."""
    if repo_root is None:
        return None
    candidate = venv_python(Path(repo_root) / ".venv")
    return candidate if candidate.is_file() else None


ENV_MARKER = ".mononphm_backend_env"  # in every environment made by Set Up Backend (core/installer.py)


def is_managed_env(env_dir: str | os.PathLike) -> bool:
    """Only environments created by 'Set up backend' may be removed by 'Remove backend'."""
    return (Path(env_dir) / ENV_MARKER).is_file()
