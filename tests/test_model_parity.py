"""Parity with the official implementation (fixture in ../shared/fixtures/official-parity, README tolerances)."""

import numpy as np
import pytest
import torch

from backend.model import load_official
from backend.model.root_finding import posed_anchors
from shared_data import PARITY_FIXTURE


FIX = PARITY_FIXTURE
pytestmark = [pytest.mark.usefixtures("single_torch_thread"),
              pytest.mark.skipif(not (FIX / "expected.npz").is_file(),
                                 reason=f"official parity fixture not found at {FIX} (set MONONPHM_SHARED)")]

# README tolerances: float64 1e-9 everywhere; float32 1e-5 values, 1e-4 gradients.
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-5, 1e-4)}


@pytest.fixture(scope="module")
def data():
    return dict(np.load(FIX / "queries.npz")), dict(np.load(FIX / "expected.npz"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_official_parity(data, dtype):
    Q, E = data
    tv, tg = TOL[dtype]
    m = load_official(FIX, FIX / "anchors_65.npy", dtype=dtype)
    x = torch.tensor(Q["points"], dtype=dtype)[None]
    for s in range(2):
        zg, za, ze = (torch.tensor(Q[k][s], dtype=dtype) for k in ("z_geo", "z_app", "z_exp"))
        o = m(x, zg, za, ze, with_gradient=True, exact=True)
        on = m(x, zg, za, ze, neutral=True, with_gradient=True, exact=True)

        def chk(t, key, tol):
            err = np.abs(t.detach().numpy()[0] - E[key][s]).max()
            assert err < tol, f"{key} set {s} {dtype}: max err {err:.3g} >= {tol}"

        chk(o.anchors, "anchors", tv)
        chk(o.offsets, "offsets", tv)
        chk(o.hyper, "hyper", tv)
        chk(o.sdf, "sdf", tv)
        chk(o.color, "color", tv)
        chk(o.gradient, "gradient", tg)
        chk(on.sdf, "sdf_neutral", tv)
        chk(on.color, "color_neutral", tv)
        chk(on.gradient, "gradient_neutral", tg)
        chk(m.ex_model.compress_id(zg, o.anchors), "c_id", tv)
        assert (np.sort(o.knn_idx[0].numpy(), -1) == np.sort(E["knn_idx"][s].astype(np.int64), -1)).all()
        assert (np.sort(on.knn_idx[0].numpy(), -1) == np.sort(E["knn_idx_neutral"][s].astype(np.int64), -1)).all()
        _, _, J = m.deformation_jacobian(o.anchors, zg, ze, anchors=o.anchors)
        chk(J[:, :, :3] + torch.eye(3, dtype=dtype), "jac_at_anchors", tg)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_root_finder_reaches_posed_anchors(data, dtype):
    Q, E = data
    m = load_official(FIX, FIX / "anchors_65.npy", dtype=dtype)
    zg = torch.tensor(Q["z_geo"][:, 0], dtype=dtype)
    ze = torch.tensor(Q["z_exp"][:, 0], dtype=dtype)
    with torch.no_grad():
        r = posed_anchors(m, zg, ze)
    assert bool(r.converged.all())
    err = np.abs(r.points.numpy() - E["posed_anchors"]).max()
    assert err < (1e-9 if dtype == torch.float64 else 1e-5), err


def test_project_roundtrip_of_official(tmp_path, data):
    """Official -> project format -> reload gives identical outputs (and the export maps back exactly)."""
    from backend.model import load_model, save_model
    from backend.model.checkpoint import project_to_official_state, safe_torch_load

    Q, _ = data
    m = load_official(FIX, FIX / "anchors_65.npy")
    save_model(tmp_path / "m", m, {"source": "official-parity"})
    m2 = load_model(tmp_path / "m")
    assert m2.extra == {"source": "official-parity"}
    x = torch.tensor(Q["points"][:200])[None]
    zg, za, ze = (torch.tensor(Q[k][0]) for k in ("z_geo", "z_app", "z_exp"))
    with torch.no_grad():
        a, b = m(x, zg, za, ze), m2(x, zg, za, ze)
    assert torch.equal(a.sdf, b.sdf) and torch.equal(a.color, b.color)
    ck = safe_torch_load(FIX / "checkpoints" / "checkpoint_epoch_1.tar")
    idd, exd = project_to_official_state(m)
    assert list(idd) == list(ck["id_decoder"]) and list(exd) == list(ck["ex_decoder"])
    assert all(torch.equal(idd[k], ck["id_decoder"][k]) for k in idd)
