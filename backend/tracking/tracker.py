"""MonoNPHM tracking stages (reference section 4, made offline and CPU-fast).

Stage 1a  identity: identity/appearance/SH/colour-correction plus per-frame expression and pose on a few frames,
          with landmarks and volume-rendered rays in every preset (built-in model: the rays' colour and silhouette
          lead the identity, landmarks mainly place pose and expression, see ``Preset.id_lm_grad_ict``).
Stage 1b  per frame: expression + pose, warm-started from the previous frame; landmark, silhouette and (standard,
          high) photometric losses; fewer iterations on frames that barely move.
Stage 2   all frames jointly: a landmark refinement (block coordinate descent over batches of frames,
          ``Tracker.refine_all``), then the temporal model (``temporal``): pose and expression tracks smoothed
          without lag, fast expression events kept.

Landmarks: the detector's points are tied to canonical positions predicted from the identity's anchors
(``landmark_tables.LandmarkSet``), posed by the backward-deformation root finder (implicit gradients), projected
with the per-frame pose ``x_cam = R (NPHM_UNIT_M x_model) + t`` (``Tracker.to_camera``, ``Tracker.project``).
Silhouette: per frame in draft, the outline of the warped mesh against the background distance map; per frame in
standard/high and in every identity stage, NeuS opacity on rays concentrated on the face.
Colour: SH-shaded albedo vs the frame, face pixels only.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import masks as M
from . import raster, renderer
from . import head_mesh
from .camera import rotation_to_axis_angle, solve_pnp
from .codes import CodeSpace
from .temporal import TemporalSmoothing, smooth_rotations, smooth_tracks
from ..contracts.conventions import NPHM_UNIT_M
from ..contracts.landmark_tables import IBUG68_FROM_MEDIAPIPE
from ..model.devices import to_numpy
from ..model.meshing import MESH_WARP_TOL, WarpState, warp_vertices
from ..model.optim import Adam


# An expression weight at rest (0) has no noise of its own: flickers below about 3 sqrt(6) x this (0.15) count as
# noise in stage 2's smoothing, larger steps as events (``temporal.noise_level``)
EXPRESSION_NOISE_FLOOR = 0.02


# -------------------------------------------------------------------------------------------------------------------
# presets
# -------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    id_frames: int = 4             # frames used for the identity stage
    id_iters: int = 60
    frame_iters: int = 14          # per-frame iterations (moving frames)
    still_iters: int = 5           # per-frame iterations when the landmarks barely move
    still_motion: float = 0.004    # mean landmark motion (fraction of face size) below which a frame is "still"
    # a frame without a fitted predecessor (the clip's first) starts cold: this many times frame_iters, so the next
    # frames continue from a converged fit instead of converging over several frames (a transient stage 2 would keep
    # as an event)
    cold_iters_factor: int = 3
    stage2_epochs: int = 2
    stage2_batch: int = 16
    rays: int = 0                  # per-frame photometric/silhouette rays per iteration (0 = none: draft)
    id_rays: int = 192             # identity-stage rays per iteration (every preset: they carry the identity)
    ray_every: int = 1             # per-frame fit: render rays every k-th iteration (the identity stage: every one)
    n_coarse: int = 16
    n_fine: int = 8
    mesh_res: int = 80             # output (fixed topology) canonical mesh resolution
    # Per-frame topology-varying meshes (--output meshes/both), 16 * 2^k cells.  Scored on tracked cap12_edit frames
    # (benchmarks/mesh_extraction.py --score-frame-res; 2026-12-06 23:03, load 10.6): |SDF| at the mesh, mean / p99 /
    # max, 64^3 0.105 / 0.82 / 2.35 mm, 128^3 0.031 / 0.27 / 1.40 mm; distance of a 256^3 reference to it 0.49 / 1.23
    # / 3.05 against 0.46 / 1.10 / 1.89 mm (sampling floor ~0.45 mean): 64^3 stays within 1 mm of the surface for 99 %
    # of it, under the tracker's own face error (1.4 mm), at 0.46x the time (0.63 vs 1.36 s/frame, 1 thread).
    posed_mesh_res: int = 64
    sil_res: int = 40              # low-res mesh for the draft silhouette / quality metrics
    outline_points: int = 300
    lr_exp: float = 0.08
    lr_rot: float = 0.01
    lr_trans: float = 0.004
    lr_id: float = 0.05
    w_lm: float = 1.0
    w_sil: float = 0.5
    w_mask: float = 0.5
    w_rgb: float = 2.0
    w_exp_prior: float = 1.0
    w_exp_sparsity: float = 0.15   # L1 on the expression weights (encoder models): inactive channels stay 0
    w_id_prior: float = 0.02       # identity prior, raw codes (official checkpoints: the reference's regulariser)
    # The built-in model's identity is ICT identity weights (prior N(0, 1)).  MediaPipe's structured landmark error
    # is larger than their signal (backend/evaluation/README.md), so the identity stage lets the rays' colour and
    # silhouette lead it: a weak prior, and only a share of the landmark gradient reaches the identity (landmarks
    # still place pose and expression).
    w_id_prior_ict: float = 0.002  # identity prior, ICT identity weights
    id_lm_grad_ict: float = 0.1    # ICT identity weights: share of the landmark loss's gradient reaching the identity
    # A model with hair inputs: after each identity step the hair parameters shrink towards 0 (bald) by this share of
    # lr_id (an L1 prior's proximal step), then stay in their training support (``CodeSpace.project_identity_``).
    # With the skin-coloured pixels out of the hair region (``masks.head_labels``) a bald clip then fits bald (hair
    # area 0.48 -> 0.00 of its mesh); 0.35 kept it bald as well but left the thin hair of the plain hair clip
    # unfitted (hair area 0.28 -> 0, face 1.80 -> 1.91 mm, hair ICP 3.45 -> 3.98 mm). At 0.1 the plain hair clip's
    # hair could stay thin (one seed: thickness 0.05, length 0.09, volume 0.08; truth 0.17, 0.44, 0.56; missed hair
    # pixels are most of its silhouette loss) while the parameters below drifted (asymmetry 0.42, parting 0.87; truth
    # 0). 0.03, with 0.3 on those: plain hair clip over 3 seeds face 1.794 -> 1.610 mm, IoU 0.872 -> 0.878; the bald
    # clip still fits bald (hair area 7e-5); backend/evaluation/README.md
    hair_shrink: float = 0.03
    # ... and this share for the parameters the silhouette barely sees (``codes.UNSEEN_HAIR_PARAMS``)
    hair_shrink_unseen: float = 0.3
    # A model with hair (hair labelled in the frames): this share of the identity rays on the hair's outline
    # (``masks.hair_edge``), out of the share near the face. Drawn with the rest, 2-3 of 192 rays landed on an 8 px
    # hair band per iteration, and hair and skull traded off on noise.
    id_hair_edge: float = 0.2
    # A model with hair, identity stage: the rays on FACE pixels also pay this per mm their rendered surface point lies
    # outside the same identity's bald head (``codes.z_geo_bald``: the hair parameters at 0, posed with the frame's
    # expression) beyond ``head_mesh.HAIR_MIN_OFFSET`` (``head_mesh.hair_over_face_mm``), on the hair parameters
    # only (through the identity weights and the pose it reshaped and moved the face: hair000, seed 0, weight 1, face
    # 2.529 -> 2.768 mm). Session 16 traced the hair model's face error to the temples and proposed it (the
    # silhouette cannot tell hair from skin). Off (0) by default: on session 18's hair candidate (hair000, 3 seeds)
    # weight 1 made the face worse, 2.636 -> 2.818 mm (the bald model 2.235; on its continuation 2.631 -> 2.674),
    # IoU 0.878 -> 0.868; the temples improved by 0.13 mm, the chin and mid face lost more (the hair inputs also move
    # the face), and only ~3 % of the visible face lay nearest a hair vertex (backend/evaluation/README.md, session
    # 18). No effect on a model without hair.
    w_bald_face: float = 0.0
    w_temporal: float = 0.3        # per-frame pull towards the previous frame (stage 1b)
    # stage 2's temporal model (``temporal``): the pose keeps no events (a head does not jump) and is smoothed more;
    # the expression less, and it keeps its fast events (a jaw drop). Chosen on cap12_edit 0:125 (mesh jitter) and
    # the tuning clips 0 and 4 (jawOpen peak ratio 0.84 unsmoothed: 0.81 at event_threshold 3, 0.83 at 2, with mesh
    # jitter 0.10 and 0.16 px/frame^2 against MediaPipe's 0.36; the still test head 0.08 and 0.10); see
    # backend/evaluation/README.md
    smooth_pose: TemporalSmoothing = TemporalSmoothing(strength=30.0, event_threshold=math.inf)
    smooth_expression: TemporalSmoothing = TemporalSmoothing(strength=3.0, event_threshold=3.0)
    inv_s: float = math.exp(10 * 0.6)


PRESETS: Dict[str, Preset] = {
    "draft": Preset("draft", frame_iters=16, still_iters=6),  # per-frame: no rays
    "standard": Preset("standard", id_frames=6, id_iters=120, frame_iters=30, still_iters=10, stage2_epochs=4,
                       rays=160, id_rays=192, ray_every=2, n_coarse=16, n_fine=8, mesh_res=96),
    "high": Preset("high", id_frames=8, id_iters=250, frame_iters=60, still_iters=20, stage2_epochs=8,
                   rays=384, id_rays=384, ray_every=1, n_coarse=24, n_fine=12, mesh_res=128, posed_mesh_res=256),
}


# a lower face at least this share skin-coloured (``masks.lower_face_skin_share``) is shaven: no beard or moustache
# in the fit (shaven synthetic and real clips: 0.80-0.995; without the gate the beard drifted to 0.2, 3 mm on the chin)
SHAVEN_SKIN_SHARE = 0.6

# Root-finding tolerance (model units) of the fixed-topology vertices a later rewrite replaces (stage 1 when stage 2
# follows): 0.1 mm, invisible in the scene, and 1.11 deformation passes per vertex and frame instead of 1.29 at
# MESH_WARP_TOL (cap12_edit 0:40, draft mesh).
PREVIEW_WARP_TOL = 4e-4


# -------------------------------------------------------------------------------------------------------------------
# observations and per-frame state
# -------------------------------------------------------------------------------------------------------------------
@dataclass
class FrameObs:
    index: int
    time: float
    landmarks: Optional[np.ndarray]        # (L, 2) detector points (full detector array), None: no face
    image: Optional[np.ndarray] = None     # (H, W, 3) uint8
    labels: Optional[np.ndarray] = None    # (H, W) uint8 (masks.*)
    face_size: float = 0.0
    depth: Optional[np.ndarray] = None     # (L,) the detector's relative depth of its points, px (MediaPipe)

    @property
    def found(self) -> bool:
        return self.landmarks is not None


@dataclass
class FrameState:
    p_ex: torch.Tensor        # (n_ex,)
    omega: torch.Tensor       # (3,) axis-angle, model->camera
    trans: torch.Tensor       # (3,) metres
    iterations: int = 0       # optimiser iterations of the per-frame fit that gave this state (0: not fitted alone)

    def clone(self) -> "FrameState":
        return FrameState(self.p_ex.detach().clone(), self.omega.detach().clone(), self.trans.detach().clone())


@dataclass
class FrameResult:
    index: int
    state: FrameState
    vertices: np.ndarray               # (V, 3) posed model space, model units (before the rigid pose)
    landmark_error_px: float
    photometric_error: Optional[float]
    mask_iou: Optional[float]
    warp: Optional[WarpState] = None   # the fixed-topology warp's state after this frame (the next frame's start)


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass; its gradient multiplied by factor in the backward pass."""
    if factor == 1.0:
        return x
    return x.detach() + factor * (x - x.detach())


