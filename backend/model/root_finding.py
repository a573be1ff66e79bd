"""Forward warping: canonical -> posed by batched root finding of x + delta(x) = y (reference §4.7).

Damped quasi-Newton: exact 3x3 Jacobians (forward mode through the deformation MLP, no autograd graph) where a
point's residual stops halving, Broyden-updated chord steps (one plain evaluation each) otherwise.
Only still-active points are evaluated each iteration.  The result carries implicit-function gradients:
x* = x_root + J^-1 [(y - F(x_root)) - stopgrad(y - F(x_root))], F(x) = x + delta(x; codes, params),
so d x*/d y = J^-1 and d x*/d theta = -J^-1 dF/d theta, with the value of x_root unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .latents import batch_codes
from .parallel import flush_denormals


@dataclass
class WarpResult:
    points: torch.Tensor      # (B, M, 3) posed points (with implicit gradients when grad is enabled)
    converged: torch.Tensor   # (B, M) bool: residual < tol
    residual: torch.Tensor    # (B, M) final ||x + delta(x) - y||
    iterations: int
    jinv: Optional[torch.Tensor] = None  # (B, M, 3, 3) last inverse Jacobian (reusable as jinv_init next frame)
    # (B, M, 3) one more chord step from `points` (x - J^-1 r, not evaluated): a start for a nearby problem, e.g. the
    # next frame.  A point accepted at its start with residual just under tol is otherwise carried forward with
    # that error, which the next frame's motion can push over tol.
    next_start: Optional[torch.Tensor] = None


def inv3(J: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 inverse by the adjugate (much faster than LAPACK calls for millions of tiny matrices)."""
    a, b, c = J[..., 0, 0], J[..., 0, 1], J[..., 0, 2]
    d, e, f = J[..., 1, 0], J[..., 1, 1], J[..., 1, 2]
    g, h, i = J[..., 2, 0], J[..., 2, 1], J[..., 2, 2]
    A, B, C = e * i - f * h, f * g - d * i, d * h - e * g
    det = a * A + b * B + c * C
    adj = torch.stack([
        torch.stack([A, c * h - b * i, b * f - c * e], -1),
        torch.stack([B, a * i - c * g, c * d - a * f], -1),
        torch.stack([C, b * g - a * h, a * e - b * d], -1),
    ], -2)
    return adj / det[..., None, None]


