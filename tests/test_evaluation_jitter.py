"""The real-clip jitter/error figures against an independent detector (issue 23): known tracks in, known figures out."""
import numpy as np
import pytest

from backend.evaluation.expression_benchmark import IBUG_OUTER_EYE_CORNERS, _against_independent


def test_mesh_and_mediapipe_are_scored_against_the_independent_points():
    rng = np.random.default_rng(0)
    T = 30
    ref = np.zeros((T, 68, 2))
    ref[:, :, 0] = np.linspace(100, 200, 68)            # 68 points on a line, drifting at constant velocity
    ref[:, :, 1] = 150 + np.arange(T)[:, None] * 0.5
    a, b = IBUG_OUTER_EYE_CORNERS
    eye = abs(ref[0, b, 0] - ref[0, a, 0])
    mediapipe = ref + [eye * 0.03, 0.0]                  # 3 % of the eye distance off, still
    following = ref[:, 17:] + rng.normal(0, 0.2, (T, 51, 2))
    decoys = ref[:, 17:] + 25.0                          # vertices far from every point
    uv = np.concatenate([decoys, following], 1)          # (T, 102, 2)
    ref_missing = ref.copy()
    ref_missing[5] = np.nan                              # the detector missed a frame
    out = _against_independent(uv, mediapipe, ref_missing)
    assert out["frames"] == T - 1
    assert out["error_mediapipe_pct"] == pytest.approx(3.0, rel=1e-6)
    expected_mesh = np.linalg.norm(following - ref[:, 17:], axis=-1).mean() / eye * 100
    assert out["error_mesh_pct"] == pytest.approx(expected_mesh, rel=0.05)    # the following vertices were picked
    assert out["error_ratio"] == pytest.approx(out["error_mesh_pct"] / 3.0)
    assert out["jitter_mediapipe_px"] == pytest.approx(0.0, abs=1e-9)         # constant velocity
    assert out["jitter_mesh_px"] > 0.3                                       # the noise's second differences
    assert set(out["jitter_mesh_by_region"]) == {"brows", "nose", "eyes", "mouth"}
