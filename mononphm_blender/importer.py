"""Import a result package into the scene (the public API; headless-safe, no operator context needed).

::

    from mononphm_blender import importer
    result = importer.import_package(bpy.context, "/path/to/RESULT")        # mode from the package
    result = importer.import_package(bpy.context, path, mode="SHAPE_KEYS", clip=bpy.data.movieclips["take"])

Fixed topology → one mesh object ("head") with a relative shape key per tracked frame (0→1→0 LINEAR keys,
so strided tracking blends between tracked neighbours); per-frame meshes → the USD sequence through Blender's
USD importer (MeshSequenceCache, colours kept). Both get the head pose as object animation
(conventions.head_world_matrices; mesh data in Blender axes via MODEL_TO_BLENDER), the camera
(camera_world_matrix + blender_camera_from_intrinsics) with the clip as background, scene fps/frame range,
per-frame quality as animated custom properties, markers on frames whose landmark error exceeds a threshold,
and ARKit weights (when present) as animated custom properties named by channel. Re-importing the same package
updates the objects it created before (found by the package path stored on them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from .blender import anim, mesh as meshes, scene as scenes
from .contracts import arkit, conventions, result_format
from .core.layout import (LINEAR, bad_frames, decompose_similarity, keyframe_co, pile_keyframes,
                          rotations_to_euler_xyz)

MODES = ("AUTO", "SHAPE_KEYS", "MESHES", "BOTH")
COLOUR_SOURCES = ("MODEL", "BAKED", "TEXTURE")
USABLE_STATUSES = result_format.USABLE_STATUSES
MARKER_PREFIX = "MNPHM "
DEFAULT_ERROR_THRESHOLD_PX = 5.0
PROP_PACKAGE = "mononphm_package"
PROP_ROLE = "mononphm_role"
PROP_CLIP_START = "mononphm_clip_start"
QUALITY_PROPS = result_format.QUALITY_KEYS


@dataclass
class ImportResult:
    package: str
    head: object = None  # shape-key mesh object (or None)
    usd_object: object = None  # MeshSequenceCache object (or None)
    camera: object = None
    clip: object = None
    collection: object = None
    source_indices: list = field(default_factory=list)
    scene_frames: list = field(default_factory=list)
    bad_frames: list = field(default_factory=list)  # (scene frame, landmark error px)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def head_object(self):
        """The object carrying the head pose: the shape-key mesh, else the USD mesh sequence."""
        return self.head if self.head is not None else self.usd_object


# --- paths ------------------------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(bpy.path.abspath(path)))


def stored_path(path: str) -> str:
    """Relative to the .blend when it is saved (``//…``), absolute otherwise."""
    path = os.path.abspath(bpy.path.abspath(path))
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(path)
        except ValueError:  # other drive (Windows)
            return path
    return path


def find_objects(package_path: str) -> dict[str, object]:
    """Objects created by earlier imports of this package, by role."""
    want = _norm(package_path)
    out = {}
    for obj in bpy.data.objects:
        stored = obj.get(PROP_PACKAGE)
        if stored and _norm(stored) == want:
            out.setdefault(obj.get(PROP_ROLE, ""), obj)
    return out


def track_clip_start(settings) -> int | None:
    """Scene frame of source frame 0 for the scene's track settings: the Movie Clip's start frame (clip input) or
    the Start Frame (file input); None for a clip input without a clip (the imported package then decides)."""
    if settings.input_kind == "CLIP":
        return None if settings.clip is None else int(settings.clip.frame_start)
    return int(settings.clip_start)


def package_clip_start(objects: dict, clip=None) -> int:
    """Scene frame of source frame 0 of an imported package (``find_objects``): its Movie Clip's start frame, else
    the start stored on its head (or USD) object at import, else 1."""
    if clip is not None:
        return int(clip.frame_start)
    holder = objects.get("head") or objects.get("usd")
    if holder is not None and PROP_CLIP_START in holder:
        return int(holder[PROP_CLIP_START])
    return 1


def _tag(obj, package_path: str, role: str, clip_start: int) -> None:
    obj[PROP_PACKAGE] = stored_path(package_path)
    obj[PROP_ROLE] = role
    obj[PROP_CLIP_START] = int(clip_start)


def _collection(scene, name: str):
    coll = bpy.data.collections.get(name)
    if coll is None:
        coll = bpy.data.collections.new(name)
    if coll.name not in scene.collection.children and not any(
            c == coll for c in scene.collection.children_recursive):
        scene.collection.children.link(coll)
    return coll


def _link(obj, coll) -> None:
    if obj.name not in coll.objects:
        coll.objects.link(obj)


# --- the import -------------------------------------------------------------------------------------------------

# Blender's frame limits (MINAFRAME / MAXFRAME): keys and scene ranges outside them are refused.
MIN_SCENE_FRAME, MAX_SCENE_FRAME = -1048574, 1048574
# Data-blocks an import may create; an import that fails removes the ones it created.
_CREATED_TYPES = ("objects", "meshes", "cameras", "collections", "actions", "movieclips", "materials", "cache_files")


class _SceneSnapshot:
    """What an import may change, taken before it starts, so a failed import leaves the file as it was: new
    data-blocks are removed and the scene's timing, camera, markers and panel state are restored."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.ids = {kind: set(getattr(bpy.data, kind)) for kind in _CREATED_TYPES}
        render = scene.render
        self.timing = (render.fps, render.fps_base, scene.frame_start, scene.frame_end, scene.frame_current,
                       render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y)
        self.camera = scene.camera
        self.markers = [(m.name, m.frame) for m in scene.timeline_markers]
        settings = getattr(scene, "mononphm", None)
        self.panel = None if settings is None else (settings.last_package,
                                                    [(b.frame, b.error) for b in settings.bad_frames])

    def restore(self) -> None:
        for kind in reversed(_CREATED_TYPES):  # objects before the data they use
            data = getattr(bpy.data, kind)
            for block in [b for b in data if b not in self.ids[kind]]:
                data.remove(block)
        scene, render = self.scene, self.scene.render
        (render.fps, render.fps_base, scene.frame_start, scene.frame_end, scene.frame_current,
         render.resolution_x, render.resolution_y, render.pixel_aspect_x, render.pixel_aspect_y) = self.timing
        if self.camera is None or self.camera.name in bpy.data.objects:
            scene.camera = self.camera
        scene.timeline_markers.clear()
        for name, frame in self.markers:
            scene.timeline_markers.new(name, frame=frame)
        if self.panel is not None:
            settings = scene.mononphm
            settings.last_package = self.panel[0]
            settings.bad_frames.clear()
            for frame, error in self.panel[1]:
                item = settings.bad_frames.add()
                item.frame, item.error = frame, error


def import_package(context, path: str | os.PathLike, *, mode: str = "AUTO", clip=None, clip_start: int | None = None,
                   error_threshold: float | None = None, setup_camera: bool = True, setup_scene: bool = True,
                   load_source_clip: bool = True, colour_source: str | None = None,
                   include_hair: bool | None = None) -> ImportResult:
    """Import (or update) the result package at ``path``; see the module docstring.

    ``colour_source`` (COLOUR_SOURCES; None: the scene's setting) picks what the head shows: the model's albedo,
    the colours baked from the video, or the baked texture (each falls back to the next available one).
    ``include_hair`` (None: the scene's setting) shows or leaves out the hair volume of a model with hair (its own
    material slot and vertex group / geometry nodes; leaving it out is a modifier, so it can come back).

    All or nothing: any error leaves the scene as it was (new data-blocks removed, timing, camera and markers
    restored) and is raised again. Raises result_format.PackageError (message + hint) for packages that cannot be
    read or placed on Blender's timeline.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if colour_source is None:
        colour_source = getattr(getattr(context.scene, "mononphm", None), "colour_source", "TEXTURE")
    if colour_source not in COLOUR_SOURCES:
        raise ValueError(f"colour_source must be one of {COLOUR_SOURCES}")
    if include_hair is None:
        include_hair = bool(getattr(getattr(context.scene, "mononphm", None), "import_hair", True))
    snapshot = _SceneSnapshot(context.scene)
    try:
        return _import(context, path, mode, clip, clip_start, error_threshold, setup_camera, setup_scene,
                       load_source_clip, colour_source, include_hair)
    except BaseException:
        snapshot.restore()
        raise


def _import(context, path, mode, clip, clip_start, error_threshold, setup_camera, setup_scene,
            load_source_clip, colour_source, include_hair) -> ImportResult:
    t0 = time.perf_counter()
    scene = context.scene
    root = Path(bpy.path.abspath(str(path)))
    package = result_format.ResultPackage(root)
    manifest = package.manifest
    result = ImportResult(package=str(root))
    if mode == "AUTO":
        mode = {"shape_keys": "SHAPE_KEYS", "meshes": "MESHES", "both": "BOTH"}.get(
            manifest.get("output_mode", "shape_keys"), "SHAPE_KEYS")
    existing = find_objects(str(root))

    # which frames
    records = package.frames
    usable = [i for i, r in enumerate(records) if r["status"] in USABLE_STATUSES]
    arrays = package.frame_arrays() if records else {}
    arrays = {k: v[usable] for k, v in arrays.items()}
    indices = np.array([records[i]["index"] for i in usable], dtype=np.int64)

    # clip and frame mapping
    if clip is None and load_source_clip:
        clip = _source_clip(manifest, existing, result)
        if clip is not None and clip_start is not None:
            clip.frame_start = int(clip_start)  # keep the background aligned with the requested mapping
    result.clip = clip
    if clip_start is None:
        clip_start = package_clip_start(existing, clip)
    frames = np.array([conventions.scene_frame(clip_start, i) for i in indices], dtype=np.int64)
    source = manifest["source"]
    last = clip_start + max(int(source.get("frame_count") or 0) - 1, int(indices.max()) if len(indices) else 0)
    if clip_start < MIN_SCENE_FRAME or last > MAX_SCENE_FRAME:
        raise result_format.PackageError(
            f"the package's frames would land on scene frames {clip_start}..{last}, beyond Blender's frame range "
            f"{MIN_SCENE_FRAME}..{MAX_SCENE_FRAME}", "Use an earlier clip start frame, or track a shorter range.")
    result.source_indices = indices.tolist()
    result.scene_frames = frames.tolist()

    coll = _collection(scene, f"MonoNPHM {root.name}")
    result.collection = coll

    if mode in ("SHAPE_KEYS", "BOTH"):
        result.head = _import_shape_keys(package, arrays, indices, frames, existing.get("head"), coll, root, result)
        _tag(result.head, str(root), "head", clip_start)
        try:
            set_colour_source(result.head, colour_source, package.texture_path)
        except result_format.PackageError as exc:
            result.warnings.append(f"{exc.message} {exc.hint}")
            set_colour_source(result.head, colour_source, None)
    if mode in ("MESHES", "BOTH"):
        result.usd_object = _import_usd(context, package, existing.get("usd"), coll, clip_start, result)
        if result.usd_object is not None:
            _tag(result.usd_object, str(root), "usd", clip_start)
            if package.canonical_mesh().hair is not None:
                meshes.set_usd_hair(result.usd_object)
                meshes.assign_material(result.usd_object, meshes.color_material(
                    "MonoNPHM Hair Vertex Colour", meshes.USD_COLOR_ATTRIBUTE), meshes.HAIR_SLOT)
            if result.head is not None:  # both: the shape-key head is the one shown by default
                if result.usd_object.name in context.view_layer.objects:
                    result.usd_object.hide_set(True)
                result.usd_object.hide_render = True

    pose_objects = [o for o in (result.head, result.usd_object) if o is not None]
    for obj in pose_objects:
        meshes.show_hair(obj, include_hair)
    if len(indices) and pose_objects:
        matrices = conventions.head_world_matrices(arrays["scale"], arrays["rotation"], arrays["translation"])
        quality = {k: package.quality(k)[usable] for k in QUALITY_PROPS}
        arkit_weights = arrays.get("arkit")
        carrier = pose_objects[0]
        for obj in pose_objects:
            _animate_object(obj, frames, matrices, quality if obj is carrier else None,
                            arkit_weights if obj is carrier else None)

    if setup_camera:
        intr = package.intrinsics()
        cam = existing.get("camera")
        cam = scenes.ensure_camera(coll, f"MonoNPHM Camera {root.name}", cam)
        scenes.setup_camera(scene, cam, intr, clip)
        _tag(cam, str(root), "camera", clip_start)
        result.camera = cam

    if setup_scene:
        if clip is not None:
            start, end = scenes.clip_frame_range(clip)
        elif source.get("frame_count"):
            start, end = clip_start, clip_start + int(source["frame_count"]) - 1
        elif len(frames):
            start, end = int(frames.min()), int(frames.max())
        else:
            start, end = scene.frame_start, scene.frame_end
        scenes.set_scene_timing(scene, package.fps, start, end)

    threshold = error_threshold
    if threshold is None:
        settings = getattr(scene, "mononphm", None)
        threshold = float(settings.error_threshold) if settings is not None else DEFAULT_ERROR_THRESHOLD_PX
    errors = package.quality("landmark_error_px")[usable] if len(usable) else np.zeros(0)
    result.bad_frames = set_quality_markers(scene, frames, errors, threshold)
    if result.head is not None or result.usd_object is not None:
        settings = getattr(scene, "mononphm", None)
        if settings is not None:
            settings.last_package = stored_path(str(root))
    result.seconds = time.perf_counter() - t0
    return result


def to_blender(points: np.ndarray) -> np.ndarray:
    """conventions.MODEL_TO_BLENDER applied in float32, column by column (a (N,3)@(3,3) matmul over millions of
    points is ~10× slower)."""
    p = np.asarray(points, dtype=np.float32)
    m = np.asarray(conventions.MODEL_TO_BLENDER, dtype=np.float32)
    out = np.empty(p.shape, dtype=np.float32)
    for row in range(3):
        acc = None
        for col in range(3):
            if m[row, col] != 0.0:
                term = p[..., col] * m[row, col] if m[row, col] != 1.0 else p[..., col]
                acc = term.copy() if acc is None else acc + term
        out[..., row] = 0.0 if acc is None else acc
    return out


def _source_clip(manifest: dict, existing: dict, result: ImportResult):
    """The background clip: the one an earlier import used, else the package's source when it is an existing video
    or image file (anything else is never opened; the result imports without a background)."""
    src = manifest["source"].get("path")
    cam = existing.get("camera")
    if cam is not None and cam.type == "CAMERA":
        for bg in cam.data.background_images:
            if bg.source == "MOVIE_CLIP" and bg.clip is not None:
                return bg.clip
    if not src:
        return None
    clip = scenes.load_clip(src) if os.path.exists(src) else None
    if clip is None:
        why = "is not a video or image file" if os.path.exists(src) else "is missing"
        result.warnings.append(f"the source clip {src} {why}; imported without the background clip (choose the "
                               "clip in the panel to show it)")
    return clip


def _import_shape_keys(package, arrays, indices, frames, head, coll, root: Path, result: ImportResult):
    canon = package.canonical_mesh()
    verts_b = to_blender(canon.vertices)
    tris = canon.triangles
    name = f"MonoNPHM Head {root.name}"
    if head is not None and head.type == "MESH" and meshes.mesh_matches(head.data, verts_b, tris):
        me = head.data
        if me.shape_keys is not None:
            meshes.set_key_coords(me.shape_keys.key_blocks[0], verts_b)
        meshes.set_vertex_positions(me, verts_b)
    else:
        me = meshes.build_mesh(name, verts_b, tris)
        if head is None or head.type != "MESH":
            head = bpy.data.objects.new(name, me)
        else:
            old = head.data
            head.data = me
            if old.users == 0:
                bpy.data.meshes.remove(old)
    _link(head, coll)
    meshes.set_point_colors(me, meshes.ALBEDO_ATTRIBUTE, canon.albedo)
    baked = me.color_attributes.get(meshes.BAKED_ATTRIBUTE)
    if canon.baked_albedo is not None:
        meshes.set_point_colors(me, meshes.BAKED_ATTRIBUTE, canon.baked_albedo)
    elif baked is not None:  # re-tracked without a bake: never show stale colours
        me.color_attributes.remove(baked)
    if canon.uv is not None:
        meshes.set_corner_uv(me, canon.uv)
    meshes.set_hair(head, canon.hair)
    if "vertices" in arrays and len(indices):
        coords = to_blender(arrays["vertices"])
        names = [meshes.key_name(i) for i in indices]
        meshes.sync_frame_shape_keys(head, names, coords)
        key = head.data.shape_keys
        fcurves = anim.fresh_action(key, f"MonoNPHM Shapes {root.name}")
        # Index paths (key_blocks[12]) instead of name paths: resolving 300 names per frame costs several ms
        # (a linear string search per F-curve); indices are taken from the keys as they are now.
        for name_, co in zip(names, pile_keyframes(frames)):
            anim.add_fcurve(fcurves, f"key_blocks[{key.key_blocks.find(name_)}].value", co, interpolation=LINEAR)
    elif len(indices):
        result.warnings.append("the package has no per-frame vertices; only the head pose is animated")
    return head


def set_colour_source(head, source: str, texture: Path | None) -> str:
    """Show the model albedo, the baked colours or the texture (``texture``: the package's PNG) on the shape-key
    head, falling back to what the package has. Returns the source shown."""
    me = head.data
    if source == "TEXTURE" and texture is not None and me.uv_layers.get(meshes.UV_LAYER) is not None:
        mat = meshes.image_material(f"MonoNPHM Texture {texture.parent.name}", str(texture))
        shown = "TEXTURE"
    elif source in ("BAKED", "TEXTURE") and me.color_attributes.get(meshes.BAKED_ATTRIBUTE) is not None:
        mat = meshes.color_material("MonoNPHM Baked", meshes.BAKED_ATTRIBUTE)
        meshes.show_point_colors(me, meshes.BAKED_ATTRIBUTE)
        shown = "BAKED"
    else:
        mat = meshes.color_material("MonoNPHM Albedo", meshes.ALBEDO_ATTRIBUTE)
        meshes.show_point_colors(me, meshes.ALBEDO_ATTRIBUTE)
        shown = "MODEL"
    meshes.assign_material(head, mat)
    if head.vertex_groups.get(meshes.HAIR_GROUP) is not None:  # the hair: its own material, same colours
        hair = {"TEXTURE": lambda: meshes.image_material(f"MonoNPHM Hair Texture {texture.parent.name}", str(texture)),
                "BAKED": lambda: meshes.color_material("MonoNPHM Hair Baked", meshes.BAKED_ATTRIBUTE),
                "MODEL": lambda: meshes.color_material("MonoNPHM Hair Albedo", meshes.ALBEDO_ATTRIBUTE)}[shown]()
        meshes.assign_material(head, hair, meshes.HAIR_SLOT)
    return shown


def apply_hair_visibility(scene) -> None:
    """Show or leave out the hair of the package last imported into ``scene`` (the scene's ``import_hair``)."""
    settings = getattr(scene, "mononphm", None)
    path = settings.last_package if settings is not None else ""
    for obj in (find_objects(path).values() if path else ()):
        if obj.type == "MESH":
            meshes.show_hair(obj, settings.import_hair)


def apply_colour_source(scene) -> str | None:
    """Switch the head of the package last imported into ``scene`` to the scene's colour source."""
    settings = getattr(scene, "mononphm", None)
    path = settings.last_package if settings is not None else ""
    head = find_objects(path).get("head") if path else None
    if head is None or head.type != "MESH":
        return None
    try:
        texture = result_format.ResultPackage(bpy.path.abspath(path)).texture_path
    except result_format.PackageError:
        texture = None
    return set_colour_source(head, settings.colour_source, texture)


def check_usd_dependencies(package_root: Path) -> None:
    """Refuse (PackageError) a package whose USD file pulls in sublayers, references or assets from outside it:
    Blender's USD importer would follow them. The add-on has no USD library, so the backend's ``validate`` checks."""
    from . import contracts, prefs
    from .core import command, jobs

    python = prefs.backend_python()
    if not python:
        raise result_format.PackageError("the per-frame meshes (meshes.usdc) cannot be checked: no backend is set up",
                                         "Set up the backend in the add-on preferences, or import the shape keys.")
    root = contracts.backend_root()
    try:
        error = jobs.run_validate(command.validate_argv(python, package_root), cwd=str(root),
                                  env=command.backend_env(root))
    except RuntimeError as exc:
        hint = "Check the backend in the add-on preferences, or import the shape keys."
        raise result_format.PackageError(f"meshes.usdc could not be checked ({exc})", hint) from None
    if error is not None:
        raise result_format.PackageError(*error)


def _import_usd(context, package, usd_obj, coll, clip_start: int, result: ImportResult):
    usd = package.usd_path
    if usd is None:
        result.warnings.append("the package has no per-frame meshes (USD); re-track with output 'meshes' or 'both'")
        return None
    check_usd_dependencies(package.root)  # before Blender opens the file, every time (it may have changed)
    mod = None
    if usd_obj is not None:
        mod = next((m for m in usd_obj.modifiers if m.type == "MESH_SEQUENCE_CACHE"), None)
    if mod is None or mod.cache_file is None:
        before = set(bpy.data.objects)
        kwargs = dict(filepath=str(usd), set_frame_range=False, import_materials=False, read_mesh_colors=True,
                      import_cameras=False, import_lights=False, relative_path=bool(bpy.data.filepath))
        with context.temp_override(scene=context.scene) if hasattr(context, "temp_override") else _null():
            bpy.ops.wm.usd_import(**kwargs)
        new = [o for o in bpy.data.objects if o not in before]
        mesh_objs = [o for o in new if any(m.type == "MESH_SEQUENCE_CACHE" for m in o.modifiers)]
        if not mesh_objs:
            for o in new:
                bpy.data.objects.remove(o)
            raise result_format.PackageError(f"{usd.name} holds no animated mesh",
                                             "Re-track with the per-frame mesh output to rewrite it.")
        obj = mesh_objs[0]
        for o in new:  # drop wrapper empties etc.
            if o is not obj:
                bpy.data.objects.remove(o)
        obj.parent = None
        for c in list(obj.users_collection):
            c.objects.unlink(obj)
        if usd_obj is not None:  # replace a broken previous object
            bpy.data.objects.remove(usd_obj)
        obj.name = f"MonoNPHM Meshes {package.root.name}"
        usd_obj = obj
        mod = next(m for m in obj.modifiers if m.type == "MESH_SEQUENCE_CACHE")
    cache = mod.cache_file
    cache.filepath = stored_path(str(usd))  # also forces a reload when the file changed
    cache.frame_offset = float(clip_start)  # USD time code = source index; scene frame = clip start + index
    cache.scale = 1.0
    mod.read_data = {"VERT", "POLY", "UV", "COLOR", "ATTRIBUTES"}
    _link(usd_obj, coll)
    meshes.assign_material(usd_obj, meshes.color_material("MonoNPHM Vertex Colour", meshes.USD_COLOR_ATTRIBUTE))
    return usd_obj


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _animate_object(obj, frames: np.ndarray, matrices: np.ndarray, quality: dict | None,
                    arkit_weights: np.ndarray | None):
    """Pose (location / Euler XYZ / scale), quality and ARKit custom properties as one object action."""
    loc, rot, scale = decompose_similarity(matrices)
    eul = rotations_to_euler_xyz(rot)
    obj.rotation_mode = "XYZ"
    obj.matrix_world = Matrix(matrices[0].tolist())
    fcurves = anim.fresh_action(obj, f"MonoNPHM Pose {obj.name}")
    for path, values in (("location", loc), ("rotation_euler", eul), ("scale", scale)):
        for axis in range(3):
            anim.add_fcurve(fcurves, path, keyframe_co(frames, values[:, axis]), index=axis)
    if quality:
        for key, values in quality.items():
            if not np.isfinite(values).any():
                continue
            obj[key] = float(np.nanmean(values))
            anim.add_fcurve(fcurves, f'["{key}"]', keyframe_co(frames, values))
    if arkit_weights is not None:
        for name, column in zip(arkit.ARKIT_NAMES, np.asarray(arkit_weights, dtype=np.float32).T):
            obj[name] = float(column[0])
            try:
                obj.id_properties_ui(name).update(min=0.0, max=1.0, soft_min=0.0, soft_max=1.0)
            except (AttributeError, TypeError):
                pass
            anim.add_fcurve(fcurves, f'["{name}"]', keyframe_co(frames, column))


def scene_frame_of(scene, source_index: int, package_path: str | None = None) -> int:
    """Scene frame that shows source frame ``source_index`` of the package last imported into ``scene``
    (or of ``package_path``): clip start + source index."""
    path = package_path
    if path is None:
        settings = getattr(scene, "mononphm", None)
        path = settings.last_package if settings is not None else ""
    objs = find_objects(path) if path else {}
    if not (objs.get("head") or objs.get("usd")):
        objs = {"head": next((o for o in scene.objects if PROP_CLIP_START in o and o.get(PROP_ROLE) in ("head", "usd")),
                             None)}
    return conventions.scene_frame(package_clip_start(objs), source_index)


# --- quality markers --------------------------------------------------------------------------------------------

def set_quality_markers(scene, frames: np.ndarray, errors: np.ndarray, threshold: float) -> list[tuple[int, float]]:
    """Timeline markers (and the panel's list) on frames whose landmark error exceeds ``threshold`` px."""
    for marker in list(scene.timeline_markers):
        if marker.name.startswith(MARKER_PREFIX):
            scene.timeline_markers.remove(marker)
    bad = bad_frames(frames, errors, threshold)
    for frame, err in bad:
        scene.timeline_markers.new(f"{MARKER_PREFIX}{err:.1f}px", frame=frame)
    settings = getattr(scene, "mononphm", None)
    if settings is not None:
        settings.bad_frames.clear()
        for frame, err in bad:
            item = settings.bad_frames.add()
            item.frame = frame
            item.error = err
        settings.bad_frames_index = -1  # selecting a row jumps to its frame; importing must not
    return bad


def refresh_quality_markers(scene, threshold: float) -> list[tuple[int, float]]:
    """Recompute markers for the package last imported into ``scene`` (threshold changed)."""
    settings = getattr(scene, "mononphm", None)
    path = settings.last_package if settings is not None else ""
    if not path:
        return []
    try:
        package = result_format.ResultPackage(bpy.path.abspath(path))
    except result_format.PackageError:
        return []
    clip_start = package_clip_start(find_objects(path))
    usable = [i for i, r in enumerate(package.frames) if r["status"] in USABLE_STATUSES]
    frames = np.array([conventions.scene_frame(clip_start, package.frames[i]["index"]) for i in usable])
    return set_quality_markers(scene, frames, package.quality("landmark_error_px")[usable], threshold)
