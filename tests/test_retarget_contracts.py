"""Retargeting contracts without Blender: rotations, name conventions and mappings, smoothing, the Live Link
Face CSV and ``python -m backend export`` (which must not import torch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.contracts import arkit
from backend.contracts.retarget import llf_csv, names, rotations
from backend.contracts.retarget.performance import Performance, RetargetError, calibrated_weights, from_package
from backend.contracts.retarget.smoothing import OneEuro, SmoothingSettings, one_euro, smooth_performance
from fakes.performance import synthetic_performance, write_performance_package

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("order", rotations.EULER_ORDERS)
def test_euler_and_quaternion_round_trips(order):
    angles = np.random.default_rng(3).uniform(-1.3, 1.3, (64, 3))
    mats = rotations.euler_to_matrix(angles, order)
    assert np.allclose(rotations.matrix_to_euler(mats, order), angles, atol=1e-9)
    quats = rotations.matrix_to_quaternion(mats)
    assert np.allclose(rotations.quaternion_to_matrix(quats), mats, atol=1e-12)
    assert (np.einsum("ij,ij->i", quats[1:], quats[:-1]) >= 0).all()  # continuous signs
    half = rotations.rotation_fraction(mats, 0.5)
    assert np.allclose(half @ half, mats, atol=1e-9)


def test_auto_mapping_binds_every_convention():
    ict = names.auto_mapping(arkit.ICT_NAMES)
    assert ict.unbound == ["tongueOut"]  # ICT has no tongue
    assert [t.key for t in ict.channels["browInnerUp"]] == ["browInnerUp_L", "browInnerUp_R"]
    assert [t.key for t in ict.channels["cheekPuff"]] == ["cheekPuff_L", "cheekPuff_R"]
    assert ict.channels["eyeBlinkLeft"][0].key == "eyeBlink_L"
    for preset in names.PRESETS:
        spelled = [n for c in arkit.ARKIT_NAMES for n in names.preset_names(c, preset)]
        mapping = names.auto_mapping(spelled)
        assert mapping.unbound == [] and len(mapping.target_keys) == len(spelled), preset
    dotted = names.auto_mapping(["EyeBlink.L", "eye_blink_right", "JAWOPEN", "browInnerUp"])
    assert {c: t[0].key for c, t in dotted.channels.items()} == {
        "eyeBlinkLeft": "EyeBlink.L", "eyeBlinkRight": "eye_blink_right", "jawOpen": "JAWOPEN",
        "browInnerUp": "browInnerUp"}


def test_mapping_json_round_trip_gain_offset_and_errors():
    mapping = names.ChannelMapping({"jawOpen": (names.Target("Jaw", 2.0, -0.1),),
                                    "mouthSmileLeft": (names.Target("Smile"),),
                                    "mouthSmileRight": (names.Target("Smile"),)})
    again = names.ChannelMapping.from_json(mapping.to_json())
    assert again == mapping
    weights = np.zeros((2, 52))
    weights[:, arkit.ARKIT_INDEX["jawOpen"]] = [0.5, 0.25]
    weights[:, arkit.ARKIT_INDEX["mouthSmileLeft"]] = [0.2, 0.0]
    weights[:, arkit.ARKIT_INDEX["mouthSmileRight"]] = [0.3, 0.1]
    values = again.target_values(weights)
    assert np.allclose(values["Jaw"], [0.9, 0.4]) and np.allclose(values["Smile"], [0.5, 0.1])
    with pytest.raises(RetargetError, match="not ARKit channels: jawOpn"):
        names.ChannelMapping.from_json(json.dumps({"format": names.MAPPING_FORMAT, "version": 1,
                                                   "channels": {"jawOpn": ["x"]}}))
    with pytest.raises(RetargetError, match="not valid JSON"):
        names.ChannelMapping.from_json("{")


def test_neutral_calibration():
    weights = np.array([[0.2, 0.0], [0.6, 0.5], [0.1, 1.0]])
    out = calibrated_weights(weights, 0)
    assert np.allclose(out, [[0, 0], [0.5, 0.5], [0, 1]])
    assert np.array_equal(calibrated_weights(weights, None), weights)


def test_one_euro_removes_jitter_and_keeps_blinks():
    fps = 30.0
    t = np.arange(300) / fps
    clean = np.zeros(300)
    clean[150:153] = [0.6, 1.0, 0.6]  # a three-frame blink
    noisy = clean + np.random.default_rng(0).normal(0, 0.03, 300)
    smooth = one_euro(noisy[:, None], t, OneEuro())[:, 0]
    raw_jitter, jitter = np.std(noisy[:140] - clean[:140]), np.std(smooth[:140] - clean[:140])
    assert jitter < 0.5 * raw_jitter
    assert smooth[150:153].max() > 0.85  # the blink survives
    lagless = one_euro(np.sin(t)[:, None], t, OneEuro(min_cutoff_hz=0.5))[:, 0]
    assert np.abs(lagless - np.sin(t))[10:-10].max() < 0.01  # forward/backward: no lag on slow motion


def test_smoothing_groups_are_independent_and_non_destructive():
    perf = synthetic_performance(90)
    jitter = np.random.default_rng(1).normal(0, 0.05, perf.arkit.shape)
    noisy = Performance(perf.times_s, perf.fps, np.clip(perf.arkit + jitter, 0, 1), perf.head_rotation,
                        perf.head_location)
    before = noisy.arkit.copy()
    out = smooth_performance(noisy, SmoothingSettings.parse(["mouth=1.0", "pose=1.0:0"]))
    assert np.array_equal(noisy.arkit, before)  # the source is kept
    eyes = [arkit.ARKIT_INDEX[n] for n in arkit.ARKIT_NAMES if n.startswith("eye")]
    mouth = arkit.ARKIT_INDEX["jawOpen"]
    assert np.array_equal(out.arkit[:, eyes], noisy.arkit[:, eyes])
    assert not np.allclose(out.arkit[:, mouth], noisy.arkit[:, mouth])
    assert np.allclose(out.head_rotation @ out.head_rotation.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    with pytest.raises(RetargetError, match="GROUP=CUTOFF"):
        SmoothingSettings.parse(["mouth"])
    with pytest.raises(RetargetError, match="unknown smoothing group"):
        SmoothingSettings.parse(["lips=1"])


def test_llf_csv_round_trip(tmp_path):
    perf = synthetic_performance(75, fps=25.0)
    path = llf_csv.write_llf_csv(tmp_path / "take.csv", perf)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(llf_csv.LLF_COLUMNS) and len(lines) == 76
    assert lines[0].split(",")[17:19] == ["JawRight", "JawLeft"]  # Live Link Face's order, not Apple's
    assert lines[1].startswith("00:00:00:00.000,61,") and lines[26].startswith("00:00:01:00.000,61,")
    take = llf_csv.read_llf_csv(path)
    back = take.performance
    assert take.timecode_rate == 25 and take.missing_channels == () and len(back) == len(perf)
    assert np.allclose(back.times_s, perf.times_s, atol=1e-9)
    assert np.abs(back.arkit - perf.arkit).max() < 1e-4
    assert rotations.rotation_angle_deg(back.head_rotation, perf.head_rotation).max() < 1e-3
    row = lines[5].split(",")
    assert float(row[llf_csv.LLF_COLUMNS.index("JawLeft")]) == pytest.approx(
        perf.arkit[4, arkit.ARKIT_INDEX["jawLeft"]], abs=1e-9)


def test_llf_csv_reads_by_column_name_like_the_app_writes(tmp_path):
    # The app's conventions: `BlendshapeCount` spelling, time-of-day timecode at 60 fps with sub-frames,
    # columns in its own order. Here the columns are shuffled, TongueOut is missing.
    rng = np.random.default_rng(5)
    columns = ["Timecode", "BlendshapeCount"] + [c for c in llf_csv.LLF_CHANNELS if c != "TongueOut"]
    columns += list(llf_csv.LLF_POSE_COLUMNS)
    order = [0, 1] + list(2 + rng.permutation(len(columns) - 2))
    values = rng.uniform(0, 1, (4, len(columns) - 2))
    values[:, columns.index("HeadYaw") - 2] = [0.0, 0.1, 0.2, 0.3]
    stamps = ["11:54:29:58.804", "11:54:29:59.805", "11:54:30:00.806", "11:54:30:01.808"]
    text = ",".join(columns[i] for i in order) + "\n"
    for stamp, row in zip(stamps, values):
        cells = [stamp, "61"] + [f"{v:.10f}" for v in row]
        text += ",".join(cells[i] for i in order) + "\n"
    (tmp_path / "MySlate_3_iPhone.csv").write_text(text)
    take = llf_csv.read_llf_csv(tmp_path / "MySlate_3_iPhone.csv")
    perf = take.performance
    assert take.timecode_rate == 60 and take.missing_channels == ("tongueOut",)
    assert np.allclose(np.diff(perf.times_s), [1.001 / 60, 1.001 / 60, 1.002 / 60], atol=1e-9)
    jaw_right = values[:, columns.index("JawRight") - 2]
    assert np.allclose(perf.arkit[:, arkit.ARKIT_INDEX["jawRight"]], jaw_right)
    assert np.allclose(llf_csv.head_angles(perf.head_rotation)[:, 0], [0.0, 0.1, 0.2, 0.3], atol=1e-9)
    with pytest.raises(RetargetError, match="no Timecode column"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        llf_csv.read_llf_csv(tmp_path / "bad.csv")


LLF_SAMPLE = os.environ.get("MONONPHM_LLF_SAMPLE", "")


@pytest.mark.skipif(not Path(LLF_SAMPLE).is_file(), reason="set MONONPHM_LLF_SAMPLE to a take from the Live Link "
                    "Face app (e.g. MySlate_1_iPhone.csv of github.com/dwskillman/BlendFiles)")
def test_llf_csv_reads_a_public_take():
    take = llf_csv.read_llf_csv(LLF_SAMPLE)
    perf = take.performance
    header = Path(LLF_SAMPLE).read_text().splitlines()[0].split(",")
    first = Path(LLF_SAMPLE).read_text().splitlines()[1].split(",")
    assert take.timecode_rate == 60 and take.missing_channels == ()
    for column in ("JawRight", "MouthLeft", "EyeBlinkLeft", "BrowInnerUp"):
        channel = column[:1].lower() + column[1:]
        assert perf.arkit[0, arkit.ARKIT_INDEX[channel]] == pytest.approx(float(first[header.index(column)]))
    assert 55 < 1 / np.median(np.diff(perf.times_s)) < 61 and (np.diff(perf.times_s) > 0).all()


def _run_backend(*args, env_extra=None):
    # torch is made unimportable: `export` must work in an environment without it
    code = ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'backend'; "
            "from backend.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_export_without_torch(tmp_path):
    perf = synthetic_performance(50, fps=30.0)
    package = write_performance_package(tmp_path / "pkg", perf)
    out = tmp_path / "out" / "take.csv"
    proc = _run_backend("export", str(package), "--format", "llf-csv", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1] == {"type": "result", "path": str(out), "frames_done": 50}
    back = llf_csv.read_llf_csv(out).performance
    assert np.abs(back.arkit - perf.arkit).max() < 1e-4
    assert rotations.rotation_angle_deg(back.head_rotation, from_package(package).head_rotation).max() < 1e-3
    resampled = tmp_path / "take60.csv"
    proc = _run_backend("export", str(package), "--out", str(resampled), "--fps", "60", "--smooth", "all=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    take = llf_csv.read_llf_csv(resampled)
    assert take.timecode_rate == 60 and len(take.performance) == 99  # 49 frame steps of 1/30 s at 60 rows/s
    assert take.performance.times_s[-1] == pytest.approx(49 / 30)


def test_channels_the_model_does_not_drive_export_as_zero(tmp_path):
    perf = synthetic_performance(20)
    noisy = perf.arkit.copy()
    noisy[:, [arkit.ARKIT_INDEX[n] for n in arkit.UNDRIVEN_ARKIT]] = 0.3  # regressor output on gaze and tongue
    package = write_performance_package(tmp_path / "pkg", Performance(perf.times_s, perf.fps, noisy,
                                                                      perf.head_rotation, perf.head_location))
    out = llf_csv.write_llf_csv(tmp_path / "take.csv", from_package(package))
    rows = [line.split(",") for line in out.read_text().splitlines()]
    for column in ("TongueOut", "EyeLookInLeft", "EyeLookUpRight", "LeftEyeYaw", "RightEyeRoll"):
        assert {float(r[rows[0].index(column)]) for r in rows[1:]} == {0.0}, column
    assert float(rows[1][rows[0].index("JawOpen")]) == pytest.approx(perf.arkit[0, arkit.ARKIT_INDEX["jawOpen"]])


def test_cli_export_refuses_packages_without_arkit(tmp_path):
    package = write_performance_package(tmp_path / "pkg", synthetic_performance(10), with_arkit=False)
    proc = _run_backend("export", str(package), "--out", str(tmp_path / "take.csv"))
    assert proc.returncode == 2
    error = json.loads(proc.stdout.splitlines()[-1])
    assert error["type"] == "error" and "no ARKit channels" in error["message"] and error["hint"]
    assert not (tmp_path / "take.csv").exists()
    proc = _run_backend("export", str(package), "--out", str(tmp_path / "take.csv"), "--smooth", "lips=2")
    assert proc.returncode == 2 and "unknown smoothing group" in proc.stdout
