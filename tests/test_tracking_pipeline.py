"""End-to-end tracking with a tiny model on a short synthetic clip; resume; bad inputs leave no broken package."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from backend.contracts.result_format import ResultPackage
from backend.contracts.track_config import TrackConfig

TINY = dict(id_frames=2, id_iters=6, id_rays=24, frame_iters=3, still_iters=2, stage2_epochs=1, mesh_res=24,
            sil_res=16, outline_points=50)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from backend.contracts import landmark_tables as lt
    from backend.model import save_model
    from backend.training.modelwrap import build_model, model_config
    torch.manual_seed(0)
    m = build_model(model_config("tiny"), torch.as_tensor(lt.ict_anchor_positions(), dtype=torch.float32))
    d = tmp_path_factory.mktemp("tiny_model")
    save_model(d, m, extra={"name": "tiny"})
    return d


@pytest.fixture(scope="module")
def tiny_encoder_model(tiny_model, tmp_path_factory):
    """The tiny model with (random) encoders: the tracker then fits ICT identity/expression weights."""
    from backend.model.checkpoint import read_project_config
    from backend.model.encoders import ArkitRegressor, CodeEncoders
    from backend.model.checkpoint import ENCODERS_FILE
    d = tmp_path_factory.mktemp("tiny_encoder_model")
    for f in tiny_model.iterdir():
        shutil.copy(f, d / f.name)
    cfg, _ = read_project_config(d)
    torch.manual_seed(1)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, init_scale=0.05)
    reg = ArkitRegressor(cfg.dim_exp)
    torch.save({"encoders": enc.state_dict(), "arkit_regressor": reg.state_dict()}, d / ENCODERS_FILE)
    return d


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """6 frames of the astronaut photo, panned and zoomed (a real face that MediaPipe finds)."""
    import av
    from skimage import data
    img = data.astronaut()[:320, 80:400]
    d = tmp_path_factory.mktemp("clip")
    p = d / "clip.mkv"
    import cv2
    with av.open(str(p), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 160, 160, "yuv420p"
        for i in range(6):
            sc = 1.0 + 0.03 * i
            M = np.float32([[sc * 0.5, 0, -4 + 2 * i], [0, sc * 0.5, -2]])
            f = cv2.warpAffine(img, M, (160, 160), borderMode=cv2.BORDER_REFLECT)
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return p


def _config(inp, out, model, **kw):
    settings = dict(max_size=160, preset="draft", output="both", model=str(model), device="cpu", threads=1)
    return TrackConfig(str(inp), str(out), **dict(settings, **kw))


def _tiny(preset="draft", **kw):
    from backend.tracking.tracker import PRESETS
    return dataclasses.replace(PRESETS[preset], **dict(TINY, **kw))


def test_end_to_end_and_resume(tmp_path, tiny_model, clip, monkeypatch):
    from backend.contracts import result_format
    from backend.tracking import run_track
    out = tmp_path / "res"
    read = []   # a fresh run keeps what it needs: it never reads its own package back
    monkeypatch.setattr(result_format, "load_npz", lambda path: read.append(path))
    monkeypatch.setattr(result_format, "read_manifest", lambda root: read.append(root))
    outcome = run_track(_config(clip, out, tiny_model, texture=True, texture_size=128), None, _tiny())
    monkeypatch.undo()
    assert read == []
    assert outcome.path == out and outcome.frames == 6
    pkg = ResultPackage(outcome.path)
    assert pkg.manifest["state"] == "complete"
    assert [f["index"] for f in pkg.frames] == list(range(6))
    assert all(f["status"] == "tracked" for f in pkg.frames)
    arr = pkg.frame_arrays()
    assert arr["vertices"].shape[1] == pkg.canonical_mesh().vertices.shape[0]
    assert np.isfinite(arr["vertices"]).all() and np.isfinite(arr["translation"]).all()
    assert all(f["landmark_error_px"] is not None and np.isfinite(f["landmark_error_px"]) for f in pkg.frames)
    assert all(f["mask_iou"] is not None for f in pkg.frames)
    assert np.allclose(np.linalg.det(arr["rotation"]), 1, atol=1e-4)
    assert arr["translation"][:, 2].min() > 0                          # head in front of the camera
    assert pkg.usd_path is not None
    # per-frame meshes: the posed surface meshed per frame (own topology), one time sample per source frame
    from pxr import Usd, UsdGeom
    stage = Usd.Stage.Open(str(pkg.usd_path))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/MonoNPHM/head"))
    times = mesh.GetPointsAttr().GetTimeSamples()
    assert [int(t) for t in times] == list(range(6))
    pts = [np.asarray(mesh.GetPointsAttr().Get(t)) for t in times]
    assert all(len(p) > 100 and np.isfinite(p).all() for p in pts)
    assert all(len(p) != len(pkg.canonical_mesh().vertices) for p in pts)   # not the fixed-topology mesh
    extent = np.ptp(pts[0], axis=0)
    assert 0.1 < extent.max() < 0.6                                   # a head-sized surface in metres
    _check_bake(pkg, mesh)


def _check_bake(pkg, usd_mesh):
    """Tracking bakes the subject's colours and, with ``texture``, a texture (model albedo kept); the USD meshes
    carry the colours; a re-bake from a frame range with a texture replaces them; bad requests change nothing."""
    from backend.bake.run import BakeRequest, bake_package
    from backend.contracts.conventions import linear_to_srgb
    from backend.contracts.result_format import PackageError
    canon = pkg.canonical_mesh()
    assert canon.baked_albedo.shape == canon.albedo.shape and canon.baked_confidence.max() > 0.5
    assert pkg.manifest["bake"]["frames"] == list(range(6)) and pkg.manifest["bake"]["texture_size"] == 128
    assert set(pkg.manifest["bake"]["texture_frames"]) <= set(range(6)) and pkg.texture_path.is_file()
    assert canon.uv.shape == (len(canon.triangles), 3, 2)
    seen = canon.baked_confidence > 0.5
    assert np.abs(canon.baked_albedo[seen].astype(float) - canon.albedo[seen]).mean() > 3   # not the model's
    usd_srgb = linear_to_srgb(np.asarray(usd_mesh.GetDisplayColorAttr().Get(0))) * 255
    assert np.abs(usd_srgb.mean(0) - canon.baked_albedo.mean(0)).max() < 12
    before = {t: np.asarray(usd_mesh.GetPointsAttr().Get(t)) for t in usd_mesh.GetPointsAttr().GetTimeSamples()}
    bake_package(pkg.root, BakeRequest(frames="2:5", texture=True, texture_size=128))
    again = ResultPackage(pkg.root)
    # the re-bake recoloured the per-frame USD meshes (geometry and timing unchanged), replacing the file
    from pxr import Usd, UsdGeom
    stage = Usd.Stage.Open(str(again.usd_path))
    rebaked = UsdGeom.Mesh(stage.GetPrimAtPath("/MonoNPHM/head"))
    assert {t: np.asarray(rebaked.GetPointsAttr().Get(t)) for t in rebaked.GetPointsAttr().GetTimeSamples()}.keys() \
        == before.keys()
    for t, pts in before.items():
        np.testing.assert_array_equal(np.asarray(rebaked.GetPointsAttr().Get(t)), pts)
    new = again.canonical_mesh().baked_albedo
    usd_srgb = linear_to_srgb(np.asarray(rebaked.GetDisplayColorAttr().Get(3))) * 255
    assert np.abs(usd_srgb.mean(0) - new.mean(0)).max() < 12
    assert sorted(p.name for p in pkg.root.iterdir() if "usdc" in p.name) == ["meshes.usdc"]   # no staging left
    assert again.manifest["bake"]["frames"] == [2, 3, 4] and again.manifest["state"] == "complete"
    assert again.canonical_mesh().uv.shape == (len(canon.triangles), 3, 2)
    np.testing.assert_array_equal(again.canonical_mesh().albedo, canon.albedo)
    import cv2
    assert cv2.imread(str(again.texture_path)).shape == (128, 128, 3)
    with pytest.raises(PackageError, match="not tracked frames"):
        bake_package(pkg.root, BakeRequest(texture_frames=[99]))
    assert ResultPackage(pkg.root).manifest["bake"]["frames"] == [2, 3, 4]


class _CancelAt:
    """Events stand-in that cancels the run when tracking reaches frame ``k`` (like SIGTERM from the add-on)."""

    def __init__(self, k):
        self.k = k

    def progress(self, stage, done, total, frame=None, message=""):
        from backend.contracts.protocol import Cancelled
        if stage == "tracking" and done >= self.k:
            raise Cancelled("cancelled")

    def device(self, *a, **k):
        pass

    def warning(self, *a, **k):
        pass


def test_resume_after_interruption_gives_same_result(tmp_path, tiny_model, clip, monkeypatch):
    from backend.contracts.protocol import Cancelled
    from backend.tracking import run as run_mod
    from backend.tracking import run_track
    monkeypatch.setattr(run_mod, "CHUNK", 2)
    full = ResultPackage(run_track(_config(clip, tmp_path / "full", tiny_model), None, _tiny()).path).frame_arrays()
    out = tmp_path / "cut"
    with pytest.raises(Cancelled):
        run_track(_config(clip, out, tiny_model), _CancelAt(5), _tiny())
    cut = ResultPackage(out)
    assert cut.manifest["state"] == "cancelled" and [f["index"] for f in cut.frames] == [0, 1, 2, 3]
    run_track(_config(clip, out, tiny_model), None, _tiny())
    pkg = ResultPackage(out)
    assert pkg.manifest["state"] == "complete" and len(pkg.frames) == 6
    res = pkg.frame_arrays()
    assert sorted(res) == sorted(full) and all(np.array_equal(res[k], full[k]) for k in full)  # bit for bit


def test_extending_a_finished_package_equals_a_fresh_run(tmp_path, tiny_model, clip):
    """0:3 then 0:6 gives what one run of 0:6 gives: stage 2 over all frames, quality everywhere, same bits."""
    from backend.tracking import run_track
    fresh = ResultPackage(run_track(_config(clip, tmp_path / "fresh", tiny_model, output="shape_keys"), None,
                                    _tiny()).path)
    out = tmp_path / "extended"
    run_track(_config(clip, out, tiny_model, frames="0:3", output="shape_keys"), None, _tiny())
    extended = ResultPackage(run_track(_config(clip, out, tiny_model, output="shape_keys"), None, _tiny()).path)
    a, b = fresh.frame_arrays(), extended.frame_arrays()
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

    def records(pkg):  # chunk names say in which order files were written, nothing about the result
        return [{k: v for k, v in f.items() if k != "chunk"} for f in pkg.frames]

    assert records(fresh) == records(extended)
    assert all(f[k] is not None for f in extended.frames for k in ("landmark_error_px", "mask_iou"))
    assert np.array_equal(fresh.canonical_mesh().vertices, extended.canonical_mesh().vertices)


def test_overwrite_range_keeps_identity(tmp_path, tiny_model, clip):
    from backend.tracking import run_track
    out = tmp_path / "res"
    run_track(_config(clip, out, tiny_model, frames="0:4"), None, _tiny())
    ident = ResultPackage(out).identity()
    run_track(_config(clip, out, tiny_model, frames="1:3", overwrite=True), None, _tiny())
    pkg = ResultPackage(out)
    assert np.array_equal(pkg.identity()["z_geo"], ident["z_geo"])
    assert [f["index"] for f in pkg.frames] == [0, 1, 2, 3]


def test_no_face_clip_leaves_nothing(tmp_path, tiny_model):
    import av
    from backend.tracking import run_track
    from backend.tracking.errors import NoFaceError
    p = tmp_path / "blank.mkv"
    with av.open(str(p), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height = 64, 48
        for i in range(3):
            for pk in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    out = tmp_path / "res"
    with pytest.raises(NoFaceError):
        run_track(_config(p, out, tiny_model), None, _tiny())
    assert not out.exists()


def test_cli_bad_input_exit_code(tmp_path):
    from backend.cli import main
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "res"
    assert main(["track", str(bad), "--out", str(out)]) == 2
    assert not out.exists()


def test_frames_without_face_are_interpolated_and_flagged(tmp_path, tiny_model, clip):
    """A blank frame in the middle of the clip: tracked neighbours, the blank one filled and flagged."""
    import av
    from backend.tracking import run_track
    from backend.tracking.video import FrameSource
    frames = [f.image for f in FrameSource(clip, max_size=None)][:4]
    frames[2] = np.zeros_like(frames[2])
    p = tmp_path / "gap.mkv"
    with av.open(str(p), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 160, 160, "yuv420p"
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    pkg = ResultPackage(run_track(_config(p, tmp_path / "res", tiny_model), None, _tiny()).path)
    status = {f["index"]: f["status"] for f in pkg.frames}
    assert status == {0: "tracked", 1: "tracked", 2: "interpolated", 3: "tracked"}
    arr = pkg.frame_arrays()
    assert np.isfinite(arr["vertices"]).all()
    t = arr["translation"]
    assert np.allclose(t[2], 0.5 * (t[1] + t[3]), atol=1e-5)


@pytest.mark.parametrize("preset,codes", [("standard", "raw"), ("high", "raw"), ("standard", "encoder")])
def test_photometric_presets_run(tmp_path, tiny_model, tiny_encoder_model, clip, preset, codes):
    """The volume-rendering path (rays on the face, SH shading) on 2 frames with tiny iteration counts; with
    encoders, the identity stage fits ICT identity weights led by the rays (`Preset.id_lm_grad_ict`)."""
    from backend.tracking import run_track
    model = tiny_encoder_model if codes == "encoder" else tiny_model
    pkg = ResultPackage(run_track(_config(clip, tmp_path / "res", model, frames="0:2", preset=preset,
                                          output="shape_keys"), None,
                                  _tiny(preset, rays=24, id_rays=24, n_coarse=8, n_fine=4)).path)
    assert pkg.manifest["settings"]["preset"] == preset
    assert [f["status"] for f in pkg.frames] == ["tracked", "tracked"]
    ident = pkg.identity()
    assert np.isfinite(ident["sh_coeffs"]).all() and np.isfinite(pkg.frame_arrays()["vertices"]).all()
    with np.load(tmp_path / "res" / "tracker_state.npz", allow_pickle=False) as st:
        p_geo = st["p_geo"]
    # encoder mode fits the 100 ICT identity weights, raw mode the model's identity code itself
    assert p_geo.shape == ((100,) if codes == "encoder" else ident["z_geo"].shape)
    assert np.isfinite(p_geo).all() and np.abs(p_geo).max() > 0


def test_selftest_tracks_one_frame_of_the_builtin_image(tmp_path, capsys):
    """The installer's smoke test with the built-in model: one frame end to end, a summary with device and seconds."""
    from backend.cli import main
    from backend.contracts.protocol import parse_line
    (tmp_path / "astronaut.png").write_text("stale")  # an earlier self-test's files are replaced
    assert main(["selftest", "--out", str(tmp_path), "--threads", "1"]) == 0
    events = [e for e in map(parse_line, capsys.readouterr().out.splitlines()) if e is not None]
    summary = next(e for e in events if e.type == "summary")
    assert summary.get("device") == "cpu" and summary.get("frames") == 1 and 0 < summary.get("seconds") < 120
    assert "cpu" in summary.get("devices")
    assert any(e.type == "progress" and e.get("stage") == "identity" for e in events)
    from backend.contracts.result_format import ResultPackage
    package = ResultPackage(tmp_path / "result")
    assert package.manifest["state"] == "complete" and len(package.frames) == 1
    frame = package.frames[0]
    assert frame["status"] == "tracked" and frame["landmark_error_px"] < 10.0  # px at 256 px: found and fitted


