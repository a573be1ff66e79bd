"""``training.landmark_response``: how far MediaPipe's points follow each ICT channel (the limit of any reading from
the points, session 18)."""
import numpy as np
import pytest

from backend.contracts import arkit
from backend.training import landmark_response as lr
from shared_data import ICT_NPZ


def _frames(rng, n=4000, followed=0.5, noise=0.01):
    """Synthetic rest-relative features of 3 channels over 30 features: channel 0 moves the points by ``followed`` x
    its mesh delta, channel 1 not at all (the detector ignores it), channel 2 is never drawn."""
    D = rng.normal(size=(3, 30)) * 0.1
    Y = np.zeros((n, 3))
    Y[:, :2] = rng.uniform(0, 1, (n, 2)) * (rng.uniform(size=(n, 2)) < 0.3)
    X = followed * Y[:, :1] * D[0] + rng.normal(scale=noise, size=(n, 30))
    return X, Y, D


def test_a_followed_channel_reads_its_gain_and_an_ignored_one_reads_nothing():
    X, Y, D = _frames(np.random.default_rng(0))
    r = lr.channel_response(X, Y, D)
    assert r["gain"][0] == pytest.approx(0.5, abs=0.02) and r["cos"][0] > 0.99
    assert r["d_prime"][0] > 20                                  # 0.5 x |delta| ~ 0.27 over noise 0.01
    assert abs(r["gain"][1]) < 0.02 and r["d_prime"][1] < 0.5    # the noise's own direction: ~ 1/sqrt(n) x sqrt(F)
    assert np.isnan(r["gain"][2]) and np.isnan(r["d_prime"][2])  # never drawn (the gaze channels in the renders)
    assert r["mesh_norm"] == pytest.approx(np.linalg.norm(D, axis=1))


def test_d_prime_falls_as_the_detector_follows_less():
    rng = np.random.default_rng(1)
    full = lr.channel_response(*_frames(rng, followed=1.0))["d_prime"][0]
    weak = lr.channel_response(*_frames(np.random.default_rng(1), followed=0.1))["d_prime"][0]
    assert weak == pytest.approx(full / 10, rel=0.1)


def test_bad_shapes_are_refused():
    X, Y, D = _frames(np.random.default_rng(2), n=50)
    with pytest.raises(ValueError, match="shapes"):
        lr.channel_response(X, Y, D[:, :10])


def test_missing_training_chunks_exit_2(tmp_path, capsys, monkeypatch):
    import backend.training.data as data

    monkeypatch.setattr(data, "ICTModel", lambda: None)
    monkeypatch.setattr(lr, "ict_point_deltas", lambda ict: np.zeros((len(arkit.ICT_NAMES), 1404)))
    assert lr.main(["--cache", str(tmp_path), "--identities", "25"]) == 2
    assert "is not cached" in capsys.readouterr().err


def test_ict_deltas_move_the_chin_sideways_for_jaw_side_and_down_for_jaw_open():
    if not ICT_NPZ.is_file():
        pytest.skip("needs ICT-FaceKit in ../shared")
    from backend.training.data import ICTModel

    D = lr.ict_point_deltas(ICTModel()).reshape(len(arkit.ICT_NAMES), 468, 3)
    chin = 152
    left, right, jaw = (D[arkit.ICT_NAMES.index(n), chin] for n in ("jawLeft", "jawRight", "jawOpen"))
    assert abs(right[0]) > 5 * abs(right[1]) and np.sign(left[0]) == -np.sign(right[0])   # sideways, opposite
    assert jaw[1] > 0.2                                           # down (MediaPipe's y points down), eye-corner units


def test_another_sets_response_is_scored_against_these_frames_spread():
    """A few clips draw L and R together, so their own fit cannot tell them apart: the renders' response is scored on
    them instead, with the spread their own fit leaves."""
    X, Y, D = _frames(np.random.default_rng(3))
    renders = lr.channel_response(X, Y, D)
    Xc, Yc, _ = _frames(np.random.default_rng(4), n=300, noise=0.02)
    Yc[:, 1] = Yc[:, 0]                                          # drawn together: collinear
    clips = lr.channel_response(Xc, Yc, D, renders["response"])
    assert clips["gain"][0] == pytest.approx(renders["gain"][0]) and clips["cos"][0] == pytest.approx(renders["cos"][0])
    assert clips["d_prime"][0] == pytest.approx(renders["d_prime"][0] / 2, rel=0.15)   # twice the noise
