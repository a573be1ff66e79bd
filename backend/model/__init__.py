"""MonoNPHM model core (issue 3): config, batched ensemble field, deformation, root finding, checkpoints, meshes.

Public API (tensors batched as (B, N, 3) points with per-batch codes (B, D))::

    from backend.model import MonoNPHMConfig, MonoNPHM, load_model, save_model, load_official, CheckpointError
    cfg = MonoNPHMConfig.official()   # or .builtin(), .from_official_yaml(dict), .from_json(str)
    model = MonoNPHM(cfg, mean_anchors)                 # (n_anchors, 3), stored as a buffer
    A = model.anchors(z_geo)                            # (B, n_anchors, 3)
    out = model(x, z_geo, z_app, z_exp, neutral=False, with_color=True, with_gradient=False, exact=False)
    #   out.sdf (B,N,1), out.color (B,N,3)|None, out.gradient (B,N,3)|None (d sdf / d posed x),
    #   out.offsets (B,N,3), out.hyper (B,N,n_hyper), out.anchors (B,n_anchors,3)
    off, hyp = model.deformation(x, z_geo, z_exp, anchors=None)
    co = model.canonical_sdf(q, z_geo, anchors=None, z_app=None, with_color=False)  # q = [x_c ; h]
    sdf = model.sdf_only(x, z_geo, z_exp, chunk=8192, compute_dtype=None)          # inference_mode, no colour
    sdf, col = model.query(x, z_geo, z_app, z_exp, chunk=8192)                      # inference_mode
    r = model.forward_warp(x_canonical, z_geo, z_exp)   # r.points (B,M,3), r.converged (B,M) bool, r.jinv
    geometric_init(model, radius)                       # sphere-like init for training from scratch

Modules: config, latents (code batching), ensemble (segmented typed matmuls, kNN, blending, pruning), canonical
(identity field), deformation, mononphm (assembly), root_finding, checkpoint (incl. the built-in model's encoders),
encoders (identity/appearance/expression encoders, ARKit regressor), meshing (mesh extraction and warping),
reference_loop (per-type-loop baseline), devices (which device a run uses, host arrays from any device), kernels
(kernel choices by measured speed on the running machine).
"""
from .config import OFFICIAL_MESH_BOX, MonoNPHMConfig
from .mononphm import ModelOutput, MonoNPHM, geometric_init
from .checkpoint import CheckpointError, load_model, load_official, save_model
from .root_finding import WarpResult, forward_warp, posed_anchors

__all__ = [
    "MonoNPHMConfig", "OFFICIAL_MESH_BOX", "MonoNPHM", "ModelOutput", "geometric_init",
    "CheckpointError", "load_model", "load_official", "save_model",
    "WarpResult", "forward_warp", "posed_anchors",
]
