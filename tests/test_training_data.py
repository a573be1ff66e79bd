"""Generator invariants and the ARKit table (skip cleanly when the shared data is absent)."""

import numpy as np
import pytest

from backend.contracts import arkit
from shared_data import ICT_NPZ, OFFICIAL_ANCHORS

ICT, ANCH = ICT_NPZ, OFFICIAL_ANCHORS
needs_data = pytest.mark.skipif(not (ICT.exists() and ANCH.exists()),
                                reason=f"shared ICT-FaceKit data not found at {ICT} (set MONONPHM_SHARED)")


def test_arkit_table():
    assert len(arkit.ARKIT_NAMES) == 52 and arkit.ARKIT_NAMES[-1] == "tongueOut"
    m = arkit.ict_to_arkit_matrix()
    assert m.shape == (53, 52)
    w = np.zeros(53)
    w[arkit.ICT_NAMES.index("browInnerUp_L")] = 1.0
    w[arkit.ICT_NAMES.index("browInnerUp_R")] = 0.5
    w[arkit.ICT_NAMES.index("eyeBlink_L")] = 0.7
    a = arkit.ict_to_arkit(w)
    assert a[arkit.ARKIT_INDEX["browInnerUp"]] == pytest.approx(0.75)
    assert a[arkit.ARKIT_INDEX["eyeBlinkLeft"]] == pytest.approx(0.7)
    assert a[arkit.ARKIT_INDEX["tongueOut"]] == 0
    assert arkit.ict_to_arkit(np.ones((4, 7, 53))).shape == (4, 7, 52)
    # round trip for unsplit channels
    r = arkit.ict_to_arkit(arkit.arkit_to_ict(a))
    assert r[arkit.ARKIT_INDEX["eyeBlinkLeft"]] == pytest.approx(0.7)


@pytest.fixture(scope="module")
def gen():
    from backend.training import data as D
    ict = D.ICTModel(ICT)
    av = D.derive_anchor_vertices(ict, np.load(ANCH))
    return D, ict, av


@needs_data
def test_anchor_semantics(gen):
    D, ict, av = gen
    assert av.shape == (65,) and len(set(av.tolist())) == 65
    P = ict.neutral[av]
    # mirror pairs: odd member is the x-mirror of the even one; midline anchors at x = 0
    assert np.abs(P[0:60:2] * [-1, 1, 1] - P[1:60:2]).max() < 1e-3
    assert np.abs(P[60:, 0]).max() < 1e-3
    # official order kept: nose tip (62) is the front-most midline anchor, chin (60) below the nose
    assert P[62, 2] == P[60:, 2].max() and P[60, 1] < P[62, 1]
    off = np.load(ANCH)
    assert np.linalg.norm(P - off, axis=1).mean() < 0.06  # within ~1.5 cm on average of the official mean


@needs_data
def test_sample_invariants(gen):
    D, ict, av = gen
    g = D.Generator(ict, av, seed=3, sizes=D.SampleSizes(n_face=200, n_other=100, n_near=100, n_off=50, n_far=20,
                                                         n_corr=80, n_kd=3000))
    b = g.batch(3)
    # normals unit, colours in range
    assert np.allclose(np.linalg.norm(b["surf_normal"], axis=-1), 1, atol=1e-4)
    assert b["surf_color"].min() >= 0 and b["surf_color"].max() <= 1
    # inside the model box (head in NPHM units)
    assert np.abs(b["surf"]).max() < 1.0
    # near-surface targets bounded by the normal offset (or, under hair, by its thickness); KD targets finite
    from backend.training.hair import T_MAX
    assert np.isfinite(b["off_sdf"]).all() and np.abs(b["near_sdf"]).max() < 0.05 + T_MAX
    for i in range(3):
        w_id, w_ex = b["w_id"][i], b["w_ex"][i]
        vn = ict.vertices(w_id)
        # GT anchors are on the identity's neutral surface (mesh vertices)
        assert np.allclose(b["anchors"][i], vn[av], atol=1e-6)
        # correspondences: same triangle & barycentrics -> neutral and posed points differ by the expression only
        d = np.linalg.norm(b["corr_posed"][i] - b["corr_neutral"][i], axis=-1)
        if w_ex.sum() == 0:
            assert d.max() < 1e-5
        else:
            vp = ict.vertices(w_id, w_ex)
            assert d.max() <= np.linalg.norm(vp - vn, axis=-1).max() + 0.03  # bounded by vertex motion + offsets
        # ARKit targets follow the one mapping table
        assert np.allclose(b["arkit"][i], arkit.ict_to_arkit(w_ex), atol=1e-6)
    # eye gaze is never driven (static eyes)
    idx = [arkit.ICT_NAMES.index(n) for n in D.STATIC_CHANNELS]
    assert np.all(b["w_ex"][:, idx] == 0)


@needs_data
def test_surface_points_on_mesh(gen):
    D, ict, av = gen
    from scipy.spatial import cKDTree
    rng = np.random.default_rng(0)
    w_id, w_ex = D.sample_identity(rng), D.sample_expression(rng, p_neutral=0)
    s = D.make_sample(ict, av, w_id, w_ex, D.sample_appearance(rng), 1, rng, D.SampleSizes(n_kd=2000))
    v = ict.vertices(w_id, w_ex)
    # every surface sample lies within its triangle: distance to the nearest vertex < longest edge
    e = np.linalg.norm(v[ict.faces[:, 0]] - v[ict.faces[:, 1]], axis=1).max()
    assert cKDTree(v).query(s["surf"])[0].max() < e
    # near-surface sign: positive offsets along the outward normal are outside
    assert (np.sign(s["near_sdf"]) != 0).mean() > 0.99


@needs_data
def test_lip_emphasis_samples_the_lips_more_densely(gen):
    D, ict, av = gen
    from scipy.spatial import cKDTree
    w_id, w_ex = D.sample_identity(np.random.default_rng(2)), np.zeros(ict.n_ex, np.float32)
    v = ict.vertices(w_id)
    on_lips = ict.semantic["lips"] > 0.5

    def lip_share(emphasis):
        sizes = D.SampleSizes(n_face=600, n_other=300, n_corr=300, n_kd=2000, lip_emphasis=emphasis)
        s = D.make_sample(ict, av, w_id, w_ex, D.sample_appearance(np.random.default_rng(0)), 1,
                          np.random.default_rng(5), sizes)
        tree = cKDTree(v)
        return [on_lips[tree.query(s[k])[1]].mean() for k in ("surf", "corr_neutral")]

    (surf0, corr0), (surf6, corr6) = lip_share(0.0), lip_share(6.0)
    # ~2 % of the surface points fall on the lips as shipped; (1 + 6)x as densely ~4-5x as many (the rest renormalised)
    assert surf0 < 0.04 and surf6 > 3 * surf0
    assert corr6 > 2 * corr0


@needs_data
def test_heldout_split(gen):
    D, ict, av = gen
    rng = np.random.default_rng(1)
    for _ in range(300):
        assert not D.is_heldout_combo(D.sample_expression(rng))
    vp = D.validation_params(n_ids=2)
    assert any(D.is_heldout_combo(p[2]) for p in vp)
    # validation identities come from a separate seed stream than training draws
    g = D.Generator(ict, av, seed=0)
    tr = np.stack([g.draw_params()[0] for _ in range(50)])
    for p in vp:
        assert np.abs(tr - p[1]).max(axis=1).min() > 0.1
