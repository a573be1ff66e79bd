"""The face regions' image regressors (issue 23): the frontalised mouth and eye patches, training on rest-relative
features, the shipped files' loading, and their channels in the tracker's ARKit output (synthetic images, no
rendering apart from the last two tests, < 30 s)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backend.contracts import arkit  # noqa: E402
from backend.tracking import region_image as ri  # noqa: E402
from backend.tracking.expression_init import template  # noqa: E402

PRESS = arkit.ICT_NAMES.index("mouthPress_L")
SQUINT = arkit.ICT_NAMES.index("eyeSquint_L")
BROW = arkit.ICT_NAMES.index("browInnerUp_L")


def _stripes(x, y):
    """A pattern on the mean head's (x, y) plane."""
    return 0.5 + 0.4 * np.sin(x * 40.0) * np.cos(y * 25.0)


def _posed(scale, angle, shift, size=320, pattern=_stripes):
    """An image of ``pattern`` and the MediaPipe points of the mean head under an in-plane similarity (so each
    pixel's template position is known exactly): pixel = scale * R(angle) @ template + shift."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    points = scale * template() @ R.T + np.array([shift[0], shift[1], 0.0])
    v, u = np.mgrid[0:size, 0:size] + 0.5
    xy = np.stack([u - shift[0], v - shift[1]], -1) @ R[:2, :2] / scale   # inverse of the similarity
    grey = (255 * pattern(xy[..., 0], xy[..., 1])).astype(np.uint8)
    return np.repeat(grey[..., None], 3, -1), points


@pytest.mark.parametrize("region", ri.REGIONS, ids=lambda r: r.name)
def test_region_patch_divides_out_the_head_pose(region):
    rows, cols = region.shape
    patches = [ri.region_patches(*_posed(scale, angle, shift))[region.name] for scale, angle, shift in
               ((300.0, 0.0, (160.0, 130.0)), (220.0, 0.3, (150.0, 140.0)), (360.0, -0.2, (170.0, 150.0)))]
    for p in patches:
        assert p.shape == region.patch_shape
    # a mirrored region's second side is cut on the grid's mirror image (x -> -x)
    for side, mirror in enumerate((False, True) if region.mirrored else (False,)):
        grid = ri.patch_grid(region, mirror)
        expected = _stripes(grid[..., 0], grid[..., 1]).reshape(rows, 2, cols, 2).mean((1, 3))
        inside = ~ri.patch_outside(region, mirror)
        assert 0.8 < inside.mean() <= 1.0
        for p in patches:
            p = p[side] if region.mirrored else p
            assert np.abs(p[..., 0] - expected)[inside].mean() < 0.03
            assert (p[~inside] == ri.OUTSIDE_GREY).all()
    # the same face at another size, roll and place gives the same patch
    assert np.abs(patches[0] - patches[1]).mean() < 0.03 and np.abs(patches[0] - patches[2]).mean() < 0.03


@pytest.mark.parametrize("region", [r for r in ri.REGIONS if r.mirrored], ids=lambda r: r.name)
def test_mirrored_patch_shows_the_other_side_as_the_grid_side_looks(region):
    """LIDS / BROWS: one eye (brow) and the other flipped; a face symmetric about its midline gives the same patch
    twice, and a mark beside one eye (brow) shows on that side at the same place."""
    image, points = _posed(300.0, 0.0, (160.0, 130.0))
    v, u = np.mgrid[0:320, 0:320] + 0.5
    x = (u - 160.0) / 300.0                                   # template x of each pixel (no roll)
    sym = image.copy()
    sym[...] = (255 * (0.5 + 0.4 * np.cos(np.abs(x) * 60.0)))[..., None].astype(np.uint8)
    both = ri.region_patches(sym, points, [region])[region.name]
    inside = ~ri.patch_outside(region) & ~ri.patch_outside(region, True)
    assert np.abs(both[0] - both[1])[inside].mean() < 0.01
    marked = sym.copy()
    eye = ri.patch_grid(region).reshape(-1, 3).mean(0)       # the grid side's middle: the subject's left (x > 0)
    near = (np.abs(x - eye[0]) < 0.02) & (np.abs((v - 130.0) / 300.0 - eye[1]) < 0.02)
    marked[near] = 0
    mark = ri.region_patches(marked, points, [region])[region.name]
    assert np.abs(mark[0] - both[0]).mean() > 0.02 and np.abs(mark[1] - both[1]).mean() < 1e-6
    assert arkit.mirror_name("eyeBlink_L") == "eyeBlink_R" and arkit.mirror_name("eyeBlink_R") == "eyeBlink_L"
    assert arkit.mirror_name("jawOpen") == "jawOpen"


def test_the_jaw_patch_shows_the_chin_outline_below_the_face_mesh():
    """An opening jaw moves the chin's outline below MediaPipe's lowest point (152): the jaw patch samples there
    (its rows below the chin are image, not ``OUTSIDE_GREY``) and the outline's drop moves down its rows."""
    chin = template()[152, 1]

    def dark_rows(drop):
        image, points = _posed(300.0, 0.1, (160.0, 110.0), pattern=lambda x, y: np.where(y > chin + drop, 0.1, 0.9))
        return int((ri.region_patches(image, points, [ri.JAW])["jaw"][..., 0].mean(1) < 0.5).sum())

    assert not ri.patch_outside(ri.JAW).any() and ri.patch_grid(ri.JAW)[-1, 0, 1] > chin
    assert dark_rows(0.0) > dark_rows(0.03) > dark_rows(0.06) > 0


