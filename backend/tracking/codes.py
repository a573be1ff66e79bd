"""Latent parameterisation used by the tracker.

Two modes:
- ``encoder`` (the built-in model ships ``encoders.pt``): optimise the low-dimensional, semantic parameters the
  model was trained with -- ICT identity weights w_id (100, prior N(0, 1)), appearance parameters (16, in [0, 1]),
  ICT expression weights w_ex (53, in [0, 1], gaze channels frozen) -- and map them through the linear encoders.
  A strong, well-conditioned prior for monocular fitting.
- ``raw`` (official checkpoints): optimise z_geo / z_app / z_exp directly from zero with the reference's
  regularisers (local codes held small, symmetric pairs alike).
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ..contracts import arkit
from ..model.encoders import N_ID as N_ICT_IDENTITY
from .channel_table import MODEL_SOURCE, ChannelTable

# the readings of the landmark regressor (``arkit_readings``): its response, and its map's linear reading
LANDMARK_SOURCE = "landmarks"
LINEAR_SOURCE = "landmarks_linear"


# An ICT channel whose encoder column is weaker than this share of the median column barely moves the model's
# surface (the built-in model: eye and brow channels at 0.007-0.014 against 0.03-0.22 for the mouth and jaw)
WEAK_CHANNEL_SHARE = 0.25
# the hair parameters a shaven face keeps at 0 (``CodeSpace.facial_hair``; names as ``training.hair.HAIR_NAMES``)
FACIAL_HAIR_PARAMS = ("beard", "moustache")
# the hair parameters the silhouette barely sees (where the parting lies, left/right asymmetry, the nape's tilt): with
# the prior of the others they drifted to their bounds (parting 0.8-1.0, asymmetry 0.62; truth 0)
UNSEEN_HAIR_PARAMS = ("parting", "parting_x", "asymmetry", "nape_tilt")


class CodeSpace:
    """Parameters the tracker optimises and their maps to the model's codes (see the module docstring).

    ``landmark_regressor`` (encoder mode, optional; ``expression_init.LandmarkExpressionRegressor``): reads the ICT
    weights from the detector's points. ``landmark_channels`` (n_ex,) marks the channels the model barely drives;
    with a regressor their values come from it (the landmark loss through the model cannot see them), read against
    the clip's rest face once ``set_landmark_rest`` has seen the clip's detections. ``image_regressors`` (optional;
    region name -> ``region_image.RegionImageRegressor``): read the channels the points do not carry from the frames'
    patches of their face region, against the clip's rest patch (``set_image_rest``); output only.
    ``channel_table`` (optional; ``channel_table.ChannelTable``, default: the model's reading on every channel): which
    of those readings each ARKit channel ships, and its response.
    """

    def __init__(self, model, encoders=None, arkit_regressor=None, landmark_regressor=None, image_regressors=None,
                 channel_table: Optional[ChannelTable] = None):
        self.model = model
        self.cfg = model.cfg
        self.enc = encoders
        self.reg = arkit_regressor
        self.landmark_regressor = landmark_regressor if encoders is not None else None
        self.landmark_rest: Optional[np.ndarray] = None   # (1404,) the clip's rest features (``set_landmark_rest``)
        self.image_regressors = dict(image_regressors or {})
        self.channel_table = channel_table if channel_table is not None else ChannelTable.model_only()
        self.image_rest: Dict[str, np.ndarray] = {}   # region -> (3, rows, cols) the clip's rest features
        self.mode = "encoder" if encoders is not None else "raw"
        self.device = next(model.parameters()).device   # every code tensor lives where the model does
        # the hair parameters (encoders with hair inputs, below): their support, and False in ``facial_hair`` where
        # the frames show a shaven lower face (``masks.lower_face_skin_share``, set by the tracker): the beard and
        # moustache entries then stay 0, as the scalp entries do on a bald scalp
        self.hair_ranges = self.hair_scalp = self.hair_thickness = self.hair_facial = self.hair_unseen = None
        self.facial_hair = True
        if self.enc is not None:
            for p in self.enc.parameters():
                p.requires_grad_(False)
            self.n_id = self.enc.geo.in_features
            # the hair parameters' support in the training data (export: extra["hair"]): outside it the linear
            # encoder extrapolates (negative bangs; a scalp shape on a bald head, which the data never had)
            hair = (getattr(model, "extra", None) or {}).get("hair") or {}
            if "ranges" in hair and self.n_id == N_ICT_IDENTITY + len(hair["ranges"]):
                self.hair_ranges = torch.as_tensor(hair["ranges"], dtype=torch.float32, device=self.device).T
                self.hair_scalp = torch.as_tensor(np.isin(hair["params"], hair["scalp"]), device=self.device)
                self.hair_thickness = hair["params"].index("thickness")
                self.hair_facial = torch.as_tensor(np.isin(hair["params"], FACIAL_HAIR_PARAMS), device=self.device)
                self.hair_unseen = torch.as_tensor(np.isin(hair["params"], UNSEEN_HAIR_PARAMS), device=self.device)
            self.n_app = self.enc.app.in_features
            self.n_ex = self.enc.exp.in_features
            static = np.array([n.startswith("eyeLook") for n in arkit.ICT_NAMES[: self.n_ex]])
            self.ex_mask = torch.as_tensor(~static, dtype=torch.float32, device=self.device)
            declared = (getattr(model, "extra", None) or {}).get("landmark_channels")
            if declared is not None:  # the model's own measurement (training.expression_response at export)
                weak = np.isin(np.array(arkit.ICT_NAMES[: self.n_ex]), declared) & ~static
            else:
                col = self.enc.exp.weight.detach().norm(dim=0).cpu().numpy()
                weak = (col < WEAK_CHANNEL_SHARE * np.median(col[~static])) & ~static
        else:
            self.n_id, self.n_app, self.n_ex = self.cfg.dim_geo, self.cfg.dim_app, self.cfg.dim_exp
            self.ex_mask = torch.ones(self.n_ex, device=self.device)
            weak = np.zeros(self.n_ex, bool)
        use = self.landmark_regressor is not None and self.n_ex == len(arkit.ICT_NAMES)
        self.landmark_channels = torch.as_tensor(weak & use, device=self.device)
        # the ARKit channels those ICT channels feed through the direct map: fixed, so computed once
        self._landmark_ict = weak & use
        self._landmark_arkit = arkit.ict_to_arkit_matrix()[self._landmark_ict].any(0) if use and weak.any() else None
        if self.reg is not None:
            for p in self.reg.parameters():
                p.requires_grad_(False)

    # -- initial values ---------------------------------------------------------------------------------------
    def init_identity(self):
        """(p_geo, p_app) initial identity parameters (mean head)."""
        if self.mode == "encoder":
            return torch.zeros(self.n_id, device=self.device), self.enc.app_mean.detach().clone()
        return torch.zeros(self.cfg.dim_geo, device=self.device), torch.zeros(self.cfg.dim_app, device=self.device)

    def init_expression(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.n_ex, device=self.device)

    def expression_from_landmarks(self, points: Optional[np.ndarray], depth: Optional[np.ndarray]
                                  ) -> Optional[torch.Tensor]:
        """(n_ex,) ICT weights read from one frame's MediaPipe points (L >= 468, 2) and their relative depth (L,),
        or None (no regressor, or another detector's points)."""
        if not bool(self.landmark_channels.any()) or points is None or depth is None or len(points) < 468:
            return None
        p3 = np.concatenate([points[:, :2], depth[:, None]], 1)
        return torch.as_tensor(self.landmark_regressor(p3, self.landmark_rest), dtype=torch.float32,
                               device=self.device) * self.ex_mask

    def set_landmark_rest(self, points: Sequence[np.ndarray], depths: Sequence[Optional[np.ndarray]]) -> None:
        """The clip's rest face for ``expression_from_landmarks``, from all its frames with a face: MediaPipe points
        (L >= 468, 2) and relative depths (L,) (frames without a depth, or another detector's points, are skipped)."""
        from .expression_init import rest_features

        p3 = [np.concatenate([p[:, :2], d[:, None]], 1) for p, d in zip(points, depths)
              if p is not None and d is not None and len(p) >= 468]
        if self.landmark_regressor is not None and p3:
            self.landmark_rest = rest_features(np.stack(p3))

    def set_image_rest(self, found_patches: Callable[[str], Optional[np.ndarray]]) -> None:
        """The clip's rest patch of each face region for ``image_readings``: ``found_patches(region)`` -> (F, rows,
        cols, 3) the region's patches of all the clip's frames with a face, or None (``Detections.found_patches``)."""
        from .region_image import rest_patch_features

        for name in self.image_regressors:
            patches = found_patches(name)
            if patches is not None and len(patches):
                self.image_rest[name] = rest_patch_features(patches)

    # -- maps --------------------------------------------------------------------------------------------------
    def z_geo(self, p_geo: torch.Tensor) -> torch.Tensor:
        """(D,) or (n_id,) -> (1, D_geo)."""
        return self.enc.encode_geo(p_geo[None]) if self.mode == "encoder" else p_geo[None]

    def z_app(self, p_app: torch.Tensor) -> torch.Tensor:
        return self.enc.encode_app(p_app[None]) if self.mode == "encoder" else p_app[None]

    def z_exp(self, p_ex: torch.Tensor) -> torch.Tensor:
        """(B, n_ex) -> (B, D_exp)."""
        if self.mode == "encoder":
            return self.enc.encode_exp(p_ex * self.ex_mask)
        return p_ex

    def project_expression_(self, p_ex: torch.Tensor) -> None:
        """In-place projection onto the valid set (ICT weights in [0, 1], gaze channels 0)."""
        if self.mode == "encoder":
            with torch.no_grad():
                p_ex.clamp_(0.0, 1.0).mul_(self.ex_mask)

    def bald(self, p_geo: torch.Tensor) -> Optional[torch.Tensor]:
        """The same identity without hair: p_geo with the hair parameters (identity inputs after the ICT weights)
        at 0, or None when the model has none (raw codes, or encoders without hair inputs)."""
        if self.mode != "encoder" or self.n_id <= N_ICT_IDENTITY:
            return None
        out = p_geo.detach().clone()
        out[N_ICT_IDENTITY:] = 0.0
        return out

    def hair_only(self, g: torch.Tensor) -> torch.Tensor:
        """(n_id,) ``g`` with every entry but the hair parameters at 0 (a model with hair parameters)."""
        return g - self.bald(g)

    def z_geo_bald(self, p_geo: torch.Tensor) -> Optional[torch.Tensor]:
        """(1, D_geo) the code of the same identity without hair (``bald``), held fixed (no gradient), or None when
        the model has no hair parameters."""
        pb = self.bald(p_geo)
        return None if pb is None else self.z_geo(pb).detach()

    def project_identity_(self, p_geo: torch.Tensor, p_app: torch.Tensor) -> None:
        """In-place projection onto the valid set: ICT weights within +-3, appearance in [0, 1], hair parameters
        (a model that declares their support) within their ranges, the scalp entries 0 on a bald scalp, the beard
        and moustache 0 on a shaven face (``facial_hair`` False)."""
        if self.mode == "encoder":
            with torch.no_grad():
                p_geo.clamp_(-3.0, 3.0)
                p_app.clamp_(0.0, 1.0)
                if self.hair_ranges is not None:
                    hair = p_geo[N_ICT_IDENTITY:]
                    hair.copy_(torch.maximum(torch.minimum(hair, self.hair_ranges[1]), self.hair_ranges[0]))
                    hair.masked_fill_(self.hair_scalp & (hair[self.hair_thickness] <= 0), 0.0)
                    if not self.facial_hair:
                        hair.masked_fill_(self.hair_facial, 0.0)

    def shrink_hair_(self, p_geo: torch.Tensor, amount: float, unseen_amount: Optional[float] = None) -> None:
        """In-place soft threshold of the hair parameters towards 0 (bald) by ``amount`` (the proximal step of an
        L1 prior on them), by ``unseen_amount`` (default: ``amount``) for those the silhouette barely sees
        (``UNSEEN_HAIR_PARAMS``, where the model declares its hair parameters); no-op for a model without hair
        inputs."""
        if self.mode == "encoder" and self.n_id > N_ICT_IDENTITY:
            with torch.no_grad():
                hair = p_geo[N_ICT_IDENTITY:]
                step = torch.full_like(hair, amount)
                if unseen_amount is not None and self.hair_unseen is not None:
                    step.masked_fill_(self.hair_unseen, unseen_amount)
                hair.copy_(hair.sign() * (hair.abs() - step).clamp_min(0.0))

    # -- priors --------------------------------------------------------------------------------------------------
    def identity_prior(self, p_geo: torch.Tensor, p_app: torch.Tensor) -> torch.Tensor:
        if self.mode == "encoder":
            return (p_geo ** 2).mean() + 0.25 * ((p_app - self.enc.app_mean) ** 2).mean()
        c = self.cfg
        G = c.lat_dim_glob

        def parts(z, L):
            loc = z[G:].reshape(c.n_codes_local, L)
            pairs = loc[: 2 * c.n_symm_pairs].reshape(c.n_symm_pairs, 2, L)
            return (z[:G] ** 2).sum(), (loc ** 2).sum(-1).mean(), (pairs[:, 0] - pairs[:, 1]).norm(dim=-1).mean()

        g_geo, l_geo, s_geo = parts(p_geo, c.lat_dim_loc_geo)
        g_app, l_app, s_app = parts(p_app, c.lat_dim_loc_app)
        # reference 4.6 weights (stage 1), expressed relative to a landmark loss of O(1)
        return 1e-2 * (25 * g_geo + 1000 * l_geo + s_geo + 50 * g_app + 1000 * l_app + s_app)

    def expression_sparsity(self, p_ex: torch.Tensor) -> torch.Tensor:
        """L1 of the expression weights (B, n_ex), mean over the batch: ICT weights live in [0, 1], so it is their
        sum, with the same downward gradient at 0 as elsewhere. Channels the landmarks do not call for stay at exactly
        0 (the projection clamps at 0), which the ARKit output needs (6 synthetic clips, draft: ARKit MAE 0.028 ->
        0.019 at weight 0.15, geometry within noise). 0 in raw mode."""
        if self.mode == "encoder":
            return p_ex.sum(-1).mean()
        return p_ex.sum() * 0

    def expression_prior(self, p_ex: torch.Tensor) -> torch.Tensor:
        if self.mode == "encoder":
            return (p_ex ** 2).sum(-1).mean() * 0.3
        return (p_ex ** 2).sum(-1).mean()

    # -- outputs -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def arkit(self, p_ex: torch.Tensor, landmark_reading: Optional[np.ndarray] = None,
              image_readings: Optional[Mapping[str, np.ndarray]] = None,
              landmark_linear: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """(B, n_ex) -> (B, 52) ARKit weights: ``channel_table`` applied to ``arkit_readings`` (None without a model
        reading)."""
        readings = self.arkit_readings(p_ex, landmark_reading, image_readings, landmark_linear)
        return None if readings is None else self.channel_table(readings)

    @torch.no_grad()
    def arkit_readings(self, p_ex: torch.Tensor, landmark_reading: Optional[np.ndarray] = None,
                       image_readings: Optional[Mapping[str, np.ndarray]] = None,
                       landmark_linear: Optional[np.ndarray] = None) -> Optional[dict]:
        """{source: (B, 52) float32 ARKit weights, NaN where the source has no reading} of B frames, the readings
        ``channel_table`` chooses from; None when there is no model reading (raw codes without a regressor).

        ``model``: the model's regressor on the codes (or the ICT->ARKit map); the channels read from the landmarks
        (``landmark_channels``) go through the ICT->ARKit map, since the model's codes barely carry them.
        ``landmarks``: ``landmark_reading`` (B, n_ex), the landmark regressor's ICT weights of each frame
        (``landmark_readings``; NaN rows without them), through the map. ``landmarks_linear`` (``LINEAR_SOURCE``):
        ``landmark_linear`` (B, n_ex), the same map's linear reading (``landmark_readings(linear=True)``: without the
        regressor's own dead zone and gain, which return a face at rest to 0 but also cut the small readings of jaw
        side or brow down; the table chooses its own response), through the map. ``<region>_image`` (``mouth_image``,
        ``jaw_image``, ``eyes_image``, ``lids_image``): ``image_readings[region]`` (B, 52), the region's image
        regressor's ARKit weights (``image_readings``)."""
        if self.reg is not None:
            out = self.reg(self.z_exp(p_ex)).cpu().numpy().astype(np.float32)
            if self._landmark_arkit is not None:
                fed = self._landmark_arkit
                direct = np.clip(arkit.ict_to_arkit(p_ex.cpu().numpy() * self._landmark_ict), 0, 1)
                out[:, fed] = direct[:, fed]
        elif self.mode == "encoder" and self.n_ex == len(arkit.ICT_NAMES):
            out = np.clip(arkit.ict_to_arkit(p_ex.cpu().numpy()), 0, 1).astype(np.float32)
        else:
            return None
        readings = {MODEL_SOURCE: out}
        for name, reading in ((LANDMARK_SOURCE, landmark_reading), (LINEAR_SOURCE, landmark_linear)):
            if reading is not None and self._landmark_arkit is not None:
                rows = np.isfinite(reading).all(1)
                read = np.full(out.shape, np.nan, np.float32)
                read[rows] = np.clip(arkit.ict_to_arkit(reading[rows].astype(np.float64)), 0, 1)
                readings[name] = read
        for region, reading in (image_readings or {}).items():
            readings[f"{region}_image"] = np.asarray(reading, np.float32)
        return readings

    def landmark_readings(self, points: Sequence[Optional[np.ndarray]], depths: Sequence[Optional[np.ndarray]],
                          linear: bool = False) -> Optional[np.ndarray]:
        """(B, n_ex) the landmark regressor's ICT weights of B frames' MediaPipe points (L, 2) and depths (L,) (NaN
        rows where a frame has none), or None without a regressor. ``linear``: its map's linear reading instead
        (``LandmarkExpressionRegressor.linear``: no dead zone or gain, unclamped; output only, the fit never uses
        it)."""
        if self._landmark_arkit is None:
            return None
        out = np.full((len(points), self.n_ex), np.nan, np.float32)
        have = [k for k, (p, d) in enumerate(zip(points, depths)) if p is not None and d is not None and len(p) >= 468]
        if have:
            p3 = np.stack([np.concatenate([points[k][:, :2], depths[k][:, None]], 1) for k in have])
            read = self.landmark_regressor.linear if linear else self.landmark_regressor
            out[have] = read(p3, self.landmark_rest) * self.ex_mask.cpu().numpy()
        return out

    def image_readings(self, patches: Mapping[str, Sequence[Optional[np.ndarray]]]) -> Dict[str, np.ndarray]:
        """Region name -> (B, 52) its image regressor's ARKit weights of B frames' patches of that region (rows, cols,
        3): its channels through the ICT->ARKit map, NaN in the other channels and where a frame has no patch; only
        the regions with a regressor."""
        M = arkit.ict_to_arkit_matrix()
        out = {}
        for name, frames in patches.items():
            reg = self.image_regressors.get(name)
            if reg is None:
                continue
            ict = [arkit.ICT_NAMES.index(c) for c in reg.channels]
            fed = M[ict].any(0) & ~np.delete(M, ict, axis=0).any(0)   # ARKit channels only these ICT channels feed
            read = np.full((len(frames), M.shape[1]), np.nan, np.float32)
            have = [k for k, p in enumerate(frames) if p is not None]
            if have:
                w = np.zeros((len(have), len(arkit.ICT_NAMES)))
                w[:, ict] = reg(np.stack([frames[k] for k in have]), self.image_rest.get(name))
                read[np.ix_(have, np.flatnonzero(fed))] = np.clip(arkit.ict_to_arkit(w), 0, 1)[:, fed]
            out[name] = read
        return out
