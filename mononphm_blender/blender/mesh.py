"""Mesh, colour attribute, shape-key and material builders (bulk ``foreach_set``, no per-vertex loops)."""

from __future__ import annotations

import bpy
import numpy as np

ALBEDO_ATTRIBUTE = "albedo"
BAKED_ATTRIBUTE = "baked"
UV_LAYER = "UVMap"
USD_COLOR_ATTRIBUTE = "displayColor"
KEY_PREFIX = "frame_"


def key_name(source_index: int) -> str:
    return f"{KEY_PREFIX}{int(source_index):06d}"


def build_mesh(name: str, vertices: np.ndarray, triangles: np.ndarray):
    """A new triangle mesh from (V,3) float and (F,3) int arrays."""
    verts = np.ascontiguousarray(vertices, dtype=np.float32)
    tris = np.ascontiguousarray(triangles, dtype=np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.reshape(-1))
    me.loops.add(tris.size)
    me.loops.foreach_set("vertex_index", tris.reshape(-1))
    me.polygons.add(len(tris))
    me.polygons.foreach_set("loop_start", np.arange(0, tris.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.validate(verbose=False)
    return me


def mesh_matches(me, vertices: np.ndarray, triangles: np.ndarray) -> bool:
    """Same topology (vertex count and triangle indices)?"""
    if len(me.vertices) != len(vertices) or len(me.polygons) != len(triangles):
        return False
    loops = np.empty(len(me.loops), dtype=np.int32)
    me.loops.foreach_get("vertex_index", loops)
    return loops.size == triangles.size and np.array_equal(loops, np.asarray(triangles, np.int32).reshape(-1))


def set_vertex_positions(me, vertices: np.ndarray) -> None:
    pos = me.attributes.get("position")
    data = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1)
    if pos is not None:
        pos.data.foreach_set("vector", data)
    else:
        me.vertices.foreach_set("co", data)
    me.update()


def set_point_colors(me, name: str, rgb_u8: np.ndarray):
    """A BYTE_COLOR point attribute holding sRGB ``rgb_u8`` (V,3) uint8; made active for display/render."""
    attr = me.color_attributes.get(name)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != "BYTE_COLOR"):
        me.color_attributes.remove(attr)
        attr = None
    if attr is None:
        attr = me.color_attributes.new(name, "BYTE_COLOR", "POINT")
    rgba = np.ones((len(rgb_u8), 4), dtype=np.float32)
    rgba[:, :3] = np.asarray(rgb_u8, dtype=np.float32) / 255.0
    attr.data.foreach_set("color_srgb", rgba.reshape(-1))
    show_point_colors(me, name)
    return attr


def show_point_colors(me, name: str) -> None:
    """Make the colour attribute ``name`` the active (viewport and render) one."""
    attr = me.color_attributes.get(name)
    if attr is None:
        return
    me.color_attributes.active_color = attr
    try:
        me.color_attributes.render_color_index = me.color_attributes.active_color_index
    except (AttributeError, TypeError):
        pass


def set_corner_uv(me, uv: np.ndarray, name: str = UV_LAYER):
    """Texture coordinates per triangle corner, (F, 3, 2) float in loop order (one foreach_set)."""
    layer = me.uv_layers.get(name) or me.uv_layers.new(name=name)
    layer.data.foreach_set("uv", np.ascontiguousarray(uv, dtype=np.float32).reshape(-1))
    me.uv_layers.active = layer
    return layer


def _material_nodes(name: str):
    """A material with a Principled BSDF wired to the output: (material, node tree, bsdf)."""
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    elif not mat.node_tree:
        mat.use_nodes = True  # 5.0 still needs it for a fresh material's node tree
    tree = mat.node_tree
    bsdf = next((n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"), None) or \
            tree.nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    if "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = 0.6
    mat.diffuse_color = (0.8, 0.8, 0.8, 1.0)
    return mat, tree, bsdf


def image_material(name: str, image_path: str):
    """A material showing the image at ``image_path`` through the mesh's UV map (reloaded when it changed)."""
    mat, tree, bsdf = _material_nodes(name)
    image = bpy.data.images.load(str(image_path), check_existing=True)
    image.reload()
    node = tree.nodes.get("MonoNPHM Texture")
    if node is None:
        node = tree.nodes.new("ShaderNodeTexImage")
        node.name = "MonoNPHM Texture"
        node.location = (-400, 200)
    node.image = image
    tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def color_material(name: str, attribute: str):
    """A material that shows the colour attribute ``attribute`` (Attribute node → Principled Base Color)."""
    mat, tree, bsdf = _material_nodes(name)
    nodes = tree.nodes
    attr_node = nodes.get("MonoNPHM Colour")
    if attr_node is None:
        attr_node = nodes.new("ShaderNodeAttribute")
        attr_node.name = "MonoNPHM Colour"
        attr_node.location = (-400, 200)
    attr_node.attribute_type = "GEOMETRY"
    attr_node.attribute_name = attribute
    tree.links.new(attr_node.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def assign_material(obj, mat) -> None:
    if obj.data is None:
        return
    mats = obj.data.materials
    if len(mats) == 0:
        mats.append(mat)
    else:
        mats[0] = mat


def set_key_coords(kb, co: np.ndarray) -> None:
    """Write a shape key's coordinates. ``ShapeKey.points`` (mesh keys) takes the memcpy path — about 100×
    faster than ``ShapeKey.data`` (3 ms vs 0.03 ms for 20k vertices)."""
    target = kb.points if hasattr(kb, "points") else kb.data
    target.foreach_set("co", np.ascontiguousarray(co, dtype=np.float32).reshape(-1))


def sync_frame_shape_keys(obj, names: list[str], coords: np.ndarray) -> None:
    """Make the relative shape keys after Basis exactly ``names`` with coordinates ``coords`` (T,V,3).

    Existing keys are updated in place (re-import, frames arriving during tracking), missing ones added, keys of
    frames no longer in the package removed. No per-vertex Python loops: one ``foreach_set`` per key.
    """
    me = obj.data
    if me.shape_keys is None:
        obj.shape_key_add(name="Basis", from_mix=False)
    key = me.shape_keys
    key.use_relative = True
    wanted = set(names)
    for kb in list(key.key_blocks)[1:]:
        if kb.name.startswith(KEY_PREFIX) and kb.name not in wanted:
            obj.shape_key_remove(kb)
    blocks = key.key_blocks
    coords = np.asarray(coords, dtype=np.float32)
    for name, co in zip(names, coords):
        kb = blocks.get(name)
        if kb is None:
            kb = obj.shape_key_add(name=name, from_mix=False)
        set_key_coords(kb, co)
        kb.value = 0.0
        kb.slider_min = 0.0
        kb.slider_max = 1.0
    obj.active_shape_key_index = 0