def test_the_brow_patch_keeps_a_raised_brow_and_the_forehead_above_it():
    """A brow raised by 8 mm (0.03 of the mean head's units) stays in the BROWS patch, its outline moves up by about
    9 of the patch's rows (0.9 mm per row), and the forehead above it is in the patch (no ``OUTSIDE_GREY``) on both
    sides."""
    brow = template()[[336, 296, 334, 293, 300], 1].mean()          # the left brow's upper outline

    def dark_rows(lift):
        image, points = _posed(300.0, 0.1, (160.0, 170.0),
                               pattern=lambda x, y: np.where(np.abs(y - (brow - lift)) < 0.008, 0.1, 0.9))
        sides = ri.region_patches(image, points, [ri.BROWS])["brows"][..., 0].mean(2) < 0.5    # (2, rows)
        return [np.flatnonzero(s) for s in sides]

    assert not ri.patch_outside(ri.BROWS).any() and not ri.patch_outside(ri.BROWS, True).any()
    for rest, raised in zip(dark_rows(0.0), dark_rows(0.03)):
        assert len(rest) and len(raised) and raised.min() > 2                # inside the patch, forehead above it
        assert 7 <= rest.mean() - raised.mean() <= 11


def _person(rng):
    skin = rng.uniform(0.4, 0.9) * np.array([1.0, 0.75, 0.6]) * rng.uniform(0.9, 1.1, 3)
    return skin, skin * np.array([0.9, 0.55, 0.55])


def _mouths(rng, colour, press):
    """(rows, cols, 3) mouth patches of one person (skin/lip colours ``colour``): a pressed mouth thins the lips'
    red band from 6 rows to 2."""
    r, c = ri.MOUTH.shape
    skin, lips = colour
    out = np.empty((len(press), r, c, 3), np.float32)
    for k, w in enumerate(press):
        p = np.tile(skin, (r, c, 1))
        half = int(round(3 - 2 * w))
        p[r // 2 - half:r // 2 + half, c // 4:3 * c // 4] = lips
        out[k] = np.clip(p * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, p.shape), 0, 1)
    return out


