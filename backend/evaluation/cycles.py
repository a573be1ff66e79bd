"""Blender Cycles (CPU) renderer for the synthetic clips: bpy in-process (the ``bpy`` wheel, headless).

Scene (docs/conventions.md, "Blender"): the camera sits at the origin looking along +Y with the lens/shift from
``conventions.blender_camera_from_intrinsics``; head vertices are given in OpenCV camera space and mapped to the
Blender world with ``OPENCV_TO_BLENDER_WORLD``. Soft lighting: a large key area light, a fill and a dim world;
a noise-textured backdrop plane behind the head. Colour management "Standard" so albedo colours stay as baked.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..contracts import conventions


def _setup_scene(width: int, height: int, intr: conventions.Intrinsics, samples: int, threads: int,
                 denoise: bool = False):
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(samples)
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.max_bounces = 4
    scene.cycles.diffuse_bounces = 2
    scene.cycles.glossy_bounces = 1
    scene.cycles.transmission_bounces = 0
    scene.cycles.transparent_max_bounces = 0
    scene.cycles.use_denoising = bool(denoise)
    scene.render.use_persistent_data = True  # keep textures / kernels between the frames
    scene.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        scene.render.threads = int(threads)
    scene.render.resolution_x, scene.render.resolution_y = int(width), int(height)
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"

    # camera
    bc = conventions.blender_camera_from_intrinsics(intr)
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens = bc.lens_mm
    cam_data.sensor_width = bc.sensor_width_mm
    cam_data.sensor_fit = "AUTO"
    cam_data.shift_x, cam_data.shift_y = bc.shift_x, bc.shift_y
    cam_data.clip_start, cam_data.clip_end = 0.05, 20.0
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = bc.pixel_aspect_x, bc.pixel_aspect_y
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    cam.matrix_world = _matrix(conventions.camera_world_matrix())
    scene.camera = cam

    # world: dim, slightly cool ambient
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes.get("Background")
    bg.inputs["Color"].default_value = (0.55, 0.6, 0.7, 1.0)
    bg.inputs["Strength"].default_value = 0.3
    scene.world = world

    # lights (Blender world: camera at origin looking along +Y, Z up); head at y ≈ 0.6
    def area(name, loc, size, energy, colour):
        ld = bpy.data.lights.new(name, "AREA")
        ld.size = size
        ld.energy = energy
        ld.color = colour
        ob = bpy.data.objects.new(name, ld)
        scene.collection.objects.link(ob)
        ob.location = loc
        target = np.array([0.0, 0.62, 0.0])
        d = target - np.array(loc)
        ob.rotation_euler = _look_rotation(d)
        return ob

    area("key", (-0.55, 0.05, 0.45), 1.2, 22.0, (1.0, 0.97, 0.92))
    area("fill", (0.7, 0.15, -0.05), 1.5, 9.0, (0.9, 0.95, 1.0))
    area("rim", (0.2, 1.3, 0.6), 0.8, 6.0, (1.0, 1.0, 1.0))

    # backdrop plane with a noise texture
    import bmesh

    mesh = bpy.data.meshes.new("backdrop")
    bm = bmesh.new()
    bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=2.5)
    bm.to_mesh(mesh)
    bm.free()
    back = bpy.data.objects.new("backdrop", mesh)
    scene.collection.objects.link(back)
    back.location = (0.0, 1.7, 0.0)
    back.rotation_euler = (np.pi / 2, 0.0, 0.0)
    mat = bpy.data.materials.new("backdrop")
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes.get("Principled BSDF")
    noise = nt.nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 3.0
    noise.inputs["Detail"].default_value = 6.0
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (0.05, 0.07, 0.09, 1.0)
    ramp.color_ramp.elements[1].color = (0.35, 0.3, 0.22, 1.0)
    nt.links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.9
    mesh.materials.append(mat)
    return scene


def _matrix(m: np.ndarray):
    from mathutils import Matrix

    return Matrix([list(map(float, row)) for row in np.asarray(m)])


def _look_rotation(direction: np.ndarray):
    """Euler rotation pointing an object's local −Z along ``direction`` with +Y roughly up (world +Z)."""
    from mathutils import Vector

    return Vector(tuple(float(x) for x in direction)).to_track_quat("-Z", "Y").to_euler()


