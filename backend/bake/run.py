"""``python -m backend bake RESULT``: bake the subject's colours (and optionally a texture) into a result package.

Also run at the end of every ``track``. Reads the package's tracked frames and the clip it came from; writes
``baked_albedo`` / ``baked_confidence`` (and ``uv`` + ``texture.png``) through ``ResultWriter.write_bake``, so a
crash leaves the previous bake in place.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..result_format import PackageError, ResultPackage, ResultWriter, read_manifest
from .albedo import BakeConfig, bake_vertices
from .frames import decode_frames, package_shading, select_frames


@dataclass(frozen=True)
class BakeRequest:
    """What to bake."""

    frames: Optional[str] = None
    """Source frames to bake from (``FrameRange`` string, e.g. ``"100:200"``); None: every tracked frame."""
    texture: bool = False
    """Also unwrap the canonical mesh and bake a texture."""
    texture_frames: Optional[Sequence[int]] = None
    """Source frames for the texture; None: ``BakeConfig.texture_frames`` frames picked automatically among the
    baked ones (frontal, sharp, neutral)."""
    texture_size: int = 2048
    """Texture width and height in pixels."""


def bake_package(root, request: BakeRequest = BakeRequest(), cfg: BakeConfig = BakeConfig(),
                 writer: Optional[ResultWriter] = None, events=None) -> dict:
    """Bake into the package at ``root`` (through ``writer`` when the caller holds one, e.g. tracking).
    Returns the settings recorded as the manifest's ``bake`` plus timings."""
    t0 = time.perf_counter()
    pkg = ResultPackage(root)
    if not (pkg.manifest.get("has_canonical_mesh") and pkg.manifest.get("has_identity")):
        raise PackageError(f"{pkg.root} has no fitted identity yet, so there is nothing to bake onto",
                           "Track the clip first (python -m backend track CLIP --out RESULT).")
    vertex_frames = select_frames(pkg, request.frames, cfg.max_frames)
    tracked = {f["index"] for f in pkg.frames if f["status"] == "tracked"}
    user_tex = sorted({int(i) for i in request.texture_frames or ()})
    untracked = [i for i in user_tex if i not in tracked]
    if untracked:
        raise PackageError(f"texture frames {untracked} are not tracked frames of {pkg.root}",
                           "Pick texture frames among the tracked ones (see the manifest).")
    if request.texture_size < 64 or request.texture_size > 8192:
        raise PackageError(f"texture size {request.texture_size} is outside 64..8192",
                           "Choose a texture size such as 1024, 2048 or 4096.")
    indices = np.union1d(vertex_frames, np.asarray(user_tex, np.int64))

    def progress(done, total, frame):
        if events is not None:
            events.progress("bake", done, total, frame)

    frames = decode_frames(pkg, indices, progress)
    mesh = pkg.canonical_mesh()
    shading = package_shading(pkg).white_balanced()
    K = pkg.intrinsics().matrix()
    rows = np.searchsorted(indices, vertex_frames)
    baked = bake_vertices(frames.subset(rows), mesh.triangles, K, shading, mesh.albedo, cfg)
    settings = {"frames": [int(i) for i in vertex_frames], "texture_frames": None, "texture_size": None,
                "light_colour": [round(float(c), 4) for c in package_shading(pkg).light_colour()]}
    uv = png = None
    if request.texture:
        from .texture import bake_texture, encode_png, frame_scores, unwrap
        if user_tex:
            tex_rows = np.searchsorted(indices, user_tex)
        else:
            arrays = pkg.frame_arrays(["rotation", "z_exp"])
            at = np.searchsorted(pkg.frame_indices, vertex_frames)
            score = frame_scores(frames.subset(rows), arrays["rotation"][at], arrays["z_exp"][at])
            tex_rows = np.sort(rows[np.argsort(-score, kind="stable")[: cfg.texture_frames]])
        uv = unwrap(mesh.vertices, mesh.triangles)
        image = bake_texture(frames.subset(tex_rows), mesh.triangles, K, shading, uv, baked.colours,
                             request.texture_size, cfg)
        png = encode_png(image)
        settings.update(texture_frames=[int(i) for i in indices[tex_rows]], texture_size=int(request.texture_size))
    settings["seconds"] = round(time.perf_counter() - t0, 2)
    if writer is None:
        state = read_manifest(root)["state"]
        writer = ResultWriter(root, pkg.manifest)
        try:
            writer.write_bake(baked.colours, baked.confidence, settings, uv, png)
        finally:
            writer.finish(state)
    else:
        writer.write_bake(baked.colours, baked.confidence, settings, uv, png)
    return settings


def parse_frame_list(text: Optional[str]) -> Optional[list]:
    """``"10,25,40"`` -> [10, 25, 40]; None or "" -> None."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from ..protocol import BadInputError
        raise BadInputError(f"--texture-frames {text!r} is not a comma-separated list of frame numbers",
                            "Example: --texture-frames 10,25,40") from None


def run_bake(args, events=None) -> Path:
    """The ``bake`` sub-command."""
    from ..model.parallel import set_threads
    from ..tracking.run import auto_threads
    set_threads(int(getattr(args, "threads", 0) or 0) or auto_threads())
    request = BakeRequest(frames=args.frames, texture=bool(args.texture or args.texture_frames),
                          texture_frames=parse_frame_list(args.texture_frames), texture_size=args.texture_size)
    cfg = dataclasses.replace(BakeConfig(), max_frames=args.max_frames)
    bake_package(Path(args.package), request, cfg, events=events)
    return Path(args.package)
