"""Evaluation protocol on analytic cases: closest points, Chamfer/recall/normal consistency, similarity ICP."""
from __future__ import annotations

import numpy as np
import pytest

from backend.evaluation import mesh_ops, metrics


# One torch thread: oversubscribed OpenMP threads make the ICP loop 5x slower on a shared CPU.
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def grid_mesh(n=30, size=0.2, height=None):
    """Triangulated grid over [-size/2, size/2]² in the z=0 plane (or z = height(x, y)). Returns (V, 3), (F, 3)."""
    g = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(g, g, indexing="ij")
    z = np.zeros_like(x) if height is None else height(x, y)
    v = np.stack([x, y, z], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    a = (i * n + j).ravel()
    b, c, d = a + n, a + 1, a + n + 1
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([c, b, d], 1)])
    return v, f


def icosphere(radius=0.1, level=3):
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    for _ in range(level):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1).T  # (F, 3) midpoints of edges 01, 12, 20
        v = np.concatenate([v, 0.5 * (v[uniq[:, 0]] + v[uniq[:, 1]])])
        a, b, c = f.T
        ab, bc, ca = mid.T
        f = np.concatenate([np.stack([a, ab, ca], 1), np.stack([b, bc, ab], 1), np.stack([c, ca, bc], 1),
                            np.stack([ab, bc, ca], 1)])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * radius, f


def test_point_triangle_regions():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    p = np.array([[0.2, 0.2, 0.5],    # interior, above
                  [-1.0, -1.0, 0.0],  # vertex a
                  [2.0, -0.5, 0.0],   # vertex b
                  [0.5, -1.0, 0.3],   # edge ab
                  [1.0, 1.0, 0.0],    # edge bc
                  [-0.5, 0.5, 0.0]])  # edge ca
    want = np.array([[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0]])
    got = mesh_ops.closest_points_on_triangles(p, a, b, c)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_plane_offset_gives_known_distances():
    v, f = grid_mesh()
    rng = np.random.default_rng(0)
    h = 0.002  # 2 mm above the plane, inside its extent
    p = np.concatenate([rng.uniform(-0.08, 0.08, (500, 2)), np.full((500, 1), h)], 1)
    n = np.tile([0.0, 0.0, 1.0], (500, 1))
    m = metrics.surface_metrics(p, n, v, f)
    assert m.chamfer_l2_mm == pytest.approx(2.0, abs=1e-9)
    assert m.chamfer_l1_mm == pytest.approx(2.0, abs=1e-9)  # the offset is along one axis only
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-12)
    assert m.recall == {1.0: 0.0, 2.5: 1.0, 5.0: 1.0, 10.0: 1.0}


