"""Importing result packages: shape keys, keyframes, colours, camera, background, scene, USD, bad packages."""

import json
import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from backend.contracts import conventions as cv  # noqa: E402
from backend.contracts import result_format as rf  # noqa: E402
from fakes.packages import frame_vertices, grid_head, hair_of, make_package, usd_colors  # noqa: E402

FRAMES, VERTS = 100, 3000


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "take1", frames=FRAMES, vertices=VERTS)


def _fcurves(id_data):
    ad = id_data.animation_data
    if bpy.app.version >= (5, 0, 0):
        from bpy_extras import anim_utils

        return anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot).fcurves
    return ad.action.fcurves


def _fcurve(id_data, path, index=0):
    return next(fc for fc in _fcurves(id_data) if fc.data_path == path and fc.array_index == index)


def _evaluated_coords(obj):
    dg = bpy.context.evaluated_depsgraph_get()
    me = obj.evaluated_get(dg).data
    out = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", out)
    return out.reshape(-1, 3)


def _import(path, **kw):
    from mononphm_blender import importer

    return importer.import_package(bpy.context, str(path), **kw)


def test_shape_key_import(scene, package):
    res = _import(package)
    head = res.head
    canon, _tris, albedo = grid_head(VERTS)
    v = len(canon)
    assert res.seconds < 20
    assert len(head.data.vertices) == v
    keys = head.data.shape_keys.key_blocks
    assert len(keys) == FRAMES + 1 and keys[0].name == "Basis" and keys[38].name == "frame_000037"
    co = np.empty(v * 3, np.float32)
    keys["frame_000037"].data.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), cv.model_to_blender_points(frame_vertices(canon, 37)), atol=1e-6)
    # pile keyframes: 0 → 1 → 0 over the neighbours, LINEAR
    fc = _fcurve(head.data.shape_keys, f"key_blocks[{keys.find('frame_000037')}].value")
    pts = np.empty(len(fc.keyframe_points) * 2, np.float32)
    fc.keyframe_points.foreach_get("co", pts)
    assert pts.reshape(-1, 2).tolist() == [[37, 0], [38, 1], [39, 0]]
    assert {k.interpolation for k in fc.keyframe_points} == {"LINEAR"}
    first = _fcurve(head.data.shape_keys, f"key_blocks[{keys.find('frame_000000')}].value")
    assert len(first.keyframe_points) == 2
    # evaluation: scene frame = clip start (1) + source index
    scene.frame_set(38)
    assert np.allclose(_evaluated_coords(head), cv.model_to_blender_points(frame_vertices(canon, 37)), atol=1e-5)
    from fakes.packages import pose

    s, r, t = pose(37)
    want = cv.head_world_matrices(np.array([s]), r[None], t[None])[0]
    assert np.allclose(np.array(head.matrix_world), want, atol=1e-4)
    # colours: BYTE_COLOR point attribute with the sRGB albedo, shown by the material
    attr = head.data.color_attributes["albedo"]
    assert (attr.domain, attr.data_type) == ("POINT", "BYTE_COLOR")
    rgba = np.empty(v * 4, np.float32)
    attr.data.foreach_get("color_srgb", rgba)
    assert np.allclose(rgba.reshape(-1, 4)[:, :3], albedo / 255.0, atol=1.0 / 255 + 1e-6)
    mat = head.active_material
    node = mat.node_tree.nodes["MonoNPHM Colour"]
    assert node.attribute_name == "albedo"
    assert any(link.from_node == node and link.to_socket.name == "Base Color" for link in mat.node_tree.links)


