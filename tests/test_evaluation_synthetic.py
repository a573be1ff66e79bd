"""Synthetic evaluation clips: held-out parameters, ground truth, texture, baselines, result-package reading and a
tiny Cycles render aligned with the ground truth (in a subprocess: the test session keeps one bpy state)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import ICT_NPZ

ROOT = Path(__file__).resolve().parents[1]
ICT = ICT_NPZ
pytestmark = [pytest.mark.skipif(not ICT.is_file(), reason=f"ICT-FaceKit data absent ({ICT})")]


# One torch thread: oversubscribed OpenMP threads make the ICP loop 5x slower on a shared CPU.
pytestmark.append(pytest.mark.usefixtures("single_torch_thread"))


@pytest.fixture(scope="module")
def ict():
    from backend.training.data import ICTModel

    return ICTModel(ICT)


@pytest.fixture(scope="module")
def spec():
    from backend.evaluation.synthetic import ClipSpec

    return ClipSpec(index=1, n_frames=12, width=128, height=128)


@pytest.fixture(scope="module")
def gt(ict, spec):
    from backend.evaluation.synthetic import clip_ground_truth

    return clip_ground_truth(ict, spec)


def test_parameters_are_deterministic_heldout_and_smooth(spec):
    from backend.evaluation import synthetic as S

    a, b = S.clip_parameters(spec), S.clip_parameters(spec)
    np.testing.assert_array_equal(a.w_id, b.w_id)
    np.testing.assert_array_equal(a.w_ex, b.w_ex)
    other = S.clip_parameters(S.ClipSpec(index=2, n_frames=12))
    assert np.abs(a.w_id - other.w_id).max() > 0.5
    # held-out stream differs from the validation stream of the training generator
    from backend.training.data import validation_params

    assert all(np.abs(a.w_id - v[1]).max() > 0.5 for v in validation_params(2))
    assert a.w_ex.min() >= 0 and a.w_ex.max() <= 1
    assert a.w_ex.max() > 0.3  # something happens
    # smooth: per-frame changes stay small (blinks are the fastest channel)
    assert np.abs(np.diff(a.euler_deg, axis=0)).max() < 5.0
    np.testing.assert_allclose(np.einsum("tij,tkj->tik", a.rotation, a.rotation), np.tile(np.eye(3), (12, 1, 1)),
                               atol=1e-9)


def test_ground_truth_matches_pose_and_projects_into_the_image(ict, spec, gt):
    from backend.contracts import conventions

    p = __import__("backend.evaluation.synthetic", fromlist=["x"]).clip_parameters(spec)
    t = 5
    model = conventions.nphm_to_metres(ict.vertices(p.w_id, p.w_ex[t]).astype(np.float64))
    want = p.scale[t] * model @ p.rotation[t].T + p.translation[t]
    np.testing.assert_allclose(gt.vertices_cam[t], want, atol=1e-5)
    face = np.unique(gt.triangles[gt.eval_tri])
    uv = conventions.project_points(gt.vertices_cam[t][face], gt.intrinsics)
    assert (uv > 0).all() and (uv < 128).all()
    assert gt.eval_tri.sum() > 5000 and not (gt.eval_tri & ~gt.face_region_tri).any()


def test_gt_face_points_are_visible_and_face_the_camera(gt):
    from backend.evaluation.synthetic import gt_face_points

    P, N = gt_face_points(gt, 3, n_points=2000)
    assert len(P) == 2000
    view_cos = -np.einsum("ij,ij->i", N, P / np.linalg.norm(P, axis=1, keepdims=True))
    assert view_cos.min() > 0.2
    assert 0.4 < P[:, 2].min() < P[:, 2].max() < 0.8  # metres in front of the camera


def test_gt_face_points_hidden_by_an_occluder_are_left_out(gt):
    """A hair volume over the face (here a sheet in front of its upper half) hides the skin under it: the face points
    come from the rest of the face only."""
    from backend.evaluation.synthetic import gt_face_points

    P, _ = gt_face_points(gt, 3, n_points=500)
    slope = P[:, 1] / P[:, 2]                       # image row, up to the intrinsics
    cut = float(np.median(slope))
    z0 = float(P[:, 2].min()) - 0.01                # 1 cm in front of the face
    top = (float(slope.min()) - 0.05) * z0
    sheet = np.array([[-0.15, top, z0], [0.15, top, z0], [0.15, cut * z0, z0], [-0.15, cut * z0, z0]])
    Q, _ = gt_face_points(gt, 3, n_points=500, occluder=(sheet, np.array([[0, 1, 2], [0, 2, 3]])))
    assert len(Q) > 300
    px = 1.0 / gt.K[1, 1]                           # one pixel, in the same slope units
    assert (Q[:, 1] / Q[:, 2] > cut - 2 * px).all() and (slope < cut - 2 * px).sum() > 100
    P2, _ = gt_face_points(gt, 3, n_points=500, occluder=(np.zeros((0, 3)), np.zeros((0, 3), np.int64)))
    np.testing.assert_array_equal(P2, P)            # an empty occluder (a bald clip's hair) changes nothing


def test_protocol_on_truth_and_mean_head(ict, gt):
    from backend.evaluation import baselines, metrics
    from backend.evaluation.synthetic import gt_face_points

    t = 4
    P, N = gt_face_points(gt, t, n_points=1500)
    m_true = metrics.evaluate_prediction(P, N, gt.vertices_cam[t], gt.triangles)
    assert m_true.chamfer_l1_mm < 0.05 and m_true.recall[1.0] == 1.0
    v, f = baselines.mean_head_mesh(ict, gt.scale[t], gt.rotation[t], gt.translation[t])
    m_mean = metrics.evaluate_prediction(P, N, v, f)
    assert m_mean.chamfer_l1_mm > 0.5 and m_mean.chamfer_l1_mm < 10


def test_texture_bake_small(ict, spec):
    from backend.evaluation import synthetic as S

    p = S.clip_parameters(spec)
    tex = S.bake_albedo_texture(ict, p.app, p.noise_seed, tile=32, supersample=1)
    assert tex.shape == (32, 64, 3) and tex.dtype == np.float32
    assert 0 <= tex.min() and tex.max() <= 1
    # mostly skin: the median texel is close to the skin colour parameter
    assert np.abs(np.median(tex.reshape(-1, 3), 0) - p.app[:3]).max() < 0.15
    corners = S.corner_albedo(ict, p.app, p.noise_seed)
    assert corners.shape == (len(ict.faces), 3, 3)


def test_package_meshes_reads_posed_vertices(tmp_path, ict, gt):
    from backend.contracts import result_format as rf
    from backend.evaluation.benchmark import package_meshes

    frames = [0, 5, 10]
    s, R, t = gt.scale[frames], gt.rotation[frames], gt.translation[frames]
    cam = gt.vertices_cam[frames].astype(np.float64)
    model = np.einsum("tji,tvj->tvi", R, cam - t[:, None]) / s[:, None, None]  # invert x_cam = sR x + t
    w = rf.ResultWriter(tmp_path / "pkg", {
        "source": {"path": "/x/clip.mp4", "kind": "video"}, "fps": 25.0, "image_size": [128, 128],
        "intrinsics": gt.intrinsics.to_dict(), "model": {"name": "builtin"}, "output_mode": "shape_keys"})
    w.write_canonical_mesh(model[0], gt.triangles, np.zeros((len(model[0]), 3), np.uint8))
    from backend.contracts import arkit
    truth = np.clip(arkit.ict_to_arkit(gt.w_ex[frames].astype(np.float64)), 0, 1).astype(np.float32)
    w.write_frames([rf.FrameRecord(i, i / 25.0) for i in frames],
                   {"scale": s, "rotation": R, "translation": t, "z_exp": np.zeros((3, 4)), "vertices": model,
                    "arkit": truth})
    w.finish()
    meshes = package_meshes(tmp_path / "pkg", np.array([0, 10]))
    assert sorted(meshes) == [0, 10]
    np.testing.assert_allclose(meshes[10][0], gt.vertices_cam[10], atol=1e-5)
    # ARKit weights: the ground truth's own weights score 0, all-zero weights score the mean active weight
    from backend.evaluation.benchmark import arkit_mae, package_arkit
    ak = package_arkit(tmp_path / "pkg", np.array([0, 10]))
    assert sorted(ak) == [0, 10]
    assert arkit_mae(ak[10], gt.w_ex[10]) < 1e-6
    assert gt.w_ex[10].max() > 0.05                      # an expression is active in this frame
    assert abs(arkit_mae(np.zeros(52), gt.w_ex[10]) - truth[2].mean()) < 1e-6
    assert arkit_mae(np.zeros(52), gt.w_ex[10]) > 1e-3


def test_benchmark_reports_tracker_failure_without_crashing(tmp_path, ict, monkeypatch):
    from backend.evaluation import benchmark, synthetic

    # a fake rendered clip (no Cycles): ground truth only, the tracker is a command that fails
    spec = synthetic.ClipSpec(index=0, n_frames=2, width=96, height=96)
    folder = tmp_path / spec.key
    folder.mkdir()
    synthetic.clip_ground_truth(ict, spec).save(folder / "gt.npz")
    clip = synthetic.RenderedClip(spec, folder, folder / "missing.mp4", folder / "frames", folder / "gt.npz", {})
    cfg = benchmark.BenchmarkConfig(n_clips=1, n_frames=2, every=1, n_points=500, run_mediapipe=False,
                                    extra_track_args=("--no-such-flag",), tracker_timeout_s=120,
                                    overlay_dir=tmp_path / "overlays")
    res = benchmark.evaluate_clip(clip, cfg, ict, log=lambda m: None)
    assert res["notes"]["tracker_draft"].startswith("tracker failed:")
    assert len(res["rows"]["mean_head"]) == 2 and res["rows"]["tracker_draft"] == []
    assert (tmp_path / "overlays" / f"{spec.key}.png").is_file()
    # packages of runs with other tracker arguments (another --model) live in their own folder
    assert benchmark._track_dir(clip, "draft", cfg).name.startswith("track_draft_")
    assert benchmark._track_dir(clip, "draft", benchmark.BenchmarkConfig()).name == "track_draft"
    # the summary keeps the failure as an error entry and formats it
    result = {"methods": {"tracker_draft": {"error": res["notes"]["tracker_draft"]},
                          "mean_head": benchmark.metrics.aggregate(res["rows"]["mean_head"])},
              "goal_chamfer_l1_mm": 1.5, "n_clips": 1, "n_frames": 2, "every": 1, "n_points": 500}
    assert "tracker failed" in benchmark.format_table(result)


RENDER_SNIPPET = r"""
import json, sys
import numpy as np
from backend.evaluation import synthetic as S, cycles
from backend.training.data import ICTModel
ict = ICTModel(sys.argv[1])
spec = S.ClipSpec(index=0, n_frames=1, width=64, height=64, samples=4)
gt = S.clip_ground_truth(ict, spec)
tex = np.full((8, 16, 3), 0.8, np.float32)
frames = cycles.render_sequence(gt.vertices_cam[:1], gt.triangles, S.atlas_uv(ict), tex, gt.intrinsics,
                                sys.argv[2], samples=4, threads=1, log=None)
