"""MonoNPHM for Blender: track a monocular video with the MonoNPHM backend and import an animated head.

This module only registers. The import API for scripts: ``mononphm_blender.importer.import_package``; retargeting:
``mononphm_blender.retarget`` (bake onto shape keys and rigs, export).
"""

from __future__ import annotations

if "bpy" in locals():  # F8 / re-enable: reload submodules
    import importlib

    for _name in ("contracts", "props", "prefs", "importer", "job_control", "ops", "ui", "retarget_props",
                  "retarget_ops", "retarget_ui"):
        if _name in locals():
            importlib.reload(locals()[_name])

import bpy  # noqa: E402

from . import job_control, ops, prefs, props, ui  # noqa: E402
from .retarget import ops as retarget_ops, props as retarget_props, ui as retarget_ui  # noqa: E402

_classes = (props.classes + prefs.classes + ops.classes + ui.classes + retarget_props.classes + retarget_ops.classes
            + retarget_ui.classes)


def register() -> None:
    for cls in _classes:
        bpy.utils.register_class(cls)
    props.register_props()
    retarget_props.register_props()
    bpy.types.TOPBAR_MT_file_import.append(ops.menu_import)
    job_control.register()


def unregister() -> None:
    job_control.unregister()
    bpy.types.TOPBAR_MT_file_import.remove(ops.menu_import)
    retarget_props.unregister_props()
    props.unregister_props()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
