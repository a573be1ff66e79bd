"""The compute device: chosen (CUDA, then MPS, then CPU), reported, and used by every tensor of the tracker.

There is no GPU in CI, so the device-generic code runs on the CPU here; `OneDevice` makes any tensor created without
the tracker's device (a stray `torch.zeros(3)`, a `torch.as_tensor(numpy)`) land on the meta device, where the first
operation mixing it with the tracker's tensors fails -- on a GPU that would be a device-mismatch error or a silent
round trip through the host.
"""
import io
import json

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from backend.contracts import protocol
from backend.contracts.conventions import NPHM_UNIT_M
from backend.model import devices

from test_tracking_pipeline import _config, _tiny, clip, tiny_model  # noqa: F401  (fixtures)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    present = {"cuda": ["cpu", "cuda", "mps"], "mps": ["cpu", "mps"], "cpu": ["cpu"]}
    for expected, available in present.items():
        monkeypatch.setattr(devices, "available_devices", lambda a=available: a)
        assert devices.resolve_device("auto") == expected
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu", "cuda"])
    assert devices.resolve_device("cuda") == "cuda"   # no fallback to the CPU
    with pytest.raises(protocol.BadInputError) as e:
        devices.resolve_device("mps")
    assert "not available" in e.value.message and "auto" in e.value.hint


def test_handshake_reports_the_auto_device(monkeypatch):
    from backend import cli
    assert cli.version_info()["auto_device"] == devices.resolve_device("auto")
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu", "cuda"])
    info = cli.version_info()
    assert info["devices"] == ["cpu", "cuda"] and info["auto_device"] == "cuda"


def test_run_reports_its_device_and_timings(tmp_path, tiny_model, clip):  # noqa: F811
    from backend.tracking import run_track
    out = io.StringIO()
    events = protocol.EventWriter(out)
    outcome = run_track(_config(clip, tmp_path / "res", tiny_model, frames="0:2", output="shape_keys"), events,
                        _tiny())
    events.result(str(outcome.path), outcome.frames, outcome.timings)
    lines = [json.loads(s) for s in out.getvalue().splitlines()]
    dev = [e for e in lines if e["type"] == "device"]
    assert dev == [{"type": "device", "device": "cpu", "name": devices.cpu_model()}]
    assert lines.index(dev[0]) < next(i for i, e in enumerate(lines) if e["type"] == "progress")
    timings = lines[-1]["timings"]
    assert timings["total"] >= timings["identity"] > 0 and timings["frames_total"] > 0


