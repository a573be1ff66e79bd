"""Marching cubes on analytic SDFs, and model meshes (canonical, fixed topology, topology-varying)."""
import numpy as np
import pytest
import torch

from backend.model import MonoNPHM, MonoNPHMConfig, geometric_init
from backend.model.meshing import (MESH_WARP_TOL, PosedMesher, WarpState, canonical_mesh, extract_mesh,
                                refinement_factors, repair_from_neighbors, warp_mesh)


pytestmark = [pytest.mark.usefixtures("single_torch_thread")]

BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def sphere(p, c=False):
    return p.norm(dim=-1) - 0.6


def torus(p, c=False):
    q = torch.stack([torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.5, p[:, 1]], -1)
    return q.norm(dim=-1) - 0.2


def _volume(m):
    tri = m.vertices[m.faces].astype(np.float64)
    return np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6


def test_marching_cubes_analytic_within_a_voxel():
    voxel = 2.0 / 64
    for f, vol in ((sphere, 4 / 3 * np.pi * 0.6 ** 3), (torus, 2 * np.pi ** 2 * 0.5 * 0.2 ** 2)):
        calls = []
        m = extract_mesh(lambda p, c: (calls.append(len(p)), f(p))[1], BOX, res=64, coarse_res=8)
        assert len(m.faces) > 1000
        err = f(torch.from_numpy(m.vertices)).abs().max().item()
        assert err < voxel, err  # every vertex within a voxel of the true surface (in fact ~1e-4)
        assert abs(_volume(m) - vol) / vol < 0.01  # closed, outward oriented
        assert sum(calls) < 0.5 * 65 ** 3  # narrow band: far fewer evaluations than the dense grid
        # closed manifold: every edge shared by exactly two faces
        e = np.sort(np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]]), 1)
        _, cnt = np.unique(e, axis=0, return_counts=True)
        assert (cnt == 2).all()


def test_narrow_band_equals_dense_marching_cubes():
    """The coarse-to-fine band (with its 4-fold last split and band growth) yields exactly the dense grid's mesh."""
    from skimage.measure import marching_cubes

    def f(p, c=False):  # a sphere poking through a torus: thin parts, saddles, two components' union
        return torch.minimum(sphere(p - torch.tensor([0.35, 0.25, 0.0])) + 0.25, torus(p))

    assert refinement_factors(64, 8) == [2, 4] and refinement_factors(256, 16) == [2, 2, 4]
    assert refinement_factors(32, 8) == [2, 2] and refinement_factors(16, 16) == []
    with pytest.raises(ValueError):
        refinement_factors(48, 16)
    m = extract_mesh(f, BOX, res=64, coarse_res=8)
    g = torch.linspace(-1, 1, 65)
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    v, faces, _, _ = marching_cubes(f(grid).reshape(65, 65, 65).numpy(), 0.0, spacing=(2 / 64,) * 3,
                                    gradient_direction="descent")
    v = v - 1.0
    assert len(m.vertices) == len(v) and len(m.faces) == len(faces)
    from scipy.spatial import cKDTree

    d_ab, _ = cKDTree(v).query(m.vertices)
    d_ba, _ = cKDTree(m.vertices).query(v)
    assert max(d_ab.max(), d_ba.max()) < 1e-5  # the same vertices (float32 grid coordinates)


def test_child_cell_band_test_equals_the_per_corner_test():
    """The sliding-window min/max over the predicted child-corner lattice selects the same children as testing
    each child's 8 gathered corners."""
    from backend.model.meshing import _CORNERS, _near, _near_children, _refinement_stencil

    g = torch.Generator().manual_seed(0)
    for f in (2, 4):
        wts, offsets = _refinement_stencil(f)
        parents = torch.randn(500, 8, generator=g) * 0.05 + torch.randn(500, 1, generator=g) * 0.05
        lattice = parents @ wts.t()                                                # (M, (f+1)^3)
        cc = offsets[:, None, :] + _CORNERS[None]                                  # (f^3, 8, 3) child corners
        ids = (cc[..., 0] * (f + 1) + cc[..., 1]) * (f + 1) + cc[..., 2]
        expected = _near(lattice[:, ids], 0.03)                                    # (M, f^3)
        got = _near_children(lattice, f, 0.03)
        assert 0.05 < expected.float().mean() < 0.95  # both outcomes occur
        assert torch.equal(got, expected)


def test_repair_from_neighbors():
    # a strip of 4 vertices: 0-1-2-3, vertex 2 failed
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    vc = torch.zeros(4, 3)
    vp = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [9.0, 9, 9], [1.0, 0, 0]])
    ok = torch.tensor([True, True, False, True])
    out = repair_from_neighbors(vc, vp, ok, faces)
    assert torch.allclose(out[2], torch.tensor([1.0, 0, 0]))


