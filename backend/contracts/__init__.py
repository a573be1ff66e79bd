"""The contract between the backend and the Blender add-on: torch-free modules (numpy + stdlib) both sides import.

    conventions      units, axes, model→camera pose, camera → Blender, frame mapping    docs/conventions.md
    result_format    result package writer (atomic, resumable) and validating reader    docs/result-format.md
    protocol         JSON-line events, exit codes, protocol version, event parser       docs/backend-cli.md
    track_config     the ``track`` command's settings (the CLI schema), presets, modes  docs/backend-cli.md
    landmark_tables  anchor semantics, anchor↔iBUG-68 / MediaPipe tables, ICT placement docs/conventions.md
    arkit            the 52 ARKit channel names, ICT-FaceKit → ARKit mapping            docs/conventions.md
    geometry         similarity fit (Umeyama) shared by tracking, training, evaluation
    mediapipe_models which MediaPipe API a Python gets, the Tasks API's model files and their registry wheels
    retarget/        performances, ARKit name conventions and mappings, smoothing, the   docs/retargeting.md
                     Live Link Face CSV

Imports inside this package are relative and stay inside it: it is imported as ``backend.contracts`` from the
repository and as ``<addon>.backend.contracts`` inside the extension zip.
"""
