"""Batched path vs per-type loop, pruning error bound, forward warp (inverse + implicit gradients)."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.model import MonoNPHM, MonoNPHMConfig, geometric_init
from backend.model.reference_loop import loop_canonical, loop_deformation, loop_forward


pytestmark = [pytest.mark.usefixtures("single_torch_thread")]


def _model(cfg, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(cfg.n_anchors, 3, generator=g) - 0.5) * torch.tensor([0.6, 0.9, 0.8])
    torch.manual_seed(seed)
    m = MonoNPHM(cfg, A).to(dtype)
    geometric_init(m, 0.4)
    return m


def _frozen_model(cfg):
    """The model in float32 with frozen weights, as the tracker holds it (frozen weights take other kernels)."""
    m = _model(cfg, seed=5, dtype=torch.float32)
    m.requires_grad_(False)
    return m


def _codes(cfg, B, dtype=torch.float64, s=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, d, generator=g, dtype=dtype) * s for d in (cfg.dim_geo, cfg.dim_app, cfg.dim_exp))


def test_batched_matches_loop():
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg)
    zg, za, ze = _codes(cfg, 2)
    x = (torch.rand(2, 150, 3, dtype=torch.float64) - 0.5) * 1.2
    o = m(x, zg, za, ze, with_gradient=True, exact=True)
    sdf, col, grad = loop_forward(m, x, zg, za, ze, with_gradient=True)
    assert torch.allclose(o.sdf, sdf, atol=1e-12) and torch.allclose(o.color, col, atol=1e-12)
    assert torch.allclose(o.gradient, grad, atol=1e-10)


def test_pruning_error_within_bound():
    """|f_pruned - f_exact| <= (dropped blend mass) * max_edge |f_edge| <= prune_mass * max_edge |f_edge|."""
    for cfg in (MonoNPHMConfig.builtin(), MonoNPHMConfig.official()):
        cfg.hidden_dim_geo = cfg.hidden_dim_app = min(cfg.hidden_dim_geo, 64)  # keep the test fast
        m = _model(cfg, seed=3)
        zg, za, ze = _codes(cfg, 1, s=0.2)
        x = (torch.rand(1, 1000, 3, dtype=torch.float64) - 0.5) * 1.4
        q = torch.cat([x, torch.randn(1, 1000, 2, dtype=torch.float64) * 0.05], -1)
        A = m.anchors(zg)
        with torch.no_grad():
            ex = m.id_model(q, zg, A, za, exact=True)
            _, _, sdf_e, col_e, w = loop_canonical(m, q, zg, A, za)
        for mass in (1e-4, 1e-3, 1e-2):
            with torch.no_grad():
                pr = m.id_model(q, zg, A, za, exact=False, prune_mass=mass, return_dropped=True)
            assert pr.kept_edges < ex.kept_edges
            dropped = pr.dropped_mass[0]
            assert float(dropped.max()) <= mass
            bound_sdf = dropped * sdf_e[0].abs().amax(-1) + 1e-12
            bound_col = dropped * col_e[0].abs().amax((-1, -2)) + 1e-12
            assert torch.all((pr.sdf - ex.sdf)[0, :, 0].abs() <= bound_sdf)
            assert torch.all((pr.color - ex.color)[0].abs().amax(-1) <= bound_col)


def test_forward_warp_inverts_backward_field():
    for cfg in (MonoNPHMConfig.builtin(),):
        m = _model(cfg, seed=5, dtype=torch.float32)
        for seed in range(3):
            zg, _, ze = _codes(cfg, 2, dtype=torch.float32, s=0.3, seed=seed)
            x = (torch.rand(2, 500, 3) - 0.5) * torch.tensor([0.6, 0.9, 0.8])
            with torch.no_grad():
                off, _ = m.deformation(x, zg, ze)
                y = x + off
                r = m.forward_warp(y, zg, ze)
                off2, _ = m.deformation(r.points, zg, ze)
            assert off.abs().max() > 1e-3  # the field is not trivially zero
            assert r.converged.float().mean() > 0.99
            res = (r.points + off2 - y).norm(dim=-1)
            assert res[r.converged].max() < 1e-5
            # converged roots are the original points wherever the map is locally invertible
            assert (r.points - x).norm(dim=-1)[r.converged].median() < 1e-5


def test_root_finder_next_start_is_one_chord_step_closer_to_the_root():
    """WarpResult.next_start (the next frame's start) refines the returned roots, which are only within tol."""
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=5, dtype=torch.float32)
    zg, _, ze = _codes(cfg, 1, dtype=torch.float32, s=0.3, seed=1)
    x = (torch.rand(1, 500, 3, generator=torch.Generator().manual_seed(2)) - 0.5) * torch.tensor([0.6, 0.9, 0.8])
    with torch.no_grad():
        y = x + m.deformation(x, zg, ze)[0]
        r = m.forward_warp(y, zg, ze, tol=1e-3)

        def residual(p):
            return (p + m.deformation(p, zg, ze)[0] - y).norm(dim=-1)[r.converged]

        before, after = residual(r.points), residual(r.next_start)
    assert r.converged.float().mean() > 0.99 and before.max() < 1e-3
    assert before.median() > 1e-5                              # the loose tolerance left work to do
    assert torch.all(after <= before + 1e-6) and after.median() < 0.1 * before.median()


