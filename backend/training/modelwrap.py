"""Thin glue between the trainer and the model core (backend/model); no model code lives here."""
from __future__ import annotations

import dataclasses

import torch

from ..model import MonoNPHM, MonoNPHMConfig
from ..model import geometric_init

# Expression code size of the built-in model: >= the 45 ICT channels that move geometry (53 minus 8 gaze
# channels, static eyes), so the z_exp -> ARKit regressor is not bottlenecked by the code.
BUILTIN_EXP_DIM = 48


def model_config(preset: str = "builtin") -> MonoNPHMConfig:
    base = MonoNPHMConfig.builtin()
    if preset == "builtin":
        return dataclasses.replace(base, lat_dim_exp=BUILTIN_EXP_DIM, name="builtin")
    if preset == "tiny":
        return dataclasses.replace(base, lat_dim_glob=8, lat_dim_loc_geo=4, lat_dim_loc_app=4, hidden_dim_geo=16,
                                   n_layers_geo=2, hidden_dim_app=16, n_layers_app=2, lat_dim_exp=16,
                                   lat_dim_id_compressed=8, hidden_dim_ex=32, n_layers_ex=3, pos_mlp_dim=16,
                                   name="tiny")
    raise ValueError(f"unknown preset {preset!r}")


def build_model(cfg: MonoNPHMConfig, mean_anchors: torch.Tensor, init: bool = True) -> MonoNPHM:
    m = MonoNPHM(cfg, mean_anchors)
    if init:
        geometric_init(m)
        # deformation starts at zero offset / zero hyper
        last = m.ex_model.lins[-1]
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.zero_()
    return m


def query(model: MonoNPHM, x, z_geo, z_app, z_exp, anchors, with_color=False, exact=False,
          deformation_only=False, neutral=False):
    """Training-time evaluation (autograd on). Returns a dict (sdf, color, offsets, hyper) or (offsets, hyper)."""
    if deformation_only:
        return model.deformation(x, z_geo, z_exp, anchors=anchors)
    o = model(x, z_geo, z_app, z_exp, neutral=neutral, with_color=with_color, with_gradient=False, exact=exact,
              anchors=anchors)
    return {"sdf": o.sdf, "color": o.color, "offsets": o.offsets, "hyper": o.hyper}