def _eyes(rng, colour, squint, brow):
    """(rows, cols, 3) eye patches of one person: a dark eye opening of 5 rows that a squint narrows to 1 from below,
    under a dark brow band that a raise lifts by up to 5 rows."""
    r, c = ri.EYES.shape
    skin = colour[0]
    out = np.empty((len(squint), r, c, 3), np.float32)
    for k, (sq, br) in enumerate(zip(squint, brow)):
        p = np.tile(skin, (r, c, 1))
        low = 22 - int(round(4 * sq))
        for x0 in (c // 8, 5 * c // 8):
            p[17:low, x0:x0 + c // 4] = 0.15
            top = 11 - int(round(5 * br))
            p[top:top + 3, x0 - 2:x0 + c // 4 + 2] = skin * 0.35
        out[k] = np.clip(p * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, p.shape), 0, 1)
    return out


def _train_and_reload(tmp_path, region, make, channels, shipped, members):
    """A ``RegionImageNet`` trained on 40 synthetic people x 12 frames (``make(rng, colour, w (12, C))`` -> patches;
    the trained channels not ``shipped`` stay 0), saved and loaded back as the tracker loads it."""
    from backend.training.region_image import train

    rng = np.random.default_rng(0)
    patches, weights, ident = [], [], []
    cols = [arkit.ICT_NAMES.index(c) for c in channels]
    for i in range(40):
        w = np.where(rng.uniform(size=(12, len(cols))) < 0.25, rng.uniform(0.3, 1.0, (12, len(cols))), 0.0)
        w *= np.isin(channels, shipped)
        patches.append(make(rng, _person(rng), w))
        full = np.zeros((12, len(arkit.ICT_NAMES)), np.float32)
        full[:, cols] = w
        weights.append(full)
        ident += [i] * 12
    data = {f"{region.name}_patches": np.concatenate(patches), "weights": np.concatenate(weights),
            "identity": np.array(ident)}
    net, _ = train(data, region, channels=channels, shipped=shipped, epochs=20, members=members, log=lambda m: None)
    torch.save(net.state_dict(), tmp_path / region.file_name)
    reg = ri.RegionImageRegressor.load(tmp_path, region)      # a plain state dict, loaded with weights_only=True
    assert reg.channels == tuple(shipped) and len(reg.net.members) == members
    return reg, rng


def test_trained_mouth_network_reads_the_change_from_the_clips_rest_patch(tmp_path):
    reg, rng = _train_and_reload(tmp_path, ri.MOUTH, lambda rng, colour, w: _mouths(rng, colour, w[:, 1]),
                                 ("mouthFrown_L", "mouthPress_L"), ("mouthPress_L",), members=2)
    # a new person: a clip at rest with two presses
    press = np.zeros(20)
    press[[6, 14]] = 1.0
    clip = _mouths(rng, _person(rng), press)
    out = reg(clip, ri.rest_patch_features(clip))[:, 0]
    assert out.min() >= 0 and out.max() <= 1
    assert out[6] > 0.5 and out[14] > 0.5, out
    at_rest = np.delete(out, [6, 14])
    assert at_rest.max() < 0.25 and at_rest.mean() < 0.1, out      # the rest patch itself reads exactly 0
    assert ri.RegionImageRegressor.load(tmp_path / "absent", ri.MOUTH) is None
    # trained without folds: the raw reading (gain 1, no dead zone), for the ARKit channel table to calibrate
    assert (reg.net.gain == 1).all() and (reg.net.dead_zone == 0).all()


def _lids(rng, colour, blink):
    """(2, rows, cols, 3) LIDS patches of one person, (frames, 2) blink of the grid's eye and the other: a dark
    opening of 12 rows that a blink closes from above (the second side is already mirrored, so both look alike)."""
    r, c = ri.LIDS.shape
    skin = colour[0]
    out = np.empty((len(blink), 2, r, c, 3), np.float32)
    for k, sides in enumerate(blink):
        for j, b in enumerate(sides):
            p = np.tile(skin, (r, c, 1))
            p[14 + int(round(11 * b)):26, c // 4:3 * c // 4] = 0.15
            out[k, j] = np.clip(p * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01, p.shape), 0, 1)
    return out


def test_trained_lid_network_reads_each_eye_on_its_own_side(tmp_path):
    """One network serves both eyes: trained on the grid's eye and the mirrored other eye (its weights mirrored), it
    reads a one-sided blink on that side's channel only."""
    from backend.training.region_image import train

    rng = np.random.default_rng(0)
    patches, weights, ident = [], [], []
    left, right = arkit.ICT_NAMES.index("eyeBlink_L"), arkit.ICT_NAMES.index("eyeBlink_R")
    for i in range(30):
        w = np.where(rng.uniform(size=(12, 2)) < 0.3, rng.uniform(0.3, 1.0, (12, 2)), 0.0)
        patches.append(_lids(rng, _person(rng), w))
        full = np.zeros((12, len(arkit.ICT_NAMES)), np.float32)
        full[:, left], full[:, right] = w[:, 0], w[:, 1]
        weights.append(full)
        ident += [i] * 12
    data = {"lids_patches": np.concatenate(patches), "weights": np.concatenate(weights), "identity": np.array(ident)}
    net, _ = train(data, ri.LIDS, channels=("eyeBlink_L",), shipped=("eyeBlink_L",), epochs=15, members=1,
                   log=lambda m: None)
    torch.save(net.state_dict(), tmp_path / ri.LIDS.file_name)
    reg = ri.RegionImageRegressor.load(tmp_path, ri.LIDS)
    assert reg.channels == ("eyeBlink_L", "eyeBlink_R")
    blink = np.zeros((20, 2))
    blink[5, 0], blink[12, 1], blink[16] = 1.0, 1.0, 0.9
    clip = _lids(rng, _person(rng), blink)
    out = reg(clip, ri.rest_patch_features(clip))
    assert out.shape == (20, 2)
    assert out[5, 0] > 0.5 and out[12, 1] > 0.5 and (out[16] > 0.5).all(), out
    assert out[5, 1] < 0.25 and out[12, 0] < 0.25, out
    at_rest = np.delete(out, [5, 12, 16], axis=0)
    assert at_rest.max() < 0.25, out


def test_each_view_of_the_same_identities_is_read_against_its_own_rest(tmp_path, monkeypatch):
    """``--video-identities``, ``--predicted-identities``: the frames of another view (here: the first view under a
    shading ramp, as an encoding changes a patch the same way in each frame) join the training data with a rest of
    their own, so their rest-relative features are the first view's; the CLI adds each view of the first N
    identities."""
    from backend.training import region_image as tri

    rng = np.random.default_rng(0)
    blink = np.where(rng.uniform(size=(24, 2)) < 0.3, 1.0, 0.0)
    one = {"lids_patches": np.concatenate([_lids(rng, _person(rng), blink[:12]), _lids(rng, _person(rng), blink[12:])]),
           "weights": np.zeros((24, len(arkit.ICT_NAMES)), np.float32), "identity": np.repeat([0, 1], 12),
           "points": np.zeros((24, 478, 3), np.float32)}
    ramp = np.linspace(1.0, 1.5, ri.LIDS.shape[1])[:, None]
    other = dict(one, lids_patches=np.float32(one["lids_patches"] * ramp))
    other.pop("points")
    both = tri.with_views(one, other)
    assert sorted(both) == ["identity", "lids_patches", "view", "weights"]
    assert both["view"].tolist() == [0] * 24 + [1] * 24
    X, W, ident, _ = tri.rest_relative(both, ri.LIDS)
    n = len(X) // 2                                    # the sides one after the other, each side's views in order
    for side in (slice(0, 24), slice(n, n + 24)):
        first, second = X[side], X[side.start + 24:side.stop + 24]
        assert np.abs(first - second).mean() < 0.01, np.abs(first - second).mean()
    merged = tri.rest_relative(dict(both, view=np.zeros(48, int)), ri.LIDS)[0]     # one rest over both views
    assert np.abs(merged[:24] - merged[24:48]).mean() > 0.02, np.abs(merged[:24] - merged[24:48]).mean()
    asked = []
    monkeypatch.setattr(tri, "generate", lambda cache, n, frames, log, patches, **kw: asked.append((n, kw)) or
                        (one if kw.get("lid_ids") == 0 else other))
    trained = []

    class Trained(Exception):
        """The data reached training: all this test asks about."""

    def train(data, region, **kw):
        trained.append(data)
        raise Trained

    monkeypatch.setattr(tri, "train", train)
    with pytest.raises(Trained):
        tri.main(["--region", "lids", "--out", str(tmp_path), "--cache", str(tmp_path), "--identities", "2",
                  "--predicted-identities", "1"])
    assert asked == [(2, {"video": False, "lid_ids": 0, "first_id": 0}), (1, {"predicted": True, "first_id": 0})]
    assert trained[0]["view"].tolist() == [0] * 24 + [1] * 24
    with pytest.raises(Trained):
        tri.main(["--region", "lids", "--out", str(tmp_path), "--cache", str(tmp_path), "--identities", "2",
                  "--video-identities", "2", "--predicted-identities", "1"])
    assert asked[2:] == [(2, {"video": False, "lid_ids": 0, "first_id": 0}), (2, {"video": True, "first_id": 0}),
                         (1, {"predicted": True, "first_id": 0})]
    assert trained[1]["view"].tolist() == [0] * 24 + [1] * 24 + [2] * 24


def test_relit_training_batches_are_the_patches_rescaled_under_a_shading_gradient(monkeypatch):
    """``fit(relight=True)``: every training sample is its (shifted) features times one contrast factor in [0.6, 1.2]
    plus a linear gradient per feature plane; without it, the shifted features themselves."""
    from backend.training.region_image import fit

    seen = []
    forward = ri.RegionImageNet.forward

    def spy(self, x):
        if self.training:
            seen.append(x.detach().numpy().copy())
        return forward(self, x)

    monkeypatch.setattr(ri.RegionImageNet, "forward", spy)
    base = np.random.default_rng(4).normal(size=(3, 8, 10)).astype(np.float32)
    rows, cols = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 10), indexing="ij")
    shifted = [np.roll(base, (a, b), (1, 2)) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    for relight in (False, True):
        seen.clear()
        fit(np.repeat(base[None], 64, 0), np.zeros((64, 1), np.float32), epochs=1, relight=relight)
        for x in seen[0]:
            # least squares per shift: x = k * shifted + per plane (g_rows * rows + g_cols * cols)
            fits = []
            for b in shifted:
                A = np.zeros((x.size, 7))
                A[:, 0] = b.ravel()
                for p in range(3):
                    A[p * 80:(p + 1) * 80, 1 + 2 * p] = rows.ravel()
                    A[p * 80:(p + 1) * 80, 2 + 2 * p] = cols.ravel()
                coef, *_ = np.linalg.lstsq(A, x.ravel(), rcond=None)
                fits.append((np.abs(A @ coef - x.ravel()).max(), coef))
            residual, coef = min(fits, key=lambda f: f[0])
            assert residual < 1e-4
            if relight:
                assert 0.6 <= coef[0] <= 1.2 and np.abs(coef[1:]).max() > 1e-3
            else:
                assert coef[0] == pytest.approx(1.0, abs=1e-5) and np.abs(coef[1:]).max() < 1e-5


def test_mouth_training_leaves_out_the_lips_through_each_other(monkeypatch):
    """A network trained on mouthClose is not fitted to frames whose mouthClose is above jawOpen (renders of the
    sampler before session 15: a shape no face makes); a network without mouthClose keeps every frame."""
    from backend.training import region_image as training

    fitted = []
    monkeypatch.setattr(training, "fit_ensemble", lambda X, Y, *a, **k: fitted.append(Y) or
                        ri.RegionImageNet(Y.shape[1], X.shape[2:], 1))
    jaw, close = arkit.ICT_NAMES.index("jawOpen"), arkit.ICT_NAMES.index("mouthClose")
    w = np.zeros((12, len(arkit.ICT_NAMES)), np.float32)
    w[:4, jaw], w[:4, close] = 0.6, 0.5          # lips sealed over an open jaw
    w[4:7, close] = 0.5                           # lips through each other
    w[7, jaw], w[7, close] = 0.2, 0.3
    rng = np.random.default_rng(0)
    data = {"mouth_patches": rng.uniform(size=(12,) + ri.MOUTH.patch_shape).astype(np.float32), "weights": w,
            "identity": np.repeat([0, 1], 6)}
    for channels, kept in ((("jawOpen", "mouthClose"), [0, 1, 2, 3, 8, 9, 10, 11]), (("mouthPress_L",), range(12))):
        training.train(data, ri.MOUTH, channels=channels, shipped=channels, members=1, log=lambda m: None)
        cols = [arkit.ICT_NAMES.index(c) for c in channels]
        assert np.array_equal(fitted.pop(), w[list(kept)][:, cols])


def test_trained_eye_network_reads_a_squint_and_a_brow_raise(tmp_path):
    reg, rng = _train_and_reload(tmp_path, ri.EYES, lambda rng, colour, w: _eyes(rng, colour, w[:, 0], w[:, 1]),
                                 ("eyeSquint_L", "browInnerUp_L"), ("eyeSquint_L", "browInnerUp_L"), members=1)
    squint, brow = np.zeros(24), np.zeros(24)
    squint[5], brow[12], squint[19], brow[19] = 1.0, 1.0, 0.9, 0.9
    clip = _eyes(rng, _person(rng), squint, brow)
    out = reg(clip, ri.rest_patch_features(clip))
    assert out[5, 0] > 0.5 and out[12, 1] > 0.5 and (out[19] > 0.5).all(), out
    assert out[5, 1] < 0.25 and out[12, 0] < 0.25, out                 # each channel reads its own motion
    at_rest = np.delete(out, [5, 12, 19], axis=0)
    assert at_rest.max() < 0.25 and at_rest.mean() < 0.1, out
    assert np.array_equal(reg(clip[:1], ri.rest_patch_features(clip[:1])), np.zeros((1, 2), np.float32))


# the EYES reader (eye_image.pt) is retired from the built-in folder (session 17): the lids' and brows' readers carry
# what the tables read from it, out of fold as well or better (backend/evaluation/README.md); it can still be trained
SHIPPED_REGIONS = tuple(r for r in ri.REGIONS if r is not ri.EYES)


@pytest.mark.parametrize("region", SHIPPED_REGIONS, ids=lambda r: r.name)
def test_shipped_networks_load_small_and_read_zero_at_rest(region):
    from backend import BUILTIN_MODEL_DIR
    from backend.training.region_image import TRAINED

    path = BUILTIN_MODEL_DIR / region.file_name
    assert path.is_file() and path.stat().st_size < 1_000_000
    reg = ri.RegionImageRegressor.load(BUILTIN_MODEL_DIR, region)
    assert reg.channels and reg.net.rest.shape == (ri.N_FEATURES,) + region.shape
    patches = np.random.default_rng(3).uniform(0.2, 0.8, (4,) + region.patch_shape).astype(np.float32)
    assert np.array_equal(reg(patches[:1], ri.rest_patch_features(patches[:1])),
                          np.zeros((1, len(reg.channels)), np.float32))
    # every trained head, read raw: the ARKit channel table calibrates them
    own = reg.channels[:len(reg.channels) // 2] if region.mirrored else reg.channels
    assert own == TRAINED[region.name]
    assert (reg.net.gain == 1).all() and (reg.net.dead_zone == 0).all()


def test_the_retired_eye_reader_is_not_shipped_nor_read_by_a_table():
    from backend import BUILTIN_MODEL_DIR
    from backend.tracking.channel_table import ChannelTable

    assert not (BUILTIN_MODEL_DIR / ri.EYES.file_name).exists() and ri.EYES.name not in ri.load_regressors(
        BUILTIN_MODEL_DIR)
    for preset in ("draft", "standard"):
        assert f"{ri.EYES.name}_image" not in ChannelTable.load(BUILTIN_MODEL_DIR, preset).sources()


def test_a_network_with_a_halving_more_loads_from_its_file_a_third_the_size(tmp_path):
    """The jaw's network reads its 48 x 40 patch through one stride-2 convolution more (``--halvings 3``): its linear
    layer, most of the file, a quarter the size; the file says which it is, and the shipped channels are kept."""
    import torch

    from backend.training.region_image import keep_channels

    sizes = {}
    for halvings in (2, 3):
        torch.manual_seed(0)
        net = ri.RegionImageNet(33, ri.JAW.shape, 3, halvings).eval()
        net.ict_index.copy_(torch.arange(33))
        path = tmp_path / f"{halvings}" / ri.JAW.file_name
        path.parent.mkdir()
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
        sizes[halvings] = path.stat().st_size
        reg = ri.RegionImageRegressor.load(path.parent, ri.JAW)
        assert len(reg.net.members[0]) == len(net.members[0]) == 5 + 2 * halvings
        x = torch.as_tensor(np.random.default_rng(1).normal(0, 1, (5, ri.N_FEATURES) + ri.JAW.shape),
                            dtype=torch.float32)
        with torch.no_grad():
            assert np.abs(reg.net(x).numpy() - net(x).numpy()).max() < 0.02
            kept = keep_channels(net, [0, 5])
            assert torch.equal(kept(x), net(x)[:, [0, 5]]) and kept.ict_index.tolist() == [0, 5]
    assert sizes[3] < 0.45 * sizes[2], sizes


def test_image_readings_replace_their_channels_in_the_output():
    """A channel the table gives to a region's image regressor (share 1: ``<region>_image``) takes its reading on
    frames with a patch; frames without one and every other channel keep the tracker's value."""
    from backend.model.encoders import CodeEncoders
    from backend.tracking.channel_table import ChannelTable
    from backend.tracking.codes import CodeSpace
    from backend.training.modelwrap import build_model, model_config

    class Reading:
        """Stands in for a regressor: every frame reads its channel at ``value``."""

        def __init__(self, channel, value):
            self.channels, self.value = (channel,), value

        def __call__(self, patches, rest=None):
            return np.full((len(patches), 1), self.value, np.float32)

    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg, torch.randn(cfg.n_anchors, 3) * 0.2).eval()
    rows = ChannelTable.model_only().channels
    rows["mouthPressLeft"] = {"shares": {"mouth_image": 1.0}}
    rows["eyeSquintLeft"] = {"shares": {"eyes_image": 1.0}}
    codes = CodeSpace(model, CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp), None,
                      image_regressors={"mouth": Reading("mouthPress_L", 0.8), "eyes": Reading("eyeSquint_L", 0.6)},
                      channel_table=ChannelTable(rows))
    mouth = np.zeros(ri.MOUTH.shape + (3,), np.float16)
    eyes = np.zeros(ri.EYES.shape + (3,), np.float16)
    reading = codes.image_readings({"mouth": [mouth, None, mouth], "eyes": [eyes, eyes, None]})
    press, squint = arkit.ARKIT_INDEX["mouthPressLeft"], arkit.ARKIT_INDEX["eyeSquintLeft"]
    assert reading["mouth"].shape == (3, 52) and np.isnan(reading["mouth"][1]).all()
    assert reading["mouth"][0, press] == pytest.approx(0.8) and np.isnan(np.delete(reading["mouth"][0], press)).all()
    assert reading["eyes"][1, squint] == pytest.approx(0.6) and np.isnan(reading["eyes"][2]).all()
    p_ex = torch.zeros(3, len(arkit.ICT_NAMES))
    p_ex[:, PRESS] = 0.1                                             # the model's own value
    p_ex[:, arkit.ICT_NAMES.index("jawOpen")] = 0.4
    out = codes.arkit(p_ex, image_readings=reading)
    before = codes.arkit(p_ex)
    assert out[:, press] == pytest.approx([0.8, 0.1, 0.8])
    assert out[:, squint] == pytest.approx([0.6, 0.6, before[2, squint]])
    assert np.array_equal(np.delete(out, [press, squint], 1), np.delete(before, [press, squint], 1))


