"""Where the read-only shared material lives (``../shared`` beside the checkout; env MONONPHM_SHARED overrides).

Tests that need it skip with a clear reason when it is absent.
"""

import os
from pathlib import Path

SHARED = Path(os.environ.get("MONONPHM_SHARED") or Path(__file__).resolve().parents[2] / "shared")
PARITY_FIXTURE = SHARED / "fixtures" / "official-parity"
ICT_NPZ = SHARED / "data" / "ict-facekit" / "ict_face_model_light_head_f16.npz"
OFFICIAL_ANCHORS = SHARED / "data" / "official-mononphm-assets" / "anchors_65.npy"
CLIPS = SHARED / "data" / "clips"
MAKEHUMAN = SHARED / "data" / "makehuman"
MAKEHUMAN_SKELETON = MAKEHUMAN / "rigs" / "default.mhskel"
MAKEHUMAN_BASE_MESH = MAKEHUMAN / "3dobjs" / "base.obj"
