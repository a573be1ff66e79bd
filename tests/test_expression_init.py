"""The landmark -> expression regressor (issue 23): rest-relative features, per-channel ridge by cross-validation,
and the calibrated response, on synthetic MediaPipe points (no rendering, < 10 s)."""
import numpy as np
import pytest

from backend.contracts import arkit
from backend.tracking import expression_init as ei
from backend.training.expression_init import (_LIPS, JAW_SAMPLER_FIRST, LIDS_FIRST, LIPS_SAMPLER_FIRST, _expression,
                                              _first_expression, _lid_expression, _lips_expression,
                                              expression_sampler, face_makes, train)

N_EX = len(arkit.ICT_NAMES)
BLINK, BROW = arkit.ICT_NAMES.index("eyeBlink_L"), arkit.ICT_NAMES.index("browInnerUp_L")
JAW, CLOSE = arkit.ICT_NAMES.index("jawOpen"), arkit.ICT_NAMES.index("mouthClose")


def _points(rng, identity, w, yaw):
    """(478, 3) MediaPipe-like points (u, v, depth px) of the template + an identity offset + expression moves."""
    p = ei.template().copy()
    p += identity
    p[[386, 385, 387]] += w[BLINK] * np.array([0.0, 0.008, 0.0])      # upper lid of the left eye down
    p[[296, 334, 293]] += w[BROW] * np.array([0.0, -0.01, 0.0])       # brow up
    c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    p = 4000.0 * p @ R.T + np.array([200.0, 220.0, 0.0])               # pixels, pose
    p += rng.normal(0, 0.05, p.shape)                                  # detector noise
    return np.concatenate([p, np.repeat(p[:10], 1, 0)])                # 478 points (irises unused)


def _data(rng, n_ids, frames):
    pts, ws, ids, rest_shapes = [], [], [], []
    for i in range(n_ids):
        identity = rng.normal(0, 0.004, (468, 3))                      # the person's own shape: larger than a blink
        rest_shapes.append(identity)
        for _ in range(frames):
            w = np.zeros(N_EX)
            if rng.uniform() < 0.4:
                w[rng.choice([BLINK, BROW])] = rng.uniform(0.3, 1.0)
            pts.append(_points(rng, identity, w, rng.uniform(-20, 20)))
            ws.append(w)
            ids.append(i)
    return {"points": np.array(pts, np.float32), "weights": np.array(ws, np.float32), "identity": np.array(ids)}


def test_trained_regressor_reads_the_change_from_the_persons_rest_face():
    rng = np.random.default_rng(0)
    arrays, cv_mae = train(_data(rng, 30, 12), log=lambda m: None)
    assert cv_mae.shape == (N_EX,) and cv_mae[BLINK] < 0.15 and cv_mae[BROW] < 0.15
    reg = ei.LandmarkExpressionRegressor(arrays)
    # the response's gain per channel: brows pulled down are read weakest, so they get the largest
    down, outer = arkit.ICT_NAMES.index("browDown_L"), arkit.ICT_NAMES.index("browOuterUp_L")
    assert (reg.gain[down], reg.gain[outer], reg.gain[BLINK]) == (ei.BROW_DOWN_RESPONSE_GAIN, ei.BROW_RESPONSE_GAIN,
                                                                  ei.RESPONSE_GAIN)
    # a new person: a clip at rest with one blink and one brow raise
    identity = rng.normal(0, 0.004, (468, 3))
    w = np.zeros((20, N_EX))
    w[8, BLINK] = 1.0
    w[14, BROW] = 0.8
    clip = np.stack([_points(rng, identity, wi, 10.0) for wi in w])
    out = reg(clip, ei.rest_features(clip))
    assert out.shape == (20, N_EX) and out.min() >= 0 and out.max() <= 1
    assert out[8, BLINK] > 0.5 and out[14, BROW] > 0.4, (out[8, BLINK], out[14, BROW])
    at_rest = np.delete(np.arange(20), [8, 14])
    # the calibrated response returns a face at rest to exactly 0 on the channels it reads
    assert (out[at_rest][:, [BLINK, BROW]] == 0).mean() > 0.9
    # without the clip's rest face, the person's own shape reads as an expression more often
    assert np.abs(reg(clip)[at_rest][:, [BLINK, BROW]]).mean() >= np.abs(out[at_rest][:, [BLINK, BROW]]).mean()


def test_rest_features_are_the_median_over_frames():
    rng = np.random.default_rng(1)
    clip = np.stack([_points(rng, 0.0, np.zeros(N_EX), y) for y in (-10, 0, 10, 5, -5)])
    f = ei.landmark_features(clip)
    assert np.allclose(ei.rest_features(clip), np.median(f, 0))
    assert f.shape == (5, 1404)


