"""Mesh extraction: narrow-band coarse-to-fine marching cubes (scikit-image) and fixed-topology warping.

* `extract_mesh(sdf_fn, box, res)`: evaluates a coarse grid, then refines only cells near the surface
  (|sdf| < margin * cell diagonal, or a sign change) level by level up to `res` cells per axis.
* `canonical_mesh(model, ...)`: neutral canonical surface with albedo vertex colours.
* `warp_vertices(...)` / `warp_mesh(...)`: fixed topology per frame: canonical vertices forward-warped (root
  finding to `MESH_WARP_TOL`, warm-started from the previous frame), the non-converged ones repaired from their mesh
  neighbours.
* `PosedMesher`: topology-varying per-frame meshes in posed space, reusing the previous frame's band.

Devices: the grid bookkeeping (sparse cell and corner ids) and marching cubes run on the CPU; the field evaluations
run where the model is (a few point batches per level cross to it and back).  Warping runs on the vertices' device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .parallel import flush_denormals

Box = Tuple[Sequence[float], Sequence[float]]
HOST = torch.device("cpu")  # the grid bookkeeping's device (see the module docstring)
COARSE_PRUNE_MASS = 1e-2  # coarse levels only choose cells to refine (margin 1.5 cell diagonals covers the error)
# Vertex albedo is stored as uint8 (steps of 2/255 on [-1, 1]): dropping blend mass <= 4e-3 changes a colour by at
# most 4e-3 * max |edge colour| (about half a step); measured on the built-in model at 256^3: mean 0.07, max 3 steps,
# for 22% less time than the default 1e-3.
COLOR_PRUNE_MASS = 4e-3


@dataclass
class SurfaceMesh:
    """A marching-cubes surface of the model's SDF (canonical or posed), NPHM units."""

    vertices: np.ndarray                  # (V, 3) float32, NPHM units
    faces: np.ndarray                     # (F, 3) int64, counter-clockwise seen from outside
    colors: Optional[np.ndarray] = None   # (V, 3) uint8 albedo


@dataclass
class GridState:
    """Fine grid values and evaluated mask of the last extraction (for band reuse between frames)."""
    values: torch.Tensor     # (n, n, n) float32
    evaluated: torch.Tensor  # (n, n, n) bool
    box: Box
    res: int


def bf16_supported() -> bool:
    """bfloat16 matmuls are fast on this CPU: native AVX512-BF16 or AMX instructions.

    oneDNN's own check also accepts plain AVX-512 CPUs, where bf16 is emulated and slower than float32."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001  (private probes: absent on other builds / platforms)
        return False


def auto_coarse_dtype(model) -> Optional[torch.dtype]:
    """Precision of the coarse SDF passes (mesh refinement levels, canonical colours): bfloat16 for wide
    (official-size) models on a bf16-capable CPU, else float32 (None).

    Coarse levels only decide where to refine (the final level and its band growth are float32), so the mesh is the
    same.  2-core AMX host, official size: SDF-only 52.7-64.8k vs 29.4k pts/s, canonical 256^3 mesh 12.4-13.1 vs
    14.4-15.6 s, identical vertices (it paid off only once the ensemble's row groups were padded,
    `ensemble.GROUP_QUANTUM`; before, 31.4 vs 21.1 s).  Built-in size: 3.36-3.59 vs 3.32-3.57 s, so float32 stays.
    MONONPHM_COARSE_BF16=0 forces float32 everywhere; =1 also asks for it on narrow models.
    """
    flag = os.environ.get("MONONPHM_COARSE_BF16", "auto")
    wide = model.cfg.hidden_dim_geo >= 128
    if flag != "0" and (wide or flag == "1") and bf16_supported():
        return torch.bfloat16
    return None


def _grid_points(box: Box, n: int, idx: torch.Tensor) -> torch.Tensor:
    """Linear indices into an n^3 grid ('ij': x slowest) -> points (P, 3)."""
    lo = torch.tensor(box[0], dtype=torch.float32, device=HOST)
    hi = torch.tensor(box[1], dtype=torch.float32, device=HOST)
    i = idx // (n * n)
    j = (idx // n) % n
    k = idx % n
    ijk = torch.stack([i, j, k], -1).to(torch.float32)
    return lo + ijk * (hi - lo) / (n - 1)


_CORNERS = torch.stack(torch.meshgrid(*(torch.arange(2, device=HOST),) * 3, indexing="ij"), -1).reshape(8, 3)


# Corner ids (index 4i + 2j + k of _CORNERS) of the 6 cell faces, and the offset to the neighbour across each.
_FACES = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 4, 5], [2, 3, 6, 7], [0, 2, 4, 6], [1, 3, 5, 7]], device=HOST)
_FACE_OFFSETS = torch.tensor([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], device=HOST)


def _lin(p: torch.Tensor, n: int) -> torch.Tensor:
    return (p[..., 0] * n + p[..., 1]) * n + p[..., 2]


def _corner_ids(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Linear ids (K, 8) in an n^3 corner grid of the 8 corners of cells (K, 3) (indexed by their lowest corner):
    each cell's own id plus fixed offsets, without a (K, 8, 3) intermediate."""
    return _lin(cells, n).unsqueeze(1) + _lin(_CORNERS, n)


