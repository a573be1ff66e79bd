"""Canonical identity field: anchor predictor, local-MLP SDF ensemble, bottleneck and colour ensemble.

Reference §1.3–1.5.  Query q = [x_c (3) ; h (n_hyper)] in canonical space; codes are (B, D) rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MonoNPHMConfig
from .parallel import flush_denormals
from .ensemble import (
    chain_constants,
    chains,
    TypedLinearStack,
    blend_weights,
    knn_anchors,
    make_layout,
    prune_mask,
)


def anchor_types(cfg: MonoNPHMConfig) -> torch.Tensor:
    """(n_anchors+1,) long: MLP type of every anchor; pairs share a type, the virtual anchor is last."""
    p = cfg.n_symm_pairs
    idx = [i // 2 for i in range(2 * p)]
    idx += [p + m for m in range(cfg.n_anchors - 2 * p)]
    idx += [cfg.n_types - 1]
    return torch.tensor(idx, dtype=torch.long)


def anchor_member(cfg: MonoNPHMConfig) -> torch.Tensor:
    """(n_anchors+1,) long: 1 for the odd member of a mirror pair, else 0 (a type serves at most two anchors)."""
    m = torch.zeros(cfg.n_anchors + 1, dtype=torch.long)
    m[1 : 2 * cfg.n_symm_pairs : 2] = 1
    return m


def type_member_anchor(cfg: MonoNPHMConfig) -> torch.Tensor:
    """(n_types, 2) long: the anchor of each (type, member); n_anchors + 1 (one past the virtual anchor) where a
    type has no second member."""
    table = torch.full((cfg.n_types, 2), cfg.n_anchors + 1, dtype=torch.long)
    k = torch.arange(cfg.n_anchors + 1)
    table[anchor_types(cfg), anchor_member(cfg)] = k
    return table


def anchor_flip(cfg: MonoNPHMConfig) -> torch.Tensor:
    """(n_anchors+1,) float: -1 for the odd member of a mirror pair (x of the local frame negated), else 1."""
    s = torch.ones(cfg.n_anchors + 1)
    s[1 : 2 * cfg.n_symm_pairs : 2] = -1.0
    return s


@dataclass
class CanonicalOutput:
    sdf: Optional[torch.Tensor]            # (B, N, 1) or None (with_sdf=False)
    color: Optional[torch.Tensor]          # (B, N, 3) or None
    knn_idx: torch.Tensor                  # (B, N, K) nearest anchors, ascending
    kept_edges: int                        # edges evaluated (after pruning)
    dropped_mass: Optional[torch.Tensor]   # (B, N) blend mass dropped by pruning (None if exact)


class CanonicalField(nn.Module):
    """Identity model (official `NPHM`): anchors + geometry ensemble + colour ensemble."""

    def __init__(self, cfg: MonoNPHMConfig, mean_anchors: Optional[torch.Tensor] = None):
        super().__init__()
        self.cfg = cfg
        A = cfg.n_anchors
        if mean_anchors is None:
            mean_anchors = torch.zeros(A, 3)
        mean_anchors = torch.as_tensor(mean_anchors, dtype=torch.float32).reshape(A, 3)
        # Stored in the state dict so project checkpoints are self-contained.
        self.register_buffer("mean_anchors", mean_anchors.clone())
        self.register_buffer("anchor_type", anchor_types(cfg), persistent=False)
        self.register_buffer("anchor_sign", anchor_flip(cfg), persistent=False)
        self.register_buffer("anchor_member", anchor_member(cfg), persistent=False)
        self.register_buffer("type_member_anchor", type_member_anchor(cfg), persistent=False)
        G = cfg.lat_dim_glob
        self.mlp_pos = nn.Sequential(
            nn.Linear(G, cfg.pos_mlp_dim), nn.ReLU(),
            nn.Linear(cfg.pos_mlp_dim, cfg.pos_mlp_dim), nn.ReLU(),
            nn.Linear(cfg.pos_mlp_dim, 3 * A),
        )
        T = cfg.n_types
        self.geo = TypedLinearStack(T, [cfg.geo_in_dim] + [cfg.hidden_dim_geo] * cfg.n_layers_geo + [1])
        self.bottleneck1 = nn.Linear(cfg.hidden_dim_geo, cfg.bottleneck_dim)
        self.bottleneck2 = nn.Linear(cfg.bottleneck_dim, cfg.bottleneck_dim)
        self.app = TypedLinearStack(T, [cfg.app_in_dim] + [cfg.hidden_dim_app] * cfg.n_layers_app + [3])
        # The typed matmuls' layout (`ensemble.EdgeLayout`): None = the default rule; `kernels.choose_ensemble_layout`
        # sets it by measured speed on the running machine.
        self.grouped: Optional[bool] = None

    # ------------------------------------------------------------------ codes
    def split_code(self, z: torch.Tensor, loc_dim: int):
        """(B, G + L*(A+1)) -> global (B, G), local (B, A+1, L)."""
        G = self.cfg.lat_dim_glob
        return z[:, :G], z[:, G:].reshape(z.shape[0], self.cfg.n_codes_local, loc_dim)

    def anchors(self, z_geo: torch.Tensor) -> torch.Tensor:
        """Predicted canonical anchors (B, n_anchors, 3) from the global part of z_geo (B, D_geo)."""
        g = z_geo[:, : self.cfg.lat_dim_glob]
        off = self.mlp_pos(g).reshape(z_geo.shape[0], self.cfg.n_anchors, 3)
        return self.mean_anchors.to(off.dtype).unsqueeze(0) + off

    def _code_rows(self, stack: TypedLinearStack, glob: torch.Tensor, loc: torch.Tensor, dtype=None,
                   chain: bool = False) -> torch.Tensor:
        """First-layer contribution of the codes, per (batch, anchor): (B*(A+1), H), or (B*(A+1), H + 8) with the
        chained constant columns [1, -1, ..., -1] appended (see `TypedLinearStack.augmented`).

        The codes are constant per (batch, anchor), so this part of the first Linear is computed once per
        anchor instead of once per edge; per edge only the spatial / bottleneck columns remain.
        """
        G, L = glob.shape[-1], loc.shape[-1]
        W = stack.weights[0]
        b = stack.biases[0]
        Wg = W[:, :, :G].index_select(0, self.anchor_type)          # (A+1, H, G)
        Wl = W[:, :, G : G + L].index_select(0, self.anchor_type)   # (A+1, H, L)
        rows = torch.einsum("khg,bg->bkh", Wg, glob) + torch.einsum("khl,bkl->bkh", Wl, loc)
        rows = rows + b.index_select(0, self.anchor_type).unsqueeze(0)
        if chain:
            rows = torch.cat([rows, chain_constants(rows).expand(*rows.shape[:2], 8)], dim=-1)
        if dtype is not None:
            rows = rows.to(dtype)
        return rows.reshape(-1, rows.shape[-1])

    def _folded_weights(self, w_in: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """First-layer weights with the code rows as two more input columns: (T, H', C) and (A+1, H') rows of
        one code set -> (T, H', C + 2), column C + m holding the row of the type's member-m anchor (0 if none).

        Every type serves at most two anchors (a mirror pair), so two indicator input columns (`anchor_member`,
        one-hot) select an edge's code row inside the matmul: no per-edge gather and add over (R, H') rows
        (2-core host, built-in size: SDF-only 12.0 -> 11.2 us, SDF + colour 17.3 -> 16.5 us per point and thread)."""
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])                  # + a zero row for "none"
        per_type = rows.index_select(0, self.type_member_anchor.reshape(-1)).view(-1, 2, rows.shape[1])
        return torch.cat([w_in, per_type.transpose(1, 2).to(w_in.dtype)], dim=2)

    # ------------------------------------------------------------------ field
    @flush_denormals()
    def forward(
        self,
        q: torch.Tensor,
        z_geo: torch.Tensor,
        anchors: torch.Tensor,
        z_app: Optional[torch.Tensor] = None,
        with_color: bool = True,
        exact: bool = True,
        prune_mass: Optional[float] = None,
        compute_dtype: Optional[torch.dtype] = None,
        return_dropped: bool = False,
        with_sdf: bool = True,
    ) -> CanonicalOutput:
        """Canonical SDF (and albedo) at q.

        q: (B, N, 3+n_hyper); z_geo: (B, D_geo); anchors: (B, A, 3); z_app: (B, D_app) (needed for colour).
        exact=False drops, per point, the smallest blend weights with total mass <= prune_mass.
        compute_dtype (e.g. torch.bfloat16) runs the per-edge matmuls in that dtype (coarse passes only).
        with_sdf=False (colour only, e.g. vertex colours of an extracted mesh) skips the geometry's last layer: the
        colour branch reads the last hidden pre-activation, so its activation and the SDF head are not needed.
        """
        cfg = self.cfg
        B, N, _ = q.shape
        K = cfg.n_neighbors
        A1 = cfg.n_anchors + 1
        x_c = q[..., :3]
        hyp = q[..., 3:]

        idx = knn_anchors(x_c.detach(), anchors.detach(), K)                      # (B, N, K)
        bidx = torch.arange(B, device=q.device).view(B, 1, 1)
        a_nb = anchors[bidx, idx]                                                  # (B, N, K, 3)
        delta = x_c.unsqueeze(2) - a_nb                                            # (B, N, K, 3)
        dist = torch.linalg.vector_norm(delta, dim=-1)                             # (B, N, K)
        w = blend_weights(dist, cfg.sigma_neighbor, cfg.blend_std, cfg.global_anchor_dist)  # (B, N, K+1)
        # Virtual anchor sits at the origin: its local coordinate is x_c itself.
        delta = torch.cat([delta, x_c.unsqueeze(2)], dim=2)                        # (B, N, K+1, 3)
        kidx = torch.cat([idx, idx.new_full((B, N, 1), cfg.n_anchors)], dim=2)     # (B, N, K+1)
        sign = self.anchor_sign.to(q.dtype)[kidx]                                  # (B, N, K+1)
        delta = torch.cat([delta[..., :1] * sign.unsqueeze(-1), delta[..., 1:]], dim=-1)
        local = torch.cat([delta, hyp.unsqueeze(2).expand(B, N, K + 1, hyp.shape[-1])], dim=-1)

        dropped = None
        if exact:
            e_pt = torch.arange(B * N * (K + 1), device=q.device) // (K + 1)
            e_k = kidx.reshape(-1)
            e_w = w.reshape(-1)
            e_local = local.reshape(-1, local.shape[-1])
        else:
            keep = prune_mask(w, cfg.prune_mass if prune_mass is None else prune_mass)
            if return_dropped:
                dropped = (w.detach() * (~keep)).sum(-1)
            flat = keep.reshape(-1).nonzero().squeeze(1)
            e_pt = flat // (K + 1)
            e_k = kidx.reshape(-1).index_select(0, flat)
            e_w = w.reshape(-1).index_select(0, flat)
            e_local = local.reshape(-1, local.shape[-1]).index_select(0, flat)
        e_b = e_pt // N
        dt = compute_dtype
        layout = make_layout(self.anchor_type.index_select(0, e_k), cfg.n_types, dtype=dt or q.dtype,
                             grouped=self.grouped)
        pt_row = layout.pack_index(e_pt)                                          # (R,)
        w_row = layout.pack(e_w.unsqueeze(1))                                     # (R, 1), 0 on padding rows

        # Without autograd the first layers' outputs carry the chained constant columns (TypedLinearStack.augmented).
        chain = layout.grouped and not torch.is_grad_enabled()
        # With one code set, the code rows join the first layers' matmuls (`_folded_weights`; differentiable).
        fold = layout.grouped and B == 1
        if not fold:
            code_row = layout.pack_index(e_b * A1 + e_k)                          # (R,)
        chain_geo = chain and chains(cfg.hidden_dim_geo, dt)
        g_geo, l_geo = self.split_code(z_geo, cfg.lat_dim_loc_geo)
        rows_geo = self._code_rows(self.geo, g_geo, l_geo, dt, chain_geo)         # (B*(A+1), H [+ 8])
        Gl = cfg.lat_dim_glob + cfg.lat_dim_loc_geo
        # ---- geometry ensemble (first layer: per-edge spatial columns + per-(batch, anchor) code rows)
        wd = self.geo.weights[0][:, :, Gl:]
        if chain_geo:
            wd = F.pad(wd, (0, 0, 0, 8))
        wd = wd if dt is None else wd.to(dt)
        if fold:
            member = F.one_hot(self.anchor_member.index_select(0, e_k), 2).to(e_local.dtype)   # (E, 2) indicators
            h_in = layout.pack(torch.cat([e_local, member], dim=1).to(dt or e_local.dtype))    # (R, 3+nh+2)
            member_rows = h_in[:, e_local.shape[1]:]                                         # (R, 2)
            z = layout.linear(h_in, self._folded_weights(wd, rows_geo))
        else:
            h_local = layout.pack(e_local if dt is None else e_local.to(dt))      # (R, 3+nh)
            z = layout.linear(h_local, wd) + rows_geo.index_select(0, code_row)
        beta = cfg.softplus_beta
        for l in range(1, self.geo.n_linear - 1):
            z = self.geo.apply_hidden(l, z, layout, "softplus", beta, dt)
        feats = z[:, : cfg.hidden_dim_geo]                                         # pre-activation of last hidden
        sdf = None
        if with_sdf:
            sdf_rows = self.geo.apply_hidden(self.geo.n_linear - 1, z, layout, "softplus", beta, dt,
                                             keep_input=with_color).to(q.dtype)
            sdf = q.new_zeros(B * N, 1).index_add(0, pt_row, sdf_rows * w_row).view(B, N, 1)

        color = None
        if with_color:
            if z_app is None:
                raise ValueError("with_color=True needs z_app")
            b1w, b1b = self.bottleneck1.weight, self.bottleneck1.bias
            b2w, b2b = self.bottleneck2.weight, self.bottleneck2.bias
            if dt is not None:
                b1w, b1b, b2w, b2b = (t.to(dt) for t in (b1w, b1b, b2w, b2b))
            m = F.linear(F.relu(F.linear(feats, b1w, b1b)), b2w, b2b)             # (R, 16)
            g_app, l_app = self.split_code(z_app, cfg.lat_dim_loc_app)
            chain_app = chain and chains(cfg.hidden_dim_app, dt)
            rows_app = self._code_rows(self.app, g_app, l_app, dt, chain_app)
            Ga = cfg.lat_dim_glob + cfg.lat_dim_loc_app
            wm = self.app.weights[0][:, :, Ga:]
            if chain_app:
                wm = F.pad(wm, (0, 0, 0, 8))
            wm = wm if dt is None else wm.to(dt)
            if fold:
                c = layout.linear(torch.cat([m, member_rows], dim=1), self._folded_weights(wm, rows_app))
            else:
                c = layout.linear(m, wm) + rows_app.index_select(0, code_row)
            for l in range(1, self.app.n_linear):
                c = self.app.apply_hidden(l, c, layout, "relu", beta, dt)
            col_rows = c.to(q.dtype)                                               # (R, 3)
            color = q.new_zeros(B * N, 3).index_add(0, pt_row, col_rows * w_row).view(B, N, 3)

        return CanonicalOutput(sdf=sdf, color=color, knn_idx=idx, kept_edges=int(e_pt.numel()), dropped_mass=dropped)
