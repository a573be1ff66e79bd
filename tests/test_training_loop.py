"""A few training steps on a tiny config reduce the loss; save/resume reproduces the exact state."""

import numpy as np
import pytest
from shared_data import ICT_NPZ, OFFICIAL_ANCHORS

torch = pytest.importorskip("torch")

ICT, ANCH = ICT_NPZ, OFFICIAL_ANCHORS
pytestmark = pytest.mark.skipif(not (ICT.exists() and ANCH.exists()),
                                reason=f"shared ICT-FaceKit data not found at {ICT} (set MONONPHM_SHARED)")


def _args(out, extra=()):
    from backend.training.train import parse_args
    return parse_args(["--out", str(out), "--data", str(ICT), "--anchors", str(ANCH), "--preset", "tiny",
                       "--batch", "2", "--total-steps", "400", "--warmup", "5", "--lr", "3e-3", "--grad-sub", "16",
                       "--quiet", *extra])


def test_tiny_training_reduces_loss(tmp_path):
    from backend.training.train import Trainer
    torch.set_num_threads(1)
    tr = Trainer(_args(tmp_path))
    first = [tr.validate()["total"]]
    for _ in range(40):
        tr.train_step()
    after = tr.validate()["total"]
    assert np.isfinite(after)
    assert after < first[0]


def test_save_resume_identical(tmp_path):
    from backend.training.train import Trainer
    torch.set_num_threads(1)
    a = Trainer(_args(tmp_path / "a"))
    for _ in range(3):
        a.train_step()
    a.save()
    # continue the original for 2 steps
    ra = [a.train_step()["total"] for _ in range(2)]
    # a fresh trainer resumes from the checkpoint and must produce the same losses and weights
    b = Trainer(_args(tmp_path / "a"))
    assert b.try_resume() and b.step == 3
    rb = [b.train_step()["total"] for _ in range(2)]
    assert ra == rb
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for x, y in zip(a.ema_params, b.ema_params):
        assert torch.equal(x, y)
    assert a.gen.get_state() == b.gen.get_state()


def test_cli_runs_and_resumes(tmp_path):
    from backend.training.train import main
    torch.set_num_threads(1)
    assert main([*_cli(tmp_path), "--max-steps", "3"]) == 0
    assert (tmp_path / "ckpt_last.pt").exists() and (tmp_path / "log.jsonl").exists()
    assert main([*_cli(tmp_path), "--max-steps", "5"]) == 0
    st = torch.load(tmp_path / "ckpt_last.pt", map_location="cpu", weights_only=False)
    assert st["step"] == 5
    assert (tmp_path / "losses.png").exists()


def _cli(out):
    return ["--out", str(out), "--data", str(ICT), "--anchors", str(ANCH), "--preset", "tiny", "--batch", "2",
            "--total-steps", "50", "--grad-sub", "16", "--log-every", "1", "--val-every", "2", "--quiet"]


