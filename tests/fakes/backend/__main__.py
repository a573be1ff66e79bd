"""Fake ``python -m backend``: speaks the real protocol and writes a real result package.

Commands ``track INPUT --out DIR`` and ``batch INPUT… --out-root DIR`` (protocol version 2: clip-tagged events).
Behaviour from the environment: FAKE_BACKEND_MODE = ok (default) | fail | crash | slow;
FAKE_WARNING: a warning event after the first frame; FAKE_FRAMES (default 10) source frames; FAKE_DELAY seconds
per frame (default 0.01); FAKE_VERTICES (200).
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/ → fakes.packages

import numpy as np  # noqa: E402

from backend import __version__  # noqa: E402
from backend.batch.inputs import expand_inputs  # noqa: E402
from backend.contracts import result_format as rf  # noqa: E402
from backend.contracts.conventions import Intrinsics, parse_frame_slice  # noqa: E402
from backend.contracts.protocol import PROTOCOL_VERSION, Cancelled, EventWriter, ExitCode  # noqa: E402
from fakes.packages import frame_vertices, grid_head, landmark_error, pose  # noqa: E402


def main() -> int:
    if "--version" in sys.argv:
        print(json.dumps({"protocol": PROTOCOL_VERSION, "backend": __version__, "python": sys.version.split()[0],
                          "torch": None, "devices": ["cpu"], "auto_device": "cpu", "models": []}))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("track", "batch"))
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out")
    parser.add_argument("--out-root")
    parser.add_argument("--frames")
    parser.add_argument("--overwrite", action="store_true")
    args, _unknown = parser.parse_known_args()
    print("fake backend argv:", sys.argv, file=sys.stderr, flush=True)
    events = EventWriter()
    events.hello(__version__)
    events.device("cpu", "fake CPU")

    def on_term(signum, frame):
        raise Cancelled("cancelled", "Finished frames are kept.")

    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("FAKE_BACKEND_MODE", "ok") == "crash":
        print("Traceback: something broke badly", file=sys.stderr, flush=True)
        return 1
    if args.command == "track":
        return track(args.inputs[0], args.out, args, events)
    frames = 0
    # a batch: one package per input (``@list`` lines with their own --frames as the real batch reads them), events
    # tagged with the clip's folder name
    for clip in expand_inputs(args.inputs):
        source, name = str(clip.source), clip.source.stem
        clip_args = parser.parse_known_args(["batch", source, *clip.flags], argparse.Namespace(**vars(args)))[0]
        out = os.path.join(args.out_root, name)
        if os.path.isfile(os.path.join(out, rf.MANIFEST)) and rf.read_manifest(out)["state"] == "complete":
            events.clip_state(name, "skipped", out, os.path.abspath(source))
            frames += len(rf.read_manifest(out)["frames"])
            continue
        events.clip_state(name, "running", out, os.path.abspath(source), "fake-host", os.getpid())
        code = track(source, out, clip_args, EventWriter(clip=name))
        if code != ExitCode.OK:
            return code
        frames += len(rf.read_manifest(out)["frames"])
        events.clip_state(name, "complete", out, os.path.abspath(source))
    events.result(args.out_root, frames)
    return ExitCode.OK


def track(source: str, out: str, args, events: EventWriter) -> int:
    """Write ``out`` frame by frame as ``track`` does; the events say so."""
    mode = os.environ.get("FAKE_BACKEND_MODE", "ok")
    n = int(os.environ.get("FAKE_FRAMES", "10"))
    delay = float(os.environ.get("FAKE_DELAY", "0.01"))
    indices = list(range(n))[parse_frame_slice(args.frames)]
    header = {"source": {"path": os.path.abspath(source), "kind": "video"}, "fps": 25.0,
              "image_size": [320, 240], "intrinsics": Intrinsics.from_fov(320, 240).to_dict(),
              "model": {"name": "builtin"}, "output_mode": "shape_keys", "settings": {}}
    try:
        writer = rf.ResultWriter(out, header)
    except rf.PackageError as exc:
        events.error(exc.message, exc.hint, code=exc.code)
        return ExitCode.BAD_INPUT
    canon, tris, albedo = grid_head(int(os.environ.get("FAKE_VERTICES", "200")))
    if not writer.manifest.get("has_canonical_mesh"):
        writer.write_canonical_mesh(canon, tris, albedo)
    todo = [i for i in indices if args.overwrite or i not in writer.done_frames]
    try:
        for k, i in enumerate(todo):
            time.sleep(delay if mode != "slow" else max(delay, 0.2))
            if mode == "fail" and k == len(todo) // 2:
                print("Traceback (most recent call last):\n  RuntimeError: tracker diverged", file=sys.stderr,
                      flush=True)
                writer.finish("failed")
                events.error("Tracking failed at frame %d: the fit diverged" % i, "Try the draft preset.",
                             code="internal")
                return ExitCode.INTERNAL_ERROR
            s, r, t = pose(i)
            rec = rf.FrameRecord(i, i / 25.0, "tracked", landmark_error(i), 0.01, 0.9)
            writer.write_frames([rec], {"scale": np.array([s], np.float32), "rotation": r[None],
                                        "translation": t[None], "z_exp": np.zeros((1, 4), np.float32),
                                        "vertices": frame_vertices(canon, i)[None]})
            events.progress("track", k + 1, len(todo), frame=i, message=f"frame {i}")
            if k == 0 and os.environ.get("FAKE_WARNING"):
                events.warning(os.environ["FAKE_WARNING"], code="device_fallback")
        writer.finish("complete")
        events.result(out, len(writer.manifest["frames"]))
        return ExitCode.OK
    except Cancelled:
        writer.finish("cancelled")
        events.error("Cancelled.", "Finished frames are kept.", code="cancelled")
        return ExitCode.CANCELLED


if __name__ == "__main__":
    sys.exit(main())
