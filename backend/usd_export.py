"""Per-frame meshes with vertex colours as one USD file (topology may change every frame).

Written once tracking ends; the npz chunks are the incremental record. Geometry is in metres, **Blender axes**
(Z up, see docs/conventions.md), before the rigid pose: the add-on animates the imported object with the pose,
exactly as for the shape-key mesh. Time codes are 0-based source frame indices, so Blender's importer puts
source frame i on scene frame (clip start + i) (the add-on sets the cache file's frame offset to the clip start).
``displayColor`` holds **linear** RGB (the USD convention; Blender reads it into a FLOAT_COLOR point attribute),
converted from the sRGB albedo. ``write_usd_sequence`` is the same writer for plain tuples; ``read_mesh_sequence``
reads such a file back (a re-bake rewrites its colours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .contracts.conventions import blender_to_model_points, model_to_blender_points, srgb_to_linear


HAIR_PRIMVAR = "hair"  # per-vertex 1.0 on the hair volume (Blender: a FLOAT point attribute of that name)


@dataclass(frozen=True)
class FrameMesh:
    """One frame's mesh: vertices (V,3) metres model axes, triangles (F,3) int, colours (V,3) uint8 sRGB, hair (V,)
    uint8 (1 on the hair volume; None for a model without hair)."""

    frame_index: int
    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    hair: np.ndarray | None = None


def write_mesh_sequence(path: str | Path, frames: Iterable[FrameMesh], fps: float,
                        prim_path: str = "/MonoNPHM/head") -> Path:
    """Write ``frames`` as a time-sampled UsdGeom.Mesh with a vertex-interpolated ``displayColor`` primvar (and a
    vertex-interpolated float ``hair`` primvar, 1 on the hair volume, for frames that carry one).

    The file is written next to ``path`` under a temporary name and renamed, like every package file.
    """
    from pxr import Gf, Sdf, Usd, UsdGeom, Vt  # usd-core: backend side only

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)  # left over from an interrupted run
    stage = Usd.Stage.CreateNew(str(tmp))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(float(fps))
    stage.SetFramesPerSecond(float(fps))
    root = UsdGeom.Xform.Define(stage, Sdf.Path(prim_path.rsplit("/", 1)[0]))
    stage.SetDefaultPrim(root.GetPrim())
    mesh = UsdGeom.Mesh.Define(stage, Sdf.Path(prim_path))
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    points_attr = mesh.CreatePointsAttr()
    counts_attr = mesh.CreateFaceVertexCountsAttr()
    indices_attr = mesh.CreateFaceVertexIndicesAttr()
    extent_attr = mesh.CreateExtentAttr()
    color_var = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar(
        "displayColor", Sdf.ValueTypeNames.Color3fArray, UsdGeom.Tokens.vertex)
    hair_var = None
    first = last = None
    for frame in frames:
        t = Usd.TimeCode(float(frame.frame_index))
        verts = model_to_blender_points(np.asarray(frame.vertices, np.float64)).astype(np.float32)
        tris = np.asarray(frame.triangles, np.int32)
        colors = srgb_to_linear(np.asarray(frame.colors, np.float32) / 255.0).astype(np.float32)
        points_attr.Set(Vt.Vec3fArray.FromNumpy(verts), t)
        counts_attr.Set(Vt.IntArray.FromNumpy(np.full(len(tris), 3, np.int32)), t)
        indices_attr.Set(Vt.IntArray.FromNumpy(tris.reshape(-1)), t)
        lo, hi = verts.min(axis=0), verts.max(axis=0)
        extent_attr.Set(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]), t)
        color_var.Set(Vt.Vec3fArray.FromNumpy(colors), t)
        if frame.hair is not None:
            if hair_var is None:
                hair_var = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar(HAIR_PRIMVAR, Sdf.ValueTypeNames.FloatArray,
                                                                   UsdGeom.Tokens.vertex)
            hair_var.Set(Vt.FloatArray.FromNumpy(np.asarray(frame.hair, np.float32)), t)
        first = frame.frame_index if first is None else min(first, frame.frame_index)
        last = frame.frame_index if last is None else max(last, frame.frame_index)
    if first is None:
        raise ValueError("write_mesh_sequence needs at least one frame")
    stage.SetStartTimeCode(float(first))
    stage.SetEndTimeCode(float(last))
    stage.GetRootLayer().Save()
    del stage
    tmp.replace(path)
    return path


def read_mesh_sequence(path: str | Path, prim_path: str = "/MonoNPHM/head"):
    """The frames of a file ``write_mesh_sequence`` wrote -> (fps, iterator of ``FrameMesh``: vertices in metres,
    model axes; colours None). Frames are read one at a time."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath(prim_path)) if stage is not None else None
    if mesh is None or not mesh.GetPrim().IsValid():
        raise ValueError(f"{Path(path).name} has no mesh at {prim_path}")

    def frames(stage=stage):   # the generator holds the stage open (its prims die with it)
        for t in mesh.GetPointsAttr().GetTimeSamples():
            verts = blender_to_model_points(np.asarray(mesh.GetPointsAttr().Get(t), np.float64)).astype(np.float32)
            tris = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(t), np.int32).reshape(-1, 3)
            yield FrameMesh(int(round(t)), verts, tris, None)

    return float(stage.GetTimeCodesPerSecond()), frames()


def write_usd_sequence(path: str | Path, frames: Iterable[tuple],
                       fps: float, prim_path: str = "/MonoNPHM/head") -> Path:
    """``write_mesh_sequence`` for (source index, vertices, triangles, colours[, hair]) tuples."""
    return write_mesh_sequence(path, (FrameMesh(int(f[0]), *f[1:]) for f in frames), fps, prim_path)


def external_dependencies(path: str | Path) -> list[str]:
    """Every asset a USD layer would pull in from elsewhere: sublayers, references, payloads and asset-valued
    attributes (the layer is opened alone, nothing it names is resolved or read)."""
    from pxr import Sdf

    layer = Sdf.Layer.OpenAsAnonymous(str(path))
    if layer is None:
        raise ValueError(f"{Path(path).name} is not a readable USD layer")
    return sorted(set(layer.GetCompositionAssetDependencies()) | set(layer.GetExternalAssetDependencies()))