np.save(sys.argv[2] + "/img.npy", frames[0])
gt.save(sys.argv[2] + "/gt.npz")
"""


def test_cycles_render_lines_up_with_ground_truth(tmp_path):
    pytest.importorskip("bpy")
    from backend.evaluation.mesh_ops import sample_surface
    from backend.evaluation.synthetic import GroundTruth

    proc = subprocess.run([sys.executable, "-c", RENDER_SNIPPET, str(ICT), str(tmp_path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = np.load(tmp_path / "img.npy").astype(np.float64)
    gt = GroundTruth.load(tmp_path / "gt.npz")
    # ground-truth silhouette: dense surface samples projected to pixels
    pts, _, _ = sample_surface(gt.vertices_cam[0], gt.triangles, 200_000, np.random.default_rng(0))
    uv = pts @ gt.K.T
    uv = np.floor(uv[:, :2] / uv[:, 2:]).astype(int)
    ok = (uv >= 0).all(1) & (uv < 64).all(1)
    sil = np.zeros((64, 64), bool)
    sil[uv[ok, 1], uv[ok, 0]] = True
    lum = img.mean(-1)
    thr = 0.5 * (np.median(lum[sil]) + np.median(lum[~sil]))
    rendered = lum > thr
    iou = (rendered & sil).sum() / (rendered | sil).sum()
    assert iou > 0.85, iou
