"""Procedural hair of the synthetic training data: a closed signed-distance bound unioned with the head, bald =
the head alone (skip cleanly when the shared data is absent)."""

import numpy as np
import pytest

from shared_data import ICT_NPZ, OFFICIAL_ANCHORS

pytestmark = pytest.mark.skipif(not (ICT_NPZ.exists() and OFFICIAL_ANCHORS.exists()),
                                reason=f"shared ICT-FaceKit data not found at {ICT_NPZ} (set MONONPHM_SHARED)")

SIZES = dict(n_face=200, n_other=150, n_near=150, n_off=60, n_far=60, n_corr=50, n_kd=12000)  # training density


@pytest.fixture(scope="module")
def setup():
    from backend.training import data as D
    from backend.training import hair as H
    ict = D.ICTModel(ICT_NPZ)
    av = D.derive_anchor_vertices(ict, np.load(OFFICIAL_ANCHORS))
    return D, H, ict, av


def _styles(H):
    """A long-haired head with bangs, parting and beard; short hair with a moustache; a beard alone."""
    rng = np.random.default_rng(5)
    long_ = H.sample_hair(rng, p_bald=0.0, p_beard=1.0, p_moustache=0.0)
    long_[[H.HAIR_NAMES.index(n) for n in ("length", "bangs", "parting", "thickness")]] = (0.95, 0.8, 0.5, 0.6)
    short = H.sample_hair(rng, p_bald=0.0, p_beard=0.0, p_moustache=1.0)
    short[H.HAIR_NAMES.index("length")] = 0.1
    beard = H.sample_hair(rng, p_bald=1.0, p_beard=1.0, p_moustache=0.0)
    return [long_, short, beard]


def _volume(D, H, ict, params, w_ex=None, w_id=None, n=6000):
    rng = np.random.default_rng(0)
    v = ict.vertices(w_id, w_ex)
    tri, bary = D._sample_tris(rng, ict.tri_areas(v), np.ones(len(ict.faces), bool), n)
    kp = D._interp(v, ict.faces, tri, bary)
    kn = D._interp(ict.vertex_normals(v), ict.faces, tri, bary)
    kn /= np.linalg.norm(kn, axis=1, keepdims=True)
    return H.HairVolume(params, kp, v[ict.landmarks68]), kp, kn


def test_bald_style(setup):
    D, H, ict, av = setup
    rng = np.random.default_rng(0)
    assert np.array_equal(H.sample_hair(rng, p_bald=1.0, p_beard=0.0, p_moustache=0.0), H.BALD)
    styles = np.stack([H.sample_hair(rng) for _ in range(400)])
    bald = styles[:, 0] == 0
    assert 0.1 < bald.mean() < 0.35
    # bald scalp: every scalp entry is zero (the encoder sees exactly the bald input), facial hair independent
    assert np.all(styles[bald][:, :H.HAIR_NAMES.index("beard")] == 0)
    hv, kp, _ = _volume(D, H, ict, H.BALD)
    assert hv.empty and np.isinf(hv.sdf(kp[:10])).all()


def test_hair_sdf_is_a_distance_bound(setup):
    """1-Lipschitz (so |sdf| never exceeds the distance to its zero set) and closed (positive away from the head)."""
    D, H, ict, av = setup
    rng = np.random.default_rng(1)
    for params in _styles(H):
        hv, kp, _ = _volume(D, H, ict, params)
        x = rng.uniform([-0.8, -1.0, -0.9], [0.8, 0.75, 0.5], (20000, 3))
        y = x + rng.normal(0, 0.01, x.shape)
        fx, fy = hv.sdf(x), hv.sdf(y)
        assert np.all(np.abs(fx - fy) <= np.linalg.norm(x - y, axis=1) * (1 + 1e-6) + 1e-9)
        assert (fx < 0).any() and (fx > 0).any()
        # closed: the boundary of a box well around the head is outside
        box = rng.uniform(-1, 1, (3000, 3))
        box[np.arange(3000), rng.integers(0, 3, 3000)] = rng.choice([-1.3, 1.3], 3000)
        assert hv.sdf(box).min() > 0