def _head_object(scene, n_vertices: int, triangles: np.ndarray, loop_uv: np.ndarray, texture: np.ndarray,
                 corner_colors: np.ndarray | None = None, corner_material: np.ndarray | None = None):
    import bpy

    mesh = bpy.data.meshes.new("head")
    mesh.vertices.add(n_vertices)
    mesh.loops.add(3 * len(triangles))
    mesh.polygons.add(len(triangles))
    mesh.loops.foreach_set("vertex_index", np.asarray(triangles, np.int32).reshape(-1))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * len(triangles), 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(triangles), 3, np.int32))
    uv_layer = mesh.uv_layers.new(name="UVMap")
    uv_layer.data.foreach_set("uv", np.asarray(loop_uv, np.float32).reshape(-1))
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)
    mesh.shade_smooth()
    obj = bpy.data.objects.new("head", mesh)
    scene.collection.objects.link(obj)

    H, W = texture.shape[:2]
    img = bpy.data.images.new("albedo", W, H, alpha=True, float_buffer=False)
    img.colorspace_settings.name = "sRGB"
    rgba = np.concatenate([texture, np.ones((H, W, 1), np.float32)], -1)
    img.pixels.foreach_set(rgba.astype(np.float32).reshape(-1))
    img.pack()
    mat = bpy.data.materials.new("skin")
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = nt.nodes.get("Principled BSDF")
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.image = img
    tex.interpolation = "Linear"
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.55
    for name in ("Specular IOR Level", "Specular"):
        if name in bsdf.inputs:
            bsdf.inputs[name].default_value = 0.3
            break
    mesh.materials.append(mat)
    if corner_colors is not None and corner_material is not None:
        # second material: per-corner colours (eyeballs), glossy
        attr = mesh.color_attributes.new("corner_albedo", "FLOAT_COLOR", "CORNER")
        lin = conventions.srgb_to_linear(np.clip(np.asarray(corner_colors, np.float64).reshape(-1, 3), 0.0, 1.0))
        attr.data.foreach_set("color", np.concatenate([lin, np.ones((len(lin), 1))], 1).astype(np.float32).ravel())
        eye = bpy.data.materials.new("eye")
        eye.use_nodes = True
        ent = eye.node_tree
        ebsdf = ent.nodes.get("Principled BSDF")
        col = ent.nodes.new("ShaderNodeVertexColor")
        col.layer_name = "corner_albedo"
        ent.links.new(col.outputs["Color"], ebsdf.inputs["Base Color"])
        ebsdf.inputs["Roughness"].default_value = 0.15
        mesh.materials.append(eye)
        mesh.polygons.foreach_set("material_index", np.asarray(corner_material, np.int32))
        mesh.update()
    return obj


def render_sequence(vertices_cam: np.ndarray, triangles: np.ndarray, loop_uv: np.ndarray, texture: np.ndarray,
                    intr: conventions.Intrinsics, out_dir: Path, samples: int = 12, threads: int = 1,
                    denoise: bool = False, log=print, corner_colors: np.ndarray | None = None,
                    corner_material: np.ndarray | None = None) -> list[np.ndarray]:
    """Render one PNG per frame of vertices_cam (T, V, 3) (OpenCV camera, metres) into ``out_dir``.

    triangles (F, 3); loop_uv (F, 3, 2) atlas UVs; texture (H, W, 3) sRGB in [0, 1], row 0 at the bottom.
    Triangles flagged in ``corner_material`` (F,) bool use ``corner_colors`` (F, 3, 3) sRGB instead (eyeballs).
    Returns the frames as (H, W, 3) uint8 RGB arrays.
    """
    import bpy
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = _setup_scene(intr.width, intr.height, intr, samples, threads, denoise)
    obj = _head_object(scene, vertices_cam.shape[1], triangles, loop_uv, texture, corner_colors, corner_material)
    mesh = obj.data
    frames = []
    for i, v in enumerate(vertices_cam):
        t0 = time.time()
        world = np.asarray(v, np.float64) @ conventions.OPENCV_TO_BLENDER_WORLD.T
        mesh.vertices.foreach_set("co", world.astype(np.float32).reshape(-1))
        mesh.update()
        path = out_dir / f"frame_{i:04d}.png"
        scene.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        frames.append(np.asarray(Image.open(path).convert("RGB")))
        if log:
            log(f"rendered frame {i + 1}/{len(vertices_cam)} in {time.time() - t0:.2f} s")
    return frames