def _newton_solve(model, y, terms, x0, max_iter, tol, diverge, compute_dtype, coarse_tol, jinv0=None,
                  coarse_iters=4):
    """No-grad damped quasi-Newton on flattened points.  Returns x (B,M,3), residual (B,M), iterations, inverse
    Jacobians (B,M,3,3) and one more chord step from x (B,M,3).

    terms: the deformation net's ``code_terms`` of the codes.  Without `jinv0`, the exact Jacobian (forward mode,
    ~4x the cost of a plain evaluation) is computed at the start.
    It is re-computed only for points whose residual did not at least halve; otherwise the inverse is reused for a
    chord step (a single deformation evaluation) and refined by Broyden's update from each accepted step.
    """
    B, M, _ = y.shape
    ex = model.ex_model
    bidx = torch.arange(B, device=y.device).repeat_interleave(M)
    yf = y.reshape(-1, 3)
    x = x0.reshape(-1, 3).clone()
    P = x.shape[0]
    eye = torch.eye(3, dtype=y.dtype, device=y.device)

    def evaluate(idx, pts, dt, jac):
        # One code set: the value path broadcasts it without a per-point batch index.
        bi = None if B == 1 and not jac else bidx[idx]
        off, _, J = ex(pts, None, None, None, with_jacobian=jac, batch_index=bi, compute_dtype=dt,
                       code_terms=terms)
        r = pts + off - yf[idx]
        return r, (inv3(eye + J[:, :3, :]) if jac else None)

    dt = compute_dtype
    idx = torch.arange(P, device=y.device)
    if jinv0 is not None:  # e.g. the previous frame's inverse Jacobians: start with cheap chord steps
        r, _ = evaluate(idx, x, dt, False)
        Jinv = jinv0.reshape(-1, 3, 3).to(y.dtype).clone()
    else:
        r, Jinv = evaluate(idx, x, dt, True)
    res = torch.linalg.vector_norm(r, dim=-1)
    alpha = torch.ones(P, dtype=y.dtype, device=y.device)
    step = (Jinv @ r.unsqueeze(-1)).squeeze(-1)
    need_j = torch.zeros(P, dtype=torch.bool, device=y.device)
    # Secant pairs from steps shorter than this are mostly float noise (float32 offsets carry ~1e-7 of it).
    min_step = 1e-5 if y.dtype == torch.float32 else 1e-9
    it = 0
    for it in range(1, max_iter + 1):
        thr = coarse_tol if dt is not None else tol
        act = (res >= thr) & (res < diverge)  # NaN and inf fail one of the two
        if dt is not None and (not bool(act.any()) or it > coarse_iters):
            # Coarse (low-precision) phase done: continue at full precision from the same points.
            dt = None
            r, Jinv = evaluate(idx, x, None, True)
            res = torch.linalg.vector_norm(r, dim=-1)
            step = (Jinv @ r.unsqueeze(-1)).squeeze(-1)
            alpha.fill_(1.0)
            act = (res >= tol) & (res < diverge)
        if not bool(act.any()):
            break
        with_j = act & need_j
        for jac, sel in ((True, with_j), (False, act ^ with_j)):
            a = sel.nonzero().squeeze(1)
            if a.numel() == 0:
                continue
            cand = x[a] - alpha[a].unsqueeze(-1) * step[a]
            rc, Jc = evaluate(a, cand, dt, jac)
            rcn = torch.linalg.vector_norm(rc, dim=-1)
            better = rcn < res[a]  # false for NaN / inf
            if bool(better.all()):  # the usual case: every step accepted, no masking
                keep, acc = slice(None), a
            else:
                keep = better.nonzero().squeeze(1)
                acc = a[keep]
                rej = a[~better]
                alpha[rej] *= 0.5  # backtrack from the last accepted point, with a fresh Jacobian there
                need_j[rej] = True
            rn, xa, ra = rcn[keep], cand[keep], rc[keep]
            if jac:
                Jinv[acc] = Jc[keep]
            elif dt is None:  # low-precision residuals are too noisy for secant pairs
                Jinv[acc] = _broyden_update(Jinv[acc], xa - x[acc], ra - r[acc], min_step)
            need_j[acc] = rn > 0.5 * res[acc]
            x[acc] = xa
            r[acc] = ra
            res[acc] = rn
            step[acc] = (Jinv[acc] @ ra.unsqueeze(-1)).squeeze(-1)
            alpha[acc] = 1.0
    if dt is not None:  # ran out of iterations inside the coarse phase: report full-precision residuals
        r, _ = evaluate(idx, x, None, False)
        res = torch.linalg.vector_norm(r, dim=-1)
        step = (Jinv @ r.unsqueeze(-1)).squeeze(-1)
    return x.view(B, M, 3), res.view(B, M), it, Jinv.view(B, M, 3, 3), (x - step).view(B, M, 3)


def _broyden_update(jinv: torch.Tensor, s: torch.Tensor, dr: torch.Tensor, min_step: float) -> torch.Tensor:
    """Broyden's ("good") rank-1 update of inverse Jacobians (N, 3, 3) from accepted steps s (N, 3) and the residual
    changes dr (N, 3) they caused: the result maps dr to s exactly (Sherman-Morrison form).  Rows whose step is
    below `min_step` or whose update is ill-conditioned keep their inverse.

    It makes chord steps learn the Jacobian along the directions points actually move, for free: a cold start from
    the identity (fixed-point steps) or the previous frame's inverses improve with every accepted step."""
    u = (jinv @ dr.unsqueeze(-1)).squeeze(-1)                     # J^-1 dr
    sj = (s.unsqueeze(-2) @ jinv).squeeze(-2)                     # s^T J^-1
    denom = (s * u).sum(-1)
    s_norm = torch.linalg.vector_norm(s, dim=-1)
    ok = (s_norm > min_step) & (denom.abs() > 1e-3 * s_norm * torch.linalg.vector_norm(u, dim=-1))
    upd = ((s - u) / torch.where(ok, denom, torch.ones_like(denom)).unsqueeze(-1)).unsqueeze(-1) * sj.unsqueeze(-2)
    return torch.where(ok[:, None, None], jinv + upd, jinv)