def test_mouth_channels_blend_the_landmark_reading_into_the_output():
    """A channel the table blends (jawOpen, landmark share 0.5) takes the mean of the model's value and the landmark
    regressor's reading on frames with points; frames without points, and the other channels, keep the model's
    value."""
    torch = pytest.importorskip("torch")
    from backend.model.encoders import CodeEncoders
    from backend.tracking.channel_table import ChannelTable
    from backend.tracking.codes import CodeSpace
    from backend.training.modelwrap import build_model, model_config

    class Reading:
        """Stands in for the regressor: every frame reads jawOpen 1, mouthFrown_L 1 and browDown_L 0.6."""

        def __call__(self, points, rest=None):
            w = np.zeros((len(points), N_EX), np.float32)
            w[:, [JAW, arkit.ICT_NAMES.index("mouthFrown_L"), arkit.ICT_NAMES.index("browDown_L")]] = 1.0, 1.0, 0.6
            return w

    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg, torch.randn(cfg.n_anchors, 3) * 0.2).eval()
    model.extra = {"landmark_channels": ["browDown_L", "browDown_R"]}
    rows = ChannelTable.model_only().channels
    rows["jawOpen"] = {"shares": {"model": 0.5, "landmarks": 0.5}}
    codes = CodeSpace(model, CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp), None, landmark_regressor=Reading(),
                      channel_table=ChannelTable(rows))
    points = np.zeros((468, 2), np.float32)
    readings = codes.landmark_readings([points, None, points], [np.zeros(468, np.float32)] * 3)
    assert np.isnan(readings[1]).all() and readings[0, JAW] == 1.0
    p_ex = torch.zeros(3, N_EX)
    p_ex[:, JAW] = 0.4                                                # the model's own jawOpen
    out = codes.arkit(p_ex, readings)
    jaw, frown = arkit.ARKIT_INDEX["jawOpen"], arkit.ARKIT_INDEX["mouthFrownLeft"]
    assert out[:, jaw] == pytest.approx([0.4 + 0.5 * 0.6, 0.4, 0.4 + 0.5 * 0.6])
    assert (out[:, frown] == 0).all()                                 # not blended: the points do not carry it
    assert np.array_equal(np.delete(out, jaw, 1), np.delete(codes.arkit(p_ex), jaw, 1))


def test_training_sampler_seals_the_lips_only_over_an_open_jaw():
    """ICT's mouthClose closes the lips over an open jaw (above jawOpen the lips pass through each other): the
    readers' training sampler never draws it above jawOpen, yet draws lips sealed over an open jaw and small openings
    often (the tuning clips' misses; the sampler before session 15 drew mouthClose above jawOpen in 179 of 192 frames
    with mouthClose > 0.3)."""
    rng = np.random.default_rng(0)
    w = np.stack([_expression(rng) for _ in range(2000)])
    assert face_makes(w).all()
    assert not face_makes(np.eye(N_EX, dtype=np.float32)[[CLOSE]]).any()
    sealed = (w[:, CLOSE] > 0.3) & (w[:, CLOSE] >= 0.7 * w[:, JAW])
    small = (w[:, JAW] >= 0.2) & (w[:, JAW] < 0.5)
    assert sealed.mean() > 0.08 and small.mean() > 0.15, (sealed.mean(), small.mean())


def test_identities_rendered_before_the_jaw_sampler_keep_their_first_sampler():
    """The shipped readers were trained on identities 0-324 drawn by the first sampler; those identities must render as
    they did (so every shipped file can be reproduced from the repo), the jaw sampler starting after them."""
    assert expression_sampler(0) is _first_expression and expression_sampler(JAW_SAMPLER_FIRST - 1) is _first_expression
    assert expression_sampler(JAW_SAMPLER_FIRST) is _expression
    assert expression_sampler(LIDS_FIRST) is _lid_expression
    rng = np.random.default_rng(0)   # the first sampler's draws, as session 14's code drew them
    w = np.stack([_first_expression(rng) for _ in range(4)])
    assert w.sum(1) == pytest.approx([2.0671780, 2.6807189, 3.3299730, 1.3225549], abs=1e-6)
    assert [int(np.count_nonzero(x)) for x in w] == [3, 5, 5, 2]