def test_detections_keep_the_region_patches_through_their_arrays():
    from backend.tracking.run import Detections

    rng = np.random.default_rng(2)
    lm = {0: rng.normal(size=(478, 2)).astype(np.float32), 1: None, 2: rng.normal(size=(478, 2)).astype(np.float32)}
    patches = {r.name: {0: rng.uniform(size=r.patch_shape).astype(np.float16), 1: None,
                        2: rng.uniform(size=r.patch_shape).astype(np.float16)} for r in ri.REGIONS}
    det = Detections([0, 1, 2], {0: 0.0, 1: 0.04, 2: 0.08}, lm, {0: 90.0, 1: 0.0, 2: 91.0},
                     depths={0: np.zeros(478, np.float32), 1: None, 2: np.ones(478, np.float32)}, patches=patches)
    back = Detections.from_arrays(det.to_arrays())
    for name, p in patches.items():
        assert np.array_equal(back.found_patches(name), np.stack([p[0], p[2]]))
        assert back.patches[name][1] is None
        assert np.array_equal(det.subset([2]).found_patches(name), p[2][None])
    det.patches["eyes"][2] = None                                    # a frame without its patch: no clip rest
    assert det.found_patches("eyes") is None and "eyes_patches" not in det.to_arrays()
    assert "mouth_patches" in det.to_arrays()


