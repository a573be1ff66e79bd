"""Animation helpers for Blender 4.5 (slotted actions + legacy ``Action.fcurves``) and 5.0+ (channelbags).

Blender 5.0 removed ``Action.fcurves``; F-curves live in a channelbag of a keyframe strip for an action slot
(``bpy_extras.anim_utils.action_ensure_channelbag_for_slot``). Blender 4.4/4.5 have slots too and keep the
legacy ``Action.fcurves`` proxy (first slot's channelbag). Keyframes are written in bulk with
``keyframe_points.foreach_set``.
"""

from __future__ import annotations

import bpy
import numpy as np

from ..core.layout import LINEAR

USE_CHANNELBAGS = bpy.app.version >= (5, 0, 0)


def _slot_id_type(id_data) -> str:
    return id_data.id_type if hasattr(id_data, "id_type") else "OBJECT"


def fresh_action(id_data, name: str):
    """Give ``id_data`` a new, empty action named ``name`` (the previous one is removed when unused).

    Returns the F-curve collection to create curves in (``.new(data_path, index=…)``).
    """
    ad = id_data.animation_data or id_data.animation_data_create()
    old = ad.action
    action = bpy.data.actions.new(name)
    ad.action = action
    if old is not None and old.users == 0:
        bpy.data.actions.remove(old)
    return _slot_fcurves(id_data, ad, action)


def action_fcurves(id_data, name: str):
    """The F-curve collection of ``id_data``'s current action, or of a new one named ``name`` when it has none
    (curves other code keyed on the same ID stay)."""
    ad = id_data.animation_data or id_data.animation_data_create()
    if ad.action is None:
        ad.action = bpy.data.actions.new(name)
    return _slot_fcurves(id_data, ad, ad.action)


def _slot_fcurves(id_data, ad, action):
    if hasattr(action, "slots"):  # 4.4+: slotted actions
        slot = ad.action_slot
        if slot is None:
            slot = action.slots.new(id_type=_slot_id_type(id_data), name=id_data.name)
            ad.action_slot = slot
        if USE_CHANNELBAGS:
            from bpy_extras import anim_utils

            return anim_utils.action_ensure_channelbag_for_slot(action, slot).fcurves
    return action.fcurves  # 4.2–4.5 API


def replace_fcurve(fcurves, data_path: str, co: np.ndarray, *, index: int = 0, interpolation: int = LINEAR):
    """``add_fcurve`` after removing the curve already animating (``data_path``, ``index``), so a re-bake
    replaces keys instead of stacking them."""
    old = fcurves.find(data_path, index=index)
    if old is not None:
        fcurves.remove(old)
    return add_fcurve(fcurves, data_path, co, index=index, interpolation=interpolation)


def remove_fcurves(id_data, data_paths) -> int:
    """Remove the F-curves animating any of ``data_paths`` from ``id_data``'s action; returns how many."""
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return 0
    fcurves = _slot_fcurves(id_data, ad, ad.action)
    paths = set(data_paths)
    doomed = [fc for fc in fcurves if fc.data_path in paths]
    for fc in doomed:
        fcurves.remove(fc)
    return len(doomed)


def add_fcurve(fcurves, data_path: str, co: np.ndarray, *, index: int = 0, interpolation: int = LINEAR,
               group: str | None = None):
    """New F-curve with keyframes ``co`` (n, 2) (frame, value), written in bulk."""
    fc = fcurves.new(data_path, index=index)
    co = np.ascontiguousarray(co, dtype=np.float32)
    n = len(co)
    if n:
        fc.keyframe_points.add(n)
        fc.keyframe_points.foreach_set("co", co.reshape(-1))
        fc.keyframe_points.foreach_set("interpolation", np.full(n, interpolation, dtype=np.int32))
        # handles follow the points for LINEAR/CONSTANT; set them anyway so a switch to Bezier looks sane
        fc.keyframe_points.foreach_set("handle_left", co.reshape(-1))
        fc.keyframe_points.foreach_set("handle_right", co.reshape(-1))
    fc.update()
    return fc
