"""Retargeting contracts (numpy + standard library only; the Blender add-on imports them).

- ``rotations``: vectorised rotation conversions (matrices, quaternions, Euler angles in Blender's orders).
- ``performance``: ``Performance``, a performance on a clip's timeline (ARKit weights, head pose), read from a
  result package, resampled to another frame rate.
- ``names``: ARKit channel naming conventions and presets, and the editable channel → shape-key mapping (JSON).
- ``smoothing``: per-group one-euro smoothing of a performance (pose, eyes, mouth, brows).
- ``llf_csv``: the Live Link Face CSV format (write and read).
"""