def test_broyden_update_meets_the_secant_condition():
    """The updated inverse maps each residual change to its step; too-short steps leave the inverse alone."""
    from backend.model.root_finding import _broyden_update

    g = torch.Generator().manual_seed(0)
    J = torch.eye(3) + 0.2 * torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    jinv = torch.eye(3, dtype=torch.float64).expand(64, 3, 3).clone()     # e.g. a cold start's identity
    s = torch.randn(64, 3, generator=g, dtype=torch.float64) * 1e-3
    s[:8] *= 1e-4                                                        # below min_step
    dr = (J @ s.unsqueeze(-1)).squeeze(-1)                               # residual change of a linear map
    new = _broyden_update(jinv, s, dr, min_step=1e-6)
    assert torch.equal(new[:8], jinv[:8])
    assert torch.allclose((new[8:] @ dr[8:].unsqueeze(-1)).squeeze(-1), s[8:], atol=1e-15, rtol=1e-10)
    # closer to the true inverse along the step than the identity was
    err_old = ((jinv - torch.linalg.inv(J)) @ dr.unsqueeze(-1)).norm(dim=(-1, -2))[8:]
    err_new = ((new - torch.linalg.inv(J)) @ dr.unsqueeze(-1)).norm(dim=(-1, -2))[8:]
    assert torch.all(err_new < 1e-12) and torch.all(err_old > 1e-6)


def test_root_finder_gradients_match_finite_differences():
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=7)
    zg, _, ze = _codes(cfg, 1, s=0.3, seed=2)
    zg.requires_grad_(True)
    ze.requires_grad_(True)
    y = ((torch.rand(1, 16, 3, dtype=torch.float64) - 0.5) * 0.6).requires_grad_(True)
    r = m.forward_warp(y, zg, ze)
    assert bool(r.converged.all())
    v = torch.randn_like(r.points)
    grads = torch.autograd.grad((r.points * v).sum(), [y, zg, ze])
    # also the network parameters (one tensor of the deformation MLP)
    w = m.ex_model.lins[1].weight
    (gw,) = torch.autograd.grad((m.forward_warp(y, zg, ze).points * v).sum(), [w])
    eps = 1e-6
    leaves = [y, zg, ze]
    for i, (t, g) in enumerate(zip(leaves, grads)):
        d = torch.randn_like(t)
        vals = []
        for sgn in (1, -1):
            args = [a.detach() + sgn * eps * d if j == i else a.detach() for j, a in enumerate(leaves)]
            with torch.no_grad():
                vals.append((m.forward_warp(*args).points * v).sum())
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert torch.allclose(fd, (g * d).sum(), rtol=1e-5, atol=1e-8), (i, fd, (g * d).sum())
    d = torch.randn_like(w)
    vals = []
    for sgn in (1, -1):
        with torch.no_grad():
            w.add_(sgn * eps * d)
            vals.append((m.forward_warp(y.detach(), zg.detach(), ze.detach()).points * v).sum())
            w.sub_(sgn * eps * d)
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert torch.allclose(fd, (gw * d).sum(), rtol=1e-5, atol=1e-8)