def test_camera_scene_quality_and_arkit(scene, package):
    res = _import(package)
    cam = scene.camera
    assert cam is res.camera and cam.type == "CAMERA"
    assert np.allclose(np.array(cam.matrix_world), cv.camera_world_matrix(), atol=1e-6)
    bc = cv.blender_camera_from_intrinsics(cv.Intrinsics(300.0, 300.0, 165.0, 117.0, 320, 240))
    assert math.isclose(cam.data.lens, bc.lens_mm, rel_tol=1e-5)
    assert math.isclose(cam.data.shift_x, bc.shift_x, abs_tol=1e-6)
    assert math.isclose(cam.data.shift_y, bc.shift_y, abs_tol=1e-6)
    assert (scene.render.resolution_x, scene.render.resolution_y) == (320, 240)
    assert scene.render.fps == 25 and math.isclose(scene.render.fps_base, 1.0)
    assert (scene.frame_start, scene.frame_end) == (1, FRAMES)
    # markers + list on frames above 5 px (source indices 7, 32, 57, 82 have 8 px)
    marks = sorted(m.frame for m in scene.timeline_markers if m.name.startswith("MNPHM "))
    assert marks == [8, 33, 58, 83]
    assert [(b.frame, round(b.error, 3)) for b in scene.mononphm.bad_frames] == [(8, 8.0), (33, 8.0), (58, 8.0),
                                                                                (83, 8.0)]
    scene.mononphm.error_threshold = 100.0  # update callback recomputes
    assert not [m for m in scene.timeline_markers if m.name.startswith("MNPHM ")]
    scene.mononphm.error_threshold = 5.0
    assert len(scene.mononphm.bad_frames) == 4
    head = res.head
    scene.frame_set(33)
    assert math.isclose(head["landmark_error_px"], 8.0, rel_tol=1e-5)
    assert math.isclose(head["eyeBlinkLeft"], 0.2, abs_tol=1e-6)  # source 32: (32 % 10) / 10
    assert _fcurve(head, '["landmark_error_px"]') and _fcurve(head, '["tongueOut"]')
    scene.frame_set(34)
    assert math.isclose(head["landmark_error_px"], 1.33, rel_tol=1e-4)


def test_reimport_updates_instead_of_duplicating(scene, package):
    _import(package)
    counts = (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions), len(bpy.data.cameras),
              len(bpy.data.materials))
    res = _import(package)
    assert (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.actions), len(bpy.data.cameras),
            len(bpy.data.materials)) == counts
    assert len(res.head.data.shape_keys.key_blocks) == FRAMES + 1
    assert len([m for m in scene.timeline_markers if m.name.startswith("MNPHM ")]) == 4


def test_stride_blends_between_tracked_neighbours(scene, tmp_path):
    pkg = make_package(tmp_path / "strided", frames=10, vertices=200, stride=2, arkit=False)
    res = _import(pkg)
    canon = grid_head(200)[0]
    scene.frame_set(4)  # source 3, between tracked 2 and 4
    keys = res.head.data.shape_keys.key_blocks
    assert math.isclose(keys["frame_000002"].value, 0.5, abs_tol=1e-6)
    assert math.isclose(keys["frame_000004"].value, 0.5, abs_tol=1e-6)
    want = 0.5 * (frame_vertices(canon, 2) + frame_vertices(canon, 4))
    assert np.allclose(_evaluated_coords(res.head), cv.model_to_blender_points(want), atol=1e-5)
    scene.frame_set(5)  # source 4 exactly
    assert math.isclose(keys["frame_000004"].value, 1.0) and keys["frame_000002"].value == 0.0


def test_usd_import_keeps_per_frame_colours(scene, tmp_path):
    pkg = make_package(tmp_path / "usdpkg", frames=12, vertices=300, output_mode="meshes", usd=True)
    res = _import(pkg)
    obj = res.usd_object
    assert res.head is None and obj is not None
    mod = next(m for m in obj.modifiers if m.type == "MESH_SEQUENCE_CACHE")
    assert bpy.path.abspath(mod.cache_file.filepath).endswith("meshes.usdc") and mod.cache_file.frame_offset == 1
    _, tris, albedo = grid_head(300)
    seen = []
    for index in (4, 5):
        scene.frame_set(1 + index)
        me = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
        assert len(me.polygons) == len(tris) - index % 3  # topology changes per frame
        col = me.color_attributes["displayColor"]
        rgba = np.empty(len(me.vertices) * 4, np.float32)
        col.data.foreach_get("color_srgb", rgba)
        rgba = rgba.reshape(-1, 4)
        assert np.allclose(rgba[:, 1], usd_colors(albedo, index)[:, 1] / 255.0, atol=2e-3)
        seen.append(rgba[0, 1])
    assert seen[0] != seen[1]
    assert obj.animation_data and obj.animation_data.action  # head pose
    assert obj.active_material.node_tree.nodes["MonoNPHM Colour"].attribute_name == "displayColor"
    again = _import(pkg)
    assert again.usd_object == obj and len([o for o in bpy.data.objects if o.get("mononphm_role") == "usd"]) == 1


