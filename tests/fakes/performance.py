"""A synthetic performance with known ARKit weights and head pose, and a result package that holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.contracts import arkit
from backend.contracts import conventions as cv
from backend.contracts import result_format as rf
from backend.contracts.retarget import llf_csv
from backend.contracts.retarget.performance import Performance
from fakes.packages import grid_head


def synthetic_performance(frames: int = 120, fps: float = 25.0, seed: int = 0) -> Performance:
    """Smooth random ARKit curves in [0, 1] (0 for the channels the model does not drive) and a head that turns up to ±25° and moves a
    few centimetres 0.6 m in front of the camera."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    freq = rng.uniform(0.2, 1.5, (3, 52))
    phase = rng.uniform(0, 2 * np.pi, (3, 52))
    waves = np.sin(2 * np.pi * freq[:, None, :] * t[None, :, None] + phase[:, None, :]).sum(0) / 3
    weights = np.clip(0.5 + 0.6 * waves, 0.0, 1.0)
    weights[:, [arkit.ARKIT_INDEX[n] for n in arkit.UNDRIVEN_ARKIT]] = 0.0  # as the tracker's output
    angles = np.radians(25.0) * np.stack([np.sin(2 * np.pi * 0.31 * t), 0.6 * np.sin(2 * np.pi * 0.53 * t + 1),
                                          0.4 * np.sin(2 * np.pi * 0.17 * t + 2)], 1)
    rotation = llf_csv.head_rotation(angles)
    location = np.stack([0.03 * np.sin(t), 0.6 + 0.02 * np.cos(0.7 * t), 0.01 * np.sin(1.3 * t)], 1)
    return Performance(t, fps, weights, rotation, location)


def write_performance_package(root: Path, perf: Performance, *, with_arkit: bool = True,
                              vertices: int = 400) -> Path:
    """A result package whose frames carry ``perf`` (head pose through conventions.head_world_matrices)."""
    width, height = 320, 240
    header = {"source": {"path": "/nonexistent/take.mp4", "kind": "video"}, "fps": perf.fps,
              "image_size": [width, height], "intrinsics": cv.Intrinsics.from_fov(width, height).to_dict(),
              "model": {"name": "builtin"}, "output_mode": "shape_keys", "settings": {}}
    writer = rf.ResultWriter(root, header)
    canon, tris, albedo = grid_head(vertices)
    writer.write_canonical_mesh(canon, tris, albedo)
    index = np.rint(perf.frame_numbers).astype(int)
    # head world rotation W = OPENCV_TO_BLENDER_WORLD · R · MODEL_TO_BLENDERᵀ  ⇒  R = O2Bᵀ · W · M2B
    rotation = cv.OPENCV_TO_BLENDER_WORLD.T @ perf.head_rotation @ cv.MODEL_TO_BLENDER
    translation = perf.head_location @ cv.OPENCV_TO_BLENDER_WORLD  # inverse of the world map (orthonormal)
    records = [rf.FrameRecord(int(i), float(i / perf.fps), "tracked", 1.0, 0.01, 0.9) for i in index]
    arrays = {"scale": np.ones(len(index), np.float32), "rotation": rotation.astype(np.float32),
              "translation": translation.astype(np.float32), "z_exp": np.zeros((len(index), 4), np.float32),
              "vertices": np.repeat(canon[None], len(index), 0)}
    if with_arkit:
        arrays["arkit"] = perf.arkit.astype(np.float32)
    writer.write_frames(records, arrays)
    writer.finish()
    return Path(root)
