"""Kernel choice by measured speed (`backend.model.kernels`): the layouts agree, the choice is applied and kept."""
import json

import torch

from backend.contracts import landmark_tables as lt
from backend.model import canonical, kernels
from backend.training.modelwrap import build_model, model_config


def _tiny():
    torch.manual_seed(0)
    return build_model(model_config("tiny"), torch.as_tensor(lt.ict_anchor_positions(), dtype=torch.float32))


def test_layout_choice_is_measured_applied_and_reused(monkeypatch, tmp_path):
    model = _tiny()
    monkeypatch.setenv("MONONPHM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    choice = kernels.choose_ensemble_layout(model, points=256, rounds=1)
    assert choice["max_diff"] <= kernels.KERNEL_TOL        # both layouts compute the same field
    assert choice["grouped_s"] > 0 and choice["blocked_s"] > 0
    assert model.id_model.grouped is choice["grouped"]
    layouts = []
    real = canonical.make_layout
    monkeypatch.setattr(canonical, "make_layout", lambda *a, **k: layouts.append(real(*a, **k)) or layouts[-1])
    model.query(torch.zeros(1, 8, 3), *model.zero_codes(1))
    assert layouts and all(lay.grouped is choice["grouped"] for lay in layouts)
    # later models of this shape, in this process and in later ones (the stored choice), reuse the measurement, so
    # every run on this machine computes with the same kernels
    monkeypatch.setattr(kernels, "_measure", lambda *a: (_ for _ in ()).throw(AssertionError("measured twice")))
    other = _tiny()
    assert kernels.choose_ensemble_layout(other) is choice and other.id_model.grouped is choice["grouped"]
    monkeypatch.setattr(kernels, "_CHOICES", {})                 # a new process
    later = _tiny()
    assert kernels.choose_ensemble_layout(later) == choice and later.id_model.grouped is choice["grouped"]
    assert kernels.choices_file().parent == tmp_path


def test_a_corrupt_choices_file_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("MONONPHM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    kernels.choices_file().write_text("{not json")
    choice = kernels.choose_ensemble_layout(_tiny(), points=128, rounds=1)
    assert isinstance(choice["grouped"], bool)
    assert list(json.loads(kernels.choices_file().read_text()).values()) == [choice]


def test_blocked_must_be_clearly_faster_and_equal():
    """Noise (blocked faster by less than SWITCH_MARGIN) or a result difference above KERNEL_TOL keeps grouped."""
    assert kernels.prefer_grouped(1.0, 0.97, 0.0)
    assert not kernels.prefer_grouped(1.0, 0.90, 1e-7)
    assert kernels.prefer_grouped(1.0, 0.50, 2e-5)