def test_hair_surface_samples_on_the_zero_set(setup):
    D, H, ict, av = setup
    rng = np.random.default_rng(2)
    for params in _styles(H):
        hv, kp, kn = _volume(D, H, ict, params)
        p, n = hv.surface_samples(rng, kp, kn, 300)
        assert len(p) >= 150
        assert np.abs(hv.sdf(p)).max() < 1e-3
        assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-4)
        # normals point out: a small step along them is outside the hair
        assert (hv.sdf(p + 0.01 * n) > 0).mean() > 0.95


def test_union_samples(setup):
    """With hair, surface samples lie on the union (head points outside the hair, hair points on its zero set and
    outside the head) and every signed-distance target is at most the hair's."""
    D, H, ict, av = setup
    rng = np.random.default_rng(3)
    S = D.SampleSizes(**SIZES)
    w_id, w_ex, app = D.sample_identity(rng), D.sample_expression(rng, p_neutral=0), D.sample_appearance(rng)
    for params in _styles(H):
        s = D.make_sample(ict, av, w_id, w_ex, app, 7, np.random.default_rng(4), S, hair=params)
        # an independent, denser discretisation of the same head
        hv_id = _volume(D, H, ict, params, w_ex, w_id, n=60000)[0]
        on_hair = s["surf_is_hair"] > 0
        assert on_hair.sum() >= (0.8 * S.hair_share if params[0] > 0 else 0.1) * S.n_other  # scalp / facial hair
        f = hv_id.sdf(s["surf"])
        assert np.abs(f[on_hair]).max() < 0.004          # on the hair (up to the head's discretisation)
        assert f[~on_hair].min() > -0.004                  # head points are not under the hair
        for k in ("off", "far"):  # (the two discretisations differ by a few mm deep inside)
            f = hv_id.sdf(s[k])
            assert np.all(s[k + "_sdf"] <= f + 0.004 + 0.1 * np.abs(f))
        # near points (around the head and around the hair): inside / outside of the union
        inside_hair = hv_id.sdf(s["near"]) < -0.004
        assert np.all(s["near_sdf"][inside_hair] < 0)
        # hair colour: the sample's hair rgb with variation
        assert np.abs(s["surf_color"][on_hair].mean(0) - app[6:9]).max() < 0.15


def test_bald_reproduces_head_samples(setup):
    D, H, ict, av = setup
    rng = np.random.default_rng(6)
    S = D.SampleSizes(**SIZES)
    args = (ict, av, D.sample_identity(rng), D.sample_expression(rng, p_neutral=0), D.sample_appearance(rng), 3)
    a = D.make_sample(*args, np.random.default_rng(9), S)
    b = D.make_sample(*args, np.random.default_rng(9), S, hair=H.BALD)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not a["surf_is_hair"].any() and not a["hair"].any()


