"""The shipped built-in checkpoint loads and its canonical mesh is a plausible head."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backend import BUILTIN_MODEL_DIR as BUILTIN  # noqa: E402

pytestmark = pytest.mark.skipif(not (BUILTIN / "model.pt").exists(), reason="no built-in checkpoint committed yet")


@pytest.fixture(scope="module")
def loaded():
    from backend.training.evaluate import load_exported
    torch.set_num_threads(1)
    return load_exported(BUILTIN)


def test_files_and_size():
    size = sum(p.stat().st_size for p in BUILTIN.iterdir() if p.is_file())
    assert size < 25e6
    meta = json.loads((BUILTIN / "config.json").read_text())
    ex = meta["extra"]
    assert len(ex["anchor_ict_vertex"]) == 65 and np.asarray(ex["mean_anchors"]).shape == (65, 3)
    assert (BUILTIN / "MODEL_CARD.md").exists()


def test_canonical_mesh_is_a_head(loaded):
    from skimage.measure import marching_cubes
    model, enc, reg, meta = loaded
    zg, za, ze = enc.mean_codes()
    lo = np.array([-0.6, -1.0, -0.75])
    hi = np.array([0.6, 0.65, 0.5])
    res = 48
    axes = [np.linspace(lo[i], hi[i], res) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    sdf = model.sdf_only(torch.from_numpy(grid), zg, neutral=True)[0, :, 0].numpy().reshape(res, res, res)
    assert sdf.min() < 0 < sdf.max()
    spacing = (hi - lo) / (res - 1)
    v, f, _, _ = marching_cubes(sdf, 0.0, spacing=tuple(spacing))
    v = v + lo
    # keep the largest blob around the face: points within the anchors' neighbourhood
    A = np.asarray(model.id_model.mean_anchors)
    near = np.linalg.norm(v[:, None] - A[None], axis=-1).min(1) < 0.15
    ext = (v[near].max(0) - v[near].min(0)) * 0.25  # metres
    # a head: ~0.13-0.22 m wide, ~0.2-0.4 m tall (incl. neck), ~0.17-0.3 m deep
    assert 0.12 < ext[0] < 0.25, ext
    assert 0.18 < ext[1] < 0.45, ext
    assert 0.15 < ext[2] < 0.32, ext
    # the mean anchors lie close to the zero level set (within 1 cm)
    s = model.sdf_only(torch.from_numpy(A.astype(np.float32)), zg, neutral=True)[0, :, 0].abs()
    assert float(s.median()) < 0.04


def test_regressor_and_codes(loaded):
    model, enc, reg, meta = loaded
    zg, za, ze = enc.mean_codes()
    assert torch.count_nonzero(ze) == 0
    with torch.no_grad():
        w = reg(ze)
    assert w.shape == (1, 52) and float(w.min()) >= 0 and float(w.max()) <= 1
    out = model(torch.zeros(1, 4, 3), zg, za, ze, with_color=True)
    assert torch.isfinite(out.sdf).all() and out.color.shape == (1, 4, 3)


def test_region_surface_error_sees_a_mouth_the_codes_do_not_open(loaded):
    from shared_data import ICT_NPZ
    if not ICT_NPZ.exists():
        pytest.skip(f"shared ICT-FaceKit data not found at {ICT_NPZ} (set MONONPHM_SHARED)")
    from backend.training import data as D
    from backend.training.expression_response import region_surface_error
    model, enc, _, _ = loaded
    ict = D.ICTModel(ICT_NPZ)
    shapes = {"open": {"jawOpen": 0.8}}
    right = region_surface_error(model, enc, ict, n_ids=2, shapes=shapes)

    class NeutralExpression:  # the encoders, but every expression code is the neutral one
        geo = enc.geo
        encode_geo = staticmethod(enc.encode_geo)

        @staticmethod
        def encode_exp(w):
            return enc.encode_exp(torch.zeros_like(w))

    wrong = region_surface_error(model, NeutralExpression, ict, n_ids=2, shapes=shapes)
    assert set(right) == {"lips", "eyelids", "brows", "rest"} and right["lips"] < 1.5
    # the closed mouth sits millimetres from the open one; the brows, which jawOpen does not move, stay put
    assert wrong["lips"] > 3 * right["lips"] and abs(wrong["brows"] - right["brows"]) < 0.1
