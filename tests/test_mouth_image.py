"""The mouth image regressor (issue 23): the frontalised mouth patch, training on rest-relative features, the shipped
file's loading, and its channels in the tracker's ARKit output (synthetic images, no rendering, < 30 s)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backend.contracts import arkit  # noqa: E402
from backend.tracking import mouth_image as mi  # noqa: E402
from backend.tracking.expression_init import template  # noqa: E402

PRESS = arkit.ICT_NAMES.index("mouthPress_L")


def _stripes(x, y):
    """A pattern on the mean head's (x, y) plane: stripes across the mouth region."""
    return 0.5 + 0.4 * np.sin(x * 40.0) * np.cos(y * 25.0)


def _posed(scale, angle, shift, size=256):
    """An image of ``_stripes`` and the MediaPipe points of the mean head under an in-plane similarity (so each
    pixel's template position is known exactly): pixel = scale * R(angle) @ template + shift."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    points = scale * template() @ R.T + np.array([shift[0], shift[1], 0.0])
    v, u = np.mgrid[0:size, 0:size] + 0.5
    xy = np.stack([u - shift[0], v - shift[1]], -1) @ R[:2, :2] / scale   # inverse of the similarity
    grey = (255 * _stripes(xy[..., 0], xy[..., 1])).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1), points


def test_mouth_patch_divides_out_the_head_pose():
    grid = mi.patch_grid()
    expected = _stripes(grid[..., 0], grid[..., 1]).reshape(mi.PATCH_SHAPE[0], 2, mi.PATCH_SHAPE[1], 2).mean((1, 3))
    inside = ~mi.patch_outside()
    assert 0.8 < inside.mean() < 1.0
    patches = [mi.mouth_patch(*_posed(scale, angle, shift)) for scale, angle, shift in
               ((300.0, 0.0, (128.0, 100.0)), (220.0, 0.3, (120.0, 90.0)), (360.0, -0.2, (140.0, 80.0)))]
    for p in patches:
        assert p.shape == mi.PATCH_SHAPE + (3,)
        assert np.abs(p[..., 0] - expected)[inside].mean() < 0.03
        assert (p[~inside] == mi.OUTSIDE_GREY).all()
    # the same face at another size, roll and place gives the same patch
    assert np.abs(patches[0] - patches[1]).mean() < 0.03 and np.abs(patches[0] - patches[2]).mean() < 0.03


def _patches(rng, colour, press):
    """(rows, cols, 3) mouth patches of one person (skin/lip colours ``colour``): a pressed mouth thins the lips'
    red band from 6 rows to 2."""
    r, c = mi.PATCH_SHAPE
    skin, lips = colour
    out = np.empty((len(press), r, c, 3), np.float32)
    for k, w in enumerate(press):
        p = np.tile(skin, (r, c, 1))
        half = int(round(3 - 2 * w))
        p[r // 2 - half:r // 2 + half, c // 4:3 * c // 4] = lips
        out[k] = np.clip(p * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, p.shape), 0, 1)
    return out


def _person(rng):
    skin = rng.uniform(0.4, 0.9) * np.array([1.0, 0.75, 0.6]) * rng.uniform(0.9, 1.1, 3)
    return skin, skin * np.array([0.9, 0.55, 0.55])


def test_trained_network_reads_the_change_from_the_clips_rest_patch(tmp_path):
    from backend.training.mouth_image import train

    rng = np.random.default_rng(0)
    patches, weights, ident = [], [], []
    for i in range(40):
        colour = _person(rng)
        press = np.where(rng.uniform(size=12) < 0.4, rng.uniform(0.3, 1.0, 12), 0.0)
        patches.append(_patches(rng, colour, press))
        w = np.zeros((12, len(arkit.ICT_NAMES)), np.float32)
        w[:, PRESS] = press
        weights.append(w)
        ident += [i] * 12
    data = {"patches": np.concatenate(patches), "weights": np.concatenate(weights), "identity": np.array(ident)}
    torch.manual_seed(0)
    net, _ = train(data, channels=("mouthFrown_L", "mouthPress_L"), shipped=("mouthPress_L",), epochs=25,
                   log=lambda m: None)
    torch.save(net.state_dict(), tmp_path / mi.FILE_NAME)
    reg = mi.MouthImageRegressor.load(tmp_path)      # a plain state dict, loaded with weights_only=True
    assert reg.channels == ("mouthPress_L",)
    # a new person: a clip at rest with two presses
    press = np.zeros(20)
    press[[6, 14]] = 1.0
    clip = _patches(rng, _person(rng), press)
    out = reg(clip, mi.rest_patch_features(clip))[:, 0]
    assert out.min() >= 0 and out.max() <= 1
    assert out[6] > 0.5 and out[14] > 0.5, out
    at_rest = np.delete(out, [6, 14])
    assert at_rest.max() < 0.25 and at_rest.mean() < 0.1, out      # the rest patch itself reads exactly 0
    assert mi.MouthImageRegressor.load(tmp_path / "absent") is None


def test_mouth_reading_replaces_its_channels_in_the_output():
    """A channel the table gives to the mouth image regressor (share 1) takes its reading on frames with a patch;
    frames without one and every other channel keep the tracker's value."""
    from backend.model.encoders import CodeEncoders
    from backend.tracking.channel_table import ChannelTable
    from backend.tracking.codes import CodeSpace
    from backend.training.modelwrap import build_model, model_config

    class Reading:
        """Stands in for the regressor: every frame reads mouthPress_L 0.8."""
        channels = ("mouthPress_L",)

        def __call__(self, patches, rest=None):
            return np.full((len(patches), 1), 0.8, np.float32)

    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg, torch.randn(cfg.n_anchors, 3) * 0.2).eval()
    rows = ChannelTable.model_only().channels
    rows["mouthPressLeft"] = {"shares": {"mouth_image": 1.0}}
    codes = CodeSpace(model, CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp), None, mouth_regressor=Reading(),
                      channel_table=ChannelTable(rows))
    patch = np.zeros(mi.PATCH_SHAPE + (3,), np.float16)
    reading = codes.mouth_readings([patch, None, patch])
    press = arkit.ARKIT_INDEX["mouthPressLeft"]
    assert reading.shape == (3, 52) and np.isnan(reading[1]).all()
    assert reading[0, press] == pytest.approx(0.8) and np.isnan(np.delete(reading[0], press)).all()
    p_ex = torch.zeros(3, len(arkit.ICT_NAMES))
    p_ex[:, PRESS] = 0.1                                             # the model's own value
    p_ex[:, arkit.ICT_NAMES.index("jawOpen")] = 0.4
    out = codes.arkit(p_ex, mouth_reading=reading)
    before = codes.arkit(p_ex)
    assert out[:, press] == pytest.approx([0.8, 0.1, 0.8])
    assert np.array_equal(np.delete(out, press, 1), np.delete(before, press, 1))