def test_eyelid_and_brow_emphasis(setup):
    D, H, ict, av = setup
    lid = ict.semantic["eyelids"] > 0.5
    assert lid.sum() > 50 and ict.region[lid].max() == D.R_FACE
    # the lids are where a blink moves the skin
    w = np.zeros(ict.n_ex, np.float32)
    w[[ict.ex_names.index("eyeBlink_L"), ict.ex_names.index("eyeBlink_R")]] = 1
    moved = np.linalg.norm(ict.vertices(None, w) - ict.vertices(), axis=1) > 0.02  # > 5 mm
    assert lid[moved].mean() > 0.9
    # and they get (1 + EXPR_EMPHASIS) x the correspondence density
    rng = np.random.default_rng(0)
    s = D.make_sample(ict, av, np.zeros(100), w, D.sample_appearance(rng), 1, rng, D.SampleSizes(**SIZES))
    area = ict.tri_areas(ict.vertices())
    emph = ict.tri_expr_emphasis > 0.5
    share_area = (area * emph * ict.tri_corr).sum() / (area * ict.tri_corr).sum()
    from scipy.spatial import cKDTree
    v_emph = np.zeros(ict.n_verts, bool)
    v_emph[ict.faces[emph]] = True
    _, j = cKDTree(ict.vertices()[ict.used_verts]).query(s["corr_neutral"])
    on_emph = v_emph[ict.used_verts[j]]
    assert on_emph.mean() > 2.5 * share_area
    # their correspondences weigh more
    assert s["corr_weight"][on_emph].mean() > 5 * s["corr_weight"][~on_emph].mean()
    # closed eyes: no supervision on their eyeballs (the lid covers them); open eyes keep them
    eyeballs = ict.tri_region == D.R_EYEBALL
    assert not (D.visible_triangles(ict, w) & eyeballs).any()
    assert D.visible_triangles(ict, np.zeros_like(w)).all()
    wink = np.zeros_like(w)
    wink[ict.ex_names.index("eyeBlink_L")] = 1
    assert np.array_equal(D.visible_triangles(ict, wink), ~ict.tri_eyeball_side["L"])
    assert (ict.neutral[ict.faces[ict.tri_eyeball_side["L"]]][..., 0] > 0).all()  # +x: the subject's left

    def on_eyeballs(sample):
        v = ict.vertices()
        ball = np.unique(ict.faces[eyeballs])
        n = 0
        for c in ict.eye_centres:
            side = ball[np.sign(v[ball, 0]) == np.sign(c[0])]
            r = np.median(np.linalg.norm(v[side] - c, axis=1))
            n += int((np.abs(np.linalg.norm(sample["surf"] - c, axis=1) - r) < 0.0012).sum())
        return n

    big = D.SampleSizes(**{**SIZES, "n_other": 3000})
    closed = D.make_sample(ict, av, np.zeros(100), w, D.sample_appearance(rng), 1, rng, big)
    opened = D.make_sample(ict, av, np.zeros(100), np.zeros_like(w), D.sample_appearance(rng), 1, rng, big)
    assert on_eyeballs(opened) >= 20 and on_eyeballs(closed) < 0.2 * on_eyeballs(opened)  # (lids touch the sphere)


def test_mesh_box_holds_long_hair_and_the_neck_to_the_neck_line(setup):
    """The exported hair model's marching-cubes box: the fullest, longest hair lies inside it, and its bottom is below
    the tracker's neck line on the mean head (the official box's y = -0.5 cut the neck above it)."""
    from backend.model.config import OFFICIAL_MESH_BOX
    from backend.tracking.masks import NECK_LINE_BELOW_CHIN
    D, H, ict, av = setup
    lo, hi = (np.asarray(b) for b in H.MESH_BOX)
    full = np.zeros(H.N_HAIR, np.float32)
    full[[H.HAIR_NAMES.index(n) for n in ("thickness", "length", "volume", "side")]] = 1.0
    hv, _, _ = _volume(D, H, ict, full)
    x = np.random.default_rng(2).uniform([-0.8, -1.0, -1.0], [0.8, 0.9, 0.6], (200000, 3))
    inside = x[hv.sdf(x) < 0]
    assert len(inside) > 1000 and np.all(inside >= lo) and np.all(inside <= hi)
    v = ict.vertices()
    chin, forehead = v[ict.landmarks68[8]], v[np.argmin(np.linalg.norm(v - [0.0, 0.32, 0.19], axis=1))]
    neck_line_y = chin[1] - NECK_LINE_BELOW_CHIN * np.linalg.norm(forehead - chin)
    assert lo[1] < neck_line_y - 0.1 and OFFICIAL_MESH_BOX[0][1] > neck_line_y