def test_grouped_and_blocked_layouts_agree_with_double_backward():
    """float32 uses the segmented (grouped) matmul; it must match the blocked bmm path, 2nd-order included."""
    from backend.model import ensemble

    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=11, dtype=torch.float32)
    zg, za, ze = (z.requires_grad_(True) for z in _codes(cfg, 2, dtype=torch.float32))
    x = (torch.rand(2, 128, 3) - 0.5) * 1.2
    res = []
    for grouped in (True, False):
        orig = ensemble.EdgeLayout.__init__

        def init(self, et, T, dtype, block=None, g=None, _o=orig, _gr=grouped):
            _o(self, et, T, dtype, block, _gr)

        ensemble.EdgeLayout.__init__ = init
        try:
            o = m(x, zg, za, ze, with_gradient=True)
            loss = o.sdf.square().sum() + o.color.square().sum() + (o.gradient.norm(dim=-1) - 1).square().sum()
            gz = torch.autograd.grad(loss, [zg, za, ze, m.id_model.geo.weights[1]])
        finally:
            ensemble.EdgeLayout.__init__ = orig
        res.append((o.sdf, o.color, o.gradient) + tuple(gz))
    for a, b in zip(*res):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


def test_single_code_set_folds_code_rows_into_the_first_layer_with_exact_gradients():
    """One code set: the code rows enter the first layers' matmuls through indicator columns (`_folded_weights`).
    Values, the SDF gradient and second-order gradients (codes, first-layer weights) match the per-type loop."""
    from backend.model.canonical import CanonicalField

    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=23, dtype=torch.float32)
    x = (torch.rand(1, 160, 3) - 0.5) * 1.2
    folded = []
    orig = CanonicalField._folded_weights

    def spy(self, w_in, rows):
        folded.append(tuple(w_in.shape))
        return orig(self, w_in, rows)

    results = []
    for fast in (True, False):
        zg, za, ze = (z.requires_grad_(True) for z in _codes(cfg, 1, dtype=torch.float32, seed=4))
        params = [m.id_model.geo.weights[0], m.id_model.app.weights[0], m.id_model.geo.biases[0]]
        if fast:
            CanonicalField._folded_weights = spy
            try:
                o = m(x, zg, za, ze, with_gradient=True, exact=True)
            finally:
                CanonicalField._folded_weights = orig
            sdf, col, grad = o.sdf, o.color, o.gradient
        else:
            sdf, col, grad = loop_forward(m, x, zg, za, ze, with_gradient=True)
        loss = sdf.square().sum() + col.square().sum() + (grad.norm(dim=-1) - 1).square().sum()
        results.append((sdf, col, grad) + torch.autograd.grad(loss, [zg, za, ze] + params))
    assert len(folded) == 2  # geometry and colour first layers
    for a, b in zip(*results):  # float32 rounding: ~1e-6 of each quantity's largest magnitude
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (a - b).abs().max() / b.abs().max()
    with torch.inference_mode():  # the no-grad (chained) path folds as well
        sdf, col = m.query(x, zg.detach(), za.detach(), ze.detach(), exact=True)
    assert torch.allclose(sdf, results[1][0], atol=2e-6) and torch.allclose(col, results[1][1], atol=2e-6)