@flush_denormals()
def forward_warp(
    model,
    x_canonical: torch.Tensor,
    z_geo: torch.Tensor,
    z_exp: torch.Tensor,
    anchors: Optional[torch.Tensor] = None,
    x_init: Optional[torch.Tensor] = None,
    jinv_init: Optional[torch.Tensor] = None,
    max_iter: int = 20,
    tol: Optional[float] = None,
    diverge: float = 0.5,
    compute_dtype: Optional[torch.dtype] = None,
    coarse_tol: float = 1e-3,
    implicit_grad: Optional[bool] = None,
) -> WarpResult:
    """Solve x + delta(x; z_geo, z_exp, anchors) = x_canonical for posed x.

    x_canonical: (B, M, 3) (or (M, 3)); z_geo (B, D_geo); z_exp (B, D_exp); anchors (B, A, 3) conditioning the
    deformation net (default: predicted from z_geo).
    x_init: (B, M, 3) start (e.g. the previous frame's solution); default y - delta(y).
    jinv_init: (B, M, 3, 3) inverse Jacobians to start from (e.g. the previous frame's `WarpResult.jinv`), which
        skips the initial Jacobian evaluation.
    tol: residual for convergence (default 1e-6 in float32, 1e-12 in float64).
    compute_dtype: e.g. torch.bfloat16 for the first Newton steps (until residual < coarse_tol, at most 4
        steps), then full precision; only the final polish decides convergence.
    implicit_grad: attach implicit-function gradients (default: torch.is_grad_enabled()).
    """
    y = x_canonical.unsqueeze(0) if x_canonical.dim() == 2 else x_canonical
    B = y.shape[0]
    z_geo = batch_codes(z_geo, B)
    z_exp = batch_codes(z_exp, B)
    if anchors is None:
        anchors = model.id_model.anchors(z_geo)
    if tol is None:
        tol = 1e-6 if y.dtype != torch.float64 else 1e-12
    if implicit_grad is None:
        implicit_grad = torch.is_grad_enabled()
    with torch.no_grad():
        yd, ex = y.detach(), model.ex_model
        terms = ex.code_terms(ex.compress_id(z_geo.detach(), anchors.detach()), z_exp.detach())   # every evaluation's
        if x_init is None:
            off0, _, _ = ex(yd, None, None, None, compute_dtype=compute_dtype, code_terms=terms)
            x_init = yd - off0
        x, res, it, jinv, x_next = _newton_solve(model, yd, terms, x_init.detach(), max_iter, tol, diverge,
                                                 compute_dtype, coarse_tol, jinv_init)
        converged = torch.isfinite(res) & (res < tol)
    if not implicit_grad:
        return WarpResult(points=x, converged=converged, residual=res, iterations=it, jinv=jinv, next_start=x_next)
    # Implicit-function gradient (value unchanged): one deformation evaluation at the root, differentiable in the
    # codes, whose forward-mode Jacobian (no graph) gives J^-1: the values and the tangents share one pass.
    with torch.enable_grad():
        off, _, J = ex(x, z_geo, z_exp, anchors, with_jacobian=True)
        Jf = torch.eye(3, dtype=x.dtype, device=x.device) + J[..., :3, :]
        g = y - (x + off)
        corr = g - g.detach()
        xs = x + (inv3(Jf) @ corr.unsqueeze(-1)).squeeze(-1)
    return WarpResult(points=xs, converged=converged, residual=res, iterations=it, jinv=jinv, next_start=x_next)


def posed_anchors(model, z_geo, z_exp, y_offsets: Optional[torch.Tensor] = None, **kw) -> WarpResult:
    """Anchors posed by the expression (landmark loss, reference §4.7): roots of x + delta(x) = A_k.

    y_offsets: optional (n_anchors, 3) tweak added to the anchors (e.g. the lip/eyelid y offsets); the
    deformation net is then conditioned on the tweaked anchors as in the official tracker.
    """
    z_geo = batch_codes(z_geo, 1)
    A = model.id_model.anchors(z_geo)
    if y_offsets is not None:
        A = A + y_offsets.to(A.dtype)
    return forward_warp(model, A, z_geo, z_exp, anchors=A, **kw)
