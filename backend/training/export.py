"""Export a training checkpoint (EMA weights) to a project model folder, e.g. backend/models/builtin/.

    python -m backend.training.export runs/builtin/ckpt_last.pt [--out backend/models/builtin] [--eval eval.json]

Folder contents:
* ``model.pt`` + ``config.json``: the model core's project format (``backend.model.save_model``). The JSON
  ``extra`` holds the derived anchor table: ``anchor_ict_vertex`` (65 ICT-FaceKit vertex indices of the anchors on the
  mean head, official anchor order/semantics), ``mean_anchors`` (65x3, NPHM units), the training summary and the
  names of the files below.
* ``encoders.pt``: state dicts of the conditioning encoders (ICT identity weights -> z_geo, appearance parameters ->
  z_app, ICT expression weights -> z_exp) and of the z_exp -> ARKit regressor (plain tensors, weights_only-safe).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import BUILTIN_MODEL_DIR
from ..contracts import arkit
from ..model.checkpoint import ENCODERS_FILE
from ..model.encoders import N_APP, N_EX, N_ID
from .hair import HAIR_NAMES, HAIR_RANGES, MESH_BOX, SCALP_PARAMS


def fit_arkit_regressor(enc, reg, iters=3000, batch=256, noise=0.3, seed=0, lr=3e-3):
    """Fit the z_exp -> ARKit regressor to the final expression encoder (cheap: no meshes needed).

    Training expressions come from the training sampler (held-out combos excluded); inputs are standardised
    (folded into the first Linear afterwards) and augmented with Gaussian noise of `noise` x the code std so codes
    fitted off the encoder's manifold still map sensibly. Returns the final training MSE.
    """
    from . import data as D
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        pool_w = np.stack([D.sample_expression(rng) for _ in range(20000)])
        pool_z = enc.encode_exp(torch.from_numpy(pool_w))
        pool_a = torch.from_numpy(arkit.ict_to_arkit(pool_w).astype(np.float32))
        mu, sd = pool_z.mean(0), pool_z.std(0) + 1e-6
    net = reg.net
    for m in net:
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    opt = torch.optim.Adam(reg.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for it in range(iters):
        if it == int(iters * 0.7):
            for g in opt.param_groups:
                g["lr"] = lr * 0.2
        j = torch.from_numpy(rng.integers(0, len(pool_w), batch))
        zn = (pool_z[j] - mu) / sd
        zn = zn + noise * torch.randn_like(zn)
        loss = ((torch.sigmoid(net(zn) - 3.0) - pool_a[j]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into the first layer: net(z) on raw codes
        first = net[0]
        first.bias.sub_(first.weight @ (mu / sd))
        first.weight.div_(sd[None, :])
    return float(loss.detach())


def export(ckpt_path, out_dir=BUILTIN_MODEL_DIR, extra_info=None, refit_arkit=True):
    from ..model import save_model
    from .evaluate import load_for_eval

    from . import data as D
    from .expression_response import expression_response, landmark_channels

    model, enc, reg, meta = load_for_eval(ckpt_path)
    response = expression_response(model, enc, D.ICTModel())
    arkit_fit = None
    if refit_arkit:
        for p in reg.parameters():
            p.requires_grad_(True)
        arkit_fit = fit_arkit_regressor(enc, reg)
    st = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    out_dir = Path(out_dir)
    # a model trained without hair (train --bald: identity input = the ICT weights alone) keeps the shipped bald
    # model's form: no hair entry (the tracker's hair code stays off) and the official mesh box
    bald = enc.geo.in_features == N_ID
    extra = {
        "name": "builtin",
        "description": "Compact MonoNPHM trained on synthetic ICT-FaceKit heads"
                       + ("" if bald else " with procedural hair") + " (see MODEL_CARD.md)",
        "coverage": ("head, face and neck; bald scalp" if bald else
                     "head, face and neck; hair volume, beard and moustache (procedural)") + "; static eyes; no teeth",
    }
    if not bald:
        extra["hair"] = {"params": list(HAIR_NAMES), "bald": "all hair parameters 0",
                         # the training data's support, which the tracker keeps its fits in (tracking.codes)
                         "ranges": [list(r) for r in HAIR_RANGES], "scalp": list(SCALP_PARAMS),
                         "identity_input": "z_geo = encoders.geo([ICT identity weights (100), hair parameters])"}
    extra.update({
        "anchor_ict_vertex": [int(v) for v in st["anchor_vertices"]],
        "mean_anchors": [[round(float(c), 6) for c in a] for a in st["mean_anchors"]],
        "anchor_semantics": "official MonoNPHM order: pairs (2i, 2i+1) for i<30 mirror in x, 60-64 midline",
        "space": "NPHM: y up, z forward (out of the face), +x subject's left, 1 unit = 0.25 m",
        "ict_to_model": "x_model = (v_cm + (0, -3, -6)) / 25",  # landmark_tables.ict_cm_to_model
        "encoders_file": ENCODERS_FILE,
        "encoders": {"geo_in": int(enc.geo.in_features), "app_in": N_APP, "exp_in": N_EX,
                     "exp_in_names": list(arkit.ICT_NAMES),
                     "app_in_names": ["skin_r", "skin_g", "skin_b", "lip_r", "lip_g", "lip_b", "hair_r", "hair_g",
                                      "hair_b", "iris_r", "iris_g", "iris_b", "stubble", "redness", "noise",
                                      "brow_density"],
                     "mean_codes": "encode_*(zeros); z_exp of zero weights is exactly 0 (neutral)"},
        "arkit_regressor": {"in": "z_exp", "out": list(arkit.ARKIT_NAMES),
                            "fit": "refit to the final encoder at export" if refit_arkit else "trained jointly",
                            "fit_mse": arkit_fit},
        "color_space": "albedo in [-1, 1] = (rgb - 0.5) * 2",
        # measured motion vs ICT-FaceKit per channel group (mean head); the eyelid/brow groups and those below
        # LANDMARK_RATIO are read from the landmarks by the tracker (tracking.codes)
        "expression_response": {k: round(v["ratio"], 3) for k, v in response.items()},
        "landmark_channels": landmark_channels(response),
        "training": {"step": int(st.get("step", 0)), "minutes": round(float(st.get("elapsed", 0.0)) / 60, 1),
                     "ema_weights": "ema" in st},
    })
    if extra_info:
        extra.update(extra_info)
    if not bald:
        model.cfg.mesh_box = MESH_BOX  # the neck down to the tracker's neck line, and long hair
    save_model(out_dir, model, extra=extra)
    enc_state = {"encoders": {k: v.detach().float().contiguous() for k, v in enc.state_dict().items()},
                 "arkit_regressor": {k: v.detach().float().contiguous() for k, v in reg.state_dict().items()}}
    tmp = out_dir / (ENCODERS_FILE + ".tmp")
    torch.save(enc_state, tmp)
    tmp.replace(out_dir / ENCODERS_FILE)
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m backend.training.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default=str(BUILTIN_MODEL_DIR))
    ap.add_argument("--eval", default=None, help="evaluation JSON to record in config.json extra")
    ap.add_argument("--no-refit-arkit", action="store_true", help="keep the jointly trained ARKit regressor")
    a = ap.parse_args(argv)
    info = None
    if a.eval:
        res = json.loads(Path(a.eval).read_text())
        info = {"heldout_eval": {k: v for k, v in res.items() if k != "per_shape"}}
    d = export(a.checkpoint, a.out, info, refit_arkit=not a.no_refit_arkit)
    size = sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())
    print(f"exported to {d} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
