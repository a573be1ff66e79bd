"""Stage 1's cost: its outputs when stage 2 follows are previews (its rewrite replaces them): coarser vertices, no
quality render, the landmark error from the fit's own roots; the draft outline's low-res warps per frame."""
import numpy as np
import torch

from backend.tracking.tracker import PREVIEW_WARP_TOL, FrameObs, FrameState

from test_tracking_devices import tracker  # noqa: F401  (fixture)
from test_tracking_pipeline import tiny_model  # noqa: F401  (fixture)


def _passes(tr, run):
    """(result of run(), points the deformation net evaluated)."""
    ex = tr.model.ex_model
    real, counted = ex.forward, []

    def counting(x, *a, **k):
        counted.append(x.reshape(-1, 3).shape[0])
        return real(x, *a, **k)

    ex.forward = counting
    try:
        return run(), sum(counted)
    finally:
        del ex.forward


def test_preview_outputs_are_coarser_and_skip_the_quality_render(tracker):  # noqa: F811
    tr, obs, st = tracker
    start = tr.frame_result(obs, st)                  # the previous frame's warp: the warm start of the next
    g = torch.Generator().manual_seed(0)
    moved = FrameState(st.p_ex + 0.6 * torch.randn(st.p_ex.shape, generator=g), st.omega, st.trans)
    full, full_points = _passes(tr, lambda: tr.frame_result(obs, moved, start.warp))
    preview, preview_points = _passes(tr, lambda: tr.frame_result(obs, moved, start.warp, preview=True))
    assert full.mask_iou is not None and full.photometric_error is not None
    assert preview.mask_iou is None and preview.photometric_error is None
    assert abs(preview.landmark_error_px - full.landmark_error_px) < 1e-3
    error = np.abs(preview.vertices - full.vertices).max()
    assert 0 < error < 4 * PREVIEW_WARP_TOL
    assert preview_points < full_points


def test_a_still_frame_finds_its_outline_once(tracker, monkeypatch):  # noqa: F811
    """The draft outline (no rays) re-finds its vertices and coverage (a low-res mesh warp) every 4th of its own
    iterations: once in a still frame's few, three times in a moving frame's."""
    import dataclasses
    from backend.tracking import tracker as tracker_module
    tr, obs, st = tracker
    tr.preset = dataclasses.replace(tr.preset, rays=0, still_iters=6, frame_iters=16)
    warps = []
    real = tracker_module.warp_vertices
    monkeypatch.setattr(tracker_module, "warp_vertices", lambda *a, **k: warps.append(1) or real(*a, **k))
    tr.reset_frame_cache()
    still = tr.fit_frame(obs, st, prev_obs=obs)               # the same landmarks as before: a still frame
    assert still.iterations == 6 and len(warps) == 1
    warps.clear()
    tr.reset_frame_cache()
    moving = tr.fit_frame(obs, st, prev_obs=FrameObs(0, 0.0, obs.landmarks + 5.0))
    assert moving.iterations == 16 and len(warps) == 3


def test_the_next_frame_starts_warm_and_a_restored_tracker_continues_alike(tracker):  # noqa: F811
    """A frame's fit continues from the last fitted frame's landmark roots and low-res warp (fewer deformation
    evaluations than a cold start), and they travel with the tracker's state: a tracker restored from it fits the
    next frame bit for bit like the one that never stopped."""
    import dataclasses
    tr, obs, st = tracker
    tr.preset = dataclasses.replace(tr.preset, rays=0, still_iters=6)
    tr.reset_frame_cache()
    first = tr.fit_frame(obs, st, prev_obs=obs)
    tr.frame_result(obs, first, preview=True)
    saved = tr.state_dict()
    assert {"warm_landmarks", "warm_landmarks_jinv", "warm_lo_points", "warm_lo_jinv"} <= set(saved)
    nxt = FrameObs(1, 0.04, obs.landmarks + 0.3, obs.image, obs.labels, face_size=obs.face_size)
    warm, warm_points = _passes(tr, lambda: tr.fit_frame(nxt, first, prev_obs=obs))
    tr.load_state_dict(saved)
    restored = tr.fit_frame(nxt, first, prev_obs=obs)
    for a, b in ((warm.p_ex, restored.p_ex), (warm.omega, restored.omega), (warm.trans, restored.trans)):
        assert torch.equal(a, b)
    tr.reset_frame_cache()
    cold, cold_points = _passes(tr, lambda: tr.fit_frame(nxt, first, prev_obs=obs))
    assert warm_points < 0.9 * cold_points
    assert (cold.p_ex - warm.p_ex).abs().max() < 1e-3





def test_output_landmark_roots_follow_the_vertex_chain(tracker):  # noqa: F811
    """The final outputs' landmark error starts from the previous output frame's roots and inverse Jacobians while
    the vertex warp continues a chain (stage 2's rewrite): no Jacobian pass; cold without one; the same error."""
    tr, obs, st = tracker
    g = torch.Generator().manual_seed(1)
    moved = FrameState(st.p_ex + 0.3 * torch.randn(st.p_ex.shape, generator=g), st.omega, st.trans)
    ex, real_landmarks = tr.model.ex_model, tr.posed_landmarks
    real, jacobian_points = ex.forward, []

    def counting(x, *args, **kwargs):
        if kwargs.get("with_jacobian"):
            jacobian_points.append(x.reshape(-1, 3).shape[0])
        return real(x, *args, **kwargs)

    def landmarks_counted(*args, **kwargs):
        ex.forward = counting
        try:
            return real_landmarks(*args, **kwargs)
        finally:
            del ex.forward

    start = tr.frame_result(obs, st)
    tr.posed_landmarks = landmarks_counted
    try:
        chained = tr.frame_result(obs, moved, start.warp)
        chained_jacobians = sum(jacobian_points)
        cold = tr.frame_result(obs, moved)
        cold_jacobians = sum(jacobian_points) - chained_jacobians
    finally:
        del tr.posed_landmarks
    assert abs(chained.landmark_error_px - cold.landmark_error_px) < 1e-3
    assert chained_jacobians == 0 < cold_jacobians
