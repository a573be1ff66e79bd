"""``python -m backend bake RESULT``: bake the subject's colours (and optionally a texture) into a result package.

``bake`` works on decoded frames in memory; a tracking run calls it with the frames and poses it holds (it never
reads its package back), ``bake_package`` re-reads a finished package's tracked frames and the clip it came from.
Both write ``baked_albedo`` / ``baked_confidence`` (and ``uv`` + ``texture.png``) through
``ResultWriter.write_bake``, so a crash leaves the previous bake in place. A re-bake also recolours the package's
per-frame USD meshes: the new file is written beside the old one first and replaces it right after the colours,
so the package never loses a result and its two colourings differ only if the process dies between two renames.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..contracts.result_format import CanonicalMesh, PackageError, ResultPackage, ResultWriter
from ..contracts.track_config import check_texture_size
from .albedo import BakeConfig, BakedColours, FrameBatch, Lighting, Shading, bake_vertices
from .frames import package_frames, package_shading, select_frames


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


@dataclass
class BakeResult:
    """What a bake writes: vertex colours, the manifest's ``bake`` settings, and the texture (uv + PNG) or None."""

    colours: BakedColours
    settings: dict
    uv: Optional[np.ndarray] = None
    png: Optional[bytes] = None

    def write(self, writer: ResultWriter, mesh: CanonicalMesh) -> None:
        writer.write_bake(mesh, self.colours.colours, self.colours.confidence, self.settings, self.uv, self.png)


def bake(frames: FrameBatch, indices: np.ndarray, vertex_rows: np.ndarray, mesh: CanonicalMesh, K: np.ndarray,
         fitted: Shading, request: BakeRequest = BakeRequest(), cfg: BakeConfig = BakeConfig(),
         rotation: Optional[np.ndarray] = None, z_exp: Optional[np.ndarray] = None) -> BakeResult:
    """Bake from decoded frames: ``indices`` (T,) their sorted source indices, ``vertex_rows`` the rows the vertex
    colours use. A texture uses the frames ``request.texture_frames`` (among ``indices``) or those of the vertex rows
    that ``rotation`` (T, 3, 3) and expression codes ``z_exp`` (T, E) score best."""
    t0 = time.perf_counter()
    start = Lighting.from_fitted(fitted)
    baked, lighting = bake_vertices(frames.subset(vertex_rows), mesh.triangles, K, start.white_balanced(),
                                    mesh.albedo, cfg)
    settings = {"frames": [int(i) for i in indices[vertex_rows]], "texture_frames": None, "texture_size": None,
                "light_colour": [round(float(c), 4) for c in start.light_colour()],
                "lighting_sh": np.round(lighting.sh.astype(np.float64), 5).tolist(),
                "lighting_bounce": np.round(lighting.bounce.astype(np.float64), 5).tolist()}
    result = BakeResult(baked, settings)
    if request.texture:
        from .texture import bake_texture, encode_png, frame_scores, unwrap
        if request.texture_frames:
            tex_rows = np.searchsorted(indices, sorted(set(request.texture_frames)))
        else:
            score = frame_scores(frames.subset(vertex_rows), rotation[vertex_rows], z_exp[vertex_rows])
            tex_rows = np.sort(vertex_rows[np.argsort(-score, kind="stable")[: cfg.texture_frames]])
        result.uv = unwrap(mesh.vertices, mesh.triangles)
        image = bake_texture(frames.subset(tex_rows), mesh.triangles, K, lighting, result.uv, baked.colours,
                             request.texture_size, cfg, baked.brightness_cap)
        result.png = encode_png(image)
        settings.update(texture_frames=[int(i) for i in indices[tex_rows]], texture_size=int(request.texture_size))
    settings["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def bake_package(root, request: BakeRequest = BakeRequest(), cfg: BakeConfig = BakeConfig(), events=None) -> dict:
    """Re-bake a finished package (``python -m backend bake``): its tracked frames re-decoded from the clip.
    Returns the settings recorded as the manifest's ``bake``."""
    t0 = time.perf_counter()
    pkg = ResultPackage(root)
    if not (pkg.manifest.get("has_canonical_mesh") and pkg.manifest.get("has_identity")):
        raise PackageError(f"{pkg.root} has no fitted identity yet, so there is nothing to bake onto",
                           "Track the clip first (python -m backend track CLIP --out RESULT).")
    vertex_frames = select_frames(pkg, request.frames, cfg.max_frames)
    tracked = {f["index"] for f in pkg.frames if f["status"] == "tracked"}
    untracked = [i for i in request.texture_frames or () if i not in tracked]
    if untracked:
        raise PackageError(f"texture frames {untracked} are not tracked frames of {pkg.root}",
                           "Pick texture frames among the tracked ones (see the manifest).")
    try:
        check_texture_size(request.texture_size)
    except ValueError as e:
        raise PackageError(str(e), "Choose a texture size such as 1024, 2048 or 4096.") from None
    indices = np.union1d(vertex_frames, np.asarray(request.texture_frames or (), np.int64))

    def progress(done, total, frame):
        if events is not None:
            events.progress("bake", done, total, frame)

    frames = package_frames(pkg, indices, progress)
    arrays = pkg.frame_arrays(["rotation", "z_exp"])
    at = np.searchsorted(pkg.frame_indices, indices)
    mesh = pkg.canonical_mesh()
    result = bake(frames, indices, np.searchsorted(indices, vertex_frames), mesh, pkg.intrinsics().matrix(),
                  package_shading(pkg), request, cfg, arrays["rotation"][at], arrays["z_exp"][at])
    state = pkg.manifest["state"]
    writer = ResultWriter(root, pkg.manifest)   # the package lock: no tracking run writes it meanwhile
    staged = None
    try:
        if pkg.usd_path is not None:
            from .posed import recolour_mesh_sequence
            staged = pkg.usd_path.with_name(f".{pkg.usd_path.stem}.rebake{pkg.usd_path.suffix}")
            recolour_mesh_sequence(pkg, result.colours.colours, staged)
        result.settings["seconds"] = round(time.perf_counter() - t0, 2)
        result.write(writer, mesh)
        if staged is not None:
            staged.replace(pkg.usd_path)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        writer.abort(state)
        raise
    writer.finish(state)
    return result.settings


def parse_frame_list(text: Optional[str]) -> Optional[list]:
    """``"10,25,40"`` -> [10, 25, 40]; None or "" -> None."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from ..contracts.protocol import BadInputError
        raise BadInputError(f"--texture-frames {text!r} is not a comma-separated list of frame numbers",
                            "Example: --texture-frames 10,25,40") from None


def run_bake(args, events=None) -> Path:
    """The ``bake`` sub-command."""
    request = BakeRequest(frames=args.frames, texture=bool(args.texture or args.texture_frames),
                          texture_frames=parse_frame_list(args.texture_frames), texture_size=args.texture_size)
    cfg = dataclasses.replace(BakeConfig(), max_frames=args.max_frames)
    bake_package(Path(args.package), request, cfg, events=events)
    return Path(args.package)
