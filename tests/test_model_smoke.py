"""Smoke test of the MonoNPHM model core: shapes, differentiability, presets."""
import pytest
import torch

from backend.model import MonoNPHM, MonoNPHMConfig, geometric_init


pytestmark = [pytest.mark.usefixtures("single_torch_thread")]


def _model(cfg):
    torch.manual_seed(0)
    A = torch.randn(cfg.n_anchors, 3) * 0.3
    return MonoNPHM(cfg, A)


def test_forward_shapes_and_grad_builtin():
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg)
    B, N = 2, 64
    zg = (torch.randn(B, cfg.dim_geo) * 0.05).requires_grad_(True)
    za = (torch.randn(B, cfg.dim_app) * 0.05).requires_grad_(True)
    ze = (torch.randn(B, cfg.dim_exp) * 0.1).requires_grad_(True)
    x = torch.rand(B, N, 3) - 0.5
    o = m(x, zg, za, ze, with_gradient=True)
    assert o.sdf.shape == (B, N, 1) and o.color.shape == (B, N, 3) and o.gradient.shape == (B, N, 3)
    assert o.offsets.shape == (B, N, 3) and o.hyper.shape == (B, N, cfg.n_hyper)
    assert o.anchors.shape == (B, cfg.n_anchors, 3)
    loss = o.sdf.abs().mean() + (o.gradient.norm(dim=-1) - 1).abs().mean() + o.color.abs().mean()
    loss.backward()
    assert zg.grad is not None and za.grad is not None and ze.grad is not None
    assert all(p.grad is not None for p in m.parameters())
    # deformation alone and anchors alone
    off, hyp = m.deformation(x, zg, ze)
    assert off.shape == (B, N, 3) and hyp.shape == (B, N, cfg.n_hyper)
    assert m.anchors(zg).shape == (B, cfg.n_anchors, 3)
    # neutral and sdf-only paths
    on = m(x, zg, None, None, neutral=True, with_color=False)
    assert on.color is None and torch.all(on.offsets == 0)


def test_official_size_param_count():
    m = _model(MonoNPHMConfig.official())
    n_id = sum(p.numel() for p in m.id_model.parameters())
    n_ex = sum(p.numel() for p in m.ex_model.parameters())
    assert n_id == 10_284_627 and n_ex == 937_557  # reference §1.8


def test_config_json_roundtrip():
    for cfg in (MonoNPHMConfig.official(), MonoNPHMConfig.builtin()):
        assert MonoNPHMConfig.from_json(cfg.to_json()) == cfg


def test_geometric_init_is_blob():
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg)
    geometric_init(m, radius=0.4)
    zg, za, ze = m.zero_codes(1)
    with torch.no_grad():
        s0 = m(torch.zeros(1, 1, 3), zg, za, ze, neutral=True, with_color=False).sdf
        s1 = m(torch.tensor([[[0.0, 0.0, 1.2]]]), zg, za, ze, neutral=True, with_color=False).sdf
    assert s0.item() < 0 < s1.item()
