"""Command line of the backend: ``python -m backend …``. Contract: docs/backend-cli.md.

Sub-commands parse their own flags here (one place documents every flag) and hand over to the package that
does the work. stdout carries only protocol JSON lines; logs and tracebacks go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from . import BUILTIN_MODEL_DIR, __version__
from .contracts.protocol import (CANCEL_HINT, BackendError, Cancelled, EventWriter, ExitCode, PROTOCOL_VERSION,
                                 install_cancel_handler)
from .contracts.track_config import DEVICES, TrackConfig, add_track_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="MonoNPHM head tracking backend.")
    parser.add_argument("--version", action="store_true", help="print versions, devices and models, then exit")
    parser.add_argument("--json", action="store_true", help="with --version: one JSON object")
    sub = parser.add_subparsers(dest="command")

    track = sub.add_parser("track", help="track a clip and write a result package")
    add_track_arguments(track)  # one flag per TrackConfig field

    bake = sub.add_parser("bake", help="bake the subject's colours (and a texture) from the clip into a result")
    bake.add_argument("package", help="result package folder written by track")
    bake.add_argument("--frames", default=None, metavar="A:B:STEP",
                      help="bake from these source frames only (default: every tracked frame)")
    bake.add_argument("--max-frames", type=int, default=64,
                      help="at most this many frames, evenly spaced over the selection (default 64)")
    bake.add_argument("--texture", action="store_true", help="also unwrap the head and bake a texture (PNG)")
    bake.add_argument("--texture-frames", default=None, metavar="I,J,...",
                      help="source frames for the texture (default: picked automatically: frontal, sharp, neutral)")
    bake.add_argument("--texture-size", type=int, default=TrackConfig.texture_size, metavar="PX",
                      help=f"texture size (default {TrackConfig.texture_size})")

    batch = sub.add_parser("batch", help="track many clips as Ray tasks, locally or on a cluster (needs Ray)")
    batch.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="clips as for track (video, image folder, image), or @LIST.txt with one per line")
    batch.add_argument("--out-root", required=True, metavar="DIR",
                       help="one result package per clip in DIR/<name>/ (finished ones skipped, partial resumed)")
    batch.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="join this Ray cluster (inputs and DIR on storage every node sees); default: local Ray")
    batch.add_argument("--workers", type=int, default=0, metavar="N",
                       help="local Ray: clips tracked at once (default: logical CPUs // --threads)")
    batch.add_argument("--chunk-frames", type=int, default=0, metavar="N",
                       help="split clips of more than N selected frames into chunks of N on the workers (0: never)")
    add_track_arguments(batch, exclude=("input", "out"))  # every track flag, for every clip

    validate = sub.add_parser("validate", help="check a result package and print a summary")
    validate.add_argument("package")

    export = sub.add_parser("export", help="write a result's performance in an exchange format (no torch needed)")
    export.add_argument("package", help="result package folder")
    export.add_argument("--format", choices=("llf-csv",), default="llf-csv",
                        help="llf-csv: Live Link Face CSV (Unreal, Faceit, KeenTools, Rokoko)")
    export.add_argument("--out", required=True, help="file to write (replaced atomically)")
    export.add_argument("--fps", type=float, default=None, metavar="F",
                        help="rows per second of the clip (default: one row per tracked frame at the clip's rate)")
    export.add_argument("--smooth", action="append", default=None, metavar="GROUP=HZ[:BETA]",
                        help="one-euro smoothing of a group (pose, eyes, mouth, brows, all): minimum cutoff in Hz "
                             "and speed coefficient (default 5); repeatable; default: no smoothing")

    selftest = sub.add_parser("selftest", help="track one frame of a built-in image (the installer's smoke test)")
    selftest.add_argument("--out", required=True, help="scratch folder (its contents are replaced)")
    selftest.add_argument("--device", choices=DEVICES, default=TrackConfig.device)
    selftest.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = auto)")

    # Listed for --help only: main() hands `train ...` to backend.training.train before parsing.
    sub.add_parser("train", help="train a MonoNPHM model on synthetic heads (python -m backend train --help)")
    return parser


def version_info() -> dict:
    """The handshake: versions, the devices present and the one ``--device auto`` picks, the models."""
    try:
        import torch

        from .model.devices import available_devices, resolve_device

        torch_version, devices, auto = torch.__version__, available_devices(), resolve_device("auto")
    except ImportError:
        torch_version, devices, auto = None, [], None
    builtin = BUILTIN_MODEL_DIR / "config.json"
    return {
        "protocol": PROTOCOL_VERSION,
        "backend": __version__,
        "python": sys.version.split()[0],
        "torch": torch_version,
        "devices": devices,
        "auto_device": auto,
        "models": [{"name": "builtin", "path": str(BUILTIN_MODEL_DIR), "available": builtin.is_file()}],
    }




def _run_validate(args, events: EventWriter) -> None:
    from .contracts.result_format import PackageError, ResultPackage

    package = ResultPackage(args.package)
    arrays = package.frame_arrays()
    mesh = package.canonical_mesh() if package.manifest.get("has_canonical_mesh") else None
    usd = package.usd_path
    if usd is not None:
        try:
            from .usd_export import external_dependencies

            outside = external_dependencies(usd)
        except ImportError:
            events.warning(f"{usd.name} was not checked: usd-core is not installed", code="usd_not_checked")
            outside = []
        except Exception as exc:  # noqa: BLE001 - pxr raises its own Tf errors for damaged files
            raise PackageError(f"{usd.name} is not a readable USD file ({exc})",
                               "Re-track with the per-frame mesh output to rewrite it.") from None
        if outside:
            raise PackageError(f"{usd.name} pulls in files from outside the package: {', '.join(outside[:5])}",
                               "Only import USD files written by MonoNPHM; re-track with the per-frame mesh output "
                               "to rewrite it.")
    summary = {"frames": len(package.frames), "state": package.manifest["state"],
               "arrays": {k: list(v.shape) for k, v in arrays.items()},
               "vertices": None if mesh is None else int(mesh.vertices.shape[0])}
    events.emit("summary", **summary)
    events.result(str(package.root), len(package.frames))


def _run_export(args, events: EventWriter) -> None:
    """The package's tracked frames as a Live Link Face CSV: smoothed, then resampled to --fps (the package is
    only read)."""
    from .contracts.retarget import llf_csv
    from .contracts.retarget.performance import from_package
    from .contracts.retarget.smoothing import SmoothingSettings, smooth_performance

    if args.fps is not None and args.fps <= 0:
        raise BadInputError(f"--fps {args.fps}: the frame rate must be positive", "Give e.g. --fps 60.")
    smoothing = SmoothingSettings.parse(args.smooth)
    perf = from_package(args.package)
    perf.require_arkit()
    perf = smooth_performance(perf, smoothing)
    if args.fps:
        perf = perf.resampled(args.fps)
    events.result(str(llf_csv.write_llf_csv(args.out, perf)), len(perf))


# The smoke test's fit: the draft preset cut to a few iterations, so it proves the whole pipeline (decoding,
# landmarks, masks, model, identity and frame fits, meshes, result package) in seconds, not its quality.
SELFTEST_OVERRIDES = {"id_iters": 8, "frame_iters": 4, "stage2_epochs": 0, "mesh_res": 48}


def _run_selftest(args, events: EventWriter) -> None:
    """One frame of ``skimage.data.astronaut()`` (public domain; ships with scikit-image) tracked end to end;
    emits a ``summary`` event with the device and the seconds it took."""
    import dataclasses
    import shutil
    import time

    from skimage import data, io

    from .model.devices import available_devices, resolve_device
    from .tracking import run_track
    from .tracking.tracker import PRESETS

    t0 = time.perf_counter()
    out = Path(args.out)
    for name in ("astronaut.png", "result"):  # only what an earlier self-test wrote
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    image = out / "astronaut.png"
    io.imsave(image, data.astronaut(), check_contrast=False)
    config = TrackConfig(input=str(image), out=str(out / "result"), preset="draft", max_size=256,
                         threads=args.threads, device=resolve_device(args.device))
    outcome = run_track(config, events, preset=dataclasses.replace(PRESETS["draft"], **SELFTEST_OVERRIDES))
    events.emit("summary", device=config.device, seconds=round(time.perf_counter() - t0, 2), frames=outcome.frames,
                devices=available_devices())
    events.result(str(outcome.path), outcome.frames)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer owns all its flags, --help included
        from .training.train import main as train_main

        return int(train_main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        info = version_info()
        print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return ExitCode.OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.BAD_INPUT
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    events = EventWriter()
    install_cancel_handler()
    try:
        events.hello(__version__)
        if args.command == "validate":
            _run_validate(args, events)
        elif args.command == "export":
            _run_export(args, events)
        elif args.command == "bake":
            from .bake.run import run_bake
            from .contracts.result_format import read_manifest

            path = run_bake(args, events)
            events.result(str(path), len(read_manifest(path)["frames"]))
        elif args.command == "selftest":
            _run_selftest(args, events)
        elif args.command == "batch":
            from .batch import BatchConfig, run_batch

            config = TrackConfig.from_namespace(args, input="", out="")
            root, frames = run_batch(args.inputs, BatchConfig.from_namespace(args), config, events)
            events.result(str(root), frames)
        elif args.command == "track":
            from .tracking import run_track

            outcome = run_track(TrackConfig.from_namespace(args), events)
            events.result(str(outcome.path), outcome.frames, outcome.timings)
        return ExitCode.OK
    except (Cancelled, KeyboardInterrupt):
        events.error("Cancelled.", CANCEL_HINT,
                     code="cancelled")
        return ExitCode.CANCELLED
    except BackendError as exc:
        events.error(exc.message, exc.hint, code=exc.code)
        return exc.exit_code
    except MemoryError:
        events.error("Out of memory.", "Lower --max-size or choose the draft preset.", code="internal")
        return ExitCode.INTERNAL_ERROR
    except Exception as exc:  # the add-on shows message + log path; the traceback goes to the log
        traceback.print_exc(file=sys.stderr)
        events.error(f"Internal error: {type(exc).__name__}: {exc}",
                     "See the backend log for details and report it with the log attached.", code="internal")
        return ExitCode.INTERNAL_ERROR
