import numpy as np
import pytest

from backend.contracts.geometry import fit_similarity


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_similarity_recovers_a_known_transform(seed):
    rng = np.random.default_rng(seed)
    R = _rotation(seed)
    src = rng.normal(size=(40, 3))
    dst = 0.8 * src @ R.T + np.array([0.1, -2.0, 3.0])
    s, R_fit, t = fit_similarity(src, dst)
    assert s == pytest.approx(0.8, abs=1e-12)
    np.testing.assert_allclose(R_fit, R, atol=1e-12)
    np.testing.assert_allclose(t, [0.1, -2.0, 3.0], atol=1e-12)


def test_fit_similarity_never_returns_a_reflection():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(30, 3))
    dst = src * np.array([-1.0, 1.0, 1.0])  # a mirror image: best proper rotation, not the reflection
    _, R, _ = fit_similarity(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0)