def test_training_renders_carry_each_regions_patch_of_each_detected_frame():
    """The training data's patches are cut from the rendered frame at its MediaPipe points (renders: ~1 s a frame)."""
    from shared_data import ICT_NPZ, MAKEHUMAN

    if not ICT_NPZ.is_file() or not MAKEHUMAN.is_dir():
        pytest.skip("needs ICT-FaceKit and the MakeHuman skins in ../shared")
    from backend.training.data import ICTModel
    from backend.training.expression_init import render_chunk

    data = render_chunk(ICTModel(), 0, 1, 2, patches=True)
    found = np.isfinite(data["points"]).all((1, 2))
    assert found.any()
    for region in ri.REGIONS:
        patches = data[f"{region.name}_patches"]
        assert patches.shape == (2,) + region.patch_shape
        assert np.isfinite(patches[found]).all() and np.isnan(patches[~found]).all()
        for side, mirror in enumerate((False, True) if region.mirrored else (False,)):
            got = patches[found][:, side] if region.mirrored else patches[found]
            outside = ri.patch_outside(region, mirror)
            assert (got[:, outside] == ri.OUTSIDE_GREY).all()
            assert got[:, ~outside].std() > 0.02     # the face, not a constant


def test_video_training_renders_are_cut_from_the_frames_a_decoder_gives_back(monkeypatch):
    """``--video`` data: each identity's frames pass through H.264 at its own CRF before MediaPipe and the cut, so the
    patches carry the compression a tracked video's do (renders: ~1 s a frame)."""
    from shared_data import ICT_NPZ, MAKEHUMAN

    if not ICT_NPZ.is_file() or not MAKEHUMAN.is_dir():
        pytest.skip("needs ICT-FaceKit and the MakeHuman skins in ../shared")
    from backend.training import expression_init as tei
    from backend.training.data import ICTModel

    crfs = [tei.video_crf(i) for i in range(40)]
    assert crfs == [tei.video_crf(i) for i in range(40)]                 # one CRF per identity, the same every run
    assert min(crfs) >= tei.VIDEO_CRF[0] and max(crfs) <= tei.VIDEO_CRF[1] and len(set(crfs)) > 5
    rendered = {}
    render = tei.render_identity
    monkeypatch.setattr(tei, "render_identity", lambda ict, i, n: rendered.setdefault(i, render(ict, i, n)))
    encoded = []
    through = tei.through_video
    monkeypatch.setattr(tei, "through_video", lambda frames, crf: encoded.append(crf) or through(frames, crf))
    ict = ICTModel()
    raw, video = (tei.render_chunk(ict, 3, 1, 2, patches=True, video=v) for v in (False, True))
    assert encoded == [tei.video_crf(3)]
    assert np.array_equal(raw["weights"], video["weights"])
    found = np.isfinite(raw["points"]).all((1, 2)) & np.isfinite(video["points"]).all((1, 2))
    assert found.any()
    change = np.abs(video["lids_patches"][found] - raw["lids_patches"][found])
    assert 0.003 < change.mean() < 0.05            # compressed: close to the raw frames, not equal to them


