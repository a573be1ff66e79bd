"""Evaluation of tracking accuracy with the MonoNPHM reference protocol (docs/mononphm-reference.md section 6).

Modules (nothing heavy is imported here; torch / bpy / mediapipe load lazily inside the modules that need them):

- ``mesh_ops``   — numpy/scipy mesh helpers: normals, area sampling, exact closest point on a triangle mesh,
                   splat z-buffer visibility.
- ``metrics``    — similarity ICP (torch, reference 6.4) and the one-directional metrics (reference 6.5):
                   Chamfer-L1/L2, normal consistency, recall at 1/2.5/5/10 mm.
- ``synthetic``  — held-out ICT-FaceKit clips: identity/appearance draws, smooth expression + pose tracks,
                   ground-truth arrays, UV albedo texture baking, cached rendering (``render_clip``).
- ``cycles``     — the Blender Cycles renderer (bpy, in-process, CPU).
- ``baselines``  — the mean ICT head at the true pose and a MediaPipe face-mesh baseline.
- ``benchmark``  — runs the tracker CLI on the clips and reports it beside the baselines.
"""