def _near(v: torch.Tensor, thr: float) -> torch.Tensor:
    """(M, 8) corner values -> (M,) bool: the cell may contain the surface.

    For an L-Lipschitz SDF, a cell containing a zero has every corner within L * diagonal of it, so
    max |corner| <= L * diag; thr = margin * diag with margin >= L (plus a sign change test) is conservative.
    """
    lo, hi = torch.aminmax(v, dim=-1)  # one pass; max |v| = max(-min v, max v)
    return _near_range(lo, hi, thr)


def _sign_change(v: torch.Tensor) -> torch.Tensor:
    """(..., C) corner values of cells (C = 8) or faces (C = 4) -> (...) bool: they change sign (the surface
    crosses)."""
    lo, hi = torch.aminmax(v, dim=-1)
    return (lo < 0) & (hi > 0)


def _near_range(lo: torch.Tensor, hi: torch.Tensor, thr: float) -> torch.Tensor:
    """`_near` from each cell's corner minimum and maximum."""
    return (torch.maximum(-lo, hi) < thr) | ((lo < 0) & (hi > 0))


def _near_children(lattice: torch.Tensor, f: int, thr: float) -> torch.Tensor:
    """`_near` of every child cell from the predicted values on each parent's (f+1)^3 child-corner lattice.

    lattice (M, (f+1)^3) ('ij' order) -> (M, f^3) in the order of the child offsets of `_refinement_stencil`.
    The min / max over each child's 8 corners are taken as 2-wide sliding windows along the three axes, which reads
    the lattice 6 times instead of gathering 8 values per child (4x faster for the 4-fold split)."""
    lo = hi = lattice.view(-1, f + 1, f + 1, f + 1)
    for axis in (1, 2, 3):
        a, b = lo.narrow(axis, 0, f), lo.narrow(axis, 1, f)
        c, d = hi.narrow(axis, 0, f), hi.narrow(axis, 1, f)
        lo, hi = torch.minimum(a, b), torch.maximum(c, d)
    return _near_range(lo.reshape(-1, f ** 3), hi.reshape(-1, f ** 3), thr)


def _unique_dense(lin: torch.Tensor, size: int) -> torch.Tensor:
    """Sorted unique of non-negative ids < size: via a dense mark array for large inputs (much faster than
    torch.unique there), by sorting for inputs far smaller than the id range (the mark array's scan dominates)."""
    if lin.numel() * 64 < size:
        return torch.unique(lin.reshape(-1))
    mark = torch.zeros(size, dtype=torch.bool, device=HOST)
    mark[lin.reshape(-1)] = True
    return mark.nonzero().squeeze(1)