def test_grouped_layout_pads_each_type_to_the_quantum():
    """Row groups are padded to GROUP_QUANTUM rows (ragged GEMMs are slow); pack/unpack stay exact inverses."""
    from backend.model.ensemble import GROUP_QUANTUM, make_layout

    g = torch.Generator().manual_seed(5)
    edge_type = torch.randint(0, 7, (301,), generator=g)
    edge_type[edge_type == 3] = 4  # one type with no edges at all
    lay = make_layout(edge_type, 7, torch.float32)
    assert lay.grouped
    counts = torch.bincount(edge_type, minlength=7)
    ends = lay.offs.long()
    sizes = torch.diff(ends, prepend=ends.new_zeros(1))
    assert (sizes % GROUP_QUANTUM == 0).all() and (sizes >= counts).all() and (sizes < counts + GROUP_QUANTUM).all()
    assert sizes[3] == 0 and lay.rows == int(ends[-1])
    v = torch.randn(301, 5, generator=g)
    rows = lay.pack(v)
    assert torch.equal(lay.unpack(rows), v)
    assert torch.equal(lay.row_type.index_select(0, lay.slot), edge_type)  # every edge sits in its type's group
    pad = torch.ones(lay.rows, dtype=torch.bool)
    pad[lay.slot] = False
    assert int(pad.sum()) == lay.rows - 301 and rows[pad].abs().sum() == 0


def test_chained_no_grad_layers_match_the_per_type_loop():
    """Wide layers pass their no-grad outputs on with constant columns (chained); values must not change."""
    from backend.model import ensemble

    cfg = MonoNPHMConfig.builtin()
    cfg.hidden_dim_geo = cfg.hidden_dim_app = 136  # at or above CHAIN_MIN_WIDTH, a multiple of 8
    assert ensemble.chains(cfg.hidden_dim_geo)
    m = _model(cfg, seed=19, dtype=torch.float32)
    zg, za, ze = _codes(cfg, 2, dtype=torch.float32)
    x = (torch.rand(2, 200, 3) - 0.5) * 1.2
    made = []
    orig = ensemble.TypedLinearStack.augmented

    def spy(self, l, dtype=None, chain=False):
        made.append(chain)
        return orig(self, l, dtype, chain)

    ensemble.TypedLinearStack.augmented = spy
    try:
        with torch.inference_mode():
            sdf, col = m.query(x, zg, za, ze, exact=True)
    finally:
        ensemble.TypedLinearStack.augmented = orig
    assert any(made) and not all(made)  # hidden layers chained, output layers not
    with torch.no_grad():
        ref_sdf, ref_col, _ = loop_forward(m, x, zg, za, ze)
    assert torch.allclose(sdf, ref_sdf, atol=2e-6) and torch.allclose(col, ref_col, atol=2e-6)
    # Partly frozen (only a middle layer trains, inputs need no gradient): no chaining where a graph runs.
    for p in m.parameters():
        p.requires_grad_(False)
    w = m.id_model.geo.weights[2].requires_grad_(True)
    o = m(x, zg, za, ze, exact=True)
    assert torch.allclose(o.sdf, ref_sdf, atol=2e-6) and torch.allclose(o.color, ref_col, atol=2e-6)
    (o.sdf.sum() + o.color.sum()).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_bfloat16_softplus_lookup_equals_the_kernel():
    """The table lookup gives the elementwise kernel's values, across slices, in place or not, specials included."""
    import torch.nn.functional as F

    from backend.model.ensemble import _LOOKUP_SLICE, softplus_no_grad

    g = torch.Generator().manual_seed(3)
    z = (torch.randn(_LOOKUP_SLICE * 2 + 77, generator=g) * 0.1).to(torch.bfloat16).view(-1, 1)
    z[:4, 0] = torch.tensor([float("inf"), float("-inf"), -0.0, 1e-40])
    ref = F.softplus(z, beta=100.0, threshold=20.0)
    out = softplus_no_grad(z, 100.0)
    assert out.data_ptr() != z.data_ptr() and torch.equal(out, ref)
    zz = z.clone()
    assert softplus_no_grad(zz, 100.0, inplace=True).data_ptr() == zz.data_ptr() and torch.equal(zz, ref)
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    finite = every[torch.isfinite(every)]
    # Equal except where the result is denormal (< 1.2e-38): the table holds 0 there, as the kernel gives when the
    # model's denormal flushing is on.
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        try:
            got, want = softplus_no_grad(finite, 100.0).float(), F.softplus(finite, beta=100.0, threshold=20.0).float()
        finally:
            torch.set_flush_denormal(False)
        normal = want.abs() >= torch.finfo(torch.float32).tiny
        assert torch.equal(got[normal], want[normal]) and (got[~normal] == 0).all()
    z32 = z.float()
    assert torch.equal(softplus_no_grad(z32, 100.0), F.softplus(z32, beta=100.0, threshold=20.0))


