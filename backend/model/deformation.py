"""Backward deformation network with hyper-dimensions and the identity compressor (reference §1.6).

Posed x (B, N, 3) -> offset delta (B, N, 3) and hyper-coordinates h (B, N, n_hyper); the canonical query is
q = [x + delta ; h].
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MonoNPHMConfig
from .ensemble import softplus, softplus_no_grad
from .parallel import flush_denormals


class DeformationField(nn.Module):
    """Official `DeformationNetwork` (mode 'compress'): lin0..lin{L}, skip [h ; h0]/sqrt(2) into lin{L//2}."""

    def __init__(self, cfg: MonoNPHMConfig):
        super().__init__()
        self.cfg = cfg
        self.compressor = nn.Linear(cfg.compressor_in_dim, cfg.lat_dim_id_compressed)
        H, L, din = cfg.hidden_dim_ex, cfg.n_layers_ex, cfg.ex_in_dim
        self.skip = cfg.ex_skip_layer
        dims_in = [din] + [H] * (L - 1) + [H]
        dims_in[self.skip] = H + din
        dims_out = [H] * L + [3 + cfg.n_hyper]
        self.lins = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def compress_id(self, z_geo: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """c_id (B, lat_dim_id_compressed) = W [z_geo ; vec(A)] + b, vec anchor-major."""
        return self.compressor(torch.cat([z_geo, anchors.reshape(anchors.shape[0], -1)], dim=-1))

    def code_terms(self, c_id: torch.Tensor, z_exp: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The per-batch constant parts of lin0 and of the skip layer (their code columns), (B, H) each, for the
        compressed identity c_id (B, ci) and expression z_exp (B, ze): a caller evaluating the same codes many
        times (the root finder) computes them once and passes them to ``forward``."""
        layers = tuple(self.lins)
        lin0, lins = layers[0], layers[self.skip]
        H = self.cfg.hidden_dim_ex
        cond = torch.cat([c_id, z_exp], dim=-1)                    # (B, ci + ze)
        c0 = F.linear(cond, lin0.weight[:, 3:], lin0.bias)
        cs = F.linear(cond, lins.weight[:, H + 3 :]) / math.sqrt(2.0) + lins.bias
        return c0, cs

    @flush_denormals()
    def forward(
        self,
        x: torch.Tensor,
        z_geo: torch.Tensor,
        z_exp: torch.Tensor,
        anchors: torch.Tensor,
        with_jacobian: bool = False,
        compute_dtype: Optional[torch.dtype] = None,
        c_id: Optional[torch.Tensor] = None,
        batch_index: Optional[torch.Tensor] = None,
        code_terms: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Offsets (B, N, 3), hyper (B, N, n_hyper) and optionally J = d(offset, hyper)/dx (B, N, 3+nh, 3).

        With `batch_index` (P,) long, x is a flat (P, 3) list of points, point p using code set batch_index[p]
        (used by the root finder to evaluate only its still-active points).  `code_terms`: ``code_terms(c_id,
        z_exp)`` of these codes, when the caller has them (the codes and anchors are then not read).

        The Jacobian is computed in forward mode (3 tangents carried through the MLP), which is cheaper than
        three reverse passes and needs no autograd graph; it carries none, also where the offsets do (the root
        finder's implicit gradient takes both from one pass at the root).
        """
        if code_terms is None:
            code_terms = self.code_terms(self.compress_id(z_geo, anchors) if c_id is None else c_id, z_exp)
        c0, cs = code_terms  # input precision (per-batch constants, cheap)
        dt = compute_dtype
        layers = tuple(self.lins)   # indexing the ModuleList costs more than a small layer's product
        beta = self.cfg.softplus_beta
        H = self.cfg.hidden_dim_ex
        r2 = 1.0 / math.sqrt(2.0)

        def W(lin, sl=slice(None)):
            w = lin.weight[:, sl]
            return w if dt is None else w.to(dt)

        def bias(lin):
            return lin.bias if dt is None else lin.bias.to(dt)

        if not with_jacobian:
            out = self._forward_rows(x, c0, cs, dt, batch_index, layers)
            return out[..., :3], out[..., 3:], None
        xs = x
        if batch_index is not None:
            c0 = c0.index_select(0, batch_index)                    # (P, H): broadcast like (B=P, N=1)
            cs = cs.index_select(0, batch_index)
            xs = x.unsqueeze(1)
        # Everything that touches x directly (lin0 and the x-columns of the skip layer, 3-wide matmuls) stays in
        # the input precision: quantising x to bf16 (~2e-3 at |x| ~ 0.5) would put a floor under root-finding
        # residuals.  Only the wide hidden layers run in compute_dtype.
        w0x = layers[0].weight[:, 0:3].to(x.dtype)
        wsx = layers[self.skip].weight[:, H : H + 3].to(x.dtype)
        z = torch.matmul(xs, w0x.t()) + c0.unsqueeze(1)             # (B, N, H)
        skip_x = torch.matmul(xs, wsx.t()) * r2 + cs.unsqueeze(1)
        if dt is not None:
            z, skip_x, w0x, wsx = z.to(dt), skip_x.to(dt), w0x.to(dt), wsx.to(dt)
        tan = None
        if with_jacobian:
            # (B, N, 3, H): d z / d x_j, materialised row-major: a product with the expanded view keeps its layout
            # (3 innermost), which the next matmul cannot fold into one GEMM; with frozen weights it ran a batched
            # matmul with a weight copy per point instead (AVX-512 kernels: 70 % of the pass, 3-4x its time now)
            tan = w0x.t().expand(*xs.shape[:-1], 3, H).contiguous()
        for i in range(1, len(layers)):
            lin = layers[i]
            w = W(lin, slice(0, H)) if i == self.skip else W(lin)
            if tan is not None:
                with torch.no_grad():  # the tangents carry no autograd graph, also where the values have one
                    bz = z * beta
                    da = torch.sigmoid(bz)
                    if z.dtype == torch.float64:  # float32 sigmoid(>20) already rounds to exactly 1
                        da = torch.where(bz > 20.0, torch.ones_like(z), da)
                    tan = torch.matmul(tan * da.unsqueeze(-2), w.t())
                    if i == self.skip:
                        tan = (tan + wsx.t()) * r2
            a = softplus(z, beta)
            if i == self.skip:
                z = torch.matmul(a, w.t()) * r2 + skip_x
            else:
                z = _linear_rows(a.reshape(-1, a.shape[-1]), w.t(), bias(lin)).reshape(*a.shape[:-1], -1)
        out = z.to(x.dtype)
        jac = None
        if tan is not None:
            jac = tan.to(x.dtype).transpose(-1, -2)                # (B, N, 5, 3): d out_i / d x_j
        if batch_index is not None:
            out = out.squeeze(1)
            jac = jac.squeeze(1) if jac is not None else None
        return out[..., :3], out[..., 3:], jac

    def _forward_rows(self, x, c0, cs, dt, batch_index, layers):
        """Value-only path on 2-D rows: every layer is one GEMM with the bias / skip term (oneDNN's fused linear
        without autograd on large batches, ``_linear_rows`` otherwise), and the activation is applied in place when
        no autograd graph needs the pre-activation.  Same values as the forward-mode path (up to float rounding
        order)."""
        beta = self.cfg.softplus_beta
        H = self.cfg.hidden_dim_ex
        r2 = 1.0 / math.sqrt(2.0)
        shape = x.shape[:-1]
        x2 = x.reshape(-1, 3)
        if c0.shape[0] == 1:
            c0, cs = c0[0], cs[0]                                                      # (H,): broadcast
        elif batch_index is not None:
            c0, cs = c0.index_select(0, batch_index), cs.index_select(0, batch_index)   # (P, H)
        else:
            n = x2.shape[0] // c0.shape[0]
            c0, cs = c0.repeat_interleave(n, 0), cs.repeat_interleave(n, 0)          # (B*N, H)
        w0x = layers[0].weight[:, 0:3].to(x.dtype)
        wsx = layers[self.skip].weight[:, H : H + 3].to(x.dtype)
        n_rows = x2.shape[0]
        # oneDNN's linear has no autograd: only when nothing here needs a gradient (inputs, codes, any layer).
        fused = c0.dim() == 1 and n_rows >= FUSED_MIN_ROWS and _fused_linear_ok(x2) and (
            not torch.is_grad_enabled()
            or not any(t.requires_grad for t in (x2, c0, cs, *(p for lin in layers for p in (lin.weight, lin.bias)))))
        if fused and n_rows % FUSED_ROW_QUANTUM:
            # oneDNN builds a kernel per new row count: pad to a multiple of FUSED_ROW_QUANTUM.
            x2 = F.pad(x2, (0, 0, 0, FUSED_ROW_QUANTUM - n_rows % FUSED_ROW_QUANTUM))
        # x-touching matmuls stay in the input precision (see `forward`).
        z = _linear_rows(x2, w0x.t(), c0)
        skip_x = torch.addmm(cs, x2, wsx.t(), alpha=r2)
        if dt is not None:
            z, skip_x = z.to(dt), skip_x.to(dt)
        for i in range(1, len(layers)):
            graph = torch.is_grad_enabled() and z.requires_grad
            a = softplus(z, beta) if graph else softplus_no_grad(z, beta, inplace=True)
            lin = layers[i]
            w = lin.weight if dt is None else lin.weight.to(dt)
            b = lin.bias if dt is None else lin.bias.to(dt)
            if i == self.skip:
                if fused:
                    z = torch.add(skip_x, _fused_linear(a, w[:, :H], None), alpha=r2)
                else:
                    z = torch.addmm(skip_x, a, w[:, :H].t(), alpha=r2)
            else:
                z = _fused_linear(a, w, b) if fused else _linear_rows(a, w.t(), b)
        return z[:n_rows].to(x.dtype).reshape(*shape, z.shape[-1])


def _linear_rows(a: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """a @ wt + bias for rows a (R, K), bias (N,) broadcast or (R, N). A broadcast float32 bias is added in place
    after the product: addmm first copies it into every output row, a pass as long as the product itself at these
    widths (2-core host, 128 wide, 86-4096 rows: 20-40 % faster); the same bits, gradients included."""
    if bias.dim() == 1 and a.dtype == torch.float32:
        return torch.mm(a, wt).add_(bias)
    return torch.addmm(bias, a, wt)


# oneDNN's fused linear pays off on large batches only (the fixed-topology warp's 15k points per thread: 8-10%); on
# the tracker's many small no-grad batches its per-call setup made frame fitting 20-25% slower than addmm.
FUSED_MIN_ROWS = 4096
FUSED_ROW_QUANTUM = 256


def _fused_linear_ok(a: torch.Tensor) -> bool:
    return _HAS_ONEDNN_LINEAR and a.dtype in (torch.float32, torch.bfloat16) and a.device.type == "cpu"


def _fused_linear(a: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """a @ w.T + b (no autograd) by oneDNN's linear, bias inside the GEMM: 8-10% faster per deformation pass than
    addmm, which first copies the broadcast bias into the whole output (2-core host, 15k points, 400 wide).
    The weight must be contiguous: a strided view (the skip layer's columns) takes oneDNN's slow path, 300x slower.
    A build whose oneDNN refuses the call falls back to F.linear from then on."""
    global _HAS_ONEDNN_LINEAR
    try:
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), w.contiguous(), b, "none", [], "")
    except (RuntimeError, NotImplementedError):
        _HAS_ONEDNN_LINEAR = False
        return F.linear(a, w, b)


_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