def test_lid_set_identities_close_their_lids_in_dim_hard_light():
    """Identities from ``LIDS_FIRST`` on: over a third of the frames with closing lids (under half: the median face
    stays open), dim ambient and a side or top key light; their own seed streams, apart from the main set's."""
    from shared_data import MAKEHUMAN

    if not MAKEHUMAN.is_dir():
        pytest.skip("needs the MakeHuman skins in ../shared")
    from backend.evaluation.expression_clips import sample_look
    from backend.training import expression_init as tei

    rng = np.random.default_rng(0)
    blinks = np.stack([tei._lid_expression(rng) for _ in range(2000)])[:, [arkit.ICT_NAMES.index("eyeBlink_L"),
                                                                           arkit.ICT_NAMES.index("eyeBlink_R")]]
    closing = (blinks >= 0.3).any(1)
    assert tei.LIDS_BLINKING < closing.mean() < tei.LIDS_BLINKING + 0.12     # and the sampler's own blinks
    assert ((blinks >= 0.3).mean(0) < 0.45).all()                           # each eye's median: open
    assert 0.1 < (closing & (blinks.min(1) == 0)).mean() / closing.mean() < 0.35          # winks too
    looks = [tei._hard_look(rng) for _ in range(200)]
    assert all(0.15 <= lk.ambient <= 0.3 for lk in looks)
    light = np.stack([lk.light_dir for lk in looks])
    az, el = np.degrees(np.arctan2(light[:, 0], -light[:, 2])), np.degrees(np.arcsin(-light[:, 1]))
    assert ((np.abs(az) >= 35) | (el >= 30)).all()
    usual = [sample_look(rng) for _ in range(200)]
    assert np.mean([lk.ambient for lk in usual]) > 0.3 > np.mean([lk.ambient for lk in looks])
    assert tei.TRAIN_SEED_BASE + tei.LIDS_FIRST > tei.TRAIN_SEED_BASE + 10_000   # no stream shared with the main set