def test_a_failed_bake_warns_keeps_the_result_and_logs_the_traceback(tmp_path, tiny_model, clip, monkeypatch,
                                                                      caplog):
    """The bake is the last stage: when it fails the tracked package still completes (model colours), the user gets
    a ``bake_failed`` warning event, and the log (stderr) gets the traceback so the failure can be reported."""
    import io
    import json

    from backend.bake import run as bake_run
    from backend.contracts.protocol import EventWriter
    from backend.tracking import run_track

    def broken_bake(*args, **kwargs):
        raise RuntimeError("bake exploded")

    monkeypatch.setattr(bake_run, "bake", broken_bake)
    stream = io.StringIO()
    with caplog.at_level("WARNING", logger="backend.tracking"):
        path = run_track(_config(clip, tmp_path / "res", tiny_model, frames="0:3", output="shape_keys"),
                         EventWriter(stream), _tiny()).path
    warnings = [e for e in map(json.loads, stream.getvalue().splitlines()) if e["type"] == "warning"]
    assert [w["code"] for w in warnings if w["code"] == "bake_failed"] == ["bake_failed"]
    assert "bake exploded" in next(w["message"] for w in warnings if w["code"] == "bake_failed")
    records = [r for r in caplog.records if "colours not baked" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "broken_bake" in caplog.text          # the traceback itself, not only the message
    pkg = ResultPackage(path)
    assert pkg.manifest["state"] == "complete" and len(pkg.frames) == 3
