"""Checkpoint safety: corrupt files, wrong configs, missing keys and pickles with code are refused clearly."""
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from backend.model import CheckpointError, MonoNPHM, MonoNPHMConfig, load_model, load_official, save_model
from backend.model.checkpoint import project_to_official_state, safe_torch_load
from shared_data import PARITY_FIXTURE


pytestmark = [pytest.mark.usefixtures("single_torch_thread")]

FIX = PARITY_FIXTURE


def _official_folder(tmp_path: Path) -> Path:
    """A small official-format experiment folder (copied fixture if present, else synthesised)."""
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    if (FIX / "configs.yaml").is_file():
        shutil.copy(FIX / "configs.yaml", exp / "configs.yaml")
        shutil.copy(FIX / "anchors_65.npy", exp / "anchors_65.npy")
        shutil.copy(FIX / "checkpoints" / "checkpoint_epoch_1.tar", exp / "checkpoints" / "checkpoint_epoch_1.tar")
        return exp
    import numpy as np

    cfg = {"decoder": {"ex": {"hidden_dim": 48, "lat_dim_ex": 12, "lat_dim_id": 6, "mode": "compress", "nhyper": 2,
                              "nlayers": 6},
                       "id": {"blend_std": 3.75, "lat_dim_glob": 16, "lat_dim_loc_geo": 8, "lat_dim_loc_app": 8,
                              "nloc": 65, "nneigh": 12, "nsymm_pairs": 30,
                              "gnn": {"hidden_dim_geo": 32, "hidden_dim_app": 32, "nlayers_geo": 4, "nlayers_app": 4,
                                      "nfreq_bands_geo": 0, "nfreq_bands_app": 0}}}}
    (exp / "configs.yaml").write_text(yaml.safe_dump(cfg))
    np.save(exp / "anchors_65.npy", np.random.default_rng(0).normal(size=(65, 3)) * 0.3)
    m = MonoNPHM(MonoNPHMConfig.from_official_yaml(cfg))
    idd, exd = project_to_official_state(m)
    torch.save({"epoch": 1, "id_decoder": idd, "ex_decoder": exd}, exp / "checkpoints" / "checkpoint_epoch_1.tar")
    return exp


def test_official_folder_loads(tmp_path):
    exp = _official_folder(tmp_path)
    m = load_official(exp)  # anchors default to <exp>/anchors_65.npy
    assert isinstance(m, MonoNPHM)


def test_corrupt_file_refused(tmp_path):
    exp = _official_folder(tmp_path)
    ck = exp / "checkpoints" / "checkpoint_epoch_1.tar"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError) as e:
        load_official(exp)
    assert "corrupt" in e.value.hint or "not a readable" in e.value.message
    ck.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_official(exp)


def test_wrong_config_refused(tmp_path):
    exp = _official_folder(tmp_path)
    cfg = yaml.safe_load((exp / "configs.yaml").read_text())
    cfg["decoder"]["id"]["gnn"]["hidden_dim_geo"] = 64
    (exp / "configs.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError) as e:
        load_official(exp)
    assert "shape mismatch" in e.value.message and "deepSDFensemble.layers.0.layers.0.weight" in e.value.message
    assert "configs.yaml" in e.value.hint


def test_missing_key_refused(tmp_path):
    exp = _official_folder(tmp_path)
    ck_path = exp / "checkpoints" / "checkpoint_epoch_1.tar"
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    del ck["ex_decoder"]["defDeepSDF.lin3.weight"]
    torch.save(ck, ck_path)
    with pytest.raises(CheckpointError) as e:
        load_official(exp)
    assert "missing keys" in e.value.message and "defDeepSDF.lin3.weight" in e.value.message
    del ck["ex_decoder"]
    torch.save(ck, ck_path)
    with pytest.raises(CheckpointError, match="ex_decoder"):
        load_official(exp)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.sentinel}",))


def test_pickle_with_code_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    _Evil.sentinel = str(sentinel)
    exp = _official_folder(tmp_path)
    ck_path = exp / "checkpoints" / "checkpoint_epoch_1.tar"
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    ck["optimizer"] = _Evil()
    torch.save(ck, ck_path)
    with pytest.raises(CheckpointError) as e:
        load_official(exp)
    assert "refusing" in e.value.message
    assert not sentinel.exists()
    # same for the project format
    m = MonoNPHM(MonoNPHMConfig.builtin())
    save_model(tmp_path / "proj", m)
    torch.save({"x": _Evil()}, tmp_path / "proj" / "model.pt")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "proj")
    assert not sentinel.exists()


def test_corrupt_bytes_are_called_corrupt_not_code(tmp_path):
    """Bytes that are no checkpoint at all (a truncated copy, another file renamed) are reported as unreadable, not as
    refused code, which would send the user looking for a malicious file."""
    bad = tmp_path / "model.pt"
    for content in (b"garbage bytes, not a pickle", b"PK\x03\x04 a zip header and nothing else"):
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            safe_torch_load(bad)
        assert "not a readable PyTorch checkpoint" in e.value.message and "refusing" not in e.value.message


def test_project_format_mismatch_refused(tmp_path):
    m = MonoNPHM(MonoNPHMConfig.builtin(), torch.randn(65, 3) * 0.3)
    save_model(tmp_path / "p", m, {"note": "x"})
    m2 = load_model(tmp_path / "p" / "model.pt")
    assert torch.equal(m2.id_model.mean_anchors, m.id_model.mean_anchors)
    # config edited to another size -> named mismatch
    import json

    cj = tmp_path / "p" / "config.json"
    meta = json.loads(cj.read_text())
    meta["config"]["hidden_dim_ex"] = 64
    cj.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="ex_model.lins.0.weight"):
        load_model(tmp_path / "p")
    cj.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "p")
