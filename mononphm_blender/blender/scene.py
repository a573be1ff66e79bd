"""Camera, clip background and scene settings (fps, frame range, resolution)."""

from __future__ import annotations

import os

import bpy
from mathutils import Matrix

from ..contracts import conventions
from ..core.layout import fps_and_base


def load_clip(path: str):
    """A MovieClip for a video file, an image sequence (a folder or its first image) or a single image.

    Reuses an already loaded clip with the same file. Returns None when nothing loadable is there: only existing
    files with a video or image suffix (conventions.VIDEO_EXTENSIONS / IMAGE_EXTENSIONS) are ever opened.
    """
    path = bpy.path.abspath(path)
    images, videos = conventions.IMAGE_EXTENSIONS, conventions.VIDEO_EXTENSIONS
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if os.path.splitext(f)[1].lower() in images)
        if not found:
            return None
        path = os.path.join(path, found[0])
    if not os.path.isfile(path) or os.path.splitext(path)[1].lower() not in videos | images:
        return None
    norm = os.path.normcase(os.path.realpath(path))
    for clip in bpy.data.movieclips:
        if os.path.normcase(os.path.realpath(bpy.path.abspath(clip.filepath))) == norm:
            return clip
    try:
        clip = bpy.data.movieclips.load(path, check_existing=True)
    except RuntimeError:
        return None
    if bpy.data.filepath:
        try:
            clip.filepath = bpy.path.relpath(path)
        except ValueError:  # another drive on Windows
            pass
    return clip


def clip_intrinsics(clip):
    """conventions.Intrinsics of a Movie Clip's tracking camera (focal length, sensor, principal point)."""
    cam = clip.tracking.camera
    width, height = int(clip.size[0]), int(clip.size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"movie clip '{clip.name}' has no frames (size {width}x{height})")
    pp = tuple(cam.principal_point_pixels) if hasattr(cam, "principal_point_pixels") else None
    return conventions.intrinsics_from_blender(cam.focal_length, cam.sensor_width, width, height,
                                               principal_point_px=pp, pixel_aspect=cam.pixel_aspect)


def ensure_camera(collection, name: str, existing=None):
    cam_obj = existing
    if cam_obj is None or cam_obj.type != "CAMERA":
        data = bpy.data.cameras.new(name)
        cam_obj = bpy.data.objects.new(name, data)
    if cam_obj.name not in collection.objects:
        collection.objects.link(cam_obj)
    return cam_obj


def setup_camera(scene, cam_obj, intr, clip=None) -> None:
    """Place the camera (conventions.camera_world_matrix), set lens/shift/sensor from the intrinsics and
    the render resolution/pixel aspect; show the clip behind the head."""
    if clip is not None and tuple(clip.size) != (intr.width, intr.height) and clip.size[0] > 0:
        intr = intr.resized(int(clip.size[0]), int(clip.size[1]))
    cam_obj.matrix_world = Matrix(conventions.camera_world_matrix().tolist())
    bc = conventions.blender_camera_from_intrinsics(intr)
    data = cam_obj.data
    data.type = "PERSP"
    data.sensor_fit = "AUTO"
    data.sensor_width = bc.sensor_width_mm
    data.lens = bc.lens_mm
    data.shift_x = bc.shift_x
    data.shift_y = bc.shift_y
    data.clip_start = 0.01
    data.clip_end = 100.0
    render = scene.render
    render.resolution_x = int(intr.width)
    render.resolution_y = int(intr.height)
    render.resolution_percentage = 100
    render.pixel_aspect_x = bc.pixel_aspect_x
    render.pixel_aspect_y = bc.pixel_aspect_y
    scene.camera = cam_obj
    if clip is not None:
        set_background_clip(cam_obj, clip)


def set_background_clip(cam_obj, clip) -> None:
    data = cam_obj.data
    data.show_background_images = True
    bg = next((b for b in data.background_images if b.source == "MOVIE_CLIP"), None)
    if bg is None:
        bg = data.background_images.new()
    bg.source = "MOVIE_CLIP"
    bg.clip = clip
    bg.use_camera_clip = False
    bg.alpha = 1.0
    bg.display_depth = "BACK"
    bg.frame_method = "FIT"
    bg.show_background_image = True


def set_scene_timing(scene, fps: float, frame_start: int, frame_end: int) -> None:
    whole, base = fps_and_base(fps)
    scene.render.fps = whole
    scene.render.fps_base = base
    scene.frame_start = int(frame_start)
    scene.frame_end = max(int(frame_start), int(frame_end))


def clip_frame_range(clip) -> tuple[int, int]:
    return int(clip.frame_start), int(clip.frame_start + max(1, clip.frame_duration) - 1)
