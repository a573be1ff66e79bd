"""MonoNPHM assembly: anchors -> backward deformation -> canonical SDF / albedo (reference §1.1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .canonical import CanonicalField, CanonicalOutput
from .config import MonoNPHMConfig
from .deformation import DeformationField
from .latents import batch_codes
from .parallel import flush_denormals, map_chunks


MAX_CHUNK_POINTS = 4096  # upper bound of `MonoNPHM.max_chunk` on CPUs
# On a GPU a chunk is one batch of kernels: large enough to fill the device, bounded by the activations' memory.
ACCELERATOR_CHUNK_BYTES = 256 << 20
ACCELERATOR_MAX_CHUNK_POINTS = 1 << 18


@dataclass
class ModelOutput:
    """Outputs of `MonoNPHM.forward`; shapes for B code sets and N points."""

    sdf: Optional[torch.Tensor]              # (B, N, 1), NPHM units; None when with_sdf=False
    color: Optional[torch.Tensor]            # (B, N, 3) albedo in [-1, 1] (no output activation) or None
    gradient: Optional[torch.Tensor]         # (B, N, 3) d sdf / d posed x, or None
    offsets: torch.Tensor                    # (B, N, 3) delta (posed -> canonical); zeros when neutral
    hyper: torch.Tensor                      # (B, N, n_hyper); zeros when neutral
    anchors: torch.Tensor                    # (B, n_anchors, 3)
    knn_idx: Optional[torch.Tensor] = None   # (B, N, K) nearest anchors of the canonical point
    dropped_mass: Optional[torch.Tensor] = None  # (B, N) blend mass dropped by pruning (fast path only)
    kept_edges: Optional[int] = None         # (point, anchor) edges evaluated after pruning


class MonoNPHM(nn.Module):
    """Neural parametric head model with backward deformations (MonoNPHM, CVPR 2024).

    Args:
        cfg: sizes (see `MonoNPHMConfig.official()` / `.builtin()`).
        mean_anchors: (n_anchors, 3) mean canonical anchors in NPHM units (stored as a buffer).
    """

    def __init__(self, cfg: MonoNPHMConfig, mean_anchors: Optional[torch.Tensor] = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.id_model = CanonicalField(cfg, mean_anchors)
        self.ex_model = DeformationField(cfg)

    # ------------------------------------------------------------------ pieces
    def anchors(self, z_geo: torch.Tensor) -> torch.Tensor:
        """(B, D_geo) -> predicted canonical anchors (B, n_anchors, 3)."""
        return self.id_model.anchors(batch_codes(z_geo, 1))

    def deformation(
        self,
        x: torch.Tensor,
        z_geo: torch.Tensor,
        z_exp: torch.Tensor,
        anchors: Optional[torch.Tensor] = None,
        compute_dtype: Optional[torch.dtype] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Backward deformation alone: x (B, N, 3) posed -> (offsets (B, N, 3), hyper (B, N, n_hyper))."""
        x, z_geo, z_exp = self._prep(x, z_geo, z_exp)
        if anchors is None:
            anchors = self.id_model.anchors(z_geo)
        off, hyp, _ = self.ex_model(x, z_geo, z_exp, anchors, compute_dtype=compute_dtype)
        return off, hyp

    def deformation_jacobian(self, x, z_geo, z_exp, anchors=None, compute_dtype=None):
        """Offsets, hyper and J = d[offset; hyper]/dx (B, N, 3+n_hyper, 3) (forward-mode, no autograd)."""
        x, z_geo, z_exp = self._prep(x, z_geo, z_exp)
        if anchors is None:
            anchors = self.id_model.anchors(z_geo)
        return self.ex_model(x, z_geo, z_exp, anchors, with_jacobian=True, compute_dtype=compute_dtype)

    def canonical_sdf(
        self,
        q: torch.Tensor,
        z_geo: torch.Tensor,
        anchors: Optional[torch.Tensor] = None,
        z_app: Optional[torch.Tensor] = None,
        with_color: bool = False,
        exact: bool = False,
        prune_mass: Optional[float] = None,
        compute_dtype: Optional[torch.dtype] = None,
    ) -> CanonicalOutput:
        """Canonical-space field at q = [x_c ; h] (B, N, 3+n_hyper) (a (B, N, 3) q gets h = 0)."""
        if q.dim() == 2:
            q = q.unsqueeze(0)
        B = q.shape[0]
        z_geo = batch_codes(z_geo, B)
        z_app = batch_codes(z_app, B)
        if q.shape[-1] == 3:
            q = torch.cat([q, q.new_zeros(*q.shape[:-1], self.cfg.n_hyper)], dim=-1)
        if anchors is None:
            anchors = self.id_model.anchors(z_geo)
        return self.id_model(q, z_geo, anchors, z_app, with_color=with_color, exact=exact,
                             prune_mass=prune_mass, compute_dtype=compute_dtype)

    def _prep(self, x, z_geo, z_exp=None, z_app=None):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        B = x.shape[0]
        out = [x, batch_codes(z_geo, B), batch_codes(z_exp, B)]
        if z_app is not None:
            out.append(batch_codes(z_app, B))
        return out

    # ------------------------------------------------------------------ full model
    @flush_denormals()
    def forward(
        self,
        x: torch.Tensor,
        z_geo: torch.Tensor,
        z_app: Optional[torch.Tensor] = None,
        z_exp: Optional[torch.Tensor] = None,
        neutral: bool = False,
        with_color: bool = True,
        with_gradient: bool = False,
        exact: bool = False,
        create_graph: Optional[bool] = None,
        anchors: Optional[torch.Tensor] = None,
        prune_mass: Optional[float] = None,
        compute_dtype: Optional[torch.dtype] = None,
        return_dropped: bool = False,
        with_sdf: bool = True,
    ) -> ModelOutput:
        """Evaluate the posed model at x (B, N, 3) with codes z_geo (B, D_geo), z_app (B, D_app), z_exp (B, D_exp).

        neutral: skip the deformation (q = [x ; 0]); the official model still runs the deformation net there
            but discards it, so offsets/hyper are returned as zeros.
        with_gradient: also return d sdf / d x (posed).  create_graph defaults to torch.is_grad_enabled(), so
            training / tracking losses on the gradient are differentiable w.r.t. parameters and codes.
        exact: evaluate all K+1 edges (parity path); otherwise drop blend mass <= prune_mass per point.
        compute_dtype: e.g. torch.bfloat16 for coarse, no-grad passes.
        with_sdf=False: colour only (skips the SDF head; sdf is None).
        """
        if x.dim() == 2:
            x = x.unsqueeze(0)
        B, N, _ = x.shape
        z_geo = batch_codes(z_geo, B)
        z_app = batch_codes(z_app, B)
        z_exp = batch_codes(z_exp, B)
        if with_color and z_app is None:
            raise ValueError("with_color=True needs z_app")
        if with_gradient and not with_sdf:
            raise ValueError("with_gradient=True needs with_sdf=True")
        if not neutral and z_exp is None:
            raise ValueError("a posed (neutral=False) evaluation needs z_exp")
        grad_enabled = torch.is_grad_enabled()
        if create_graph is None:
            create_graph = grad_enabled
        if with_gradient and torch.is_inference_mode_enabled():
            raise RuntimeError("with_gradient=True cannot run under torch.inference_mode(); use torch.no_grad()")

        with torch.enable_grad() if with_gradient else _nullctx():
            xg = x
            if with_gradient and not x.requires_grad:
                xg = x.detach().requires_grad_(True)
            if anchors is None:
                anchors = self.id_model.anchors(z_geo)
            if neutral:
                off = x.new_zeros(B, N, 3)
                hyp = x.new_zeros(B, N, self.cfg.n_hyper)
                q = torch.cat([xg, hyp], dim=-1)
            else:
                off, hyp, _ = self.ex_model(xg, z_geo, z_exp, anchors, compute_dtype=compute_dtype)
                q = torch.cat([xg + off, hyp], dim=-1)
            co = self.id_model(q, z_geo, anchors, z_app, with_color=with_color, exact=exact,
                               prune_mass=prune_mass, compute_dtype=compute_dtype, return_dropped=return_dropped,
                               with_sdf=with_sdf)
            grad = None
            if with_gradient:
                # d(sum)/dx: the same vector-Jacobian product with ones; a tensor grad_outputs makes autograd import
                # torch.fx's symbolic shapes and sympy for its shape check (0.4 CPU s, several s of wall time)
                (grad,) = torch.autograd.grad(co.sdf.sum(), xg, create_graph=create_graph)
        sdf, color = co.sdf, co.color
        if with_gradient and not create_graph:
            sdf, grad, off, hyp, anchors = (t.detach() for t in (sdf, grad, off, hyp, anchors))
            color = color.detach() if color is not None else None
        return ModelOutput(sdf=sdf, color=color, gradient=grad, offsets=off, hyper=hyp, anchors=anchors,
                           knn_idx=co.knn_idx, dropped_mass=co.dropped_mass, kept_edges=co.kept_edges)

    # ------------------------------------------------------------------ chunked inference helpers
    @torch.inference_mode()
    def sdf_only(self, x, z_geo, z_exp=None, neutral=False, chunk=8192, exact=False, compute_dtype=None,
                 anchors=None, prune_mass=None) -> torch.Tensor:
        """No-grad SDF (B, N, 1) in chunks of points; skips the colour branch entirely."""
        return self.query(x, z_geo, None, z_exp, neutral=neutral, with_color=False, chunk=chunk, exact=exact,
                          compute_dtype=compute_dtype, anchors=anchors, prune_mass=prune_mass)[0]

    @torch.inference_mode()
    def query(self, x, z_geo, z_app=None, z_exp=None, neutral=False, with_color=True, chunk=8192, exact=False,
              compute_dtype=None, anchors=None, prune_mass=None, with_sdf=True):
        """No-grad (sdf (B,N,1) or None, color (B,N,3) or None), evaluated in chunks of `chunk` points.
        with_sdf=False: colour only (skips the SDF head).

        Chunks of a few thousand points keep the per-edge activations cache-sized; coarse passes may raise
        prune_mass (error bound prune_mass * max_edge |f_edge|) and use compute_dtype=torch.bfloat16."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        B = x.shape[0]
        z_geo = batch_codes(z_geo, B)
        if anchors is None:
            anchors = self.id_model.anchors(z_geo)
        cpu = x.device.type == "cpu"
        chunk = min(chunk, self.max_chunk(with_color)) if cpu else self.max_chunk(with_color, x.device)

        def run(s, e):
            o = self.forward(x[:, s:e], z_geo, z_app, z_exp, neutral=neutral, with_color=with_color,
                             exact=exact, anchors=anchors, compute_dtype=compute_dtype, prune_mass=prune_mass,
                             with_sdf=with_sdf)
            return o.sdf, o.color

        outs = map_chunks(run, x.shape[1], chunk, threads=cpu)
        sdfs = [o[0] for o in outs]
        cols = [o[1] for o in outs] if with_color else []
        sdf = (torch.cat(sdfs, 1) if sdfs else x.new_zeros(B, 0, 1)) if with_sdf else None
        col = (torch.cat(cols, 1) if cols else x.new_zeros(B, 0, 3)) if with_color else None
        return sdf, col

    def max_chunk(self, with_color: bool = True, device: torch.device | str = "cpu") -> int:
        """Largest point chunk whose per-layer edge activations (float32) stay within a budget: on CPUs ~16 MB and
        at most MAX_CHUNK_POINTS, on GPUs ACCELERATOR_CHUNK_BYTES and at most ACCELERATOR_MAX_CHUNK_POINTS.

        Past that size the activations fall out of the cache hierarchy and each layer's fresh output costs
        page faults; at the official size it caps chunks at 2048 points (+20-35% SDF throughput vs 8192).  The
        built-in size is capped at 4096 points (2-core host, 256^3 canonical mesh: final-level SDF 1.59 vs 1.64 s,
        vertex colours 0.99 vs 1.08 s at 8192; 2048 is slower again)."""
        c = self.cfg
        width = max(c.hidden_dim_geo, c.hidden_dim_app if with_color else 0)
        per_point = 4 * width * (c.n_neighbors + 1) * 0.85  # ~85% of the K+1 edges survive pruning
        if torch.device(device).type == "cpu":
            budget, cap = 16 << 20, MAX_CHUNK_POINTS
        else:
            budget, cap = ACCELERATOR_CHUNK_BYTES, ACCELERATOR_MAX_CHUNK_POINTS
        n = int(budget / per_point)
        return min(cap, max(256, 1 << n.bit_length()))  # rounded up to a power of two

    # ------------------------------------------------------------------ forward warp
    def forward_warp(self, x_canonical, z_geo, z_exp, anchors=None, **kwargs):
        """Canonical points (B, M, 3) -> posed points solving x + delta(x) = x_canonical.

        Returns (x_posed (B, M, 3), converged (B, M) bool); see `root_finding.forward_warp` for options.
        Gradients w.r.t. x_canonical, codes and network parameters use the implicit function theorem.
        """
        from .root_finding import forward_warp

        return forward_warp(self, x_canonical, z_geo, z_exp, anchors=anchors, **kwargs)

    # ------------------------------------------------------------------ misc
    def zero_codes(self, B: int = 1, dtype=None, device=None):
        """Zero codes (z_geo, z_app, z_exp), the tracking initialisation."""
        kw = dict(dtype=dtype or torch.float32, device=device)
        c = self.cfg
        return torch.zeros(B, c.dim_geo, **kw), torch.zeros(B, c.dim_app, **kw), torch.zeros(B, c.dim_exp, **kw)


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@torch.no_grad()
def geometric_init(model: MonoNPHM, radius: float = 0.45, std: float = 1e-4) -> None:
    """Sphere-like initialisation (SAL-style) so training starts from a blob of `radius` around the origin.

    Every local geometry MLP is initialised to approximate ||x_c|| - radius: hidden layers N(0, sqrt(2/out)),
    last layer N(sqrt(pi)/sqrt(H), std) with bias -radius, and the first-layer bias shifted so the MLP sees the
    (un-flipped) anchor-relative coordinate plus its anchor position, i.e. roughly x_c.  Not used for official
    checkpoints (they bring trained weights).
    """
    cfg = model.cfg
    geo = model.id_model.geo
    mean = model.id_model.mean_anchors
    types = model.id_model.anchor_type
    # Representative anchor position per type (the first anchor of that type; origin for the global MLP).
    rep = torch.zeros(cfg.n_types, 3, dtype=mean.dtype)
    for k in reversed(range(cfg.n_anchors)):  # tiny setup loop, not on any query path
        rep[types[k]] = mean[k]
    n = geo.n_linear
    for l in range(n):
        w, b = geo.weights[l], geo.biases[l]
        out_dim, in_dim = w.shape[1], w.shape[2]
        if l == n - 1:
            w.normal_(math.sqrt(math.pi) / math.sqrt(in_dim), std)
            b.fill_(-radius)
        else:
            w.normal_(0.0, math.sqrt(2.0) / math.sqrt(out_dim))
            b.zero_()
            if l == 0:
                # Codes start at zero; zero their columns' influence a little less aggressively than SAL
                # (keeps them trainable) and shift the spatial input by the type's anchor position.
                Gl = cfg.lat_dim_glob + cfg.lat_dim_loc_geo
                w[:, :, Gl + 3:] = 0.0  # hyper columns start inactive
                b.copy_(torch.einsum("toi,ti->to", w[:, :, Gl:Gl + 3], rep.to(w.dtype)))