class OneDevice(TorchFunctionMode):
    """Fails any torch call whose tensor arguments (of one element or more) sit on different devices."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(found) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, found))}")
        return func(*args, **kwargs)


@pytest.fixture
def tracker(tiny_model):  # noqa: F811
    """A tiny tracker with its meshes and albedo, and one synthetic observation of its head."""
    from backend.contracts import landmark_tables as lt
    from backend.tracking.codes import CodeSpace
    from backend.tracking.run import load_tracking_model
    from backend.tracking.tracker import FrameObs, FrameState, Tracker

    torch.manual_seed(0)
    model, enc, reg, _ = load_tracking_model(_config("x", "y", tiny_model), "cpu")
    codes = CodeSpace(model, enc, reg)
    lmset = lt.tracking_landmarks("mediapipe478", model.id_model.mean_anchors.numpy())
    W = H = 96
    K = np.array([[120.0, 0, W / 2], [0, 120.0, H / 2], [0, 0, 1]])
    tr = Tracker(model, codes, lmset, K, (W, H), _tiny(rays=16, n_coarse=6, n_fine=4))
    tr.build_meshes()
    tr.albedo = tr.mesh_albedo()
    st = FrameState(codes.init_expression(1)[0], torch.tensor([0.05, 0.1, 0.0]), torch.tensor([0.0, 0.0, 0.6]))
    with torch.no_grad():
        uv = tr.project(tr.canonical_landmarks(tr.z_geo())[None], st.omega[None], st.trans[None])[0]
    points = np.zeros((478, 2), np.float32)
    points[lmset.detector_idx] = uv.numpy()
    labels = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    labels[((xx - W / 2) / 30) ** 2 + ((yy - H / 2) / 38) ** 2 < 1] = 1   # masks.FACE
    image = np.full((H, W, 3), 128, np.uint8)
    return tr, FrameObs(0, 0.0, points, image, labels, face_size=60.0), st


def test_tracker_tensors_stay_on_its_device(tracker):
    """The per-frame fit's terms, their gradients, the outputs and the per-frame meshes create every tensor on the
    tracker's device (`Tracker.device`, the model's)."""
    from backend.tracking.run import posed_frame_meshes
    tr, obs, st = tracker
    assert tr.device == torch.device("cpu") and tr.K.device == tr.device and tr.sh.device == tr.device
    zg, za = tr.z_geo().detach(), tr.z_app().detach()
    lms = tr.tensor(obs.landmarks[tr.lm_idx])[None]
    p_ex = st.p_ex.clone()[None].requires_grad_(True)
    om, trans = st.omega.clone().requires_grad_(True), st.trans.clone().requires_grad_(True)
    with torch.device("meta"), OneDevice():
        loss_lm, _, _ = tr.landmark_term(zg, p_ex, om[None], trans[None], lms, tr.tensor([obs.face_size]))
        loss_sil = tr._outline_term(zg, p_ex[0], om, trans, obs, cache={})
        mask_loss, rgb_loss, _, _ = tr.ray_terms(zg, za, p_ex[0], om, trans, obs, 16, np.random.default_rng(0), 50.0)
        (loss_lm + loss_sil + mask_loss + rgb_loss).backward()
        res = tr.frame_result(obs, st)
        # two frames: the second reuses the first's band and values (PosedMesher.reuse_tol)
        meshes = list(posed_frame_meshes([0, 1], tr.codes.z_exp(st.p_ex[None].expand(2, -1)).numpy(), tr))
    assert all(torch.isfinite(g).all() for g in (p_ex.grad, om.grad, trans.grad))
    assert float(p_ex.grad.abs().sum() + om.grad.abs().sum()) > 0
    assert np.isfinite(res.vertices).all() and res.landmark_error_px < 1.0 and res.mask_iou is not None
    assert len(meshes) == 2 and len(meshes[1].triangles) > 0 and meshes[1].colors.shape == meshes[1].vertices.shape
    assert all(m.triangles.max() < len(m.vertices) for m in meshes)    # faces match the (eye-filled) vertices


def test_per_frame_meshes_carry_the_canonical_hair_vertices(tracker):
    """With baked colours the per-frame meshes' hair vertices are looked up on the canonical mesh with them (one
    backward deformation; a posed query of the bald head cost more than the meshing itself)."""
    from backend.bake.posed import CanonicalColours
    from backend.tracking.run import posed_frame_meshes
    tr, _, st = tracker
    v = tr.mesh.vertices
    top = np.median(v[:, 1])
    z_exp = tr.codes.z_exp(st.p_ex[None]).numpy()
    mesh, = posed_frame_meshes([0], z_exp, tr, colours=CanonicalColours(v, tr.albedo, hair=v[:, 1] > top))
    assert mesh.hair is not None and len(mesh.hair) == len(mesh.vertices)
    on_top = mesh.vertices[:, 1] / NPHM_UNIT_M > top
    assert (mesh.hair == on_top).mean() > 0.95
    mesh, = posed_frame_meshes([0], z_exp, tr, colours=CanonicalColours(v, tr.albedo))
    assert mesh.hair is None   # a model without hair


def test_resume_keeps_the_measured_layout(tracker):
    """The ensemble layout a run measured travels in the tracker state, so a resumed run computes alike."""
    tr, _, _ = tracker
    for measured in (False, True, None):
        tr.model.id_model.grouped = measured
        state = tr.state_dict()
        tr.model.id_model.grouped = "other"
        tr.load_state_dict(state)
        assert tr.model.id_model.grouped is measured


def test_identity_stage_renders_rays_on_every_iteration(tracker, monkeypatch):
    """The identity stage draws rays on each of its iterations whatever the per-frame ``ray_every`` (standard's 2):
    on every 2nd the landmarks led the identity and standard's faces came out worse than draft's."""
    import dataclasses
    tr, obs, _ = tracker
    tr.preset = dataclasses.replace(tr.preset, id_iters=4, id_rays=16, ray_every=2)
    calls = []
    real = tr.ray_terms
    monkeypatch.setattr(tr, "ray_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    tr.fit_identity([obs])
    assert len(calls) == 4


def test_identity_rays_sample_the_hair_outline(tracker):
    """Where the frame labels hair (a model with hair) ``hair_edge`` of the rays land on the hair's outline
    (``masks.hair_edge``), which they all but miss drawn with the rest; a frame without hair gets the same rays as
    before, so a bald model's fit is unchanged."""
    import dataclasses
    from backend.tracking import masks as M
    tr, obs, _ = tracker
    yy, xx = np.mgrid[:tr.H, :tr.W]
    labels = obs.labels.copy()
    cap = (((xx - tr.W / 2) / 34) ** 2 + ((yy - tr.H / 2) / 42) ** 2 < 1) & (labels != M.FACE) & (yy < tr.H / 2)
    labels[cap] = M.HEAD_OTHER
    hair = dataclasses.replace(obs, labels=labels)
    edge = np.flatnonzero(M.hair_edge(labels, obs.face_size))

    def on_edge(share):
        return np.isin(tr.sample_pixels(hair, 192, np.random.default_rng(0), share), edge).sum()

    assert on_edge(0.0) < 10 and on_edge(0.2) >= int(0.2 * 192)
    for share in (0.0, 0.2, 0.5):   # past the near share (0.3), the edge takes it all
        assert len(tr.sample_pixels(hair, 192, np.random.default_rng(0), share)) == 192
    assert np.array_equal(tr.sample_pixels(obs, 192, np.random.default_rng(0), 0.2),
                          tr.sample_pixels(obs, 192, np.random.default_rng(0), 0.0))


def test_identity_stage_keeps_a_bald_head_bald(tracker):
    """A model with hair inputs fitted to its own bald head: the hair parameters' L1 prior (``hair_shrink``) and
    their training support (ranges, no scalp entries without a thickness) keep them near 0, where Adam's steps alone
    leave them wherever the rays' noise pushed them; most of all those the silhouette barely sees
    (``hair_shrink_unseen``)."""
    import dataclasses
    from backend.model.encoders import CodeEncoders
    from backend.tracking.codes import UNSEEN_HAIR_PARAMS, CodeSpace
    from backend.contracts import landmark_tables as lt
    from backend.tracking.tracker import Tracker
    from backend.training.hair import HAIR_NAMES, HAIR_RANGES, N_HAIR, SCALP_PARAMS
    tr, obs, _ = tracker
    cfg = tr.model.cfg
    lmset = lt.tracking_landmarks("mediapipe478", tr.model.id_model.mean_anchors.numpy())
    torch.manual_seed(2)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=100 + N_HAIR, init_scale=0.05)
    with torch.no_grad():
        enc.geo.bias.zero_()   # the bald mean head is the tiny model's own head (the observation's)
    support = {"hair": {"params": list(HAIR_NAMES), "ranges": [list(r) for r in HAIR_RANGES],
                        "scalp": list(SCALP_PARAMS)}}
    hair = {}
    own = tr.model.extra
    try:
        for prior in (False, True):
            tr.model.extra = support if prior else {}
            fit = Tracker(tr.model, CodeSpace(tr.model, enc), lmset, tr.Knp, (tr.W, tr.H),
                          dataclasses.replace(tr.preset, id_iters=30, id_rays=16,
                                              hair_shrink=tr.preset.hair_shrink if prior else 0.0,
                                              hair_shrink_unseen=tr.preset.hair_shrink_unseen if prior else 0.0,
                                              w_bald_face=0.0))   # the prior alone (the term: its own test)
            fit.build_meshes()
            fit.albedo = fit.mesh_albedo()
            fit.fit_identity([obs])
            hair[prior] = fit.p_geo[100:].abs()
    finally:
        tr.model.extra = own
    assert float(hair[False].mean()) > 0.05                     # unregularised, the hair parameters drift (0.14)
    # the preset's prior: 0.03 of lr_id on all (0.35 of the drift), 0.3 on those the silhouette barely sees (0.1)
    unseen = torch.tensor([n in UNSEEN_HAIR_PARAMS for n in HAIR_NAMES])
    assert float(hair[True].mean()) < 0.5 * float(hair[False].mean())
    assert float(hair[True][unseen].mean()) < 0.2 * float(hair[False][unseen].mean())


