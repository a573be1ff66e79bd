"""The add-on's bpy-free layer (mononphm_blender.core): importable and tested without Blender."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.contracts import conventions as cv
from mononphm_blender.core import layout

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_without_blender():
    """With bpy and mathutils unimportable, the package and its core layer still import."""
    code = ("import sys; sys.modules['bpy'] = None; sys.modules['mathutils'] = None\n"
            "import mononphm_blender.core.command, mononphm_blender.core.jobs, mononphm_blender.core.layout\n"
            "import mononphm_blender.core.installer\n"
            "from mononphm_blender import contracts\n"
            "assert contracts.track_config.PRESET_NAMES[0] == 'draft'\n"
            "try:\n    import mononphm_blender.ops\nexcept ImportError:\n    print('ops needs bpy')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ops needs bpy"  # the check is real: Blender-side modules do need bpy


def test_pile_keyframes_sum_to_one_between_tracked_frames():
    frames = np.array([1, 3, 5, 9])
    piles = layout.pile_keyframes(frames)
    assert piles[0].tolist() == [[1, 1], [3, 0]]
    assert piles[1].tolist() == [[1, 0], [3, 1], [5, 0]]
    assert piles[-1].tolist() == [[5, 0], [9, 1]]
    for t in np.linspace(1, 9, 33):
        total = sum(np.interp(t, p[:, 0], p[:, 1]) for p in piles)
        assert total == pytest.approx(1.0)


def test_decompose_and_euler_round_trip():
    rng = np.random.default_rng(1)
    angles = rng.uniform(-1.0, 1.0, size=(20, 3))
    rot = layout.euler_xyz_to_matrix(angles)
    scale = rng.uniform(0.5, 2.0, size=20)
    t = rng.normal(size=(20, 3))
    m = cv.similarity_matrices(scale, rot, t)
    loc, r, s = layout.decompose_similarity(m)
    assert np.allclose(loc, t) and np.allclose(s, scale[:, None]) and np.allclose(r, rot)
    assert np.allclose(layout.euler_xyz_to_matrix(layout.rotations_to_euler_xyz(r)), rot, atol=1e-9)


def test_euler_is_unwrapped_over_time():
    yaw = np.linspace(0, 4 * np.pi, 50)
    rot = layout.euler_xyz_to_matrix(np.stack([np.zeros(50), np.zeros(50), yaw], 1))
    eul = layout.rotations_to_euler_xyz(rot)
    assert np.abs(np.diff(eul[:, 2])).max() < 0.5  # no 2π jumps


def test_keyframe_co_drops_nan_and_bad_frames():
    co = layout.keyframe_co([1, 2, 3], [0.5, np.nan, 2.0])
    assert co.tolist() == [[1, 0.5], [3, 2.0]] and co.dtype == np.float32
    assert layout.bad_frames([1, 2, 3, 4], [1.0, 9.0, np.nan, 5.0], 4.0) == [(2, 9.0), (4, 5.0)]


def test_fps_helper():
    assert layout.fps_and_base(25.0) == (25, 1.0)
    whole, base = layout.fps_and_base(29.97)
    assert whole == 30 and whole / base == pytest.approx(29.97)
    with pytest.raises(ValueError):
        layout.fps_and_base(0)


def test_to_blender_matches_conventions():
    from mononphm_blender.importer import to_blender

    pts = np.random.default_rng(2).normal(size=(7, 11, 3)).astype(np.float32)
    assert np.allclose(to_blender(pts), cv.model_to_blender_points(pts), atol=1e-6)