def _blob_model():
    torch.manual_seed(0)
    cfg = MonoNPHMConfig.builtin()
    A = torch.tensor([[0.0, 0.0, 0.0]]).repeat(cfg.n_anchors, 1) + torch.randn(cfg.n_anchors, 3) * 0.2
    m = MonoNPHM(cfg, A).eval()
    geometric_init(m, 0.45)
    return m, cfg


def test_model_meshes_fixed_and_varying_topology():
    m, cfg = _blob_model()
    zg, za, ze = m.zero_codes(1)
    ze = torch.randn_like(ze) * 0.3
    box = ((-0.7, -0.7, -0.7), (0.7, 0.7, 0.7))
    can = canonical_mesh(m, zg, za, res=32, box=box, coarse_res=8)
    assert len(can.vertices) > 500 and can.colors.shape == (len(can.vertices), 3) and can.colors.dtype == np.uint8
    with torch.no_grad():
        s = m(torch.from_numpy(can.vertices)[None], zg, None, None, neutral=True, with_color=False).sdf
    assert s.abs().max() < 2 * 1.4 / 32 and s.abs().median() < 0.1 * 1.4 / 32  # on the surface (voxel 0.044)
    # fixed topology: warped vertices satisfy x + delta(x) = canonical vertex
    posed, ok, st = warp_mesh(m, can, zg, ze)
    assert ok.float().mean() > 0.99 and np.array_equal(posed.faces, can.faces)
    with torch.no_grad():
        off, _ = m.deformation(torch.from_numpy(posed.vertices)[None], zg, ze)
    back = torch.from_numpy(posed.vertices) + off[0]
    assert (back - torch.from_numpy(can.vertices))[ok].norm(dim=-1).max() < MESH_WARP_TOL + 1e-6
    # the next frame, warm-started: chord steps with the last inverse Jacobians, at most two passes per vertex
    from backend.model.deformation import DeformationField
    calls, forward = [], DeformationField.forward

    def spy(self, x, *a, **k):
        calls.append((x.reshape(-1, 3).shape[0], k.get("with_jacobian", False)))
        return forward(self, x, *a, **k)

    DeformationField.forward = spy
    try:
        posed2, ok2, _ = warp_mesh(m, can, zg, ze * 1.02, state=st)
    finally:
        DeformationField.forward = forward
    assert ok2.float().mean() > 0.99
    assert not any(jac for _, jac in calls) and sum(n for n, _ in calls) <= 2 * len(can.vertices)
    with torch.no_grad():
        off2, _ = m.deformation(torch.from_numpy(posed2.vertices)[None], zg, ze * 1.02)
    back2 = torch.from_numpy(posed2.vertices) + off2[0]
    assert (back2 - torch.from_numpy(can.vertices))[ok2].norm(dim=-1).max() < MESH_WARP_TOL + 1e-6
    # topology-varying: posed surface, band reused between frames
    pm = PosedMesher(m, res=32, box=box, coarse_res=8)
    a = pm(zg, za, ze)
    b = pm(zg, za, ze * 1.05)
    assert len(a.vertices) > 500 and len(b.vertices) > 500 and b.colors is not None
    with torch.no_grad():
        sb = m(torch.from_numpy(b.vertices)[None], zg, None, ze * 1.05, with_color=False).sdf
    assert sb.abs().max() < 2 * 1.4 / 32 and sb.abs().median() < 0.1 * 1.4 / 32


def test_posed_mesher_reuses_the_corners_whose_canonical_query_stayed():
    """With reuse_tol, a later frame evaluates the canonical field only at band corners whose query moved: none on a
    repeated frame (the same mesh), some on a moved one, which then matches the mesh of a mesher without reuse."""
    from scipy.spatial import cKDTree

    from backend.model.meshing import POSED_REUSE_TOL

    m, cfg = _blob_model()
    with torch.no_grad():   # an expression-dependent deformation of part of the space
        last = m.ex_model.lins[-1]
        last.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    zg, _, ze = m.zero_codes(1)
    ze[0, :4] = 0.5
    box = ((-0.7, -0.7, -0.7), (0.7, 0.7, 0.7))
    plain, reusing = (PosedMesher(m, res=16, box=box, coarse_res=8, reuse_tol=t) for t in (0.0, POSED_REUSE_TOL))
    for z in (ze, ze):
        plain(zg, None, z, with_color=False)
        a = reusing(zg, None, z, with_color=False)
    b = reusing(zg, None, ze, with_color=False)   # a third time: every corner known, none moved
    assert reusing.last_canonical == 0 and np.array_equal(a.vertices, b.vertices)
    moved = ze.clone()
    moved[0, 0] += 0.02   # moves the queries of part of the band by more than the tolerance
    c, ref = reusing(zg, None, moved, with_color=False), plain(zg, None, moved, with_color=False)
    assert 0 < reusing.last_canonical < reusing.last_evaluated
    assert len(c.faces) == len(ref.faces)
    assert cKDTree(ref.vertices).query(c.vertices)[0].max() < 0.02 * 1.4 / 16   # a fiftieth of a cell