def test_sphere_distances_match_brute_force_and_analytic():
    v, f = icosphere(0.1, level=4)
    rng = np.random.default_rng(1)
    d = rng.normal(size=(150, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = 0.1 + rng.uniform(-0.01, 0.01, (150, 1))
    p = d * r
    cp = mesh_ops.MeshQuery(v, f).closest(p)
    corners = v[f]
    brute = np.linalg.norm(mesh_ops.closest_points_on_triangles(
        p[:, None], corners[None, :, 0], corners[None, :, 1], corners[None, :, 2]) - p[:, None], axis=-1).min(1)
    np.testing.assert_allclose(cp.distances, brute, atol=1e-12)
    # the polyhedron lies inside the sphere by at most ~0.1 mm at level 4
    np.testing.assert_allclose(cp.distances, np.abs(r[:, 0] - 0.1), atol=1.5e-4)


def test_normal_consistency_of_tilted_plane():
    v, f = grid_mesh()
    p = np.array([[0.0, 0.0, 0.001], [0.01, 0.02, 0.001]])
    ang = np.radians(60)
    n = np.tile([np.sin(ang), 0.0, np.cos(ang)], (2, 1))
    assert metrics.surface_metrics(p, n, v, f).normal_consistency == pytest.approx(0.5, abs=1e-9)


def _bumpy():
    return grid_mesh(n=60, size=0.16, height=lambda x, y: 0.012 * np.exp(-((x - 0.02) ** 2 + y ** 2) / 0.0008)
                     + 0.006 * np.sin(40 * x) * np.cos(30 * y))


def test_icp_recovers_known_similarity():
    v, f = _bumpy()
    v = v + np.array([0.0, 0.0, 0.6])
    rng = np.random.default_rng(2)
    gt_p, tri, bary = mesh_ops.sample_surface(v, f, 2000, rng, tri_mask=np.linalg.norm(
        v[f].mean(1)[:, :2], axis=1) < 0.06)
    vn = mesh_ops.vertex_normals(v, f)
    gt_n = np.einsum("nk,nkc->nc", bary, vn[f[tri]])
    gt_n /= np.linalg.norm(gt_n, axis=1, keepdims=True)
    # perturb the prediction by a known similarity about the gt centroid: 2 % scale, ~2 degrees, 3 mm
    c = gt_p.mean(0)
    R = metrics.euler_xyz_matrix(np.radians([1.5, -1.0, 2.0])).numpy()
    pred = 1.02 * (v - c) @ R.T + c + np.array([0.003, -0.002, 0.002])
    before = metrics.surface_metrics(gt_p, gt_n, pred, f)
    sim, info = metrics.similarity_icp(pred, mesh_ops.vertex_normals(pred, f), gt_p, gt_n)
    after = metrics.surface_metrics(gt_p, gt_n, sim.apply(pred), f)
    assert before.chamfer_l2_mm > 1.0
    assert after.chamfer_l2_mm < 0.15
    assert sim.scale == pytest.approx(1 / 1.02, abs=5e-3)
    assert info["inlier_fraction"] > 0.9
    # the aligned prediction's vertices land back on the original ones
    assert np.abs(sim.apply(pred) - v).max() < 1e-3


def test_icp_flips_inward_normals_and_coarse_alignment():
    v, f = _bumpy()
    v = v + np.array([0.0, 0.0, 0.6])
    rng = np.random.default_rng(3)
    p, tri, bary = mesh_ops.sample_surface(v, f, 600, rng)
    n = mesh_ops.vertex_normals(v, f)[f[tri, 0]]
    shifted = v + np.array([0.0, 0.0, 0.004])
    m = metrics.evaluate_prediction(p, n, shifted, f[:, [0, 2, 1]], unaligned=True)  # inward winding
    assert m.chamfer_l2_mm < 0.3
    assert m.unaligned_chamfer_l1_mm > 3.5  # 4 mm along z before the alignment
    assert metrics.aggregate([m.as_dict()])["unaligned_chamfer_l1_mm"] == m.unaligned_chamfer_l1_mm
    # coarse pre-alignment handles a 2 cm offset the 1 cm rejection radius would not
    far = 0.95 * (v - v.mean(0)) + v.mean(0) + np.array([0.012, 0.0, -0.015])
    m2 = metrics.evaluate_prediction(p, n, far, f, coarse=True)
    assert m2.chamfer_l2_mm < 0.1


def test_camera_scale_prealignment_bridges_the_depth_ambiguity():
    v, f = _bumpy()
    v = v + np.array([0.0, 0.0, 0.6])          # 60 cm in front of the camera
    rng = np.random.default_rng(4)
    p, tri, bary = mesh_ops.sample_surface(v, f, 800, rng)
    n = mesh_ops.vertex_normals(v, f)[f[tri, 0]]
    # the same surface 8 % larger and 8 % further away: an identical image, 4.8 cm deeper
    far = 1.08 * v
    k = metrics.camera_scale_prealignment(far, p)
    assert abs(k - 1 / 1.08) < 0.011
    local = metrics.evaluate_prediction(p, n, far, f)
    assert local.chamfer_l2_mm > 5.0                     # the local ICP alone cannot bridge 4.8 cm
    m = metrics.evaluate_prediction(p, n, far, f, camera_scale=True)
    assert m.chamfer_l2_mm < 0.2
    assert abs(m.as_dict()["camera_scale"] - k) < 1e-12
    # a prediction already in place keeps k = 1 and its score
    assert metrics.camera_scale_prealignment(v, p) == pytest.approx(1.0, abs=0.011)


def test_aggregate_nanmean():
    rows = [{k: 1.0 for k in metrics.METRIC_KEYS}, {k: np.nan for k in metrics.METRIC_KEYS},
            {k: 3.0 for k in metrics.METRIC_KEYS}]
    assert metrics.aggregate(rows)["chamfer_l1_mm"] == 2.0


def test_mediapipe_topology():
    pytest.importorskip("mediapipe")
    from backend.evaluation import baselines

    tri = baselines.mediapipe_triangles()
    assert tri.shape[1] == 3 and 800 <= len(tri) <= 920
    assert tri.min() >= 0 and tri.max() < 468
    assert len(np.unique(np.sort(tri, 1), axis=0)) == len(tri)
    # lifting: a landmark at the principal point with z = 0 lands on the optical axis at the given depth
    from backend.contracts.conventions import Intrinsics

    intr = Intrinsics.from_fov(100, 100, 40.0)
    p = baselines.lift_landmarks(np.array([[50.0, 50.0, 0.0], [50.0 + intr.fx * 0.1, 50.0, 0.0]]), intr, 0.5)
    np.testing.assert_allclose(p, [[0, 0, 0.5], [0.05, 0, 0.5]], atol=1e-12)