def test_both_outputs(scene, tmp_path):
    pkg = make_package(tmp_path / "both", frames=6, vertices=200, output_mode="both", usd=True)
    res = _import(pkg)
    assert res.head is not None and res.usd_object is not None and res.usd_object.hide_render


def _png_sequence(folder, n=5, size=(64, 48)):
    folder.mkdir()
    for i in range(n):
        img = bpy.data.images.new(f"seq{i}", *size)
        px = np.zeros((size[1], size[0], 4), np.float32)
        px[..., 0] = i / n
        px[..., 3] = 1
        img.pixels.foreach_set(px.ravel())
        img.filepath_raw = str(folder / f"frame_{i:04d}.png")
        img.file_format = "PNG"
        img.save()
        bpy.data.images.remove(img)
    return folder


def test_clip_background_and_frame_range(scene, tmp_path):
    from mononphm_blender.blender import scene as scenes

    seq = _png_sequence(tmp_path / "seq")
    clip = scenes.load_clip(str(seq))
    assert clip is not None and clip.frame_duration == 5
    clip.frame_start = 11
    clip.tracking.camera.sensor_width = 36.0
    clip.tracking.camera.focal_length = 50.0
    intr = scenes.clip_intrinsics(clip)
    assert math.isclose(intr.fx, 50.0 / 36.0 * 64) and (intr.width, intr.height) == (64, 48)
    pkg = make_package(tmp_path / "clip_pkg", frames=5, vertices=200, width=64, height=48,
                       source_path=str(seq))
    res = _import(pkg, clip=clip)
    assert (scene.frame_start, scene.frame_end) == (11, 15)
    fc = _fcurve(res.head.data.shape_keys, "key_blocks[1].value")
    assert fc.keyframe_points[0].co[0] == 11
    from mononphm_blender import importer

    assert importer.scene_frame_of(scene, 3) == 14
    bg = scene.camera.data.background_images[0]
    assert scene.camera.data.show_background_images and bg.source == "MOVIE_CLIP" and bg.clip == clip
    # the source clip is found from the manifest when none is given
    bpy.ops.wm.read_factory_settings(use_empty=True)
    res = _import(pkg)
    assert res.clip is not None and bpy.path.abspath(res.clip.filepath).startswith(str(seq))


def test_paths_are_relative_to_the_blend(scene, tmp_path, package):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    res = _import(package)
    assert res.head["mononphm_package"].startswith("//")
    assert bpy.context.scene.mononphm.last_package.startswith("//")


def _corrupt(root, how):
    if how == "missing file":
        (root / rf.CANONICAL_MESH).unlink()
        return "canonical_mesh.npz is missing"
    if how == "wrong version":
        data = json.loads((root / rf.MANIFEST).read_text())
        data["version"] = 7
        (root / rf.MANIFEST).write_text(json.dumps(data))
        return "version 7 is not supported"
    if how == "wrong shapes":
        path = root / "frames" / "chunk_000000.npz"
        arrays = dict(np.load(path))
        arrays["rotation"] = arrays["rotation"][:, :2]
        np.savez(path, **arrays)
        return "rotation has shape"
    if how == "truncated npz":
        path = root / "frames" / "chunk_000000.npz"
        path.write_bytes(path.read_bytes()[:200])
        return "truncated or corrupt"
    if how == "pickle inside":
        path = root / rf.CANONICAL_MESH
        arrays = dict(np.load(path))
        arrays["payload"] = np.array([{"rm": "-rf"}], dtype=object)
        np.savez(path, **arrays)
        return "pickled Python objects"
    if how == "no manifest":
        (root / rf.MANIFEST).unlink()
        return "not a MonoNPHM result package"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing file", "wrong version", "wrong shapes", "truncated npz", "pickle inside",
                                 "no manifest"])
def test_bad_packages_are_refused(scene, tmp_path, how):
    root = make_package(tmp_path / "bad", frames=4, vertices=100, chunk=2)
    message = _corrupt(root, how)
    before = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.mononphm.import_result(directory=str(root))
    assert len(bpy.data.objects) == before


