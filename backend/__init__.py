"""MonoNPHM backend: video → per-frame MonoNPHM fits → result package.

This package root stays free of torch: the Blender add-on imports the contract modules of ``backend.contracts``
(conventions, result format, protocol, track options, landmark tables, ARKit, geometry) with Blender's Python.
"""

from pathlib import Path

__version__ = "0.1.0"

BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "models" / "builtin"
"""The shipped default model folder (``model.pt``, ``config.json``, ``encoders.pt``, ``MODEL_CARD.md``)."""