def test_init_from_exported_model_reproduces_it(tmp_path):
    """--init-from: the built-in model's networks and encoders, identity columns it lacks (hair) at zero, so a
    bald head's codes are unchanged at step 0; the EMA starts from the same weights."""
    from backend import BUILTIN_MODEL_DIR
    from backend.training.evaluate import load_exported
    from backend.training.hair import N_HAIR
    from backend.training.train import Trainer, parse_args
    if not (BUILTIN_MODEL_DIR / "model.pt").exists():
        pytest.skip("no built-in model")
    torch.set_num_threads(1)
    tr = Trainer(parse_args(["--out", str(tmp_path), "--data", str(ICT), "--anchors", str(ANCH), "--quiet"]))
    tr.init_from(BUILTIN_MODEL_DIR)
    model, enc, _, _ = load_exported(BUILTIN_MODEL_DIR)
    for k, v in model.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    n_src = enc.geo.in_features
    assert tr.enc.geo.in_features == 100 + N_HAIR >= n_src
    w = torch.randn(4, tr.enc.geo.in_features)
    w[:, 100:] = 0  # bald
    assert torch.allclose(tr.enc.encode_geo(w), enc.encode_geo(w[:, :n_src]), atol=1e-6)
    assert torch.equal(tr.enc.exp.weight, enc.exp.weight)
    for e, p in zip(tr.ema_params, tr._ema_sources()):
        assert torch.equal(e, p)
    # weak expression channels (like the bald model's eyelids and brows) get a code of typical size
    from backend.contracts import arkit
    k = next(n for n, p in enumerate(tr._ema_sources()) if p is tr.enc.exp.weight)
    with torch.no_grad():
        for t in (tr.enc.exp.weight, tr.ema_params[k]):
            t[:, arkit.ICT_NAMES.index("eyeBlink_L")] *= 0.01
    col = tr.enc.exp.weight.detach().norm(dim=0).clone()
    boosted = tr.boost_weak_expression_columns()
    assert "eyeBlink_L" in boosted and "jawOpen" not in boosted
    after = tr.enc.exp.weight.detach().norm(dim=0)
    i, j = arkit.ICT_NAMES.index("eyeBlink_L"), arkit.ICT_NAMES.index("jawOpen")
    assert after[i] > 2 * col[i] and after[j] == col[j]
    assert arkit.ICT_NAMES.index("eyeLookUp_L") not in [arkit.ICT_NAMES.index(n) for n in boosted]
    assert torch.equal(tr.ema_params[k], tr.enc.exp.weight)


def test_export_writes_the_hair_mesh_box(tmp_path):
    """An exported model meshes the box that holds its neck and hair (``hair.MESH_BOX``), not the official one, and
    declares its hair parameters' support in the training data (ranges; scalp entries only with a thickness)."""
    import json

    from backend.model import load_model
    from backend.training.export import export
    from backend.training.hair import HAIR_NAMES, MESH_BOX, sample_hair
    from backend.training.train import main
    torch.set_num_threads(1)
    assert main([*_cli(tmp_path / "run"), "--max-steps", "1"]) == 0
    out = export(tmp_path / "run" / "ckpt_last.pt", tmp_path / "model", refit_arkit=False)
    assert json.loads((out / "config.json").read_text())["config"]["mesh_box"] == [list(b) for b in MESH_BOX]
    model = load_model(out)
    assert model.cfg.mesh_box == MESH_BOX
    hair = model.extra["hair"]
    styles = np.stack([sample_hair(np.random.default_rng(i)) for i in range(400)])
    lo, hi = np.array(hair["ranges"]).T
    assert hair["params"] == list(HAIR_NAMES) and np.all((styles >= lo) & (styles <= hi))
    scalp = np.isin(hair["params"], hair["scalp"])
    bald_scalp = styles[:, hair["params"].index("thickness")] == 0
    assert 0 < bald_scalp.mean() < 1 and not styles[bald_scalp][:, scalp].any()
    assert styles[~bald_scalp][:, scalp].any(0).all()   # every scalp entry is used with hair


def test_bald_run_keeps_the_shipped_bald_models_form(tmp_path):
    """--bald: every training head without hair and an identity encoder of the 100 ICT weights alone; the export
    has no hair entry and keeps the official mesh box, so the tracker treats it as the shipped bald model."""
    import json

    from backend.model import load_model
    from backend.model.checkpoint import represents_hair
    from backend.training.export import export
    from backend.training.modelwrap import model_config
    from backend.training.train import Trainer, main
    torch.set_num_threads(1)
    tr = Trainer(_args(tmp_path / "gen", ["--bald"]))
    assert tr.enc.geo.in_features == 100
    assert not tr.gen.batch(6)["hair"].any()
    assert main([*_cli(tmp_path / "run"), "--bald", "--max-steps", "1"]) == 0
    out = export(tmp_path / "run" / "ckpt_last.pt", tmp_path / "model", refit_arkit=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["mesh_box"] == [list(b) for b in model_config("tiny").mesh_box]
    assert cfg["extra"]["encoders"]["geo_in"] == 100 and "hair" not in cfg["extra"]
    assert not represents_hair(load_model(out))
