"""MonoNPHM model core (issue 3): config, batched ensemble field, deformation, root finding, checkpoints, meshes.

Public API::

    from backend.model import MonoNPHMConfig, MonoNPHM, load_model, save_model
"""
from .config import MonoNPHMConfig, OFFICIAL_MESH_BOX
from .mononphm import ModelOutput, MonoNPHM, geometric_init

__all__ = ["MonoNPHMConfig", "OFFICIAL_MESH_BOX", "MonoNPHM", "ModelOutput", "geometric_init"]

try:  # optional modules land incrementally; keep the core importable
    from .checkpoint import CheckpointError, load_model, load_official, save_model  # noqa: F401

    __all__ += ["CheckpointError", "load_model", "load_official", "save_model"]
except ImportError:  # pragma: no cover
    pass
