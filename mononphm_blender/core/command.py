"""Backend command lines (argument lists, never shell strings) and their environment; bpy-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


PRESETS = ("draft", "standard", "high")
OUTPUTS = ("shape_keys", "meshes", "both")
DEVICES = ("auto", "cpu", "cuda", "mps")


def frames_arg(start: int | None, stop: int | None, stride: int = 1) -> str | None:
    """0-based source indices [start, stop] inclusive + stride → ``--frames START:STOP:STEP`` (None = all)."""
    if start is None and stop is None and stride <= 1:
        return None
    if stride < 1:
        raise ValueError("stride must be at least 1")
    a = "" if start is None else str(max(0, int(start)))
    b = "" if stop is None else str(int(stop) + 1)
    return f"{a}:{b}:{int(stride)}"


@dataclass
class TrackRequest:
    input_path: str
    out_dir: str
    frames: str | None = None
    preset: str = "standard"
    output: str = "shape_keys"
    device: str = "auto"
    intrinsics: dict | None = None  # fx, fy, cx, cy in source pixels
    official_checkpoint: str | None = None
    mean_anchors: str | None = None
    checkpoint_epoch: int | None = None
    model_dir: str | None = None
    overwrite: bool = False
    max_size: int | None = None
    threads: int | None = None


def track_argv(python: str, req: TrackRequest) -> list[str]:
    """``python -m backend track …`` for a request (see backend/cli.py for every flag)."""
    if req.preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}")
    if req.output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}")
    if req.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}")
    argv = [str(python), "-m", "backend", "track", str(req.input_path), "--out", str(req.out_dir),
            "--preset", req.preset, "--output", req.output, "--device", req.device]
    if req.frames:
        argv += ["--frames", req.frames]
    if req.intrinsics:
        for key in ("fx", "fy", "cx", "cy"):
            if req.intrinsics.get(key) is not None:
                argv += [f"--{key}", repr(float(req.intrinsics[key]))]
    if req.official_checkpoint:
        if not req.mean_anchors:
            raise ValueError("an official checkpoint needs its mean-anchors file (anchors_65.npy)")
        argv += ["--official-checkpoint", str(req.official_checkpoint), "--mean-anchors", str(req.mean_anchors)]
        if req.checkpoint_epoch:
            argv += ["--checkpoint-epoch", str(int(req.checkpoint_epoch))]
    elif req.model_dir:
        argv += ["--model", str(req.model_dir)]
    if req.max_size is not None:
        argv += ["--max-size", str(int(req.max_size))]
    if req.threads:
        argv += ["--threads", str(int(req.threads))]
    if req.overwrite:
        argv.append("--overwrite")
    return argv


def version_argv(python: str) -> list[str]:
    return [str(python), "-m", "backend", "--version", "--json"]


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
