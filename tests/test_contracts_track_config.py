"""backend/contracts/track_config.py: the `track` command's schema, shared by the CLI, the add-on and the tracker."""
import dataclasses

import pytest

from backend.cli import build_parser
from backend.contracts import track_config as tc
from backend.contracts.track_config import TrackConfig


def _parse(argv):
    return TrackConfig.from_namespace(build_parser().parse_args(["track", *argv]))


def test_defaults_are_the_command_lines():
    assert _parse(["clip.mp4", "--out", "res"]) == TrackConfig("clip.mp4", "res")
    assert TrackConfig("a", "b").to_argv() == ["a", "--out", "b", "--preset", "standard", "--output", "shape_keys",
                                               "--device", "auto"]


def test_every_field_is_a_documented_flag_that_round_trips(capsys, monkeypatch):
    config = TrackConfig("in dir/clip.mov", "out", frames="2::3", max_size=0, fx=512.25, fy=511.0, cx=300.5,
                         cy=200.0, fov=40.0, preset="high", output="meshes", model="m", official_checkpoint="exp",
                         checkpoint_epoch=3, mean_anchors="a.npy", device="cpu", threads=2, overwrite=True,
                         detector="face-alignment", face="320.5,200", seed=7, texture=True, texture_size=1024)
    assert all(getattr(config, f.name) != f.default for f in dataclasses.fields(TrackConfig)[2:])
    assert _parse(config.to_argv()) == config
    docs = tc.field_docs(TrackConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TrackConfig)} and all(docs.values())
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping inside the help texts
    with pytest.raises(SystemExit):
        build_parser().parse_args(["track", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, doc in docs.items():
        assert " ".join(doc.split()) in help_text, name


def test_choices_come_from_the_contract_constants():
    from backend.tracking.tracker import PRESETS
    assert tuple(PRESETS) == tc.PRESET_NAMES
    for flag, choices in (("--preset", tc.PRESET_NAMES), ("--output", tc.OUTPUT_MODES), ("--device", tc.DEVICES),
                          ("--detector", tc.DETECTORS)):
        with pytest.raises(SystemExit):
            _parse(["a", "--out", "b", flag, "nonsense"])
        assert _parse(["a", "--out", "b", flag, choices[-1]]) is not None


def test_check_refuses_what_the_backend_refuses():
    with pytest.raises(ValueError, match="output must be one of"):
        TrackConfig("a", "b", output="usd").to_argv()
    with pytest.raises(ValueError, match="mean-anchors"):
        TrackConfig("a", "b", official_checkpoint="exp").check()
    with pytest.raises(ValueError, match="--face 'middle' is neither largest, leftmost, rightmost nor a point"):
        TrackConfig("a", "b", face="middle").check()
    with pytest.raises(ValueError, match="texture size 32 is outside 64..8192"):
        TrackConfig("a", "b", texture=True, texture_size=32).check()
