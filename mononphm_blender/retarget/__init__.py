"""Retargeting: the tracked performance drives the artist's own character, and leaves Blender for other tools.

Scripting::

    from mononphm_blender.retarget import bake
    settings = bake.RetargetSettings(neutral_frame=0)
    source = bake.load_source(bpy.context.scene, "/path/to/RESULT")          # or a Live Link Face .csv
    bake.bake_shape_keys(face_mesh_object, source, mapping=None, settings=settings)  # None: names auto-bound
    bake.bake_head_pose(rig_object, source, settings, head_bone="head", neck_bone="neck")

- ``bake``: the Blender-side builders (shape keys by keys or drivers, head/neck bones or any object, a
  stabilised head with a moving camera, the mapping text stored in the .blend).
- ``exchange``: FBX / glTF / Alembic through Blender's exporters, with the result's frame rate and range.
- ``props``, ``ops``, ``ui``: the Retarget panel section.

The Blender-free parts (Performance, names and mappings, smoothing, the Live Link Face CSV) are the backend's
contract modules ``backend.contracts.retarget``.
"""