def test_detections_keep_the_mouth_patches_through_their_arrays():
    from backend.tracking.run import Detections

    rng = np.random.default_rng(2)
    lm = {0: rng.normal(size=(478, 2)).astype(np.float32), 1: None, 2: rng.normal(size=(478, 2)).astype(np.float32)}
    patches = {0: rng.uniform(size=mi.PATCH_SHAPE + (3,)).astype(np.float16), 1: None,
               2: rng.uniform(size=mi.PATCH_SHAPE + (3,)).astype(np.float16)}
    det = Detections([0, 1, 2], {0: 0.0, 1: 0.04, 2: 0.08}, lm, {0: 90.0, 1: 0.0, 2: 91.0},
                     depths={0: np.zeros(478, np.float32), 1: None, 2: np.ones(478, np.float32)},
                     mouth_patches=patches)
    back = Detections.from_arrays(det.to_arrays())
    assert np.array_equal(back.found_patches(), np.stack([patches[0], patches[2]]))
    assert back.mouth_patches[1] is None
    assert np.array_equal(det.subset([2]).found_patches(), patches[2][None])
    det.mouth_patches[2] = None                                      # a frame without its patch: no clip rest
    assert det.found_patches() is None and "mouth_patches" not in det.to_arrays()


def test_training_renders_carry_the_mouth_patch_of_each_detected_frame():
    """The training data's patches are cut from the rendered frame at its MediaPipe points (renders: ~1 s a frame)."""
    from shared_data import ICT_NPZ, MAKEHUMAN

    if not ICT_NPZ.is_file() or not MAKEHUMAN.is_dir():
        pytest.skip("needs ICT-FaceKit and the MakeHuman skins in ../shared")
    from backend.training.data import ICTModel
    from backend.training.expression_init import render_chunk

    data = render_chunk(ICTModel(), 0, 1, 2, patches=True)
    assert data["patches"].shape == (2,) + mi.PATCH_SHAPE + (3,)
    found = np.isfinite(data["points"]).all((1, 2))
    assert found.any() and np.isfinite(data["patches"][found]).all() and np.isnan(data["patches"][~found]).all()
    assert (data["patches"][found][:, mi.patch_outside()] == mi.OUTSIDE_GREY).all()
    assert data["patches"][found][:, ~mi.patch_outside()].std() > 0.02     # the face, not a constant