def _refinement_stencil(f: int):
    """Trilinear prediction of child-cell corners when a cell is split f times per axis.

    Returns (weights ((f+1)^3, 8): lattice position ('ij' order) <- the parent's 8 corners, child offsets (f^3, 3))."""
    lattice = torch.stack(torch.meshgrid(*(torch.arange(f + 1, device=HOST),) * 3, indexing="ij"), -1).reshape(-1, 3)
    t = lattice.float() / f
    wts = torch.prod(torch.where(_CORNERS[None].bool(), t[:, None], 1 - t[:, None]), -1)
    offsets = torch.stack(torch.meshgrid(*(torch.arange(f, device=HOST),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return wts, offsets


def refinement_factors(res: int, coarse_res: int) -> List[int]:
    """Per-level split factors from coarse_res to res: 2 per level, except that with 3 or more levels the last two
    are merged into one 4-fold split.  The 4-fold split predicts the final band from cells twice as large, which
    skips the second-finest level (a third of all evaluations); the few surface cells its prediction misses are
    found by the band growth, which makes the result independent of the prediction."""
    levels = int(round(np.log2(res / coarse_res)))
    if levels < 0 or coarse_res * 2 ** levels != res:
        raise ValueError(f"res ({res}) must be coarse_res ({coarse_res}) times a power of two")
    return [2] * (levels - 2) + [4] if levels >= 3 else [2] * levels


def extract_mesh(
    sdf_fn: Callable[[torch.Tensor, bool], torch.Tensor],
    box: Box,
    res: int = 256,
    coarse_res: int = 16,
    margin: float = 1.5,
    return_state: bool = False,
    final_margin: float = 0.5,
):
    """Narrow-band coarse-to-fine marching cubes of the zero level set of sdf_fn.

    Level 0 evaluates the full coarse grid.  Each refinement keeps only the cells that may contain the surface
    (all corners |sdf| < margin * cell diagonal, or a sign change), splits them (`refinement_factors`), drops
    children whose trilinearly predicted corner values are far from the surface, and evaluates only the children's
    corners.  The last level uses a tight band (final_margin) and is then grown across every cell face the surface
    crosses until the band is closed, so no surface cell is missed.  All bookkeeping is sparse (linear indices),
    so the cost scales with the surface area, not res^3 (about 2-3 evaluations per output vertex).

    sdf_fn(points (P, 3) float32, coarse: bool) -> sdf (P,); `coarse` marks levels before the last (a caller may
    use a cheaper evaluation there, e.g. bfloat16).  res must be coarse_res * 2^k (cells per axis).
    Returns SurfaceMesh (colors None) [, GridState].
    """
    factors = refinement_factors(res, coarse_res)
    lo = np.asarray(box[0], dtype=np.float64)
    hi = np.asarray(box[1], dtype=np.float64)
    m = coarse_res
    keys = torch.arange((m + 1) ** 3, device=HOST)
    dense = sdf_fn(_grid_points(box, m + 1, keys), len(factors) > 0).reshape(-1).float()  # (n^3,) values
    g = torch.arange(m, device=HOST)
    cells = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)   # (M, 3) active cells
    for lev, f in enumerate(factors):
        last = lev == len(factors) - 1
        n = m + 1
        diag = float(np.linalg.norm((hi - lo) / m))
        cv = dense[_corner_ids(cells, n)]                                                          # (M, 8)
        keep = _near(cv, margin * diag)
        cells, cv = cells[keep], cv[keep]
        wts, offsets = _refinement_stencil(f)
        # The last level uses a tight band (final_margin child diagonals); surface cells that reach its edge are
        # grown below.
        ok = _near_children(cv @ wts.t(), f, (final_margin if last else margin) * diag / f)         # (M, f^3)
        children = (f * cells[:, None, :] + offsets[None])[ok]                                      # (M', 3)
        m = f * m
        n = m + 1
        keys = _unique_dense(_corner_ids(children, n), n ** 3)
        dense = torch.ones(n ** 3, device=HOST)  # +1 where not evaluated (never read: only evaluated corners are used)
        dense[keys] = sdf_fn(_grid_points(box, n, keys), not last).reshape(-1).float()
        cells = children
    n = m + 1
    if factors:
        cells, keys = _grow_surface_band(sdf_fn, box, m, cells, keys, dense)
    V = dense.view(n, n, n)  # band values, +1 elsewhere (masked out of marching cubes)
    mesh = _marching_cubes(V, cells, lo, hi)
    if return_state:
        evaluated = torch.zeros(n ** 3, dtype=torch.bool, device=HOST)
        evaluated[keys] = True
        return mesh, GridState(values=V, evaluated=evaluated.view(n, n, n), box=box, res=res)
    return mesh


def _grow_surface_band(sdf_fn, box, m, cells, keys, dense, max_rounds: int = 64):
    """Add the face-neighbours of sign-change cells that are not in the band yet (evaluating their new corners),
    until no surface cell touches the band edge.  Updates `dense` in place; returns (cells, keys): the band's
    cells (K, 3) and evaluated corner ids, each without repeats (in no particular order).  The input cells and
    keys must be without repeats.

    Only the cells added by the previous round can open new faces, so each round inspects that frontier; membership
    is kept in dense mark arrays (cells: m^3, evaluated corners: (m+1)^3) instead of sorted sets."""
    n = m + 1
    in_band = torch.zeros(m ** 3, dtype=torch.bool, device=HOST)
    in_band[_lin(cells, m)] = True
    evaluated = torch.zeros(n ** 3, dtype=torch.bool, device=HOST)
    evaluated[keys] = True
    frontier = cells
    added_cells, added_pts = [cells], [keys]  # disjoint by construction: no sorting or mask scans at the end
    for _ in range(max_rounds):
        v = dense[_corner_ids(frontier, n)]
        # The surface continues into a face-neighbour exactly when the shared face has a sign change.
        cross = _sign_change(v[:, _FACES])                                  # (K, 6) over each face's 4 corners
        k, f = cross.nonzero(as_tuple=True)
        nbc = frontier[k] + _FACE_OFFSETS[f]
        nbc = nbc[((nbc >= 0) & (nbc < m)).all(-1)]
        nb = _lin(nbc, m)
        nb = nb[~in_band[nb]]
        if nb.numel() == 0:
            break
        new = _unique_dense(nb, m ** 3)
        in_band[new] = True
        frontier = _unlin(new, m)
        added_cells.append(frontier)
        pts = _unique_dense(_corner_ids(frontier, n), n ** 3)
        pts = pts[~evaluated[pts]]
        if pts.numel():
            dense[pts] = sdf_fn(_grid_points(box, n, pts), False).reshape(-1).float()
            evaluated[pts] = True
            added_pts.append(pts)
    return torch.cat(added_cells), torch.cat(added_pts)


def _marching_cubes(V: torch.Tensor, cells: torch.Tensor, lo, hi) -> SurfaceMesh:
    """skimage marching cubes on the dense volume V, restricted to `cells` (K, 3) (indexed by their lowest
    corner).  Only the cells' bounding box is handed over (skimage scans every voxel it is given)."""
    from skimage.measure import marching_cubes

    n = V.shape[0]
    empty = SurfaceMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    if cells.numel() == 0:
        return empty
    c0, c1 = cells.amin(0).tolist(), (cells.amax(0) + 1).tolist()  # corner index range of the band
    vol = V.numpy()[c0[0]:c1[0] + 1, c0[1]:c1[1] + 1, c0[2]:c1[2] + 1]
    # skimage indexes a cell's mask by its highest corner.
    mask = np.zeros(vol.shape, dtype=bool)
    hc = (cells - cells.new_tensor(c0) + 1).numpy()
    mask[hc[:, 0], hc[:, 1], hc[:, 2]] = True
    spacing = (np.asarray(hi) - np.asarray(lo)) / (n - 1)
    try:
        verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=tuple(spacing), gradient_direction="descent",
                                            mask=mask)
    except ValueError:  # no sign change in the band (skimage checks the level against the volume's range)
        if vol.min() < 0 < vol.max():
            raise
        return empty
    if len(faces) == 0:
        return empty
    verts = (verts + np.asarray(lo) + np.asarray(c0) * spacing).astype(np.float32)
    return SurfaceMesh(verts, faces.astype(np.int64))


# ------------------------------------------------------------------------------------------------ model meshes
def _albedo_u8(c: torch.Tensor) -> np.ndarray:
    return ((c.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def canonical_mesh(
    model,
    z_geo: torch.Tensor,
    z_app: Optional[torch.Tensor] = None,
    res: int = 256,
    box: Optional[Box] = None,
    coarse_res: int = 16,
    chunk: int = 8192,
    coarse_dtype: Optional[torch.dtype] = "auto",
    with_color: bool = True,
) -> SurfaceMesh:
    """Neutral canonical mesh (q = [x ; 0]) with albedo vertex colours, effective res^3 over the model's box."""
    box = box or model.cfg.mesh_box
    if coarse_dtype == "auto":
        coarse_dtype = auto_coarse_dtype(model)
    z_geo = z_geo.reshape(1, -1).float()
    with torch.inference_mode():
        A = model.anchors(z_geo)

        def fn(p: torch.Tensor, coarse: bool) -> torch.Tensor:
            # Coarse levels only decide where to refine: cheaper precision and stronger pruning are fine there.
            return model.sdf_only(p.to(z_geo.device)[None], z_geo, None, neutral=True, chunk=chunk, anchors=A,
                                  compute_dtype=coarse_dtype if coarse else None,
                                  prune_mass=COARSE_PRUNE_MASS if coarse else None)[0, :, 0].cpu()

        mesh = extract_mesh(fn, box, res, coarse_res)
        if with_color and z_app is not None and len(mesh.vertices):
            _, col = model.query(torch.from_numpy(mesh.vertices).to(z_geo.device)[None], z_geo,
                                 z_app.reshape(1, -1).float(), None,
                                 neutral=True, chunk=chunk, anchors=A, compute_dtype=coarse_dtype,
                                 prune_mass=COLOR_PRUNE_MASS, with_sdf=False)
            mesh.colors = _albedo_u8(col[0])
    return mesh


def _vertex_neighbors(faces: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    f = torch.from_numpy(np.asarray(faces, dtype=np.int64)).to(device)
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], 0)
    e = torch.cat([e, e.flip(1)], 0)
    return e[:, 0], e[:, 1]


def repair_from_neighbors(verts_can: torch.Tensor, verts_posed: torch.Tensor, ok: torch.Tensor,
                          faces: np.ndarray, iters: int = 50) -> torch.Tensor:
    """Replace non-converged vertices' displacement by the mean displacement of their repaired/ok neighbours.

    Vectorised diffusion over the edge list; vertices with no usable neighbour keep zero displacement.
    """
    if bool(ok.all()):
        return verts_posed
    src, dst = _vertex_neighbors(faces, verts_can.device)
    disp = torch.where(ok[:, None], verts_posed - verts_can, torch.zeros_like(verts_can))
    known = ok.clone()
    for _ in range(iters):  # each sweep extends the known region by one ring
        s = torch.zeros_like(disp).index_add_(0, dst, disp[src] * known[src, None])
        c = disp.new_zeros(disp.shape[0]).index_add_(0, dst, known[src].to(disp.dtype))
        fill = (~ok) & (c > 0)
        disp = torch.where(fill[:, None], s / c.clamp_min(1)[:, None], disp)
        new_known = known | fill
        if bool((new_known == known).all()) and bool(new_known[~ok].all()):
            break
        known = new_known
    return verts_can + disp


# Fixed-topology vertices are solved to 4e-5 NPHM units (10 micrometres): under 1/100 of a 256^3 cell of the
# official box and far below what a mesh shows.  1e-6 would cost a second deformation pass for every vertex of every
# frame; at 4e-5 a vertex that barely moved (most of a head: median 5-13 um per frame in tracked clips) takes one.
MESH_WARP_TOL = 4e-5
# PosedMesher's reuse_tol for the tracker's per-frame meshes (model units, 2.5 um): a corner's value stands while its
# canonical query moves less.  cap12_edit frames 0:12 at 64^3: half the corners reused, 0.37 -> 0.22 CPU s per
# frame, score against 128^3 meshes unchanged (|SDF| 0.107 / 0.85 / 2.64 mm, completeness 0.484 / 1.205 / 3.36 mm,
# mean / p99 / max); 1e-4 reused 70 % but moved a vertex by 2.1 mm.
POSED_REUSE_TOL = 1e-5


@dataclass
class WarpState:
    """A fixed-topology warp's memory between frames: the roots and inverse Jacobians of the last frame (the next
    frame's start and chord steps) and how its motion continues (for the start prediction)."""
    points: torch.Tensor   # (V, 3) the last frame's roots (refined by one unevaluated chord step where converged)
    jinv: Optional[torch.Tensor]  # (V, 3, 3) their inverse Jacobians of x + delta(x) (None: evaluate at the start)
    previous: Optional[torch.Tensor] = None  # (V, 3) the frame before
    persistence: float = 0.0  # least-squares factor k of x_t - x_{t-1} ~ k (x_{t-1} - x_{t-2}), in [0, 1]

    def predicted_start(self) -> torch.Tensor:
        """The next frame's start: x_t + k (x_t - x_{t-1}).  k comes from the last three frames, so smooth motion is
        extrapolated (k ~ 1) while jittery tracking, whose per-frame accelerations exceed its velocities (k ~ 0),
        starts from the last roots."""
        if self.previous is None or self.persistence <= 0.0:
            return self.points
        return self.points + self.persistence * (self.points - self.previous)

    def advanced(self, points: torch.Tensor, jinv: torch.Tensor) -> "WarpState":
        """The state after solving the next frame's `points`."""
        if points.shape != self.points.shape:
            return WarpState(points, jinv)
        k = 0.0
        if self.previous is not None:
            v_last, v_new = self.points - self.previous, points - self.points
            denom = float((v_last * v_last).sum())
            if denom > 0.0:
                k = min(max(float((v_new * v_last).sum()) / denom, 0.0), 1.0)
        return WarpState(points, jinv, self.points, k)


def warp_vertices(model, vertices: torch.Tensor, faces: np.ndarray, z_geo, z_exp,
                  state: Optional[WarpState] = None, tol: float = MESH_WARP_TOL,
                  compute_dtype: Optional[torch.dtype] = None, chunk: int = 65536,
                  **kw) -> Tuple[torch.Tensor, torch.Tensor, WarpState]:
    """Canonical vertices (V, 3) -> posed (V, 3) for one expression: forward warp by root finding of
    x + delta(x) = vertex to `tol`, warm-started from `state` (the previous frame: predicted start and inverse
    Jacobians, so a frame usually needs one or two deformation passes per vertex).  Non-converged vertices are
    repaired from their mesh neighbours (`faces`).  No autograd.  Returns (posed (V, 3), converged (V,) bool, the
    state for the next frame).

    compute_dtype: e.g. torch.bfloat16 for the first Newton steps (then a float32 polish).  Float32 by default: a
    warm start needs one or two chord steps, which a low-precision phase only adds to, and the bf16 forward-mode
    Jacobian is slow on CPU (2-core AMX host, cold start of 9.2k vertices at the official size: 2.48 vs 0.55 s).
    """
    vc = vertices.detach().float()
    z_geo = z_geo.detach().reshape(1, -1).float()
    z_exp = z_exp.detach().reshape(1, -1).float()
    if state is not None and state.points.shape != vc.shape:
        state = None  # another mesh: start cold
    with torch.no_grad():
        A = model.anchors(z_geo)
    start = None
    # A cold start takes chord steps with the identity for J^-1 (fixed-point steps x <- y - delta(x), one pass each,
    # Broyden-refined) and computes a Jacobian only where the residual does not halve: deformations are small, so
    # most vertices never need one (the tracker's draft outline warps, cold at each frame: 3.4 -> 2.0 deformation
    # passes per vertex per call).
    eye = torch.eye(3, device=vc.device)
    jinv0 = eye.expand(len(vc), 3, 3)
    if state is not None:
        start = state.predicted_start()
        if state.jinv is not None:
            jinv0 = state.jinv

    def solve(y, x_init, jinv_init):
        r = model.forward_warp(y[None], z_geo, z_exp, anchors=A, x_init=None if x_init is None else x_init[None],
                               jinv_init=None if jinv_init is None else jinv_init[None], compute_dtype=compute_dtype,
                               implicit_grad=False, tol=tol, **kw)
        return r.points[0], r.converged[0], r.jinv[0], r.next_start[0]

    # One solve over all vertices, parallel inside each layer: Python worker threads over vertex chunks were no faster
    # at the official size and slower at the built-in size (real clip: 0.041 vs 0.034 s per frame), where the
    # second pass only sees the moving vertices.
    with torch.no_grad(), flush_denormals():
        parts = [solve(vc[s:s + chunk], None if start is None else start[s:s + chunk], jinv0[s:s + chunk])
                 for s in range(0, len(vc), chunk)]
        if parts:
            xp, ok, jinv, nxt = (torch.cat(p) for p in zip(*parts))
        else:
            xp, ok, jinv, nxt = vc.clone(), vc.new_ones(0, dtype=torch.bool), vc.new_zeros(0, 3, 3), vc.clone()
        failed = (~ok).nonzero().squeeze(1)
        for s in range(0, len(failed), chunk):
            # A second chance for the few that failed: exact Newton (a Jacobian at the start) from y - delta(y).
            bad = failed[s:s + chunk]
            x_bad, ok_bad, jinv_bad, nxt_bad = solve(vc[bad], None, None)
            fixed = bad[ok_bad]
            xp[fixed], jinv[fixed], nxt[fixed], ok[fixed] = x_bad[ok_bad], jinv_bad[ok_bad], nxt_bad[ok_bad], True
        # The next frame starts from the refined roots (the returned ones are only within tol).
        best = nxt
        if not bool(ok.all()):
            xp = repair_from_neighbors(vc, torch.where(ok[:, None], xp, vc), ok, faces)
            jinv = torch.where(ok[:, None, None], jinv, eye.expand_as(jinv))
            best = torch.where(ok[:, None], nxt, xp)
    new_state = state.advanced(best, jinv) if state is not None else WarpState(best, jinv)
    return xp, ok, new_state


def warp_mesh(model, mesh: SurfaceMesh, z_geo, z_exp, state: Optional[WarpState] = None,
              **kw) -> Tuple[SurfaceMesh, torch.Tensor, WarpState]:
    """Fixed-topology posed mesh: `warp_vertices` of the canonical mesh; colours are the canonical albedo (same
    topology, same texture).  Returns (mesh, converged (V,) bool, state for the next frame)."""
    xp, ok, new_state = warp_vertices(model, torch.from_numpy(mesh.vertices).to(z_geo.device), mesh.faces, z_geo,
                                      z_exp, state, **kw)
    return SurfaceMesh(xp.cpu().numpy().astype(np.float32), mesh.faces, mesh.colors), ok, new_state


def _unlin(lin: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([lin // (n * n), (lin // n) % n, lin % n], -1)


def _isin_sorted(sorted_keys: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    if sorted_keys.numel() == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, q).clamp_max(sorted_keys.numel() - 1)
    return sorted_keys[pos] == q


def _dilate_cells(cells: torch.Tensor, m: int, r: int) -> torch.Tensor:
    """Cells (K, 3) -> sorted unique linear ids of all cells within Chebyshev distance r, inside the m^3 grid."""
    o = torch.arange(-r, r + 1, device=HOST)
    off = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    c = (cells[:, None, :] + off[None]).reshape(-1, 3)
    c = c[((c >= 0) & (c < m)).all(-1)]
    return torch.unique(_lin(c, m))


class PosedMesher:
    """Topology-varying per-frame meshes in posed space (full deformed model, reference §4.9).

    The first frame uses coarse-to-fine narrow-band extraction; every later frame evaluates the previous frame's
    surface cells dilated by `band` and grows that band across every cell face the new surface crosses.

    reuse_tol > 0 (model units): a later frame evaluates the deformation at every band corner but the canonical
    field (most of a point's cost) only where the canonical query [x + delta ; h] moved by more than reuse_tol since
    the corner's value was last computed; elsewhere that value stands (its error is bounded by reuse_tol times the
    canonical field's slope, and never accumulates: the comparison is with the query that made the value).  Much of
    a head (skull, neck, still frames) does not move between frames.
    """

    def __init__(self, model, res: int = 128, box: Optional[Box] = None, band: int = 0, chunk: int = 8192,
                 coarse_res: int = 16, coarse_dtype: Optional[torch.dtype] = "auto", reuse_tol: float = 0.0):
        self.model = model
        self.res = res
        self.box = box or model.cfg.mesh_box
        self.band = band
        self.chunk = chunk
        self.coarse_res = coarse_res
        self.coarse_dtype = auto_coarse_dtype(model) if coarse_dtype == "auto" else coarse_dtype
        self.reuse_tol = reuse_tol
        self.surface_cells: Optional[torch.Tensor] = None  # (K, 3) sign-change cells of the last frame
        self.last_evaluated = 0
        self.last_canonical = 0   # band corners whose canonical field the last frame evaluated (the rest reused)
        # reuse_tol: the last frame's band corners (sorted grid ids (K,)), the queries their values came from
        # (K, 3 + n_hyper) and the values (K,)
        self._known: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def reset(self) -> None:
        self.surface_cells = None
        self._known = None

    def __call__(self, z_geo, z_app, z_exp, with_color: bool = True) -> SurfaceMesh:
        z_geo = z_geo.reshape(1, -1).float()
        z_exp = z_exp.reshape(1, -1).float()
        with torch.inference_mode():
            A = self.model.anchors(z_geo)

            def fn(p: torch.Tensor, coarse: bool = False) -> torch.Tensor:
                dt = self.coarse_dtype if coarse else None
                pm = COARSE_PRUNE_MASS if coarse else None
                return self.model.sdf_only(p.to(z_geo.device)[None], z_geo, z_exp, chunk=self.chunk, anchors=A,
                                           compute_dtype=dt, prune_mass=pm)[0, :, 0].cpu()

            if self.surface_cells is None:
                mesh, st = extract_mesh(fn, self.box, self.res, self.coarse_res, return_state=True)
                self.last_evaluated = self.last_canonical = int(st.evaluated.sum())
                V, n = st.values, self.res + 1
                evaluated = torch.arange(n ** 3, device=HOST)[st.evaluated.reshape(-1)]
                self.surface_cells = self._surface(V.reshape(-1), evaluated)
            elif self.reuse_tol > 0:
                mesh = self._update_reusing(z_geo, z_exp, A)
            else:
                mesh = self._update(fn)
            if with_color and z_app is not None and len(mesh.vertices):
                _, col = self.model.query(torch.from_numpy(mesh.vertices).to(z_geo.device)[None], z_geo,
                                          z_app.reshape(1, -1).float(),
                                          z_exp, chunk=self.chunk, anchors=A, compute_dtype=self.coarse_dtype,
                                          prune_mass=COLOR_PRUNE_MASS, with_sdf=False)
                mesh.colors = _albedo_u8(col[0])
        return mesh

    def _surface(self, V_flat: torch.Tensor, evaluated_pts: torch.Tensor) -> torch.Tensor:
        """Sign-change cells whose corners were all evaluated."""
        m, n = self.res, self.res + 1
        ev = torch.unique(evaluated_pts)
        cand = _unlin(ev, n)
        cand = cand[(cand < m).all(-1)]
        corners = _corner_ids(cand, n)
        full = _isin_sorted(ev, corners.reshape(-1)).view(-1, 8).all(-1)
        cand, corners = cand[full], corners[full]
        return cand[_sign_change(V_flat[corners])]

    def _update_reusing(self, z_geo, z_exp, A) -> SurfaceMesh:
        """``_update`` whose corners reuse the values of the previous frame where their canonical query stayed
        within ``reuse_tol`` (see the class docstring)."""
        from .parallel import map_chunks

        n = self.res + 1
        lo = torch.tensor(self.box[0], dtype=torch.float32, device=HOST)
        step = (torch.tensor(self.box[1], dtype=torch.float32, device=HOST) - lo) / (n - 1)
        known, seen = self._known, []
        dev = z_geo.device
        chunk = min(self.chunk, self.model.max_chunk(False)) if dev.type == "cpu" else self.model.max_chunk(False, dev)

        def fn(p: torch.Tensor) -> torch.Tensor:
            keys = _lin(((p - lo) / step).round().long(), n)   # the grid ids of the points (exact for grid points)
            off, hyp = self.model.deformation(p.to(dev)[None], z_geo, z_exp, anchors=A)
            q = torch.cat([p.to(dev) + off[0], hyp[0]], -1).cpu()
            sdf = torch.empty(len(p), device=HOST)
            todo = torch.ones(len(p), dtype=torch.bool, device=HOST)
            if known is not None and len(known[0]):
                pos = torch.searchsorted(known[0], keys).clamp_max(len(known[0]) - 1)
                close = (known[0][pos] == keys) & ((q - known[1][pos]).abs().amax(-1) <= self.reuse_tol)
                sdf[close] = known[2][pos[close]]
                q[close] = known[1][pos[close]]    # the query the reused value belongs to
                todo = ~close
            qt = q[todo].to(dev)
            parts = map_chunks(lambda s, e: self.model.canonical_sdf(qt[None, s:e], z_geo, anchors=A).sdf[0, :, 0],
                               len(qt), chunk, threads=qt.device.type == "cpu")
            sdf[todo] = torch.cat(parts).cpu() if parts else sdf.new_zeros(0)
            seen.append((keys, q, sdf, int(todo.sum())))
            return sdf

        mesh = self._update(fn)
        keys, q, sdf, counts = zip(*seen)
        keys = torch.cat(keys)
        order = torch.argsort(keys)
        self._known = (keys[order], torch.cat(q)[order], torch.cat(sdf)[order])
        self.last_canonical = sum(counts)
        return mesh

    def _update(self, fn) -> SurfaceMesh:
        """Seeds: the previous surface cells dilated by `band`; then grow across every face the new surface
        crosses (`_grow_surface_band`), so a moving surface is followed cell by cell."""
        m, n = self.res, self.res + 1
        dense = torch.ones(n ** 3, device=HOST)
        cells = _unlin(_dilate_cells(self.surface_cells, m, self.band), m)
        keys = _unique_dense(_corner_ids(cells, n), n ** 3)
        dense[keys] = fn(_grid_points(self.box, n, keys)).reshape(-1).float()
        cells, keys = _grow_surface_band(lambda p, c: fn(p), self.box, m, cells, keys, dense, max_rounds=64)
        self.last_evaluated = int(keys.numel())
        self.surface_cells = cells[_sign_change(dense[_corner_ids(cells, n)])]
        lo, hi = np.asarray(self.box[0]), np.asarray(self.box[1])
        return _marching_cubes(dense.view(n, n, n), cells, lo, hi)