def test_deformation_value_path_on_large_batches_matches_the_plain_mlp():
    """Large no-grad batches take oneDNN's fused linear on rows padded to FUSED_ROW_QUANTUM; values must not change."""
    from backend.model import deformation

    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=23, dtype=torch.float32)
    zg, _, ze = _codes(cfg, 1, dtype=torch.float32, s=0.3)
    n = deformation.FUSED_MIN_ROWS + 77  # not a multiple of the row quantum
    x = torch.rand(1, n, 3) - 0.5
    ex = m.ex_model
    with torch.no_grad():
        A = m.id_model.anchors(zg)
        off, hyp, _ = ex(x, zg, ze, A)
        flat, _, _ = ex(x[0], zg, ze, A, batch_index=torch.zeros(n, dtype=torch.long))  # the root finder's call
        h = loop_deformation(m, x, zg, ze, A)
    assert off.shape == (1, n, 3) and hyp.shape == (1, n, cfg.n_hyper) and flat.shape == (n, 3)
    assert torch.allclose(off, h[..., :3], atol=2e-6) and torch.allclose(hyp, h[..., 3:], atol=2e-6)
    assert torch.allclose(flat, h[0, :, :3], atol=2e-6)
    # A layer that needs a gradient (even a later one alone) keeps the autograd path: its gradient must arrive.
    for p in m.parameters():
        p.requires_grad_(False)
    w3 = ex.lins[3].weight.requires_grad_(True)
    ex(x, zg, ze, A)[0].sum().backward()
    assert w3.grad is not None and w3.grad.abs().sum() > 0


def test_deformation_jacobian_pass_runs_its_tangents_as_single_matmuls():
    """The forward-mode tangents stay row-major, so each layer's tangent product is one GEMM: a batched matmul with a
    weight copy per point (what an expanded first tangent led to) was 70 % of every Jacobian pass on AVX-512."""
    from torch.profiler import ProfilerActivity, profile

    cfg = MonoNPHMConfig.builtin()
    m = _frozen_model(cfg)   # frozen weights took the batched matmul
    zg, _, ze = _codes(cfg, 1, dtype=torch.float32, s=0.3)
    x = torch.rand(1, 300, 3) - 0.5
    with torch.no_grad():
        A = m.id_model.anchors(zg)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            off, _, jac = m.ex_model(x, zg, ze, A, with_jacobian=True)
    assert jac.shape == (1, 300, 3 + cfg.n_hyper, 3)
    assert not [e.key for e in prof.key_averages() if e.key in ("aten::bmm", "aten::baddbmm")]
    # and the Jacobian is the derivative of the offsets
    eps, d = 1e-3, torch.tensor([0.0, 1.0, 0.0])
    with torch.no_grad():
        hi = m.ex_model(x + eps * d, zg, ze, A)[0]
        lo = m.ex_model(x - eps * d, zg, ze, A)[0]
    assert torch.allclose((hi - lo) / (2 * eps), jac[..., :3, 1], atol=2e-3)


def test_root_finder_computes_the_code_terms_once_per_solve_with_the_same_bits():
    """The root finder evaluates the deformation net many times on the same codes: their constant parts of the first
    and skip layers (``code_terms``) are made once per solve and give the bits of computing them at every call."""
    cfg = MonoNPHMConfig.builtin()
    m = _frozen_model(cfg)
    zg, _, ze = _codes(cfg, 2, dtype=torch.float32, s=0.3)
    x = (torch.rand(2, 200, 3) - 0.5) * torch.tensor([0.6, 0.9, 0.8])
    ex = m.ex_model
    with torch.no_grad():
        A = m.id_model.anchors(zg)
        terms = ex.code_terms(ex.compress_id(zg, A), ze)
        for jac in (False, True):
            plain, given = ex(x, zg, ze, A, with_jacobian=jac), ex(x, None, None, None, with_jacobian=jac,
                                                                   code_terms=terms)
            assert all(a is b is None or torch.equal(a, b) for a, b in zip(plain, given))
        y = x + ex(x, zg, ze, A)[0]
    calls = []
    real = ex.code_terms
    ex.code_terms = lambda *a: calls.append(1) or real(*a)
    try:
        with torch.enable_grad():
            r = m.forward_warp(y, zg, ze.clone().requires_grad_(True), anchors=A)   # with implicit gradients
    finally:
        del ex.code_terms
    assert r.iterations > 1 and len(calls) == 2   # the solve's, and the differentiable pass's own
    assert r.converged.float().mean() > 0.99


