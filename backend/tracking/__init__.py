"""Tracking: monocular clip -> per-frame MonoNPHM fits -> result package (``run_track``).

Modules (one job each):
    video        PyAV streaming decode: videos, image sequences, single images; slices, resolution cap, timestamps
    landmarks    MediaPipe 478-point face mesh (video mode, largest consistent face, re-detect) / face-alignment
    masks        selfie segmentation + face-mesh region -> background / face / mouth / ignore labels
    camera       intrinsics (user values, Blender, default FOV), PnP pose initialisation
    raster       vectorised numpy rasteriser (draft silhouette, metrics, synthetic renders)
    renderer     NeuS narrow-band volume rendering with SH shading (standard / high presets)
    head_mesh    the tracker's fixed-topology head mesh (HeadMesh) and its mesh-outline silhouette
    codes        latent parameterisation (built-in encoders or raw official codes), priors, ARKit output
    tracker      stages (identity, per frame, joint refinement) and presets
    temporal     stage 2's temporal model: zero-lag, event-preserving smoothing of pose and expression tracks
    run          ``run_track(TrackConfig)`` and ``TrackingSession``: passes over the clip, package writing,
                 resume, interpolation, USD
    build_tables developer tool that derived the MediaPipe<->ICT table in ``backend/contracts/landmark_tables.py``
"""
from .run import TrackOutcome, run_track

__all__ = ["TrackOutcome", "run_track"]