def test_vertices_that_fail_from_their_start_get_an_exact_newton_solve():
    """A poisoned start (NaN, e.g. a corrupted previous frame) fails; those vertices are solved again from
    y - delta(y) with exact Jacobians instead of being patched from their neighbours."""
    from backend.model.meshing import warp_vertices

    m, cfg = _blob_model()
    zg, za, ze = m.zero_codes(1)
    ze = torch.randn_like(ze) * 0.3
    can = canonical_mesh(m, zg, None, res=24, box=((-0.7,) * 3, (0.7,) * 3), coarse_res=6)
    v = torch.from_numpy(can.vertices)
    _, _, st = warp_vertices(m, v, can.faces, zg, ze)
    poisoned = st.points.clone()
    poisoned[:10] = float("nan")
    x, ok, _ = warp_vertices(m, v, can.faces, zg, ze, WarpState(poisoned, st.jinv))
    assert bool(ok.all()) and torch.isfinite(x).all()
    with torch.no_grad():
        off, _ = m.deformation(x[None], zg, ze)
    assert (x + off[0] - v).norm(dim=-1).max() < MESH_WARP_TOL + 1e-6


def test_warp_state_extrapolates_smooth_motion_and_holds_still_on_jitter():
    """The next frame's start: x_t + k (x_t - x_{t-1}), k the least-squares persistence of the last motion."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(50, 3, generator=g)
    v = torch.randn(50, 3, generator=g) * 1e-3
    eye = torch.eye(3).expand(50, 3, 3)
    st = WarpState(x0, eye)
    assert torch.equal(st.predicted_start(), x0)            # one frame: no motion known
    st = st.advanced(x0 + v, eye)
    assert st.persistence == 0.0 and torch.equal(st.predicted_start(), x0 + v)  # two frames: no persistence yet
    smooth = st.advanced(x0 + 2 * v, eye)                   # constant velocity
    assert abs(smooth.persistence - 1.0) < 1e-4
    assert torch.allclose(smooth.predicted_start(), x0 + 3 * v, atol=1e-6)
    jitter = st.advanced(x0, eye)                           # back where it was: the motion reversed
    assert jitter.persistence == 0.0 and torch.equal(jitter.predicted_start(), x0)
    half = st.advanced(x0 + 1.5 * v, eye)                   # motion slowing to half
    assert abs(half.persistence - 0.5) < 1e-4
    assert torch.allclose(half.predicted_start(), x0 + 1.75 * v, atol=1e-6)
    other = half.advanced(torch.zeros(7, 3), torch.eye(3).expand(7, 3, 3))  # another mesh: history dropped
    assert other.previous is None and other.persistence == 0.0


def test_bfloat16_coarse_passes_give_the_float32_mesh():
    """Coarse levels only steer the refinement: a bf16 coarse pass yields the float32 mesh, vertex for vertex."""
    from backend.model.meshing import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no fast bfloat16 matmuls (AVX512-BF16 / AMX)")
    m, cfg = _blob_model()
    zg, za, _ = m.zero_codes(1)
    box = ((-0.7, -0.7, -0.7), (0.7, 0.7, 0.7))
    a = canonical_mesh(m, zg, za, res=64, box=box, coarse_res=8, coarse_dtype=None)
    b = canonical_mesh(m, zg, za, res=64, box=box, coarse_res=8, coarse_dtype=torch.bfloat16)
    assert len(a.vertices) > 2000 and np.array_equal(a.faces, b.faces)
    assert np.abs(a.vertices - b.vertices).max() < 1e-6
    assert np.abs(a.colors.astype(int) - b.colors.astype(int)).max() <= 6  # bf16 colours: a few uint8 steps


def test_coarse_precision_choice(monkeypatch):
    """bf16 coarse passes only for wide models on CPUs with native bf16 (AVX512-BF16 / AMX), and never with the
    environment switch at 0."""
    from backend.model import meshing as mesh

    wide = type("M", (), {"cfg": MonoNPHMConfig.official()})()
    narrow = type("M", (), {"cfg": MonoNPHMConfig.builtin()})()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert mesh.bf16_supported() is native  # plain AVX-512 emulates bf16: not worth it
        monkeypatch.delenv("MONONPHM_COARSE_BF16", raising=False)
        assert mesh.auto_coarse_dtype(wide) == (torch.bfloat16 if native else None)
        assert mesh.auto_coarse_dtype(narrow) is None
        monkeypatch.setenv("MONONPHM_COARSE_BF16", "1")
        assert mesh.auto_coarse_dtype(narrow) == (torch.bfloat16 if native else None)
        monkeypatch.setenv("MONONPHM_COARSE_BF16", "0")
        assert mesh.auto_coarse_dtype(wide) is None