def _png(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG (stdlib only: the bpy 4.5 test environment has no image library)."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _baked_package(root, texture: bool):
    """A package with baked colours (the albedo inverted) and, optionally, a texture on a per-corner uv."""
    pkg = make_package(root, frames=3, vertices=1500)
    canon = rf.ResultPackage(pkg).canonical_mesh()
    writer = rf.ResultWriter(pkg, rf.read_manifest(pkg))
    uv = png = None
    if texture:
        F = len(canon.triangles)
        uv = np.broadcast_to(np.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]], np.float32), (F, 3, 2))
        png = _png(np.full((16, 16, 3), (255, 0, 0), np.uint8))
    writer.write_bake(canon, 255 - canon.albedo, np.ones(len(canon.albedo), np.float32), {"frames": [0, 1, 2]}, uv, png)
    writer.finish("complete")
    return pkg, canon


def _shown(head):
    mat = head.active_material
    if "MonoNPHM Texture" in mat.node_tree.nodes:
        return "TEXTURE", mat.node_tree.nodes["MonoNPHM Texture"].image
    return mat.node_tree.nodes["MonoNPHM Colour"].attribute_name, head.data.color_attributes.active_color.name


def test_colour_source_switches_between_model_baked_and_texture(scene, tmp_path):
    from mononphm_blender import importer
    pkg, canon = _baked_package(tmp_path / "baked", texture=True)
    res = _import(pkg, colour_source="BAKED")
    head = res.head
    assert _shown(head) == ("baked", "baked")
    rgba = np.empty(len(canon.albedo) * 4, np.float32)
    head.data.color_attributes["baked"].data.foreach_get("color_srgb", rgba)
    assert np.allclose(rgba.reshape(-1, 4)[:, :3], (255 - canon.albedo) / 255.0, atol=1.0 / 255 + 1e-6)
    uv = np.empty(len(head.data.loops) * 2, np.float32)
    head.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 3, 2)[5], [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]], atol=1e-6)
    scene.mononphm.last_package = str(pkg)
    scene.mononphm.colour_source = "TEXTURE"            # the panel's switch
    kind, image = _shown(head)
    assert kind == "TEXTURE" and tuple(image.size) == (16, 16)
    px = np.empty(16 * 16 * 4, np.float32)
    image.pixels.foreach_get(px)
    assert px[0] > 0.9 and px[1] < 0.1                 # the PNG's red
    scene.mononphm.colour_source = "MODEL"
    assert _shown(head) == ("albedo", "albedo")
    # a package without a texture falls back to the baked colours; without a bake, to the model albedo
    plain, _ = _baked_package(tmp_path / "no_texture", texture=False)
    assert importer.set_colour_source(_import(plain).head, "TEXTURE", None) == "BAKED"
    assert importer.set_colour_source(_import(make_package(tmp_path / "none", frames=2, vertices=500)).head,
                                      "BAKED", None) == "MODEL"


def _glb_json(path):
    import json
    import struct
    data = path.read_bytes()
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A   # the JSON chunk
    return json.loads(data[20:20 + length])


