"""Triangle-mesh helpers for the evaluation (numpy + scipy, fully vectorised).

Shapes: vertices ``(V, 3)``, triangles ``(F, 3)`` int, points ``(N, 3)``. Units are whatever the caller uses
(the evaluation works in metres, camera space).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


def face_normals(vertices: np.ndarray, triangles: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(F, 3) triangle normals (right-hand rule over the vertex order); unit length unless ``normalize`` is False
    (then the length is twice the triangle area)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(triangles, np.int64)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    if normalize:
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-30
    return n


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals (zero for vertices no triangle uses)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(triangles, np.int64)
    fn = face_normals(v, f, normalize=False)
    n = np.zeros_like(v)
    np.add.at(n, f.reshape(-1), np.repeat(fn, 3, axis=0))
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-30)


def triangle_areas(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(F,) triangle areas."""
    return 0.5 * np.linalg.norm(face_normals(vertices, triangles, normalize=False), axis=1)


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int, rng: np.random.Generator,
                   tri_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform samples on the triangles selected by ``tri_mask`` (F,) bool (all if None).

    Returns points (n, 3), triangle ids (n,) and barycentrics (n, 3).
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(triangles, np.int64)
    w = triangle_areas(v, f)
    if tri_mask is not None:
        w = w * np.asarray(tri_mask, bool)
    tri = rng.choice(len(f), size=n, p=w / w.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1)
    pts = np.einsum("nk,nkc->nc", bary, v[f[tri]])
    return pts, tri, bary


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact closest point on triangle (a, b, c) to p, element-wise (Ericson, Real-Time Collision Detection 5.1.5).

    All inputs broadcast to (..., 3); returns (..., 3). Degenerate triangles are handled (edge/vertex cases).
    """
    p, a, b, c = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (p, a, b, c)))
    dot = lambda x, y: np.einsum("...i,...i->...", x, y)  # noqa: E731
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    vc = d1 * d4 - d3 * d2
    vb = d5 * d2 - d1 * d6
    va = d3 * d6 - d5 * d4

    def safe_div(n, d):
        return n / np.where(np.abs(d) > 1e-300, d, 1.0)

    # interior (default)
    denom = va + vb + vc
    v_in = safe_div(vb, denom)
    w_in = safe_div(vc, denom)
    out = a + ab * v_in[..., None] + ac * w_in[..., None]
    # regions in reverse priority order so that earlier (higher priority) tests overwrite later ones
    e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    w_bc = np.clip(safe_div(d4 - d3, (d4 - d3) + (d5 - d6)), 0.0, 1.0)
    out = np.where(e_bc[..., None], b + (c - b) * w_bc[..., None], out)
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    w_ac = np.clip(safe_div(d2, d2 - d6), 0.0, 1.0)
    out = np.where(e_ac[..., None], a + ac * w_ac[..., None], out)
    r_c = (d6 >= 0) & (d5 <= d6)
    out = np.where(r_c[..., None], c, out)
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    v_ab = np.clip(safe_div(d1, d1 - d3), 0.0, 1.0)
    out = np.where(e_ab[..., None], a + ab * v_ab[..., None], out)
    r_b = (d3 >= 0) & (d4 <= d3)
    out = np.where(r_b[..., None], b, out)
    r_a = (d1 <= 0) & (d2 <= 0)
    out = np.where(r_a[..., None], a, out)
    # a degenerate triangle can still leave the interior formula non-finite: fall back to the nearest vertex
    bad = ~np.isfinite(out).all(-1)
    if bad.any():
        cand = np.stack([a, b, c], axis=-2)
        k = np.argmin(np.linalg.norm(cand - p[..., None, :], axis=-1), axis=-1)
        out[bad] = np.take_along_axis(cand, k[..., None, None], axis=-2)[..., 0, :][bad]
    return out


@dataclass
class ClosestPoints:
    """Result of ``MeshQuery.closest``: points (N, 3), triangle ids (N,), Euclidean distances (N,)."""

    points: np.ndarray
    triangles: np.ndarray
    distances: np.ndarray


@dataclass
class MeshQuery:
    """Exact closest-point queries on a triangle mesh.

    Each triangle is represented in a KD-tree by proxy points: the centroids of its n×n regular subdivision, with
    n chosen per triangle so that every sub-triangle's radius (centroid-to-corner) is at most about the median
    triangle radius (``cover``). The ``k`` nearest proxies give candidate triangles, on which the exact
    point-triangle distance is evaluated. The answer is provably exact when the best distance ``d`` satisfies
    ``d <= d_k - cover`` (``d_k``: distance to the k-th nearest proxy); points failing the test are re-queried with
    4× more candidates (up to all proxies).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    k: int = 16
    _tree: cKDTree = field(init=False, repr=False)
    _owner: np.ndarray = field(init=False, repr=False)
    _radius: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, np.float64)
        self.triangles = np.asarray(self.triangles, np.int64)
        corners = self.vertices[self.triangles]  # (F, 3, 3)
        centroids = corners.mean(1)
        rad = np.linalg.norm(corners - centroids[:, None], axis=-1).max(1) if len(corners) else np.zeros(0)
        target = max(float(np.median(rad)) if rad.size else 0.0, 1e-12)
        n_sub = np.clip(np.ceil(rad / target), 1, 64).astype(np.int64)
        proxies, owner = [centroids[n_sub == 1]], [np.flatnonzero(n_sub == 1)]
        cover = float(rad[n_sub == 1].max()) if (n_sub == 1).any() else 0.0
        for n in np.unique(n_sub[n_sub > 1]):
            ids = np.flatnonzero(n_sub == n)
            # centroids of the n*n sub-triangles in barycentric coordinates
            i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            up = (i + j) <= n - 1  # upward sub-triangles (i, j), (i+1, j), (i, j+1)
            dn = (i + j) <= n - 2  # downward sub-triangles (i+1, j), (i, j+1), (i+1, j+1)
            b_up = np.stack([i[up] + 1 / 3, j[up] + 1 / 3], 1) / n
            b_dn = np.stack([i[dn] + 2 / 3, j[dn] + 2 / 3], 1) / n
            b = np.concatenate([b_up, b_dn])  # (n*n, 2): weights of corners 1 and 2
            c = corners[ids]
            pts = c[:, None, 0] + b[None, :, :1] * (c[:, None, 1] - c[:, None, 0]) \
                + b[None, :, 1:] * (c[:, None, 2] - c[:, None, 0])
            proxies.append(pts.reshape(-1, 3))
            owner.append(np.repeat(ids, len(b)))
            cover = max(cover, float((rad[ids] / n).max()))
        self._tree = cKDTree(np.concatenate(proxies))
        self._owner = np.concatenate(owner)
        self._radius = cover

    def closest(self, points: np.ndarray, chunk: int = 8192) -> ClosestPoints:
        p = np.asarray(points, np.float64).reshape(-1, 3)
        n_tri = len(self._owner)  # proxies
        q = np.empty_like(p)
        tri = np.empty(len(p), np.int64)
        dist = np.full(len(p), np.inf)
        todo = np.arange(len(p))
        k = min(self.k, n_tri)
        while todo.size:
            certified = np.zeros(todo.size, bool)
            step = max(1, chunk * 16 // max(k, 16))
            for s in range(0, todo.size, step):
                idx = todo[s:s + step]
                dk, cand = self._tree.query(p[idx], k=k)
                dk, cand = dk.reshape(len(idx), k), self._owner[cand.reshape(len(idx), k)]
                corners = self.vertices[self.triangles[cand]]  # (n, k, 3, 3)
                qq = closest_points_on_triangles(p[idx, None], corners[:, :, 0], corners[:, :, 1], corners[:, :, 2])
                d = np.linalg.norm(qq - p[idx, None], axis=-1)  # (n, k)
                j = np.argmin(d, axis=1)
                r = np.arange(len(idx))
                better = d[r, j] < dist[idx]
                sel = idx[better]
                q[sel] = qq[r, j][better]
                tri[sel] = cand[r, j][better]
                dist[sel] = d[r, j][better]
                # exact when no triangle outside the candidates can be closer
                certified[s:s + step] = (dist[idx] <= dk[:, -1] - self._radius) | (k >= n_tri)
            todo = todo[~certified]
            if k >= n_tri:
                break
            k = min(4 * k, n_tri)
        return ClosestPoints(q, tri, dist)


def splat_visibility(points_cam: np.ndarray, occluder_vertices: np.ndarray, occluder_triangles: np.ndarray,
                     K: np.ndarray, width: int, height: int, rng: np.random.Generator,
                     samples_per_pixel: float = 3.0, tolerance: float = 0.002) -> np.ndarray:
    """(N,) bool: whether each camera-space point (OpenCV, metres) is visible, i.e. not behind the occluder mesh.

    Dense area samples of the occluder are splatted into a per-pixel z-buffer (nearest depth); a point is visible
    when its depth is within ``tolerance`` of the buffer at its pixel (or the pixel holds no sample).
    """
    v = np.asarray(occluder_vertices, np.float64)
    f = np.asarray(occluder_triangles, np.int64)
    # projected area decides the sample count (enough to cover every pixel the mesh covers)
    vz = np.maximum(v[:, 2], 1e-6)
    uv = np.stack([K[0, 0] * v[:, 0] / vz + K[0, 2], K[1, 1] * v[:, 1] / vz + K[1, 2]], 1)
    e1, e2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    px_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    n = int(min(4_000_000, max(10_000, samples_per_pixel * px_area)))
    s, _, _ = sample_surface(v, f, n, rng)
    s = np.concatenate([s, v[np.unique(f)]])
    zbuf = np.full(width * height, np.inf)
    sz = s[:, 2]
    front = sz > 1e-6
    s, sz = s[front], sz[front]
    x = np.floor(K[0, 0] * s[:, 0] / sz + K[0, 2]).astype(np.int64)
    y = np.floor(K[1, 1] * s[:, 1] / sz + K[1, 2]).astype(np.int64)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    np.minimum.at(zbuf, y[inside] * width + x[inside], sz[inside])
    p = np.asarray(points_cam, np.float64)
    pz = np.maximum(p[:, 2], 1e-6)
    px = np.floor(K[0, 0] * p[:, 0] / pz + K[0, 2]).astype(np.int64)
    py = np.floor(K[1, 1] * p[:, 1] / pz + K[1, 2]).astype(np.int64)
    ins = (px >= 0) & (px < width) & (py >= 0) & (py < height) & (p[:, 2] > 0)
    vis = np.zeros(len(p), bool)
    vis[ins] = p[ins, 2] <= zbuf[py[ins] * width + px[ins]] + tolerance
    return vis