class Timer:
    """Seconds per stage, summed over calls (``t`` by stage name)."""

    def __init__(self):
        self.t: Dict[str, float] = {}

    def add(self, k, dt):
        self.t[k] = self.t.get(k, 0.0) + dt


# -------------------------------------------------------------------------------------------------------------------
class Tracker:
    """Fits one clip. ``progress(stage, done, total, frame, message)`` receives progress callbacks."""

    def __init__(self, model, codes: CodeSpace, lmset, K: np.ndarray, image_size, preset: Preset,
                 progress: Optional[Callable] = None, seed: int = 0):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.codes = codes
        self.preset = preset
        self.device = codes.device   # the model's: every tensor of the fit lives there
        self.K = self.tensor(K)
        self.Knp = np.asarray(K, np.float64)
        self.W, self.H = image_size
        self.progress = progress or (lambda *a, **k: None)
        self.seed = seed
        self.lm_idx = np.asarray(lmset.detector_idx)     # indexes the detector's numpy points
        self.lm_mean = self.tensor(lmset.canonical_mean)
        self.lm_blend = self.tensor(lmset.blend)
        self.lm_w = self.tensor(lmset.weight)
        self.mean_anchors = model.id_model.mean_anchors.detach().float()
        ict = codes.mode == "encoder"
        self.w_id_prior = preset.w_id_prior_ict if ict else preset.w_id_prior
        self.id_lm_grad = preset.id_lm_grad_ict if ict else 1.0
        pg, pa = codes.init_identity()
        self.p_geo, self.p_app = pg, pa
        # identity transfer is relative to the anchors the model predicts for the initial (mean) code, not to the
        # stored mean anchors: an anchor predictor's bias at the mean code must not shift the landmarks
        with torch.no_grad():
            self.anchor_ref = self.model.anchors(codes.z_geo(pg))[0].detach().float()
        self.sh = renderer.sh_init(device=self.device)
        self.cA = torch.eye(3, device=self.device)
        self.cb = torch.zeros(3, device=self.device)
        self.mesh: Optional[head_mesh.HeadMesh] = None        # output canonical mesh (model units)
        self.mesh_lo: Optional[head_mesh.HeadMesh] = None     # low-res canonical mesh
        self.albedo: Optional[np.ndarray] = None      # (V, 3) uint8 for the output mesh
        self.timer = Timer()
        self._posed_cache: Dict[str, tuple] = {}   # key -> (posed landmarks (B, n, 3), their J^-1 (B, n, 3, 3))
        self._lo_warp: Optional[WarpState] = None     # low-res mesh warp within a frame's iterations
        self._lo_vertices: Optional[tuple] = None     # (mesh_lo, its vertices as a tensor on the device)
        self._lm_key: Optional[tuple] = None          # identity the cached canonical landmarks belong to
        self._lm_cache: Optional[torch.Tensor] = None

    # ---------------------------------------------------------------------------------------------------------
    # state
    # ---------------------------------------------------------------------------------------------------------
    def tensor(self, a, dtype=torch.float32) -> torch.Tensor:
        """``a`` (array, list or tensor) as a tensor on the tracker's device."""
        return torch.as_tensor(a, dtype=dtype, device=self.device)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The fitted identity, appearance and meshes as numpy arrays (``load_state_dict`` restores them), and the
        ensemble layout the run measured (``model.kernels``: a resumed run computes with the same kernels)."""
        grouped = self.model.id_model.grouped
        return {"p_geo": to_numpy(self.p_geo), "p_app": to_numpy(self.p_app), "sh": to_numpy(self.sh),
                "color_affine": to_numpy(self.cA), "color_bias": to_numpy(self.cb),
                "mesh_lo_vertices": self.mesh_lo.vertices, "mesh_lo_faces": self.mesh_lo.faces,
                "mesh_vertices": self.mesh.vertices, "mesh_faces": self.mesh.faces, "albedo": self.albedo,
                "ensemble_grouped": np.array(-1 if grouped is None else int(grouped), np.int8),
                **self._warm_start_arrays()}

    def _warm_start_arrays(self) -> Dict[str, np.ndarray]:
        """The warm starts carried from the last fitted frame into the next one (its landmark roots and the low-res
        mesh warp, with their inverse Jacobians), so a resumed run's next frame starts where an uninterrupted run's
        would; {} for those not made yet."""
        out = {}
        if "frame" in self._posed_cache:
            out["warm_landmarks"], out["warm_landmarks_jinv"] = map(to_numpy, self._posed_cache["frame"])
        w = self._lo_warp
        if w is not None:
            out.update(warm_lo_points=to_numpy(w.points), warm_lo_jinv=to_numpy(w.jinv),
                       warm_lo_persistence=np.array(w.persistence, np.float64))
            if w.previous is not None:
                out["warm_lo_previous"] = to_numpy(w.previous)
        return out

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned (a resumed run continues from the fitted identity)."""
        self.p_geo = self.tensor(state["p_geo"])
        self.p_app = self.tensor(state["p_app"])
        self.sh = self.tensor(state["sh"])
        self.cA = self.tensor(state["color_affine"])
        self.cb = self.tensor(state["color_bias"])
        self.mesh_lo = head_mesh.HeadMesh(state["mesh_lo_vertices"], state["mesh_lo_faces"])
        self.mesh = head_mesh.HeadMesh(state["mesh_vertices"], state["mesh_faces"])
        self.albedo = state["albedo"]
        if "ensemble_grouped" in state:
            grouped = int(np.asarray(state["ensemble_grouped"]).reshape(-1)[0])
            self.model.id_model.grouped = None if grouped < 0 else bool(grouped)
        self.reset_frame_cache()
        if "warm_landmarks" in state:
            self._posed_cache["frame"] = (self.tensor(state["warm_landmarks"]), self.tensor(state["warm_landmarks_jinv"]))
        if "warm_lo_points" in state:
            self._lo_warp = WarpState(self.tensor(state["warm_lo_points"]), self.tensor(state["warm_lo_jinv"]),
                                      self.tensor(state["warm_lo_previous"]) if "warm_lo_previous" in state else None,
                                      float(np.asarray(state["warm_lo_persistence"]).reshape(-1)[0]))

    def reset_frame_cache(self) -> None:
        """Forget the warm starts carried between frames (a frame whose predecessor is not the frame they came from
        starts cold)."""
        self._posed_cache.pop("frame", None)
        self._lo_warp = None

    # ---------------------------------------------------------------------------------------------------------
    # identity-dependent quantities
    # ---------------------------------------------------------------------------------------------------------
    def z_geo(self):
        return self.codes.z_geo(self.p_geo)

    def z_app(self):
        return self.codes.z_app(self.p_app)

    def canonical_landmarks(self, zg: torch.Tensor, snap: bool = True) -> torch.Tensor:
        """(n, 3) canonical landmark positions for identity code zg (1, D).

        Positions follow the identity's anchors (``LandmarkSet.canonical``) and are then snapped onto the identity's
        neutral surface with one Newton step along the SDF gradient, p - f(p) n (n without gradient), so the
        landmark loss shapes the surface itself, not only the anchors.
        """
        A = self.model.anchors(zg)
        P = self.lm_mean + self.lm_blend @ (A[0] - self.anchor_ref)
        if not snap:
            return P
        with torch.enable_grad():
            q = P.detach().requires_grad_(True)
            f0 = self.model(q[None], zg.detach(), None, None, neutral=True, with_color=False, anchors=A.detach()).sdf
            (g,) = torch.autograd.grad(f0.sum(), q)
        n = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        f = self.model(P[None], zg, None, None, neutral=True, with_color=False, anchors=A).sdf[0]
        step = f.clamp(-0.03, 0.03)
        return P - step * n

    def eye_contours(self, zg: torch.Tensor) -> list:
        """The lid margins around each eye opening (canonical, model units): one (k, 3) array per eye from the
        identity's eyelid landmarks in the order of MediaPipe's contour (``masks.EYE_CONTOURS``; iBUG 68's six
        points per eye through their MediaPipe counterparts, ``landmark_tables.IBUG68_FROM_MEDIAPIPE``)."""
        mediapipe_ids = self.lm_idx if self.lm_idx.max() >= 68 else np.asarray(IBUG68_FROM_MEDIAPIPE)[self.lm_idx]
        P = to_numpy(self.canonical_landmarks(zg))
        row = {int(i): k for k, i in enumerate(mediapipe_ids)}
        rows = [[row[i] for i in contour if i in row] for contour in M.EYE_CONTOURS]
        return [P[r] for r in rows if len(r) >= 6]

    def _landmarks_for(self, zg: torch.Tensor) -> torch.Tensor:
        """Canonical landmarks, cached while the identity is fixed (per-frame stages)."""
        if zg.requires_grad:
            return self.canonical_landmarks(zg)
        key = (tuple(zg.shape), float(zg.sum()), float(zg.abs().sum()))
        if self._lm_key != key:
            with torch.no_grad():
                self._lm_cache = self.canonical_landmarks(zg)
            self._lm_key = key
        return self._lm_cache

    def expression_regulariser(self, p_ex: torch.Tensor) -> torch.Tensor:
        """Prior (L2) plus sparsity (L1) on the expression parameters (B, n_ex), preset-weighted."""
        pr = self.preset
        return (pr.w_exp_prior * self.codes.expression_prior(p_ex)
                + pr.w_exp_sparsity * self.codes.expression_sparsity(p_ex))

    # ---------------------------------------------------------------------------------------------------------
    # geometry helpers
    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def to_camera(x: np.ndarray, st: FrameState):
        """Model→camera transform of one frame (numpy, float64): x (N, 3) model units -> (camera points (N, 3)
        metres, R (3, 3)). ``project`` is its differentiable, batched counterpart."""
        R = to_numpy(renderer.so3_exp(st.omega[None])[0]).astype(np.float64)
        return (NPHM_UNIT_M * np.asarray(x, np.float64)) @ R.T + to_numpy(st.trans), R

    def project(self, x: torch.Tensor, omega: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """x (B, N, 3) model units, omega/trans (B, 3) -> pixels (B, N, 2)."""
        R = renderer.so3_exp(omega)
        xc = NPHM_UNIT_M * torch.einsum("bij,bnj->bni", R, x) + trans[:, None]
        z = xc[..., 2:3].clamp_min(1e-3)
        return torch.cat([self.K[0, 0] * xc[..., :1] / z + self.K[0, 2], self.K[1, 1] * xc[..., 1:2] / z + self.K[1, 2]],
                         -1)

    def posed_landmarks(self, zg, p_ex, key: Optional[str] = None):
        """The canonical landmarks posed by expressions p_ex (B, n_ex): ``WarpResult`` with points (B, n, 3) model
        units (implicit gradients when grad is enabled) and converged (B, n). ``key`` names a warm start kept between
        calls (the last roots of that key and their inverse Jacobians: chord steps from the start, no Jacobian pass
        there)."""
        B = p_ex.shape[0]
        A = self.model.anchors(zg)
        P = self._landmarks_for(zg)[None].expand(B, -1, -1)
        ze = self.codes.z_exp(p_ex)
        x0, jinv0 = self._posed_cache.get(key, (None, None)) if key is not None else (None, None)
        if x0 is not None and x0.shape != P.shape:
            x0 = jinv0 = None
        res = self.model.forward_warp(P, zg.expand(B, -1), ze, anchors=A.expand(B, -1, -1), x_init=x0,
                                      jinv_init=jinv0, max_iter=15)
        if key is not None:
            self._posed_cache[key] = (res.points.detach(), res.jinv)
        return res

    def landmark_term(self, zg, p_ex, omega, trans, lms, sizes, key: Optional[str] = None):
        """Weighted landmark loss, in units of (1 % of the face size)^2.

        p_ex (B, n_ex), omega/trans (B, 3), lms (B, n, 2) detections of the tracked subset, sizes (B,) face size px.
        Returns (loss, uv (B, n, 2) detached, converged (B, n)).
        """
        res = self.posed_landmarks(zg, p_ex, key)
        uv = self.project(res.points, omega, trans)
        r = (uv - lms) / (0.01 * sizes[:, None, None])
        w = self.lm_w[None] * res.converged.to(r.dtype)
        loss = (w * (r ** 2).sum(-1)).sum() / w.sum().clamp_min(1e-6)
        return loss, uv.detach(), res.converged

    # ---------------------------------------------------------------------------------------------------------
    # pose initialisation
    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def pnp_init(self, obs: FrameObs, prev: Optional[FrameState] = None) -> FrameState:
        P = to_numpy(self._landmarks_for(self.z_geo()))
        l2d = obs.landmarks[self.lm_idx]
        init = None
        if prev is not None:
            init = (to_numpy(renderer.so3_exp(prev.omega[None])[0]).astype(np.float64), to_numpy(prev.trans))
        r = solve_pnp(P, l2d, self.Knp, init=init)
        if not r.ok and init is not None:
            r = solve_pnp(P, l2d, self.Knp)
        if not r.ok:
            raise RuntimeError("PnP failed")
        p_ex = prev.p_ex.clone() if prev is not None else self.codes.init_expression(1)[0]
        return FrameState(p_ex, self.tensor(rotation_to_axis_angle(r.R)), self.tensor(r.t))

    # ---------------------------------------------------------------------------------------------------------
    # meshes
    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build_meshes(self):
        t0 = time.perf_counter()
        zg = self.z_geo().detach()
        self.mesh = head_mesh.fill_eye_pockets(head_mesh.extract_canonical_mesh(self.model, zg, self.preset.mesh_res),
                                               self.eye_contours(zg))
        self.mesh_lo = head_mesh.extract_canonical_mesh(self.model, zg, self.preset.sil_res)
        self.timer.add("mesh_extract", time.perf_counter() - t0)

    @torch.no_grad()
    def albedo_u8(self, vertices: np.ndarray, z_exp: Optional[torch.Tensor] = None,
                  prune_mass: Optional[float] = None) -> np.ndarray:
        """(V, 3) uint8 albedo at vertices (V, 3) model units: network albedo, then the fitted colour affine.
        Canonical (neutral) points when z_exp is None, else posed points of that expression (1, D_exp).
        prune_mass: blend mass the colour query may drop (None: the model's own; ``meshing.COLOR_PRUNE_MASS`` keeps
        every colour within a uint8 step).  The colour branch alone runs (no SDF head), chunked on worker threads."""
        _, col = self.model.query(self.tensor(vertices)[None], self.z_geo(), self.z_app(), z_exp,
                                  neutral=z_exp is None, prune_mass=prune_mass, with_sdf=False)
        c = (col[0] @ self.cA.T + self.cb + 1) / 2
        return (to_numpy(c.clamp(0, 1)) * 255 + 0.5).astype(np.uint8)

    def mesh_albedo(self) -> np.ndarray:
        """(V, 3) uint8 albedo of the output (canonical) mesh."""
        return self.albedo_u8(self.mesh.vertices)

    def _outline(self, verts_posed_lo: np.ndarray, st: FrameState, n: int, tg: head_mesh.SilhouetteTargets):
        """Indices of silhouette vertices of the low-res mesh and its coverage map on the targets' contour pixels
        (the only pixels the outline loss reads)."""
        vc, _ = self.to_camera(verts_posed_lo, st)
        nrm = raster.vertex_normals(vc, self.mesh_lo.faces)
        ol = np.flatnonzero(head_mesh.outline_vertices(vc, nrm))
        if len(ol) > n:
            ol = ol[np.linspace(0, len(ol) - 1, n).astype(int)]
        return ol, raster.coverage(vc, self.mesh_lo.faces, self.Knp, self.H, self.W, tg.contour_pixels)

    # ---------------------------------------------------------------------------------------------------------
    # photometric / silhouette rays
    # ---------------------------------------------------------------------------------------------------------
    def sample_pixels(self, obs: FrameObs, n: int, rng: np.random.Generator, hair_edge: float = 0.0):
        """Pixels concentrated on the face: 70 % from face/mouth labels, 30 % from non-ignored pixels near it, of
        which ``hair_edge`` * n on the hair's outline where the frame labels hair (``masks.hair_edge``)."""
        lab = obs.labels
        face = np.flatnonzero((lab == M.FACE).ravel() | (lab == M.MOUTH).ravel())
        x0, y0 = obs.landmarks.min(0)
        x1, y1 = obs.landmarks.max(0)
        pad = 0.35 * max(x1 - x0, y1 - y0)
        ys, xs = np.mgrid[0:self.H, 0:self.W]
        box = (xs > x0 - pad) & (xs < x1 + pad) & (ys > y0 - pad) & (ys < y1 + pad)
        near = np.flatnonzero((box & (lab != M.IGNORE)).ravel())
        # the whole outline: the box cuts the top off a full head of hair
        edge = np.flatnonzero(M.hair_edge(lab, obs.face_size).ravel()) if hair_edge else ()
        nf = min(len(face), int(0.7 * n))
        ne = min(len(edge), int(hair_edge * n), n - nf)
        sel = [rng.choice(face, nf, replace=False)] if nf else []
        if ne:
            sel.append(rng.choice(edge, ne, replace=False))
        if len(near):
            sel.append(rng.choice(near, min(len(near), n - nf - ne), replace=False))
        return np.concatenate(sel) if sel else np.zeros(0, np.int64)

    def ray_terms(self, zg, za, p_ex, st_omega, st_trans, obs: FrameObs, n: int, rng, inv_s: float,
                  with_color: bool = True, hair_edge: float = 0.0, z_geo_bald: Optional[torch.Tensor] = None):
        """(mask loss, rgb loss, bald-face loss, stats) on n rays of one frame (``sample_pixels``). The bald-face
        loss (``head_mesh.hair_over_face_mm`` on the FACE rays) is computed with ``z_geo_bald`` (1, D_geo), the
        identity's bald code; 0 without it."""
        idx = self.sample_pixels(obs, n, rng, hair_edge)
        if len(idx) == 0:
            z = zg.sum() * 0
            return z, z, z, {}
        py, px = np.divmod(idx, self.W)
        pix = self.tensor(np.stack([px + 0.5, py + 0.5], -1))
        R = renderer.so3_exp(st_omega[None])[0]
        o, d = renderer.camera_rays(self.K, R, st_trans, pix)
        ze = self.codes.z_exp(p_ex[None])
        field = renderer.ModelField(self.model, zg, za, ze)
        s = renderer.RenderSettings(n_coarse=self.preset.n_coarse, n_fine=self.preset.n_fine)
        out = renderer.render_rays(field, o, d, inv_s, s, R_cam=R, sh=self.sh, with_color=with_color)
        bald_loss = zg.sum() * 0
        face = np.flatnonzero(obs.labels.ravel()[idx] == M.FACE) if z_geo_bald is not None else ()
        if len(face):
            f = torch.as_tensor(face, device=self.device)
            xs = o[f] + d[f] * out["depth"][f, None]     # the rendered surface points (posed model units)
            bald_loss = head_mesh.hair_over_face_mm(self.model, z_geo_bald, ze, xs, out["crossed"][f])
        tgt, mw, cw = (self.tensor(w) for w in M.label_weights(obs.labels.ravel()[idx]))
        op = out["opacity"].clamp(1e-4, 1 - 1e-4)
        mask_loss = (mw * torch.nn.functional.binary_cross_entropy(op, tgt, reduction="none")).sum() / mw.sum().clamp_min(1)
        rgb_loss = zg.sum() * 0
        op_d = op.detach()
        stats = {"iou": float(((op_d > 0.5) & (tgt > 0.5)).sum() / (((op_d > 0.5) | (tgt > 0.5)) & (mw > 0)).sum().clamp_min(1))}
        if with_color:
            img = self.tensor(obs.image.reshape(-1, 3)[idx]) / 127.5 - 1
            pred = out["color"] @ self.cA.T + self.cb
            err = (pred - img).abs().sum(-1)
            rgb_loss = (cw * err).sum() / cw.sum().clamp_min(1)
            stats["rgb"] = float(((cw > 0.5) * err.detach()).sum() / (cw > 0.5).sum().clamp_min(1)) / 6.0
        return mask_loss, rgb_loss, bald_loss, stats

    # ---------------------------------------------------------------------------------------------------------
    # stage 1a: identity
    # ---------------------------------------------------------------------------------------------------------
    def fit_identity(self, frames: Sequence[FrameObs]) -> List[FrameState]:
        pr = self.preset
        t0 = time.perf_counter()
        frames = [f for f in frames if f.found]
        states = [self.pnp_init(f) for f in frames]
        B = len(frames)
        p_geo = self.p_geo.clone().requires_grad_(True)
        p_app = self.p_app.clone().requires_grad_(True)
        p_ex = torch.stack([s.p_ex for s in states]).requires_grad_(True)
        om = torch.stack([s.omega for s in states]).requires_grad_(True)
        tr = torch.stack([s.trans for s in states]).requires_grad_(True)
        sh = self.sh.clone().requires_grad_(True)
        cA = self.cA.clone().requires_grad_(True)
        cb = self.cb.clone().requires_grad_(True)
        opt = Adam([
            {"params": [p_geo], "lr": pr.lr_id}, {"params": [p_app], "lr": pr.lr_id},
            {"params": [p_ex], "lr": pr.lr_exp}, {"params": [om], "lr": pr.lr_rot},
            {"params": [tr], "lr": pr.lr_trans}, {"params": [sh], "lr": 0.05},
            {"params": [cA, cb], "lr": 5e-3}])
        lms = self.tensor(np.stack([f.landmarks[self.lm_idx] for f in frames]))
        sizes = self.tensor([f.face_size for f in frames])
        rng = np.random.default_rng(self.seed)
        n_it = pr.id_iters
        self.sh, self.cA, self.cb = sh, cA, cb
        if self.codes.hair_facial is not None:   # a model with a beard and moustache: only where the frames show one
            shares = np.array([M.lower_face_skin_share(f.image, f.landmarks) for f in frames if f.image is not None])
            shares = shares[np.isfinite(shares)]
            self.codes.facial_hair = not len(shares) or float(np.median(shares)) < SHAVEN_SKIN_SHARE
        for it in range(n_it):
            opt.zero_grad()
            zg = self.codes.z_geo(p_geo)
            zg_lm = scale_gradient(zg, self.id_lm_grad)
            loss_lm, _, _ = self.landmark_term(zg_lm, p_ex, om, tr, lms, sizes, key="id")
            loss = pr.w_lm * loss_lm + self.expression_regulariser(p_ex) \
                + self.w_id_prior * self.codes.identity_prior(p_geo, p_app) * 100
            # rays on every iteration: with them on every 2nd of 120 (standard before) the landmarks led the identity
            # and standard's faces came out 0.19 mm worse than draft's on real-skin clips (backend/evaluation/README.md)
            g_bald = None
            if pr.id_rays:
                j = it % B
                inv_s = renderer.inv_s_schedule(it, n_it)
                zb = self.codes.z_geo_bald(p_geo) if pr.w_bald_face else None
                ml, rl, bl, _ = self.ray_terms(zg, self.codes.z_app(p_app), p_ex[j], om[j], tr[j], frames[j],
                                               pr.id_rays, rng, inv_s, with_color=True, hair_edge=pr.id_hair_edge,
                                               z_geo_bald=zb)
                loss = loss + pr.w_mask * ml + pr.w_rgb * rl
                if zb is not None:   # its gradient on the hair parameters alone (``Preset.w_bald_face``)
                    (g_bald,) = torch.autograd.grad(pr.w_bald_face * bl, p_geo, retain_graph=True)
            loss.backward()
            if g_bald is not None:
                p_geo.grad.add_(self.codes.hair_only(g_bald))
            opt.step()
            self.codes.shrink_hair_(p_geo, pr.hair_shrink * pr.lr_id, pr.hair_shrink_unseen * pr.lr_id)
            self.codes.project_identity_(p_geo, p_app)
            self.codes.project_expression_(p_ex)
            if it % 10 == 0:
                self.progress("identity", it, n_it, None, f"loss {float(loss.detach()):.3f}")
        self.p_geo, self.p_app = p_geo.detach(), p_app.detach()
        self.sh, self.cA, self.cb = sh.detach(), cA.detach(), cb.detach()
        self._posed_cache.pop("id", None)
        self.build_meshes()
        self._lo_warp = None
        self.fit_appearance_vertices(frames, [FrameState(p_ex[i].detach(), om[i].detach(), tr[i].detach())
                                              for i in range(B)])
        self.albedo = self.mesh_albedo()
        self.timer.add("identity", time.perf_counter() - t0)
        return [FrameState(p_ex[i].detach().clone(), om[i].detach().clone(), tr[i].detach().clone()) for i in range(B)]

    def _outline_term(self, zg, p_ex, omega, trans, obs: FrameObs, cache: Optional[dict] = None):
        """Draft silhouette on the outline of the warped low-res mesh (per-frame stage; the identity is fixed)."""
        if obs.labels is None:
            return zg.sum() * 0
        ml = self.mesh_lo
        if self._lo_vertices is None or self._lo_vertices[0] is not ml:   # uploaded once per mesh
            self._lo_vertices = (ml, self.tensor(ml.vertices))
        vc0 = self._lo_vertices[1]
        if cache is None or "ol" not in cache:
            with torch.no_grad():
                ze = self.codes.z_exp(p_ex.detach()[None])
                x, _, self._lo_warp = warp_vertices(self.model, vc0, ml.faces, zg, ze, self._lo_warp)
            st = FrameState(p_ex.detach(), omega.detach(), trans.detach())
            tg = cache.get("tg") if cache is not None else None   # the frame's: computed once per frame
            if tg is None:
                tg = head_mesh.SilhouetteTargets(obs.labels, seed=obs.index, device=self.device)
            ol, cov = self._outline(to_numpy(x).astype(np.float64), st, self.preset.outline_points, tg)
            ol = torch.as_tensor(ol, device=self.device)
            if cache is not None:
                cache.update(ol=ol, cov=cov, tg=tg, x_ol=x[ol], jinv_ol=self._lo_warp.jinv[ol])
        else:
            ol, cov, tg = cache["ol"], cache["cov"], cache["tg"]
        if len(ol) == 0:
            return zg.sum() * 0
        vcan = vc0[ol]
        x0, jinv0 = (cache.get("x_ol"), cache.get("jinv_ol")) if cache is not None else (None, None)
        res = self.model.forward_warp(vcan[None], zg, self.codes.z_exp(p_ex[None]),
                                      x_init=None if x0 is None else x0[None],
                                      jinv_init=None if jinv0 is None else jinv0[None], max_iter=10)
        if cache is not None:
            cache.update(x_ol=res.points[0].detach(), jinv_ol=res.jinv[0])
        uv = self.project(res.points, omega[None], trans[None])[0]
        return head_mesh.outline_silhouette_loss(uv, torch.ones(len(ol), dtype=torch.bool, device=self.device), tg,
                                                 obs.face_size, cov)

    # ---------------------------------------------------------------------------------------------------------
    # appearance from mesh vertices (cheap photometric fit, all presets)
    # ---------------------------------------------------------------------------------------------------------
    def fit_appearance_vertices(self, frames: Sequence[FrameObs], states: Sequence[FrameState], iters: int = 60,
                                n_vert: int = 3000):
        """Fit z_app, SH and the colour affine to the frames' colours at visible mesh vertices."""
        t0 = time.perf_counter()
        if not frames or frames[0].image is None:
            return
        ml = self.mesh_lo
        rng = np.random.default_rng(self.seed + 1)
        sel = rng.choice(len(ml.vertices), min(n_vert, len(ml.vertices)), replace=False)
        data = []
        with torch.no_grad():
            zg = self.z_geo()
            for f, st in zip(frames, states):
                if f.image is None or f.labels is None:
                    continue
                x, _, _ = warp_vertices(self.model, self.tensor(ml.vertices), ml.faces, zg,
                                        self.codes.z_exp(st.p_ex[None]))
                vc, _ = self.to_camera(to_numpy(x), st)
                nrm = raster.vertex_normals(vc, ml.faces)
                frag = raster.rasterize(vc, ml.faces, self.Knp, self.H, self.W)
                uv = vc[:, :2] / vc[:, 2:3] * [self.Knp[0, 0], self.Knp[1, 1]] + self.Knp[:2, 2]
                px = np.clip(np.floor(uv).astype(int), 0, [self.W - 1, self.H - 1])
                dz = frag.depth[px[:, 1], px[:, 0]]
                vis = (np.abs(vc[:, 2] - dz) < 0.004) & ((nrm * vc).sum(1) < 0)
                vis &= f.labels[px[:, 1], px[:, 0]] == M.FACE
                s = sel[vis[sel]]
                if len(s) < 20:
                    continue
                col = f.image[px[s, 1], px[s, 0]].astype(np.float32) / 127.5 - 1
                data.append((s, self.tensor(nrm[s]), self.tensor(col)))
        if not data:
            return
        allv = np.unique(np.concatenate([d[0] for d in data]))
        vt = self.tensor(ml.vertices[allv])[None]
        pos = {v: i for i, v in enumerate(allv)}
        p_app = self.p_app.clone().requires_grad_(True)
        sh = self.sh.clone().requires_grad_(True)
        cA = self.cA.clone().requires_grad_(True)
        cb = self.cb.clone().requires_grad_(True)
        opt = Adam([{"params": [p_app], "lr": 0.05}, {"params": [sh], "lr": 0.05},
                                {"params": [cA, cb], "lr": 5e-3}])
        rows = [self.tensor([pos[v] for v in d[0]], torch.long) for d in data]
        zg = self.z_geo().detach()
        ze = torch.zeros(1, self.model.cfg.dim_exp, device=self.device)
        for it in range(iters):
            opt.zero_grad()
            alb = self.model(vt, zg, self.codes.z_app(p_app), ze, neutral=True, with_color=True).color[0]
            loss = 0
            for (s, n, c), r in zip(data, rows):
                pred = renderer.shade(alb[r], n, sh) @ cA.T + cb
                loss = loss + (pred - c).abs().mean()
            loss = loss / len(data) + 0.01 * self.codes.identity_prior(self.p_geo, p_app) \
                + 0.1 * ((cA - torch.eye(3, device=self.device)) ** 2).sum() + 0.1 * (cb ** 2).sum()
            loss.backward()
            opt.step()
            self.codes.project_identity_(self.p_geo, p_app)
        self.p_app, self.sh, self.cA, self.cb = p_app.detach(), sh.detach(), cA.detach(), cb.detach()
        self.timer.add("appearance", time.perf_counter() - t0)

    # ---------------------------------------------------------------------------------------------------------
    # stage 1b: one frame
    # ---------------------------------------------------------------------------------------------------------
    def fit_frame(self, obs: FrameObs, init: FrameState, prev_obs: Optional[FrameObs] = None) -> FrameState:
        pr = self.preset
        t0 = time.perf_counter()
        zg = self.z_geo().detach()
        za = self.z_app().detach()
        # re-initialise the pose by PnP when the warm start is far off (cuts, fast motion)
        st = init.clone()
        lms = self.tensor(obs.landmarks[self.lm_idx])[None]
        sizes = self.tensor([obs.face_size])
        # pose start: the warm start or a fresh PnP (previous pose as its initial guess), whichever fits better;
        # the channels the model cannot express come from the landmarks and stay fixed (``CodeSpace``)
        lm_ex = self.codes.expression_from_landmarks(obs.landmarks, obs.depth)
        fixed = self.codes.landmark_channels.float() if lm_ex is not None else None
        with torch.no_grad():
            cands = [st]
            try:
                cands.append(self.pnp_init(obs, st))
            except RuntimeError:
                pass
            if fixed is not None:
                for c in cands:
                    c.p_ex = fixed * lm_ex + (1 - fixed) * c.p_ex
            errs = []
            # (p_ex, posed landmarks): the candidates share the expression, hence the root finding, which starts
            # from the previous frame's roots
            posed = None
            for c in cands:
                if posed is None or not torch.equal(posed[0], c.p_ex):
                    posed = (c.p_ex, self.posed_landmarks(zg, c.p_ex[None], key="frame").points)
                uv = self.project(posed[1], c.omega[None], c.trans[None])
                errs.append(float((uv - lms).norm(dim=-1).mean()))
            st = cands[int(np.argmin(errs))]
        motion = 1.0
        if prev_obs is not None and prev_obs.found:
            d = obs.landmarks[self.lm_idx] - prev_obs.landmarks[self.lm_idx]
            motion = float(np.linalg.norm(d, axis=1).mean()) / max(obs.face_size, 1.0)
        n_it = pr.still_iters if motion < pr.still_motion else pr.frame_iters
        if prev_obs is None:
            n_it *= pr.cold_iters_factor
        p_ex = st.p_ex.clone()[None].requires_grad_(True)
        om = st.omega.clone()[None].requires_grad_(True)
        tr = st.trans.clone()[None].requires_grad_(True)
        prev_ex = init.p_ex[None]
        opt = Adam([{"params": [p_ex], "lr": pr.lr_exp}, {"params": [om], "lr": pr.lr_rot},
                                {"params": [tr], "lr": pr.lr_trans}])
        rng = np.random.default_rng(self.seed * 100003 + obs.index)
        cache: dict = {}
        for it in range(n_it):
            opt.zero_grad()
            loss_lm, _, _ = self.landmark_term(zg, p_ex, om, tr, lms, sizes, key="frame")
            loss = pr.w_lm * loss_lm + self.expression_regulariser(p_ex) \
                + pr.w_temporal * ((p_ex - prev_ex) ** 2).sum()
            if pr.rays and obs.labels is not None and it % pr.ray_every == 0:
                # no bald-face term here: the identity (the hair) is fixed, it could only move pose and expression
                ml, rl, _, _ = self.ray_terms(zg, za, p_ex[0], om[0], tr[0], obs, pr.rays, rng, pr.inv_s,
                                              with_color=obs.image is not None)
                loss = loss + pr.w_mask * ml + pr.w_rgb * rl
            elif not pr.rays and self.mesh_lo is not None and obs.labels is not None and it >= n_it // 3:
                # the outline's vertices and coverage are re-found every 4th of its iterations, counted from its
                # first: a still frame's 4 take one low-res warp (two when counted from the fit's start)
                if (it - n_it // 3) % 4 == 0:
                    cache.pop("ol", None)
                loss = loss + pr.w_sil * self._outline_term(zg, p_ex[0], om[0], tr[0], obs, cache=cache)
            loss.backward()
            if fixed is not None:
                p_ex.grad.mul_(1 - fixed)
            opt.step()
            self.codes.project_expression_(p_ex)
        self.timer.add("frame_fit", time.perf_counter() - t0)
        return FrameState(p_ex[0].detach().clone(), om[0].detach().clone(), tr[0].detach().clone(), iterations=n_it)

    # ---------------------------------------------------------------------------------------------------------
    # outputs and metrics
    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def frame_result(self, obs: FrameObs, st: FrameState, warm: Optional[WarpState] = None,
                     preview: bool = False) -> FrameResult:
        """The frame's outputs: fixed-topology vertices (the output mesh warped into the frame's expression,
        warm-started from `warm`, e.g. the previous frame's `FrameResult.warp`) and quality metrics.  The landmark
        error's roots continue the same chain: from the previous output frame's while `warm` continues one, a cold
        solve (a new chain) without it.

        ``preview``: outputs that stage 2's rewrite replaces, shown while tracking runs (right after ``fit_frame``
        of this frame): vertices to ``PREVIEW_WARP_TOL``, the landmark error from the fit's last landmark roots,
        no coverage or photometric metric."""
        t0 = time.perf_counter()
        zg = self.z_geo()
        ze = self.codes.z_exp(st.p_ex[None])
        x, _, warp = warp_vertices(self.model, self.tensor(self.mesh.vertices), self.mesh.faces, zg, ze, warm,
                                   tol=PREVIEW_WARP_TOL if preview else MESH_WARP_TOL)
        verts = to_numpy(x)
        lm_err = float("nan")
        if obs.found:
            if not preview and warm is None:
                self._posed_cache.pop("outputs", None)
            lms = self.tensor(obs.landmarks[self.lm_idx])[None]
            _, uv, conv = self.landmark_term(zg, st.p_ex[None], st.omega[None], st.trans[None], lms,
                                             self.tensor([max(obs.face_size, 1.0)]),
                                             key="frame" if preview else "outputs")
            e = (uv - lms).norm(dim=-1)[conv]
            lm_err = float(e.mean()) if e.numel() else float("nan")
        iou, photo = None, None
        if obs.labels is not None and not preview:
            vc, R = self.to_camera(verts, st)
            iou, frag = head_mesh.coverage_iou(vc, self.mesh.faces, self.Knp, obs.labels)
            if obs.image is not None and self.albedo is not None:
                photo = self._photometric_error(obs, frag, vc, R)
        self.timer.add("outputs", time.perf_counter() - t0)
        return FrameResult(obs.index, st, verts, lm_err, photo, iou, warp)

    def _photometric_error(self, obs: FrameObs, frag, vc: np.ndarray, R: np.ndarray) -> Optional[float]:
        """Mean absolute colour error (0..1 units) on face pixels of the SH-shaded albedo mesh render."""
        m = frag.mask & (obs.labels == M.FACE)
        if m.sum() < 10:
            return None
        nrm = raster.vertex_normals(vc, self.mesh.faces)
        n = raster.interpolate(frag, self.mesh.faces, nrm, where=m)
        n /= np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9, None)
        alb = raster.interpolate(frag, self.mesh.faces, self.albedo.astype(np.float32) / 127.5 - 1, where=m)
        # albedo already includes the colour affine: shade then compare
        S = to_numpy(renderer.sh_basis(self.tensor(n)) @ self.sh)
        pred = np.clip((S * (alb + 1) / 2), 0, 1)
        img = obs.image[m].astype(np.float32) / 255.0
        return float(np.abs(pred - img).mean())

    # ---------------------------------------------------------------------------------------------------------
    # stage 2: joint landmark refinement, then the temporal model
    # ---------------------------------------------------------------------------------------------------------
    def refine_all(self, obs: Sequence[FrameObs], states: List[FrameState]) -> List[FrameState]:
        """Refine expression and pose of all tracked frames on their landmarks, then smooth them over time
        (``smooth_states``).

        Block coordinate descent over batches of ``Preset.stage2_batch`` consecutive frames: each batch is its own
        set of optimised tensors.  Adam leaves a parameter without a gradient alone, so a batch's step moves only
        that batch's frames; with one tensor for the whole clip, every step also moved every other frame by its
        stale first moment, an unchecked drift growing with the frame's position (cap12_edit 0:250 draft, frames
        240-249: 3-4 mm and 0.5 degrees off, landmark error 2.1 px after stage 1, 5.8 px after stage 2).
        """
        pr = self.preset
        t0 = time.perf_counter()
        T = len(states)
        if T < 2 or pr.stage2_epochs <= 0:
            return states
        spans = [(s0, min(T, s0 + pr.stage2_batch)) for s0 in range(0, T, pr.stage2_batch)]

        def leaves(values):
            return [torch.stack(values[s0:s1]).clone().requires_grad_(True) for s0, s1 in spans]

        p_ex = leaves([s.p_ex for s in states])
        om = leaves([s.omega for s in states])
        tr = leaves([s.trans for s in states])
        lms = self.tensor(np.stack([o.landmarks[self.lm_idx] for o in obs]))
        sizes = self.tensor([o.face_size for o in obs])
        opt = Adam([{"params": p_ex, "lr": pr.lr_exp * 0.3}, {"params": om, "lr": pr.lr_rot * 0.3},
                    {"params": tr, "lr": pr.lr_trans * 0.3}])
        zg = self.z_geo().detach()
        free = 1 - self.codes.landmark_channels.float()
        n_steps = pr.stage2_epochs * len(spans)
        step = 0
        for ep in range(pr.stage2_epochs):
            for k, (s0, s1) in enumerate(spans):
                opt.zero_grad()
                loss_lm, _, _ = self.landmark_term(zg, p_ex[k], om[k], tr[k], lms[s0:s1], sizes[s0:s1],
                                                   key=f"s2_{s0}")
                loss = pr.w_lm * loss_lm + self.expression_regulariser(p_ex[k])
                loss.backward()
                p_ex[k].grad.mul_(free)  # landmark-read channels keep their per-frame values
                opt.step()
                self.codes.project_expression_(p_ex[k])
                step += 1
                self.progress("refine", step, n_steps, None, f"loss {float(loss.detach()):.3f}")
        for key in list(self._posed_cache):
            if key.startswith("s2_"):
                del self._posed_cache[key]
        states = self.smooth_states(obs, *(torch.cat(x).detach() for x in (p_ex, om, tr)))
        self.timer.add("stage2", time.perf_counter() - t0)
        return states

    def smooth_states(self, obs: Sequence[FrameObs], p_ex: torch.Tensor, omega: torch.Tensor,
                      trans: torch.Tensor) -> List[FrameState]:
        """Stage 2's temporal model (``temporal``): the tracks of rotation and translation (T, 3) and expression
        (T, n_ex) of the frames ``obs`` smoothed without lag (``Preset.smooth_pose``, ``Preset.smooth_expression``:
        fast expression events kept), the expression back on its valid set. The channels read from the landmarks
        (``CodeSpace.landmark_channels``) are smoothed as the others: their blinks (3-6 frames) are events and pass
        whole, while the regressor's frame-to-frame flicker is noise."""
        pr = self.preset
        times = np.array([o.time for o in obs], np.float64)
        om = self.tensor(smooth_rotations(to_numpy(omega), times, pr.smooth_pose))
        tr = self.tensor(smooth_tracks(to_numpy(trans), times, pr.smooth_pose))
        ex = self.tensor(smooth_tracks(to_numpy(p_ex), times, pr.smooth_expression, EXPRESSION_NOISE_FLOOR))
        self.codes.project_expression_(ex)
        return [FrameState(ex[i].clone(), om[i].clone(), tr[i].clone()) for i in range(len(obs))]


def interpolate_state(t: float, a: tuple, b: Optional[tuple]) -> FrameState:
    """Fill a frame without a face from its tracked neighbours ((time, FrameState) pairs); b may be None."""
    ta, sa = a
    if b is None:
        return sa.clone()
    tb, sb = b
    w = 0.0 if tb == ta else float(np.clip((t - ta) / (tb - ta), 0, 1))
    return FrameState((1 - w) * sa.p_ex + w * sb.p_ex, (1 - w) * sa.omega + w * sb.omega,
                      (1 - w) * sa.trans + w * sb.trans)