def test_lips_sampler_moves_several_lip_channels_over_a_closed_jaw():
    """The jaw reader read lips parted, pursed or stretched without the jaw as an opening (the speech-like tuning clips,
    session 16): identities from ``LIPS_SAMPLER_FIRST`` draw several lip channels at once over a closed jaw three times
    as often as the jaw sampler, and small openings under them; the jaw sampler's identities keep their draws."""
    assert expression_sampler(LIPS_SAMPLER_FIRST - 1) is _expression
    assert expression_sampler(LIPS_SAMPLER_FIRST) is _lips_expression
    assert expression_sampler(LIDS_FIRST) is _lid_expression
    assert arkit.ICT_NAMES.index("jawOpen") not in _LIPS and CLOSE not in _LIPS
    rng = np.random.default_rng(0)   # the jaw sampler's draws, as session 15 rendered identities 325-624
    w = np.stack([_expression(rng) for _ in range(4)])
    assert w.sum(1) == pytest.approx([2.0671780, 2.8861742, 1.9802407, 4.4201508], abs=1e-6)
    shares = []
    for sampler in (_expression, _lips_expression):
        rng = np.random.default_rng(1)
        w = np.stack([sampler(rng) for _ in range(2000)])
        assert face_makes(w).all()
        lips = (w[:, _LIPS] >= 0.3).sum(1)
        shares.append(((w[:, JAW] == 0) & (lips >= 3)).mean())
    assert shares[1] > 0.2 and shares[1] > 2.5 * shares[0], shares
    speech = (w[:, JAW] > 0.1) & (w[:, JAW] < 0.6) & (lips >= 2)
    assert speech.mean() > 0.2, speech.mean()


def _sideways_jaw(shift):
    """(478, 3) MediaPipe-like points of the ICT mean head (pixels) with everything below the mouth corners moved
    sideways by ``shift`` eye-corner distances (+: image right, the subject's left), as a jaw moved aside moves them."""
    tpl = ei.template().copy()
    lower = tpl[:, 1] > tpl[[61, 291], 1].mean()                       # MediaPipe's y points down
    tpl[lower, 0] += shift * np.linalg.norm(tpl[263] - tpl[33])
    p = 4000.0 * tpl + np.array([200.0, 220.0, 0.0])
    return np.concatenate([p, p[:10]])


def test_the_linear_landmark_reading_keeps_a_jaw_moved_aside_that_the_response_cuts():
    """Session 18: the shipped map reads a jaw moved aside (0.04 eye-corner distances, ~3 mm) at 0.09 against 0.03 at
    rest, under the regressor's own dead zone (0.07), so its response (the ``landmarks`` source) reads ~0; its linear
    reading (``landmarks_linear``) keeps it, and the draft table ships jawLeft from it while a face at rest and the
    other side read 0."""
    torch = pytest.importorskip("torch")
    from backend import BUILTIN_MODEL_DIR
    from backend.tracking.channel_table import ChannelTable
    from backend.tracking.codes import LANDMARK_SOURCE, LINEAR_SOURCE, CodeSpace

    reg = ei.LandmarkExpressionRegressor.load(BUILTIN_MODEL_DIR)
    frames = np.stack([_sideways_jaw(0.0), _sideways_jaw(0.04), _sideways_jaw(-0.04)])
    rest = ei.landmark_features(frames[:1])[0]
    left, right = arkit.ICT_NAMES.index("jawLeft"), arkit.ICT_NAMES.index("jawRight")
    linear = reg.linear(frames, rest)
    assert linear[1, left] - linear[0, left] > 0.04 and linear[2, right] - linear[0, right] > 0.04
    assert reg(frames, rest)[:, [left, right]].max() < 0.06             # the response: under its dead zone

    class Regressor:   # the shipped map, without a model to fit
        linear, __call__ = staticmethod(reg.linear), staticmethod(reg.__call__)

    from backend.model.encoders import CodeEncoders
    from backend.training.modelwrap import build_model, model_config

    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg, torch.randn(cfg.n_anchors, 3) * 0.2).eval()
    model.extra = {"landmark_channels": ["browDown_L", "browDown_R"]}
    codes = CodeSpace(model, CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp), None, landmark_regressor=Regressor())
    codes.landmark_rest = rest
    points, depths = [f[:, :2] for f in frames], [f[:, 2] for f in frames]
    readings = codes.arkit_readings(torch.zeros(3, N_EX), codes.landmark_readings(points, depths), None,
                                    codes.landmark_readings(points, depths, linear=True))
    jaw_left, jaw_right = arkit.ARKIT_INDEX["jawLeft"], arkit.ARKIT_INDEX["jawRight"]
    assert readings[LINEAR_SOURCE][1, jaw_left] == pytest.approx(linear[1, left], abs=1e-5)
    assert readings[LANDMARK_SOURCE][:, [jaw_left, jaw_right]].max() < 0.06
    # the draft table (its jaw-side rows blend the image readers, absent here: the linear reading alone)
    out = ChannelTable.load(BUILTIN_MODEL_DIR)({"model": readings["model"], LINEAR_SOURCE: readings[LINEAR_SOURCE]})
    assert out[1, jaw_left] > 0.15 and out[2, jaw_right] > 0.15
    assert out[0, [jaw_left, jaw_right]].max() == 0 and out[1, jaw_right] == 0 and out[2, jaw_left] == 0