def test_implicit_gradient_takes_one_deformation_pass_at_the_root():
    """The implicit gradient's pass at the root gives both the offsets, differentiable in the codes, and their
    Jacobian, which carries no autograd graph: after the solve, one Jacobian pass and no plain evaluation (the
    gradients themselves: ``test_root_finder_gradients_match_finite_differences``)."""
    cfg = MonoNPHMConfig.builtin()
    m = _frozen_model(cfg)
    zg, _, ze = _codes(cfg, 1, dtype=torch.float32, s=0.3)
    x = (torch.rand(1, 100, 3) - 0.5) * torch.tensor([0.6, 0.9, 0.8])
    ex = m.ex_model
    with torch.no_grad():
        A = m.id_model.anchors(zg)
        y = x + ex(x, zg, ze, A)[0]
        start = m.forward_warp(y, zg, ze, anchors=A)
    calls = []
    real = ex.forward
    ex.forward = lambda *a, **k: calls.append(bool(k.get("with_jacobian"))) or real(*a, **k)
    ze = ze.clone().requires_grad_(True)
    try:
        r = m.forward_warp(y, zg, ze, anchors=A, x_init=start.points, jinv_init=start.jinv)
    finally:
        del ex.forward
    assert calls[-1] and sum(calls) == 1   # the solve's plain evaluations, then the one pass at the root
    assert torch.equal(r.points.detach(), start.points) and r.points.requires_grad
    off, _, jac = ex(x, zg, ze, A, with_jacobian=True)
    assert off.requires_grad and not jac.requires_grad


def test_sdf_gradient_does_not_import_sympy():
    """The rays' SDF gradient (every identity stage, standard per-frame fits) is a plain backward of the summed SDF:
    a tensor grad_outputs makes autograd import torch.fx's symbolic shapes and sympy (0.4 CPU s, seconds of wall)."""
    code = ("import sys, torch\nfrom backend.model import MonoNPHM, MonoNPHMConfig\n"
            "cfg = MonoNPHMConfig.builtin()\nm = MonoNPHM(cfg, torch.rand(cfg.n_anchors, 3) - 0.5)\n"
            "zg, za, ze = m.zero_codes(1)\n"
            "o = m(torch.rand(1, 20, 3) - 0.5, zg, za, ze.requires_grad_(True), with_gradient=True)\n"
            "(o.gradient ** 2).sum().backward()\nprint(o.gradient.shape, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "torch.Size([1, 20, 3]) False"


def test_linear_rows_gives_the_bits_of_addmm():
    """The deformation layers' product-then-bias equals addmm bit for bit, values and gradients."""
    from backend.model.deformation import _linear_rows

    g = torch.Generator().manual_seed(3)
    for rows in (1, 86, 300, 3128):
        a = torch.randn(rows, 128, generator=g).requires_grad_(True)
        w = torch.randn(128, 128, generator=g)
        b = torch.randn(128, generator=g).requires_grad_(True)
        out_grad = torch.randn(rows, 128, generator=g)
        ours, ref = _linear_rows(a, w.t(), b), torch.addmm(b, a, w.t())
        assert torch.equal(ours, ref)
        assert all(torch.equal(x, y) for x, y in zip(torch.autograd.grad(ours, (a, b), out_grad),
                                                     torch.autograd.grad(ref, (a, b), out_grad)))


def test_threaded_chunked_query_matches_serial():
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=13, dtype=torch.float32)
    zg, za, ze = _codes(cfg, 1, dtype=torch.float32)
    x = torch.rand(1, 3000, 3) - 0.5
    a = m.query(x, zg, za, ze, chunk=1000)  # single intra-op thread here: serial chunks
    torch.set_num_threads(2)
    try:
        b = m.query(x, zg, za, ze, chunk=1000)  # two Python worker threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_colour_only_query_equals_the_full_query():
    """with_sdf=False skips the SDF head; the colour branch reads the hidden pre-activation, so colours are equal."""
    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=5, dtype=torch.float32)
    zg, za, ze = _codes(cfg, 1, dtype=torch.float32)
    x = torch.rand(1, 5000, 3) - 0.5
    for kw in (dict(neutral=True), dict(z_exp=ze), dict(neutral=True, prune_mass=4e-3)):
        sdf, col = m.query(x, zg, za, **kw)
        none, col_only = m.query(x, zg, za, with_sdf=False, **kw)
        assert none is None and sdf.shape == (1, 5000, 1)
        assert torch.equal(col_only, col)
    with pytest.raises(ValueError, match="with_sdf"):
        m(x[:, :10], zg, za, ze, with_gradient=True, with_sdf=False)