def test_identity_stage_fits_a_beard_only_where_the_frames_show_one(tracker, monkeypatch):
    """A model with a beard and moustache among its hair parameters: where the identity frames' lower face is
    skin-coloured (``masks.lower_face_skin_share`` >= SHAVEN_SKIN_SHARE) both stay 0 (they drifted to 0.2 on shaven
    clips, a 3 mm shell on the chin); where it is not, they are fitted."""
    import dataclasses
    from backend.contracts import landmark_tables as lt
    from backend.model.encoders import CodeEncoders
    from backend.tracking import masks as M
    from backend.tracking.codes import CodeSpace
    from backend.tracking.tracker import SHAVEN_SKIN_SHARE, Tracker
    from backend.training.hair import HAIR_NAMES, HAIR_RANGES, N_HAIR, SCALP_PARAMS
    tr, obs, _ = tracker
    cfg = tr.model.cfg
    lmset = lt.tracking_landmarks("mediapipe478", tr.model.id_model.mean_anchors.numpy())
    torch.manual_seed(2)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=100 + N_HAIR, init_scale=0.05)
    facial = [100 + HAIR_NAMES.index("beard"), 100 + HAIR_NAMES.index("moustache")]
    own = tr.model.extra
    tr.model.extra = {"hair": {"params": list(HAIR_NAMES), "ranges": [list(r) for r in HAIR_RANGES],
                               "scalp": list(SCALP_PARAMS)}}
    try:
        for share, shaven in ((SHAVEN_SKIN_SHARE + 0.2, True), (SHAVEN_SKIN_SHARE - 0.3, False)):
            monkeypatch.setattr(M, "lower_face_skin_share", lambda image, landmarks, s=share: s)
            fit = Tracker(tr.model, CodeSpace(tr.model, enc), lmset, tr.Knp, (tr.W, tr.H),
                          dataclasses.replace(tr.preset, id_iters=8, id_rays=16, hair_shrink=0.0))
            fit.p_geo[facial] = 0.3
            fit.build_meshes()
            fit.albedo = fit.mesh_albedo()
            fit.fit_identity([obs])
            assert fit.codes.facial_hair is not shaven
            assert (float(fit.p_geo[facial].abs().min()) == 0) is shaven
    finally:
        tr.model.extra = own