def test_generate_adds_the_lid_sets_chunks_after_the_main_sets(tmp_path, monkeypatch):
    from backend.training import expression_init as tei

    calls = []

    def chunk(ict, first, n_ids, frames_per_id, patches, video, predicted):
        calls.append((first, n_ids, patches, video, predicted))
        ids = np.repeat(np.arange(first, first + n_ids), frames_per_id)
        return {"points": np.zeros((len(ids), 478, 3), np.float32), "weights": np.zeros((len(ids), 53), np.float32),
                "identity": ids}

    monkeypatch.setattr(tei, "render_chunk", chunk)
    monkeypatch.setattr(tei.ictdata, "ICTModel", lambda: None)
    data = tei.generate(tmp_path, 30, 2, log=lambda m: None, patches=True, video=True, lid_ids=30)
    first = tei.LIDS_FIRST
    assert calls == [(0, 25, True, True, False), (25, 5, True, True, False), (first, 25, True, True, False),
                     (first + 25, 5, True, True, False)]
    assert sorted(np.unique(data["identity"])) == list(range(30)) + list(range(first, first + 30))
    assert (tmp_path / f"chunk_{first + 25}_2_patches_video.npz").is_file()
    tei.generate(tmp_path, 30, 2, log=lambda m: None, patches=True, video=True, lid_ids=30)   # cached: no renders
    assert len(calls) == 4
    tei.generate(tmp_path, 5, 2, log=lambda m: None, patches=True, predicted=True)           # a kind of its own
    assert calls[4:] == [(0, 5, True, False, True)] and (tmp_path / "chunk_00000_2_patches_predicted.npz").is_file()


def test_predicted_training_frames_are_encoded_after_a_reference_of_the_same_head(monkeypatch):
    """``--predicted-identities`` data: each frame is the second of a two-frame H.264 clip after its reference (the
    same head moved a little, its expression relaxed; its own seed stream, the frames unchanged), so it is a
    predicted frame, coarser than the same frame encoded alone (an I-frame) at the same CRF."""
    from shared_data import ICT_NPZ, MAKEHUMAN

    if not ICT_NPZ.is_file() or not MAKEHUMAN.is_dir():
        pytest.skip("needs ICT-FaceKit and the MakeHuman skins in ../shared")
    from backend.evaluation import synthetic as tei_synthetic
    from backend.training import expression_init as tei
    from backend.training.data import ICTModel

    ict = ICTModel()
    frames, weights = tei.render_identity(ict, 3, 2)
    refs = tei.reference_frames(ict, 3, 2)
    assert all(np.array_equal(a, b) for a, b in zip(refs, tei.reference_frames(ict, 3, 2)))       # reproducible
    moved = [np.abs(np.float32(r) - np.float32(f)).mean() for r, f in zip(refs, frames)]
    assert all(0.5 < m < 15 for m in moved), moved                       # the same head, not the same frame
    crf = tei.video_crf(3)
    written = []
    write = tei_synthetic.write_mp4
    monkeypatch.setattr(tei_synthetic, "write_mp4", lambda fr, path, fps, c: written.append((fr, c)) or
                        write(fr, path, fps, c))
    alone, after = tei.through_video(frames, crf), tei.through_video(frames, crf, refs)
    assert [len(w) for w, _ in written] == [2, 2, 2] and {c for _, c in written} == {crf}
    assert all(w[0] is r and w[1] is f for (w, _), r, f in zip(written[1:], refs, frames))   # one clip per frame
    for a, b, f in zip(alone, after, frames):                    # decoded: close to the frame, not as encoded alone
        assert not np.array_equal(a, b) and np.abs(np.float32(b) - np.float32(f)).mean() < 8
    # the chunk: the identity's frames (drawn as before the references existed) after their references
    monkeypatch.setattr(tei, "render_identity", lambda ict, i, n: (frames, weights))
    monkeypatch.setattr(tei, "reference_frames", lambda ict, i, n: refs)
    passed = []
    through = tei.through_video
    monkeypatch.setattr(tei, "through_video", lambda fr, c, r=None: passed.append((fr, c, r)) or through(fr, c, r))
    tei.render_chunk(ict, 3, 1, 2, patches=True, predicted=True)
    assert len(passed) == 1 and passed[0][0] is frames and passed[0][1] == crf and passed[0][2] is refs


