"""Kernel choice by measured speed (`backend.model.kernels`): the layouts agree, the choice is applied and kept."""
import torch

from backend.contracts import landmark_tables as lt
from backend.model import canonical, kernels
from backend.training.modelwrap import build_model, model_config


def _tiny():
    torch.manual_seed(0)
    return build_model(model_config("tiny"), torch.as_tensor(lt.ict_anchor_positions(), dtype=torch.float32))


def test_layout_choice_is_measured_applied_and_reused(monkeypatch):
    model = _tiny()
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
    # a second model of the same shape reuses the measurement (one per process: every run of it chooses alike)
    other = _tiny()
    monkeypatch.setattr(kernels, "_measure", lambda *a: (_ for _ in ()).throw(AssertionError("measured twice")))
    assert kernels.choose_ensemble_layout(other) is choice and other.id_model.grouped is choice["grouped"]


def test_blocked_must_be_clearly_faster_and_equal():
    """Noise (blocked faster by less than SWITCH_MARGIN) or a result difference above KERNEL_TOL keeps grouped."""
    assert kernels.prefer_grouped(1.0, 0.97, 0.0)
    assert not kernels.prefer_grouped(1.0, 0.90, 1e-7)
    assert kernels.prefer_grouped(1.0, 0.50, 2e-5)
