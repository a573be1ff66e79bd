"""The built-in model's tracker follows a blink and a brow raise, and holds a still head still (issue 23).

One short rendered clip of a held-out ICT-FaceKit head (the expression benchmark's fast renderer, a MakeHuman skin):
frames 0-5 neutral and still, a blink peaking at frame 8, an inner brow raise peaking at frame 12. Needs
``../shared`` (ICT-FaceKit, the skin) and the built-in model's landmark regressor; skips cleanly without them.
"""
import dataclasses

import numpy as np
import pytest

from backend.contracts import arkit
from backend import BUILTIN_MODEL_DIR
from backend.tracking.expression_init import FILE_NAME
from tests.shared_data import ICT_NPZ, SHARED

pytestmark = [
    pytest.mark.skipif(not ICT_NPZ.is_file() or not any((SHARED / "data" / "makehuman" / "skin").glob("*.jpg")),
                       reason="needs ../shared (ICT-FaceKit, MakeHuman skins)"),
    pytest.mark.skipif(not (BUILTIN_MODEL_DIR / FILE_NAME).is_file(), reason="built-in landmark regressor missing"),
    pytest.mark.usefixtures("single_torch_thread"),
]
T = 15
BLINK_FRAME, BROW_FRAME = 8, 12


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    from backend.evaluation import expression_clips as ec, synthetic
    from backend.contracts.result_format import ResultPackage
    from backend.tracking import run_track
    from backend.training.data import ICTModel

    ict = ICTModel(ICT_NPZ)
    spec = ec.ExpressionClipSpec(index=0, seed_base=ec.HELDOUT_SEED_BASE, n_frames=T, width=256, height=256,
                                 supersample=1)
    params, look = ec.expression_parameters(spec)
    look.background = "plain"
    w = np.zeros((T, len(arkit.ICT_NAMES)), np.float32)
    t = np.arange(T)
    blink = np.clip(1 - np.abs(t - BLINK_FRAME) / 2.0, 0, 1)            # frames 7-9
    brow = 0.9 * np.clip(1 - np.abs(t - BROW_FRAME) / 2.5, 0, 1)        # frames 10-14
    for n, c in (("eyeBlink_L", blink), ("eyeBlink_R", blink), ("browInnerUp_L", brow), ("browInnerUp_R", brow)):
        w[:, arkit.ICT_NAMES.index(n)] = c
    params.w_ex = w
    params.rotation = np.repeat(synthetic.FACING_CAMERA[None] @ synthetic._rot("y", np.array([12.0])), T, 0)
    params.translation = np.repeat(np.array([[0.0, 0.01, 0.45]]), T, 0)
    params.scale = np.ones(T)
    verts = synthetic.posed_vertices(ict, params.w_id, w, params.scale, params.rotation, params.translation)
    renderer = ec.ClipRenderer(ict, spec, params, look)
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("expr")
    synthetic.write_mp4([renderer.frame(v.astype(np.float64), rng) for v in verts], d / "clip.mp4", spec.fps, crf=14)
    K = spec.intrinsics()
    from backend.contracts.track_config import TrackConfig
    from backend.tracking.tracker import PRESETS

    config = TrackConfig(str(d / "clip.mp4"), str(d / "res"), max_size=0, fx=K.fx, fy=K.fy, cx=K.cx, cy=K.cy,
                         preset="draft", device="cpu", threads=1)
    preset = dataclasses.replace(PRESETS["draft"], id_frames=2, id_iters=15, id_rays=64, frame_iters=6,
                                 still_iters=3, stage2_epochs=1)
    pkg = ResultPackage(run_track(config, None, preset).path)
    arrays = pkg.frame_arrays(None)
    order = np.argsort([r["index"] for r in pkg.frames])
    K3 = K.matrix()
    V = np.einsum("tij,tvj->tvi", arrays["rotation"][order], arrays["vertices"][order]) \
        + arrays["translation"][order][:, None]
    uv = V[..., :2] / V[..., 2:] * [K3[0, 0], K3[1, 1]] + K3[:2, 2]
    return arrays["arkit"][order], uv


def test_blink_comes_back_at_its_frames(tracked):
    ak, _ = tracked
    blink = ak[:, [arkit.ARKIT_INDEX["eyeBlinkLeft"], arkit.ARKIT_INDEX["eyeBlinkRight"]]].mean(1)
    assert blink[BLINK_FRAME - 1: BLINK_FRAME + 2].max() > 0.5, blink.round(2)
    assert blink[:6].max() < 0.3, blink.round(2)                                             # not before


def test_brow_raise_comes_back_at_its_frames(tracked):
    ak, _ = tracked
    brow = ak[:, arkit.ARKIT_INDEX["browInnerUp"]]
    assert brow[BROW_FRAME - 1: BROW_FRAME + 2].max() > 0.5, brow.round(2)
    assert brow[:6].max() < 0.3, brow.round(2)


def test_still_head_stays_still(tracked):
    from backend.evaluation.channel_metrics import jitter

    _, uv = tracked
    assert jitter(uv[:6]) < 0.1  # px / frame^2 over the mesh's vertices while the head and face are still
