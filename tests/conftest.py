"""Shared test set-up.

- The repository root is importable (``backend``, ``mononphm_blender``), and ``tests/`` too (``fakes``).
- Blender's user folders point at a scratch directory *before* bpy is imported, so tests never touch a real
  Blender configuration (extension installs, preferences, logs).
- One bpy session per process: the add-on is registered once (session fixture); ``scene`` gives each test an
  empty factory scene.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

_USER = Path(tempfile.mkdtemp(prefix="mononphm-blender-user-"))
os.environ.setdefault("BLENDER_USER_RESOURCES", str(_USER))
os.environ.setdefault("MONONPHM_CACHE_DIR", str(_USER / "cache"))  # measured kernel choices (backend.model.kernels)
atexit.register(shutil.rmtree, _USER, ignore_errors=True)
FAKES = TESTS / "fakes"


def have_bpy() -> bool:
    import importlib.util

    return importlib.util.find_spec("bpy") is not None


@pytest.fixture(scope="session")
def addon():
    """The development add-on, registered once for the whole session."""
    if not have_bpy():
        pytest.skip("bpy is not installed in this environment")
    import bpy  # noqa: F401

    import mononphm_blender

    mononphm_blender.register()
    yield mononphm_blender
    mononphm_blender.unregister()


@pytest.fixture
def scene(addon):
    """An empty factory-settings file with the add-on registered; returns bpy.context.scene."""
    import bpy

    from mononphm_blender import job_control

    job_control._jobs.clear()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


@pytest.fixture
def fake_backend(monkeypatch, tmp_path):
    """Point the add-on's backend at tests/fakes (python -m backend → the fake), logs into tmp_path."""
    monkeypatch.setenv("MONONPHM_BACKEND_PATH", str(FAKES))
    monkeypatch.setenv("MONONPHM_BACKEND_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_DELAY", "0.01")
    return FAKES


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op torch thread for a module: on a shared/busy CPU, many short 2-thread parallel regions stall
    (OpenMP spin-waits), which makes small-tensor tests slow and noisy."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
