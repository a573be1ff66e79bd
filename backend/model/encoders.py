"""Conditioning encoders and the ARKit regressor stored with the built-in model (``encoders.pt``).

Training fits them (``backend.training``); tracking loads them with ``checkpoint.load_encoders``.

The synthetic data knows every sample's ICT identity weights (100), appearance parameters (16) and ICT expression
weights (53). Codes are predicted from them by Linear maps instead of being looked up in an auto-decoder table, so
no code ever starves and every training step can use fresh random heads.

At tracking time the encoders give (a) the mean codes: ``encode_*(zeros)``, and (b) an optional low-dimensional
parameterisation (optimise w_id / w_ex and map through the encoder).

``ArkitRegressor`` maps an expression code z_exp to the 52 ARKit weights (retargeting).
"""
from __future__ import annotations

import torch
import torch.nn as nn

N_ID = 100
N_APP = 16
N_EX = 53
N_ARKIT = 52


class CodeEncoders(nn.Module):
    def __init__(self, dim_geo: int, dim_app: int, dim_exp: int, n_id: int = N_ID, n_app: int = N_APP,
                 n_ex: int = N_EX, init_scale: float = 0.001):
        super().__init__()
        self.geo = nn.Linear(n_id, dim_geo)
        self.app = nn.Linear(n_app, dim_app)
        self.exp = nn.Linear(n_ex, dim_exp)
        for lin in (self.geo, self.app, self.exp):
            nn.init.normal_(lin.weight, 0.0, init_scale)
            nn.init.zeros_(lin.bias)
        # appearance parameters are in [0,1]; centre them
        self.register_buffer("app_mean", torch.full((n_app,), 0.5))

    def encode_geo(self, w_id: torch.Tensor) -> torch.Tensor:
        return self.geo(w_id)

    def encode_app(self, app: torch.Tensor) -> torch.Tensor:
        return self.app(app - self.app_mean)

    def encode_exp(self, w_ex: torch.Tensor) -> torch.Tensor:
        # zero expression weights -> zero code (neutral is exactly the canonical face)
        return w_ex @ self.exp.weight.t()

    def mean_codes(self):
        dev = self.geo.weight.device
        return (self.encode_geo(torch.zeros(1, self.geo.in_features, device=dev)),
                self.encode_app(self.app_mean[None].clone()),
                self.encode_exp(torch.zeros(1, self.exp.in_features, device=dev)))


class ArkitRegressor(nn.Module):
    """z_exp -> 52 ARKit weights in [0,1] (small MLP)."""

    def __init__(self, dim_exp: int, hidden: int = 128, n_out: int = N_ARKIT):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_exp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))

    def forward(self, z_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z_exp) - 3.0)
