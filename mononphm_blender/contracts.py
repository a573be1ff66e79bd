"""Where the backend's torch-free contract modules come from.

The add-on imports the *same* modules the backend uses (``backend.contracts``: ``protocol``, ``result_format``,
``conventions``, ``track_config``, ``arkit``, ``mediapipe_models``):

- installed extension: bundled inside the zip as ``<addon>/backend`` and imported as ``<addon>.backend``;
- development checkout: the repository's ``backend/`` next to ``mononphm_blender/``, imported as ``backend``.

``backend_root()`` is the folder that holds the ``backend`` package, i.e. the working directory / PYTHONPATH
entry for ``python -m backend``. ``MONONPHM_BACKEND_PATH`` overrides it for the subprocess only (tests point it
at a fake backend); the contract modules are always the real ones.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

ADDON_DIR = Path(__file__).resolve().parent
_BUNDLED = ADDON_DIR / "backend"
_REPO_ROOT = ADDON_DIR.parent


def is_bundled() -> bool:
    """True inside a built extension (the backend ships inside the add-on folder)."""
    return (_BUNDLED / "__init__.py").is_file()


def repo_root() -> Path | None:
    """The development checkout's root, or None for an installed extension."""
    if not is_bundled() and (_REPO_ROOT / "backend" / "__init__.py").is_file():
        return _REPO_ROOT
    return None


def backend_root() -> Path:
    """Folder containing the ``backend`` package that ``python -m backend`` runs."""
    override = os.environ.get("MONONPHM_BACKEND_PATH")
    if override:
        return Path(override)
    if is_bundled():
        return ADDON_DIR
    root = repo_root()
    if root is None:
        raise ImportError("the MonoNPHM backend package is missing: neither the bundled "
                          f"{_BUNDLED} nor a repository backend/ next to {ADDON_DIR} exists")
    return root


def requirements_file(batch: bool = False) -> Path:
    """The pinned backend requirements (bundled copy in the extension, the repo's file in development); ``batch``:
    with Ray for the Batch panel (``requirements-batch.txt``, which includes ``requirements.txt``)."""
    name = "requirements-batch.txt" if batch else "requirements.txt"
    bundled = ADDON_DIR / name
    if bundled.is_file():
        return bundled
    return _REPO_ROOT / name


def _backend_package() -> ModuleType:
    if is_bundled():
        return importlib.import_module(f"{__package__}.backend")
    root = repo_root()
    if root is None:
        raise ImportError(f"cannot find the MonoNPHM backend contract modules next to {ADDON_DIR}")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return importlib.import_module("backend")


def contract(name: str) -> ModuleType:
    """Import ``backend.<name>`` from wherever the backend package lives."""
    package = _backend_package()
    return importlib.import_module(f"{package.__name__}.{name}")


protocol = contract("contracts.protocol")
result_format = contract("contracts.result_format")
conventions = contract("contracts.conventions")
track_config = contract("contracts.track_config")
arkit = contract("contracts.arkit")
mediapipe_models = contract("contracts.mediapipe_models")
