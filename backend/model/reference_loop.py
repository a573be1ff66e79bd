"""Straightforward per-type-loop evaluation of the same model (baseline for benchmarks and an independent check).

This mirrors the official structure: full per-edge inputs [g ; l_k ; Delta_k] and one Python loop over the
MLP types with plain `F.linear`, no pruning, no first-layer factorisation.  It shares the parameters of a
`MonoNPHM`, so it must agree with the batched path to rounding.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .ensemble import blend_weights, knn_anchors, softplus
from .latents import batch_codes
from .mononphm import MonoNPHM


def loop_canonical(model: MonoNPHM, q: torch.Tensor, z_geo: torch.Tensor, anchors: torch.Tensor,
                   z_app: Optional[torch.Tensor] = None, with_color: bool = True):
    """Returns sdf (B,N,1), color (B,N,3)|None, per-edge sdf (B,N,K+1), per-edge colour (B,N,K+1,3)|None, w."""
    idm = model.id_model
    cfg = model.cfg
    B, N, _ = q.shape
    K = cfg.n_neighbors
    x_c, hyp = q[..., :3], q[..., 3:]
    idx = knn_anchors(x_c.detach(), anchors.detach(), K)
    bidx = torch.arange(B).view(B, 1, 1)
    delta = x_c.unsqueeze(2) - anchors[bidx, idx]
    w = blend_weights(torch.linalg.vector_norm(delta, dim=-1), cfg.sigma_neighbor, cfg.blend_std,
                      cfg.global_anchor_dist)
    delta = torch.cat([delta, x_c.unsqueeze(2)], 2)
    kidx = torch.cat([idx, idx.new_full((B, N, 1), cfg.n_anchors)], 2)
    sign = idm.anchor_sign.to(q.dtype)[kidx]
    delta = torch.cat([delta[..., :1] * sign.unsqueeze(-1), delta[..., 1:]], -1)
    local = torch.cat([delta, hyp.unsqueeze(2).expand(B, N, K + 1, hyp.shape[-1])], -1)
    g_geo, l_geo = idm.split_code(z_geo, cfg.lat_dim_loc_geo)
    inp = torch.cat([g_geo[:, None, None].expand(B, N, K + 1, -1), l_geo[bidx, kidx], local], -1)
    types = idm.anchor_type[kidx]
    E = B * N * (K + 1)
    inp = inp.reshape(E, -1)
    tflat = types.reshape(-1)
    sdf_e = q.new_zeros(E, 1)
    feats = q.new_zeros(E, cfg.hidden_dim_geo)
    beta = cfg.softplus_beta
    for t in range(cfg.n_types):  # the per-type loop the batched path replaces
        sel = (tflat == t).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        h = inp[sel]
        for l in range(idm.geo.n_linear - 1):
            h = F.linear(h, idm.geo.weights[l][t], idm.geo.biases[l][t])
            if l == idm.geo.n_linear - 2:
                feats = feats.index_copy(0, sel, h)
            h = softplus(h, beta)
        sdf_e = sdf_e.index_copy(0, sel, F.linear(h, idm.geo.weights[-1][t], idm.geo.biases[-1][t]))
    sdf_e = sdf_e.view(B, N, K + 1)
    sdf = (sdf_e * w).sum(-1, keepdim=True)
    if not with_color:
        return sdf, None, sdf_e, None, w
    m = idm.bottleneck2(F.relu(idm.bottleneck1(feats)))
    g_app, l_app = idm.split_code(z_app, cfg.lat_dim_loc_app)
    inp = torch.cat([g_app[:, None, None].expand(B, N, K + 1, -1), l_app[bidx, kidx],
                     m.view(B, N, K + 1, -1)], -1).reshape(E, -1)
    col_e = q.new_zeros(E, 3)
    for t in range(cfg.n_types):
        sel = (tflat == t).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        h = inp[sel]
        for l in range(idm.app.n_linear):
            h = F.linear(h, idm.app.weights[l][t], idm.app.biases[l][t])
            if l < idm.app.n_linear - 1:
                h = F.relu(h)
        col_e = col_e.index_copy(0, sel, h)
    col_e = col_e.view(B, N, K + 1, 3)
    color = (col_e * w.unsqueeze(-1)).sum(2)
    return sdf, color, sdf_e, col_e, w


def loop_deformation(model: MonoNPHM, x: torch.Tensor, z_geo: torch.Tensor, z_exp: torch.Tensor,
                     anchors: torch.Tensor) -> torch.Tensor:
    """Baseline deformation: the plain MLP on [x ; c_id ; z_exp], x (B, N, 3) -> [offset ; hyper] (B, N, 3+nh)."""
    B, N = x.shape[:2]
    ex = model.ex_model
    c = ex.compress_id(z_geo, anchors)
    h0 = torch.cat([x, c[:, None].expand(B, N, -1), z_exp[:, None].expand(B, N, -1)], -1)
    h = h0
    for i, lin in enumerate(ex.lins):
        if i == ex.skip:
            h = torch.cat([h, h0], -1) / 2 ** 0.5
        h = lin(h)
        if i < len(ex.lins) - 1:
            h = softplus(h, model.cfg.softplus_beta)
    return h


def loop_forward(model: MonoNPHM, x, z_geo, z_app=None, z_exp=None, neutral=False, with_color=True,
                 with_gradient=False, create_graph=None) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Baseline posed evaluation: plain deformation MLP on [x ; c_id ; z_exp] + `loop_canonical`."""
    B = x.shape[0]
    z_geo, z_app, z_exp = (batch_codes(z, B) for z in (z_geo, z_app, z_exp))
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad() if with_gradient else torch.no_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
        xg = x.detach().requires_grad_(True) if with_gradient else x
        A = model.id_model.anchors(z_geo)
        if neutral:
            q = torch.cat([xg, xg.new_zeros(*xg.shape[:-1], model.cfg.n_hyper)], -1)
        else:
            h = loop_deformation(model, xg, z_geo, z_exp, A)
            q = torch.cat([xg + h[..., :3], h[..., 3:]], -1)
        sdf, color, _, _, _ = loop_canonical(model, q, z_geo, A, z_app, with_color)
        grad = None
        if with_gradient:
            (grad,) = torch.autograd.grad(sdf, xg, torch.ones_like(sdf), create_graph=create_graph)
    return sdf, color, grad
