"""Per-frame meshes as one USD file (``meshes.usdc`` of the result package), written with usd-core.

Layout (what the Blender add-on imports as a MeshSequenceCache):

- one ``UsdGeom.Mesh`` at ``/MonoNPHM_Head`` (the default prim) with **time-sampled** ``points``,
  ``faceVertexCounts``, ``faceVertexIndices``, ``extent`` and ``primvars:displayColor`` (vertex interpolation,
  linear RGB), so the topology may change every frame (per-frame marching cubes);
- time code = 0-based source frame index; ``timeCodesPerSecond`` = ``framesPerSecond`` = the clip's fps;
- ``metersPerUnit`` 1, ``upAxis`` Z. Points are in **Blender axes** (``conventions.MODEL_TO_BLENDER``),
  metres, head-local (before the rigid pose): the importer gives the object the same pose animation as the
  shape-key head.

The file is written to a temporary name and renamed, like every other package file. Only ``pxr`` (usd-core) and
numpy are needed; the module is imported lazily by the tracker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .conventions import MODEL_TO_BLENDER

PRIM_PATH = "/MonoNPHM_Head"


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def write_usd_sequence(path: str | os.PathLike, frames: Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
                       fps: float) -> Path:
    """Write ``frames`` = iterable of (source index, vertices (V,3) metres model axes, triangles (F,3),
    colours (V,3) uint8 sRGB) to ``path`` (a .usdc). Returns the path."""
    from pxr import Gf, Sdf, Usd, UsdGeom, Vt

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    stage = Usd.Stage.CreateNew(str(tmp))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(float(fps))
    stage.SetFramesPerSecond(float(fps))
    mesh = UsdGeom.Mesh.Define(stage, PRIM_PATH)
    stage.SetDefaultPrim(mesh.GetPrim())
    mesh.CreateSubdivisionSchemeAttr().Set(UsdGeom.Tokens.none)
    points_attr = mesh.CreatePointsAttr()
    counts_attr = mesh.CreateFaceVertexCountsAttr()
    indices_attr = mesh.CreateFaceVertexIndicesAttr()
    extent_attr = mesh.CreateExtentAttr()
    color = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray,
                                                    UsdGeom.Tokens.vertex)
    first = last = None
    for index, vertices, triangles, colors in frames:
        t = Usd.TimeCode(float(index))
        v = (np.asarray(vertices, np.float64) @ MODEL_TO_BLENDER.T).astype(np.float32)
        tris = np.ascontiguousarray(triangles, dtype=np.int32)
        rgb = _srgb_to_linear(np.asarray(colors, np.float32) / 255.0).astype(np.float32)
        points_attr.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(v)), t)
        counts_attr.Set(Vt.IntArray.FromNumpy(np.full(len(tris), 3, np.int32)), t)
        indices_attr.Set(Vt.IntArray.FromNumpy(tris.reshape(-1)), t)
        extent_attr.Set(Vt.Vec3fArray([Gf.Vec3f(*map(float, v.min(0))), Gf.Vec3f(*map(float, v.max(0)))]), t)
        color.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(rgb)), t)
        first = index if first is None else min(first, index)
        last = index if last is None else max(last, index)
    if first is not None:
        stage.SetStartTimeCode(float(first))
        stage.SetEndTimeCode(float(last))
    stage.GetRootLayer().Save()
    del stage
    os.replace(tmp, path)
    return path