def _jaw_data(rng, jaw_open):
    """Training data of the jaw region: one random patch per frame (two identities), jawOpen ``jaw_open`` (N,)."""
    w = np.zeros((len(jaw_open), len(arkit.ICT_NAMES)), np.float32)
    w[:, arkit.ICT_NAMES.index("jawOpen")] = jaw_open
    return {"jaw_patches": rng.uniform(0.2, 0.8, (len(w),) + ri.JAW.patch_shape).astype(np.float32), "weights": w,
            "identity": np.repeat([0, 1], len(w) // 2)}


def test_small_jaw_openings_weigh_more_in_the_loss():
    """``--small-opening-weight``: frames with jawOpen in ``SMALL_OPENING`` weigh the factor times the others (mean
    weight 1); the same features with two targets are then fitted nearer the heavier frames' target."""
    from backend.training.region_image import SMALL_OPENING, fit, opening_weights

    w = np.zeros((6, len(arkit.ICT_NAMES)), np.float32)
    w[:, arkit.ICT_NAMES.index("jawOpen")] = [0.0, SMALL_OPENING[0], 0.3, SMALL_OPENING[1], 0.8, 1.0]
    got = opening_weights(w, 4.0)
    assert got.mean() == pytest.approx(1.0) and np.allclose(got / got[0], [1, 4, 4, 4, 1, 1])
    assert np.allclose(opening_weights(w, 1.0), 1.0)
    # one patch read 0.3 (a small opening) in a quarter of the frames, 0.9 in the rest
    X = np.repeat(np.random.default_rng(0).normal(size=(1, 3, 6, 5)).astype(np.float32), 64, 0)
    Y = np.where(np.arange(64) < 16, 0.3, 0.9).astype(np.float32)[:, None]
    read = {}
    for factor in (1.0, 9.0):
        weight = np.where(np.arange(64) < 16, factor, 1.0).astype(np.float32)
        net = fit(X, Y, epochs=300, sample_weight=weight / weight.mean())
        with torch.no_grad():
            read[factor] = float(net(torch.as_tensor(X[:1]))[0, 0])
    # the weighted mean of the targets: 0.75 plain, 0.45 with the small openings 9 x
    assert read[1.0] == pytest.approx(0.75, abs=0.05) and read[9.0] == pytest.approx(0.45, abs=0.05), read


def test_training_can_start_from_a_saved_network_of_the_region(tmp_path, monkeypatch):
    """``--init``: each member starts from the saved network's member (its scale kept): no epochs give it back, a few
    move it; the CLI refuses a network of another shape (exit 2) and reads identities from ``--first-identity``."""
    from backend.training import region_image as tri

    rng = np.random.default_rng(0)
    data = _jaw_data(rng, np.tile([0.0, 0.3, 0.6, 0.9], 6))
    channels = ("jawOpen", "mouthClose")
    start, _ = tri.train(data, ri.JAW, channels=channels, shipped=channels, epochs=1, members=2, log=lambda m: None)
    x = torch.as_tensor(rng.normal(0, 0.05, (4, ri.N_FEATURES) + ri.JAW.shape), dtype=torch.float32)
    same, _ = tri.train(data, ri.JAW, channels=channels, shipped=channels, epochs=0, members=2, init=start,
                        log=lambda m: None)
    moved, _ = tri.train(data, ri.JAW, channels=channels, shipped=channels, epochs=2, members=2, init=start,
                         log=lambda m: None)
    with torch.no_grad():
        assert torch.allclose(same(x), start(x)) and torch.equal(same.scale, start.scale)
        assert torch.equal(moved.scale, start.scale) and not torch.allclose(moved(x), start(x), atol=1e-4)
    with pytest.raises(ValueError, match="members"):
        tri.train(data, ri.JAW, channels=channels, shipped=channels, epochs=0, members=3, init=start,
                  log=lambda m: None)
    with pytest.raises(ValueError, match="other channels"):
        tri.train(data, ri.JAW, channels=channels[:1], shipped=channels[:1], epochs=0, members=2, init=start,
                  log=lambda m: None)
    torch.save(start.state_dict(), tmp_path / "two.pt")
    asked = []
    monkeypatch.setattr(tri, "generate", lambda cache, n, frames, log, patches, **kw: asked.append((n, kw)) or data)
    for bad in (["--init", str(tmp_path / "two.pt")], ["--init", str(tmp_path / "absent.pt")],
                ["--first-identity", "30"], ["--small-opening-weight", "0"]):
        with pytest.raises(SystemExit) as stop:
            tri.main(["--region", "jaw", "--out", str(tmp_path), "--cache", str(tmp_path), "--folds", "0"] + bad)
        assert stop.value.code == 2
    assert not asked
    trained = []
    monkeypatch.setattr(tri, "train", lambda d, region, **kw: trained.append(kw) or (start, None))
    tri.main(["--region", "jaw", "--out", str(tmp_path), "--cache", str(tmp_path), "--folds", "0", "--members", "2",
              "--identities", "50", "--first-identity", "325", "--video-identities", "25",
              "--small-opening-weight", "3"])
    assert asked == [(50, {"video": False, "lid_ids": 0, "first_id": 325}), (25, {"video": True, "first_id": 325})]
    assert trained[0]["init"] is None and trained[0]["small_opening_weight"] == 3.0


def test_generate_reads_identities_from_a_first_one(tmp_path, monkeypatch):
    """``generate(first_id=)``: the chunks of identities first_id .. first_id + n - 1, cut as every cache is."""
    from backend.training import expression_init as tei

    calls = []

    def chunk(ict, first, n_ids, frames_per_id, patches, video, predicted):
        calls.append((first, n_ids))
        ids = np.repeat(np.arange(first, first + n_ids), frames_per_id)
        return {"points": np.zeros((len(ids), 478, 3), np.float32), "weights": np.zeros((len(ids), 53), np.float32),
                "identity": ids}

    monkeypatch.setattr(tei, "render_chunk", chunk)
    monkeypatch.setattr(tei.ictdata, "ICTModel", lambda: None)
    data = tei.generate(tmp_path, 30, 2, log=lambda m: None, first_id=325)
    assert calls == [(325, 25), (350, 5)] and sorted(np.unique(data["identity"])) == list(range(325, 355))
    assert (tmp_path / "chunk_00350_2.npz").is_file()
    with pytest.raises(ValueError, match="multiple"):
        tei.generate(tmp_path, 30, 2, log=lambda m: None, first_id=330)
