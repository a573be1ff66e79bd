"""Backend command lines (argument lists, never shell strings) and their environment; bpy-free."""

from __future__ import annotations

import os
import sys
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


ENV_MARKER = ".mononphm_backend_env"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def setup_steps(base_python: str, env_dir: str | os.PathLike, requirements: str | os.PathLike, *,
                wheel_dir: str | None = None, cpu_torch: bool = False) -> list[tuple[str, list[str]]]:
    """Commands that create the backend environment: a venv from a Python 3.11, then the pinned packages.

    Online: from the package index (with ``cpu_torch`` the CPU build of torch first, from PyTorch's CPU index).
    Offline: ``--no-index --find-links WHEEL_DIR`` (a folder of wheels downloaded elsewhere).
    """
    py = str(venv_python(env_dir))
    steps = [("Create environment", [str(base_python), "-m", "venv", str(env_dir)]),
             ("Mark environment", [py, "-c", f"open({str(Path(env_dir) / ENV_MARKER)!r}, 'w').write('mononphm')"])]
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheel_dir:
        pip += ["--no-index", "--find-links", str(wheel_dir)]
    elif cpu_torch and sys.platform != "darwin":  # macOS wheels on the index are already CPU/MPS builds
        torch_line = _requirement_line(requirements, "torch")
        if torch_line:
            steps.append(("Install CPU torch", pip + [torch_line, "--index-url", TORCH_CPU_INDEX]))
    steps.append(("Install backend packages", pip + ["-r", str(requirements)]))
    steps.append(("Check backend", [py, "-c", "import torch, numpy; print('torch', torch.__version__)"]))
    return steps


def _requirement_line(requirements: str | os.PathLike, name: str) -> str | None:
    try:
        for line in Path(requirements).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.lower().startswith(name + "=="):
                return line
    except OSError:
        return None
    return None


def check_base_python(python: str, run=None) -> str:
    """Version text of an interpreter; raises ValueError unless it is Python 3.11 (the backend's pinned version)."""
    import subprocess

    run = run or subprocess.run
    try:
        out = run([str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                  capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"cannot run {python}: {exc}") from None
    version = out.stdout.strip()
    if out.returncode != 0 or not version.startswith("3.11."):
        raise ValueError(f"{python} is Python {version or '?'}; the backend needs Python 3.11")
    return version


def is_managed_env(env_dir: str | os.PathLike) -> bool:
    """Only environments created by 'Set up backend' may be removed by 'Remove backend'."""
    return (Path(env_dir) / ENV_MARKER).is_file()
