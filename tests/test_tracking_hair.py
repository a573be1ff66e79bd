"""Tracking with a model that represents hair: the bald code of the same identity and the hair vertex mask."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sphere_model():
    """The tiny preset at its geometric init (a sphere of radius 0.45), encoders with 100 ICT + hair inputs."""
    from backend.model.encoders import CodeEncoders
    from backend.training.hair import N_HAIR
    from backend.training.modelwrap import build_model, model_config
    torch.manual_seed(0)
    cfg = model_config("tiny")
    anchors = torch.randn(cfg.n_anchors, 3) * 0.2
    model = build_model(cfg, anchors).eval()
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=100 + N_HAIR)
    return model, enc


def test_bald_code_zeroes_the_hair_parameters(sphere_model):
    from backend.tracking.codes import CodeSpace
    model, enc = sphere_model
    codes = CodeSpace(model, enc)
    p = torch.rand(codes.n_id)
    bald = codes.bald(p)
    assert torch.equal(bald[:100], p[:100]) and not bald[100:].any()
    assert torch.equal(codes.z_geo(bald), codes.z_geo(torch.cat([p[:100], torch.zeros(codes.n_id - 100)])))
    # raw codes or encoders without hair inputs: no bald variant
    from backend.model.encoders import CodeEncoders
    cfg = model.cfg
    assert CodeSpace(model, CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp)).bald(p[:100]) is None
    assert CodeSpace(model, None).bald(torch.zeros(cfg.dim_geo)) is None
    # the bald-face term's gradient keeps the hair entries only; the bald code is held fixed
    g = torch.rand(codes.n_id)
    assert not codes.hair_only(g)[:100].any() and torch.equal(codes.hair_only(g)[100:], g[100:])
    zb = codes.z_geo_bald(p.requires_grad_(True))
    assert not zb.requires_grad and torch.equal(zb, codes.z_geo(bald).detach())


def test_hair_vertices_are_outside_the_bald_head(sphere_model):
    from backend.tracking.head_mesh import HAIR_MIN_OFFSET, hair_vertices
    model, enc = sphere_model
    zb = enc.encode_geo(torch.zeros(1, enc.geo.in_features)).detach()
    dirs = np.random.default_rng(0).normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # the bald surface along each direction (bisection on the SDF), then points 1 cm outside and on it
    lo, hi = np.zeros(200), np.full(200, 1.2)
    for _ in range(30):
        mid = (lo + hi) / 2
        s = model.sdf_only(torch.as_tensor(dirs * mid[:, None], dtype=torch.float32)[None], zb, neutral=True)
        out = s[0, :, 0].numpy() > 0
        hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
    surface = dirs * lo[:, None]
    mask = hair_vertices(model, zb, np.concatenate([surface, surface + 0.04 * dirs]))
    assert mask.dtype == np.uint8 and mask.shape == (400,)
    assert mask[:200].sum() == 0 and mask[200:].mean() > 0.9
    assert HAIR_MIN_OFFSET < 0.04


def test_hair_over_face_counts_only_what_lies_outside_the_bald_head(sphere_model):
    """``head_mesh.hair_over_face_mm``: 0 on the bald head (posed with the frame's expression), the depth beyond
    HAIR_MIN_OFFSET (mm) outside it, 0 for rays that miss; its gradient moves the rendered points back inside and
    leaves the bald code and the expression alone."""
    from backend.contracts.conventions import NPHM_UNIT_M
    from backend.tracking.head_mesh import HAIR_MIN_OFFSET, hair_over_face_mm
    model, enc = sphere_model
    zb = enc.encode_geo(torch.zeros(1, enc.geo.in_features)).detach().requires_grad_(True)
    ze = torch.zeros(1, model.cfg.dim_exp, requires_grad=True)
    dirs = np.random.default_rng(1).normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lo, hi = np.zeros(64), np.full(64, 1.2)
    for _ in range(30):   # the posed bald surface along each direction (bisection)
        mid = (lo + hi) / 2
        s = model.sdf_only(torch.as_tensor(dirs * mid[:, None], dtype=torch.float32)[None], zb.detach(), ze.detach())
        out = s[0, :, 0].numpy() > 0
        hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
    surface = torch.as_tensor(dirs * lo[:, None], dtype=torch.float32)
    hit = torch.ones(64, dtype=torch.bool)
    assert float(hair_over_face_mm(model, zb, ze, surface, hit).detach()) == 0.0
    outside = (surface + 0.04 * torch.as_tensor(dirs, dtype=torch.float32)).requires_grad_(True)
    mm = hair_over_face_mm(model, zb, ze, outside, hit)
    beyond = (0.04 - HAIR_MIN_OFFSET) * 1000 * NPHM_UNIT_M       # 8 mm for a true distance
    assert 0.5 * beyond < float(mm.detach()) < 1.5 * beyond
    mm.backward()
    along = (outside.grad * torch.as_tensor(dirs, dtype=torch.float32)).sum(1)
    assert float((along > 0).float().mean()) > 0.9    # descent moves the points inwards
    assert zb.grad is None and ze.grad is None
    missed = hair_over_face_mm(model, zb, ze, outside.detach(), torch.arange(64) < 16)
    assert abs(float(missed.detach()) - float(mm.detach()) / 4) < 0.3 * float(mm.detach()) / 4   # a quarter of the rays hit: about a quarter


def test_model_declared_landmark_channels(sphere_model):
    """A model that lists the channels it barely drives (measured at export) has exactly those read from the
    landmarks, whatever its encoder's column norms; without the list the column heuristic stays."""
    from backend.contracts import arkit
    from backend.tracking.codes import CodeSpace
    from backend.training.expression_response import CHANNEL_GROUPS, LANDMARK_RATIO, landmark_channels
    model, enc = sphere_model
    # the eyelid and brow channels always come from the landmarks, even from a model that moves them fully (its
    # blinks are not fitted through the landmark loss); other groups only when the model barely moves them
    eye_brow = ["eyeBlink_L", "eyeBlink_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
                "browDown_L", "browDown_R", "eyeSquint_L", "eyeSquint_R"]
    assert landmark_channels({name: {"ratio": 1.0} for name in CHANNEL_GROUPS}) == eye_brow
    res = {"blink": {"ratio": 0.1}, "jawOpen": {"ratio": 0.9}, "wide": {"ratio": 0.9 * LANDMARK_RATIO},
           "smile": {"ratio": LANDMARK_RATIO}}
    assert landmark_channels(res) == eye_brow + ["eyeWide_L", "eyeWide_R"]
    model.extra = {"landmark_channels": ["eyeBlink_L", "eyeBlink_R"]}
    try:
        codes = CodeSpace(model, enc, None, landmark_regressor=object())
        on = [n for n, w in zip(arkit.ICT_NAMES, codes.landmark_channels.tolist()) if w]
        assert on == ["eyeBlink_L", "eyeBlink_R"]
    finally:
        del model.extra


def test_identity_projection_keeps_the_hair_in_the_training_support(sphere_model):
    """A model that declares its hair parameters' support (export): fits are clamped into the ranges, and on a bald
    scalp (thickness 0) the scalp entries are 0 while a beard stays, and on a shaven face the beard is 0; without the
    declaration only +-3."""
    from backend.tracking.codes import CodeSpace
    model, enc = sphere_model
    names = ["thickness", "bangs", "beard"]
    model.extra = {"hair": {"params": names, "ranges": [[0, 1], [0, 1], [0, 1]], "scalp": ["bangs"]}}
    try:
        small = type(enc)(model.cfg.dim_geo, model.cfg.dim_app, model.cfg.dim_exp, n_id=100 + len(names))
        codes = CodeSpace(model, small)
        p_app = torch.zeros(codes.n_app)
        for hair, expected in (([-0.2, 0.5, 0.4], [0.0, 0.0, 0.4]),     # bald scalp: no bangs; the beard stays
                               ([0.3, -0.5, 1.7], [0.3, 0.0, 1.0]),     # into the ranges
                               ([0.3, 0.6, 0.0], [0.3, 0.6, 0.0])):
            p_geo = torch.cat([torch.full((100,), 4.0), torch.tensor(hair)])
            codes.project_identity_(p_geo, p_app)
            assert torch.equal(p_geo[100:], torch.tensor(expected)) and (p_geo[:100] == 3.0).all()
        codes.facial_hair = False          # the frames show a shaven face: no beard, the scalp hair stays
        p_geo = torch.cat([torch.zeros(100), torch.tensor([0.3, 0.6, 0.4])])
        codes.project_identity_(p_geo, p_app)
        assert torch.equal(p_geo[100:], torch.tensor([0.3, 0.6, 0.0]))
        del model.extra
        p_geo = torch.cat([torch.zeros(100), torch.tensor([-0.2, 0.5, 1.7])])
        CodeSpace(model, small).project_identity_(p_geo, p_app)
        assert torch.allclose(p_geo[100:], torch.tensor([-0.2, 0.5, 1.7]))
    finally:
        if hasattr(model, "extra"):
            del model.extra


def test_hair_prior_is_stronger_on_what_the_silhouette_barely_sees(sphere_model):
    """The identity stage's L1 step on the hair parameters: ``unseen_amount`` on the parting, its side, the asymmetry
    and the nape's tilt (they drifted to their bounds under the others' prior), ``amount`` on the rest; a model that
    does not name its hair parameters gets ``amount`` on all."""
    from backend.tracking.codes import UNSEEN_HAIR_PARAMS, CodeSpace
    model, enc = sphere_model
    names = ["thickness", "parting", "volume", "asymmetry"]
    model.extra = {"hair": {"params": names, "ranges": [[0, 1], [0, 1], [0, 1], [-1, 1]], "scalp": names[1:]}}
    try:
        small = type(enc)(model.cfg.dim_geo, model.cfg.dim_app, model.cfg.dim_exp, n_id=100 + len(names))
        codes = CodeSpace(model, small)
        p_geo = torch.cat([torch.ones(100), torch.tensor([0.5, 0.5, 0.5, -0.5])])
        codes.shrink_hair_(p_geo, 0.1, 0.4)
        assert {"parting", "asymmetry"} <= set(UNSEEN_HAIR_PARAMS)
        assert torch.allclose(p_geo[100:], torch.tensor([0.4, 0.1, 0.4, -0.1])) and (p_geo[:100] == 1).all()
        codes.shrink_hair_(p_geo, 0.1, 0.4)
        assert torch.allclose(p_geo[100:], torch.tensor([0.3, 0.0, 0.3, 0.0]))
        del model.extra
        p_geo = torch.cat([torch.ones(100), torch.tensor([0.5, 0.5, 0.5, -0.5])])
        CodeSpace(model, small).shrink_hair_(p_geo, 0.1, 0.4)
        assert torch.allclose(p_geo[100:], torch.tensor([0.4, 0.4, 0.4, -0.4]))
    finally:
        if hasattr(model, "extra"):
            del model.extra
