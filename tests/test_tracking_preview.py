"""Stage 1's outputs when stage 2 follows are previews (its rewrite replaces them): coarser vertices, no quality
render, the landmark error from the fit's own roots."""
import numpy as np
import torch

from backend.tracking.tracker import PREVIEW_WARP_TOL, FrameState

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
