"""Landmark tables (numpy only) and detector selection."""
import numpy as np
import pytest

from backend.contracts import landmark_tables as lt


def test_tables_consistent():
    assert len(lt.IBUG68_FROM_MEDIAPIPE) == 68 and max(lt.IBUG68_FROM_MEDIAPIPE) < 468
    assert len(lt.ANCHOR_IBUG68_PAIRS) == 35 and len(lt.ANCHOR_IBUG68_SCALE) == 35
    assert lt.mediapipe_ict_positions().shape == (478, 3) and len(lt.MEDIAPIPE_ICT_SPREAD_MM) == 478
    assert lt.ict_anchor_positions().shape == (65, 3)
    A = lt.ict_anchor_positions()
    # mirror pairs are mirror images in x, midline anchors on x = 0
    assert np.allclose(A[0::2][:30, 0], -A[1::2][:30, 0], atol=2e-3)
    assert np.allclose(A[60:65, 0], 0, atol=2e-3)
    # MediaPipe nose tip (4) in front of the eyes (33, 263): +z out of the face, +x towards image right
    P = lt.mediapipe_ict_positions()
    assert P[4, 2] > P[33, 2] and P[263, 0] > P[33, 0]
    trip = lt.official_anchor_mediapipe_pairs()
    assert len(trip) == 35 and all(0 <= m < 468 for _, m, _ in trip)


@pytest.mark.parametrize("scheme", ["mediapipe478", "ibug68"])
def test_tracking_landmarks_follow_the_anchors(scheme):
    A = lt.ict_anchor_positions()
    s = lt.tracking_landmarks(scheme, A)
    assert s.canonical_mean.shape == (len(s), 3) and s.blend.shape == (len(s), 65)
    assert np.allclose(s.blend.sum(1), 1) and (s.weight > 0).all()
    # a translated identity moves its landmarks with it; the canonical frame follows a scaled anchor set
    assert np.allclose(s.canonical(A + [0.01, 0, 0], A), s.canonical_mean + [0.01, 0, 0])
    s2 = lt.tracking_landmarks(scheme, 1.1 * A)
    assert np.allclose(s2.canonical_mean, 1.1 * s.canonical_mean, atol=1e-6)


def test_face_alignment_without_package_is_a_clear_error():
    from backend.tracking.errors import TrackingInputError
    from backend.tracking.landmarks import make_landmarker
    try:
        import face_alignment  # noqa: F401
        pytest.skip("face-alignment installed")
    except ImportError:
        pass
    with pytest.raises(TrackingInputError, match="face-alignment"):
        make_landmarker("face-alignment")


def test_expression_sparsity_only_for_encoder_models():
    import types

    import torch

    from backend.tracking.codes import CodeSpace
    from backend.model.encoders import CodeEncoders

    cfg = types.SimpleNamespace(dim_geo=8, dim_app=4, dim_exp=6)
    model = types.SimpleNamespace(cfg=cfg, parameters=lambda: iter([torch.zeros(1)]))  # CodeSpace reads its device
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp)
    p = torch.zeros(2, enc.exp.in_features)
    p[0, 3], p[1, 5], p[1, 7] = 0.5, 0.25, 0.25
    # encoder mode: the weights' sum (they live in [0, 1]), averaged over the batch
    assert float(CodeSpace(model, enc).expression_sparsity(p)) == pytest.approx(0.5)
    # the gradient pushes every channel down by the same amount: unsupported channels reach the clamp at 0
    q = p.clone().requires_grad_(True)
    CodeSpace(model, enc).expression_sparsity(q).backward()
    assert torch.all(q.grad[0, 4:] == q.grad[0, 3]) and float(q.grad[0, 3]) > 0
    # raw codes (official checkpoints) are not weights in [0, 1]: no sparsity term
    assert float(CodeSpace(model).expression_sparsity(torch.ones(2, 6))) == 0.0