def test_backward_in_chunks_matches_one_graph():
    from backend.model.parallel import backward_in_chunks

    cfg = MonoNPHMConfig.builtin()
    m = _model(cfg, seed=17, dtype=torch.float32)
    zg, za, ze = _codes(cfg, 1, dtype=torch.float32)
    x = torch.rand(1, 600, 3) - 0.5
    grads = []
    for threads in (1, 2):
        leaves = [z.clone().requires_grad_(True) for z in (zg, za, ze)]

        def loss_fn(s, e):
            o = m(x[:, s:e], *leaves, with_gradient=True)
            return o.sdf.abs().sum() + o.color.abs().sum() + (o.gradient.norm(dim=-1) - 1).square().sum()

        torch.set_num_threads(threads)
        try:
            if threads == 1:
                loss_fn(0, 600).backward()
            else:
                backward_in_chunks(loss_fn, 600, 200)
        finally:
            torch.set_num_threads(1)
        grads.append([l.grad for l in leaves])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")),
                    reason="FTZ/DAZ inheritance by new threads is checked on x86-64 Linux")
def test_set_threads_makes_openmp_workers_flush_denormals():
    """Denormal inputs read as 0 on every intra-op thread inside a flush scope once set_threads created the pool
    (before the fix, OpenMP's worker kept full denormals: half of a parallel op's output stayed non-zero)."""
    code = (
        "import torch\n"
        "from backend.model.parallel import set_threads, flush_denormals\n"
        "set_threads(2)\n"
        "x = torch.full((1 << 21,), 1e-39)\n"
        "with flush_denormals():\n"
        "    y = x * 1.0\n"
        "z = x * 1.0\n"  # outside the scope the calling thread keeps denormals (restored mode)
        "print(float((y != 0).float().mean()), float((z[:1] != 0).float().mean()), torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    inside, outside_first, threads = out.stdout.split()
    assert float(inside) == 0.0 and float(outside_first) == 1.0 and int(threads) == 2


def test_softplus_double_backward_matches_autograd():
    """The ensemble's softplus (custom second derivative) against torch's generic one, across the threshold."""
    from backend.model.ensemble import softplus

    # beta z spans [-30, 30]; no point within gradcheck's step of the threshold z = 0.2, where the second derivative
    # jumps and a finite difference straddling it is off by 1e-3 (61 points put one at 0.19999999999999998)
    z = torch.linspace(-0.3, 0.3, 60, dtype=torch.float64).requires_grad_(True)
    torch.autograd.gradgradcheck(lambda t: softplus(t, 100.0), (z,))
    for dtype in (torch.float64, torch.float32):
        outs = []
        for fn in (lambda t: softplus(t, 100.0), lambda t: torch.nn.functional.softplus(t, 100.0, 20.0)):
            x = z.detach().to(dtype).requires_grad_(True)
            (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
            (gg,) = torch.autograd.grad((g * g.detach().cos()).sum(), x)
            outs.append((g.detach(), gg))
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.allclose(outs[0][0], outs[1][0], atol=tol)
        assert torch.allclose(outs[0][1], outs[1][1], atol=tol * 100)