def test_identity_stage_keeps_the_hair_off_the_face_skin(tracker):
    """A model with hair inputs started with hair on a frame that shows face skin only: with the bald-face term
    (``Preset.w_bald_face``) the FACE rays' rendered surface ends nearer the same identity's bald head than without
    (``head_mesh.hair_over_face_mm``); a model without hair fits exactly as with the term off."""
    import dataclasses
    from backend.contracts import landmark_tables as lt
    from backend.model.encoders import CodeEncoders
    from backend.tracking.codes import CodeSpace
    from backend.tracking.tracker import Tracker
    from backend.training.hair import HAIR_NAMES, HAIR_RANGES, N_HAIR, SCALP_PARAMS
    tr, obs, _ = tracker
    cfg = tr.model.cfg
    lmset = lt.tracking_landmarks("mediapipe478", tr.model.id_model.mean_anchors.numpy())

    def fit(codes, w, start=None):
        t = Tracker(tr.model, codes, lmset, tr.Knp, (tr.W, tr.H),
                    dataclasses.replace(tr.preset, id_iters=12, id_rays=32, hair_shrink=0.0, hair_shrink_unseen=0.0,
                                        w_bald_face=w))
        if start is not None:
            t.p_geo = start.clone()
        t.build_meshes()
        t.albedo = t.mesh_albedo()
        states = t.fit_identity([obs])
        return t, states[0]

    # without hair inputs: bit for bit the fit of the term switched off
    plain = [fit(CodeSpace(tr.model, tr.codes.enc), w)[0].p_geo for w in (0.0, 1.0)]
    assert torch.equal(plain[0], plain[1])
    torch.manual_seed(2)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=100 + N_HAIR, init_scale=0.05)
    with torch.no_grad():
        enc.geo.bias.zero_()   # the bald mean head is the tiny model's own head (the observation's)
    own = tr.model.extra
    tr.model.extra = {"hair": {"params": list(HAIR_NAMES), "ranges": [list(r) for r in HAIR_RANGES],
                               "scalp": list(SCALP_PARAMS)}}
    over = {}
    try:
        codes = CodeSpace(tr.model, enc)
        start = torch.zeros(codes.n_id)
        start[100:] = 0.5
        for w in (0.0, 1.0):
            t, st = fit(codes, w, start)
            zg, za = t.z_geo().detach(), t.z_app().detach()
            terms = [t.ray_terms(zg, za, st.p_ex, st.omega, st.trans, obs, 64, np.random.default_rng(k), 400.0,
                                 with_color=False, z_geo_bald=codes.z_geo_bald(t.p_geo))[2] for k in range(4)]
            over[w] = float(torch.stack(terms).mean())
    finally:
        tr.model.extra = own
    assert over[0.0] > 5.0 and over[1.0] < 0.75 * over[0.0]   # 15.1 -> 9.4 mm in 12 iterations
