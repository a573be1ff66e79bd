"""MonoNPHM for Blender: track a monocular video with the MonoNPHM backend and import an animated head.

This module only registers. The import API for scripts: ``mononphm_blender.importer.import_package``; retargeting:
``mononphm_blender.retarget.bake`` (onto shape keys and rigs) and ``.exchange`` (FBX, glTF, Alembic).
The Blender-side modules are imported by ``register``, so the bpy-free layers (``core``, ``contracts``) import
without Blender (tests, scripts).
"""

from __future__ import annotations

if "ops" in locals():  # F8 / re-enable: reload the submodules register() imported
    import importlib

    for _name in ("contracts", "props", "prefs", "importer", "job_control", "ops", "ui", "batch_queue", "retarget"):
        if _name in locals():
            importlib.reload(locals()[_name])


def _classes() -> tuple:
    from . import batch_queue, ops, prefs, props, ui
    from .retarget import ops as retarget_ops, props as retarget_props, ui as retarget_ui

    return (props.classes + prefs.classes + ops.classes + ui.classes + batch_queue.classes + retarget_props.classes
            + retarget_ops.classes + retarget_ui.classes)


def register() -> None:
    import bpy

    from . import batch_queue, job_control, ops, props
    from .retarget import props as retarget_props

    for cls in _classes():
        bpy.utils.register_class(cls)
    props.register_props()
    retarget_props.register_props()
    batch_queue.register()
    bpy.types.TOPBAR_MT_file_import.append(ops.menu_import)
    job_control.register()


def unregister() -> None:
    import bpy

    from . import batch_queue, job_control, ops, props
    from .retarget import props as retarget_props

    job_control.unregister()
    bpy.types.TOPBAR_MT_file_import.remove(ops.menu_import)
    batch_queue.unregister()
    retarget_props.unregister_props()
    props.unregister_props()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