@pytest.mark.parametrize("fmt", ["GLTF", "FBX"])
def test_textured_head_exports_with_its_texture(scene, tmp_path, fmt):
    """A head imported with a texture (the default colours when the result has one) exports to glTF and FBX with
    its UV map and the image embedded: re-imported alone, it shows the PNG's red."""
    from mononphm_blender.retarget import exchange
    pkg, canon = _baked_package(tmp_path / "baked", texture=True)
    head = _import(pkg).head
    assert _shown(head)[0] == "TEXTURE"
    bpy.context.view_layer.update()   # as between two operators in the UI
    path = exchange.export_animation(bpy.context, [head], str(tmp_path / "head"), fmt, (1, 3), 25.0)
    if fmt == "GLTF":
        gltf = _glb_json(path)
        assert [im["mimeType"] for im in gltf["images"]] == ["image/png"] and "uri" not in gltf["images"][0]
        assert "TEXCOORD_0" in gltf["meshes"][0]["primitives"][0]["attributes"]
        assert "baseColorTexture" in gltf["materials"][0]["pbrMetallicRoughness"]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    (tmp_path / "baked").rename(tmp_path / "moved")            # the export must not need the package's PNG
    {"GLTF": lambda: bpy.ops.import_scene.gltf(filepath=str(path)),
     "FBX": lambda: bpy.ops.import_scene.fbx(filepath=str(path))}[fmt]()
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    assert len(mesh.data.uv_layers) == 1
    images = [n.image for m in mesh.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(images) == 1 and tuple(images[0].size) == (16, 16)
    px = np.empty(16 * 16 * 4, np.float32)
    images[0].pixels.foreach_get(px)
    assert px[0] > 0.9 and px[1] < 0.1


def test_import_operator(scene, package):
    assert bpy.ops.mononphm.import_result(directory=str(package), mode="SHAPE_KEYS") == {"FINISHED"}
    heads = [o for o in bpy.data.objects if o.get("mononphm_role") == "head"]
    assert len(heads) == 1 and scene.mononphm.last_package


def test_cycles_render_shows_the_coloured_head(scene, tmp_path):
    pkg = make_package(tmp_path / "render", frames=3, vertices=1500, width=64, height=48)
    _import(pkg)
    world = bpy.data.worlds.new("W")
    world.color = (1.0, 1.0, 1.0)
    scene.world = world
    light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(light)
    light.rotation_euler = (math.radians(90), 0, 0)  # shine along +Y, onto the face
    r = scene.render
    r.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    r.film_transparent = True
    r.filepath = str(tmp_path / "render.png")
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    scene.frame_set(2)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "render.png"))
    px = np.empty(64 * 48 * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(48, 64, 4)
    covered = px[..., 3] > 0.5
    assert covered[24, 32]  # the head sits in the middle of the frame
    assert 0.05 < covered.mean() < 0.9
    assert px[covered][:, :3].std(axis=0).max() > 0.02  # coloured, not flat


def _evaluated_mesh(obj):
    return obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data


def test_hair_material_group_and_toggle(scene, tmp_path):
    from mononphm_blender.blender import mesh as meshes

    pkg = make_package(tmp_path / "hairy", frames=4, vertices=400, hair=True)
    canon, tris, _ = grid_head(400)
    hair = hair_of(canon).astype(bool)
    head = _import(pkg).head
    group = head.vertex_groups[meshes.HAIR_GROUP]
    in_group = np.array([any(g.group == group.index for g in v.groups) for v in head.data.vertices])
    assert np.array_equal(in_group, hair)
    slots = np.empty(len(head.data.polygons), np.int32)
    head.data.polygons.foreach_get("material_index", slots)
    assert np.array_equal(slots == meshes.HAIR_SLOT, hair[tris].all(1))
    assert head.material_slots[meshes.HAIR_SLOT].material.name.startswith("MonoNPHM Hair")
    assert len(_evaluated_mesh(head).vertices) == len(canon)
    # left out: the hair vertices are gone from the evaluated head, and come back with the toggle
    head = _import(pkg, include_hair=False).head
    assert len(_evaluated_mesh(head).vertices) == (~hair).sum()
    scene.mononphm.last_package = str(pkg)
    scene.mononphm.import_hair = True
    assert len(_evaluated_mesh(head).vertices) == len(canon)
    # a model without hair: no group, one material, nothing to leave out
    plain = _import(make_package(tmp_path / "bald", frames=2, vertices=400), include_hair=False).head
    assert meshes.HAIR_GROUP not in plain.vertex_groups and len(_evaluated_mesh(plain).vertices) == len(canon)


def test_usd_hair_material_and_toggle(scene, tmp_path):
    from mononphm_blender.blender import mesh as meshes

    pkg = make_package(tmp_path / "usdhair", frames=6, vertices=300, output_mode="meshes", usd=True, hair=True)
    obj = _import(pkg).usd_object
    scene.frame_set(1 + 4)
    canon, tris, _ = grid_head(300)
    hair = hair_of(frame_vertices(canon, 4)).astype(bool)
    me = _evaluated_mesh(obj)
    slots = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", slots)
    keep = len(tris) - 4 % 3
    assert np.array_equal(slots == meshes.HAIR_SLOT, hair[tris[:keep]].all(1))
    assert obj.material_slots[meshes.HAIR_SLOT].material is not None
    meshes.show_hair(obj, False)
    assert len(_evaluated_mesh(obj).vertices) == (~hair).sum()
