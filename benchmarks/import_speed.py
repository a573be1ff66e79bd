"""Import and playback speed of a result package: shape keys vs the USD mesh sequence.

    .venv/bin/python benchmarks/import_speed.py [--frames 300] [--vertices 20000] [--keep DIR]

Goal (2 cores): shape-key import < 3 s, playback < 5 ms/frame. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import bpy  # noqa: E402

from fakes.packages import make_package  # noqa: E402


def playback_ms(scene, frames: list[int], passes: int = 2) -> float:
    """Mean ms per ``frame_set`` over the tracked frames (the last of ``passes`` passes; the first warms caches)."""
    best = None
    for _ in range(passes):
        t0 = time.perf_counter()
        for f in frames:
            scene.frame_set(f)
        ms = (time.perf_counter() - t0) * 1000.0 / len(frames)
        best = ms if best is None else min(best, ms)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--vertices", type=int, default=20000)
    ap.add_argument("--keep", default=None, help="write the packages here and keep them")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mononphm-bench-"))
    import mononphm_blender
    from mononphm_blender import importer

    mononphm_blender.register()
    try:
        t0 = time.perf_counter()
        pkg = work / "package"
        if pkg.exists():
            shutil.rmtree(pkg)
        make_package(pkg, frames=args.frames, vertices=args.vertices, output_mode="both", usd=True, chunk=50)
        write_s = time.perf_counter() - t0
        print(f"package written in {write_s:.1f} s ({args.frames} frames × ~{args.vertices} vertices)", flush=True)

        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        t0 = time.perf_counter()
        res = importer.import_package(bpy.context, str(pkg), mode="SHAPE_KEYS")
        sk_import = time.perf_counter() - t0
        vertices = len(res.head.data.vertices)
        sk_play = playback_ms(scene, res.scene_frames)
        print(f"shape keys: import {sk_import:.2f} s, playback {sk_play:.2f} ms/frame", flush=True)

        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        t0 = time.perf_counter()
        res = importer.import_package(bpy.context, str(pkg), mode="MESHES")
        usd_import = time.perf_counter() - t0
        usd_play = playback_ms(scene, res.scene_frames)
        print(f"USD: import {usd_import:.2f} s, playback {usd_play:.2f} ms/frame", flush=True)
    finally:
        mononphm_blender.unregister()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"frames": args.frames, "vertices": vertices, "shapekey_import_s": round(sk_import, 3),
                      "shapekey_playback_ms": round(sk_play, 3), "usd_import_s": round(usd_import, 3),
                      "usd_playback_ms": round(usd_play, 3), "package_write_s": round(write_s, 2),
                      "goal": {"shapekey_import_s": 3.0, "shapekey_playback_ms": 5.0},
                      "blender": bpy.app.version_string}))


if __name__ == "__main__":
    main()
