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
    if hasattr(action, "slots"):  # 4.4+: slotted actions
        slot = ad.action_slot
        if slot is None:
            slot = action.slots.new(id_type=_slot_id_type(id_data), name=id_data.name)
            ad.action_slot = slot
        if USE_CHANNELBAGS:
            from bpy_extras import anim_utils

            return anim_utils.action_ensure_channelbag_for_slot(action, slot).fcurves
    return action.fcurves  # 4.2–4.5 API


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
