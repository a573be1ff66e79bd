"""Synthetic supervision generator from ICT-FaceKit (MIT), read from a path (the repo holds no copies).

Every call samples fresh identities, expressions and albedos, places the head in NPHM model space
(y up, z forward, 1 unit = 0.25 m: ``(v_cm + (0, -3, -6)) / 25``) and returns supervision:
surface points with normals and colours (face region denser), near-surface points with signed-distance targets,
off-surface / far points, neutral<->posed correspondences and ground-truth anchors.

numpy + scipy only (no torch) so it can be used from tests and tools without the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..contracts import arkit
from ..contracts.geometry import fit_similarity
from ..contracts.landmark_tables import CM_PER_UNIT, ict_cm_to_model, model_to_ict_cm
from .hair import N_HAIR, HairVolume, hair_albedo, sample_hair

ICT_FILE = "ict_face_model_light_head_f16.npz"

# regions of the ICT light head model
R_FACE, R_HEAD, R_MOUTH, R_EYESOCKET, R_EYEBALL = 0, 1, 2, 3, 4

N_APP = 16  # appearance parameter vector (see `sample_appearance`)


def shared_dir() -> Path:
    """Location of the shared read-only data (env MONONPHM_SHARED overrides)."""
    env = os.environ.get("MONONPHM_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


def default_ict_path() -> Path:
    return shared_dir() / "data" / "ict-facekit" / ICT_FILE


def default_anchor_path() -> Path:
    return shared_dir() / "data" / "official-mononphm-assets" / "anchors_65.npy"


# ---------------------------------------------------------------------------------------------------------------
# ICT model
# ---------------------------------------------------------------------------------------------------------------
class ICTModel:
    """ICT-FaceKit light head: mesh = neutral + sum w_id * identity_deltas + sum w_exp * expression_deltas.

    Vertices are returned in model (NPHM) units. The kept surface is open: eye sockets are dropped and of the eyeballs
    only the front (visible) hemisphere is kept; face, head/neck and mouth socket stay.
    """

    def __init__(self, path: str | Path | None = None):
        path = Path(path) if path is not None else default_ict_path()
        if path.is_dir():
            path = path / ICT_FILE
        if not path.exists():
            raise FileNotFoundError(f"ICT-FaceKit npz not found: {path}")
        d = np.load(path)
        self.path = path
        self.neutral = ict_cm_to_model(d["neutral"]).astype(np.float32)
        self.id_basis = (d["identity_deltas"].astype(np.float32) / CM_PER_UNIT)  # (100, V, 3)
        self.ex_basis = (d["expression_deltas"].astype(np.float32) / CM_PER_UNIT)  # (53, V, 3)
        self.n_id = self.id_basis.shape[0]
        self.n_ex = self.ex_basis.shape[0]
        self._id_flat = self.id_basis.reshape(self.n_id, -1)
        self._ex_flat = self.ex_basis.reshape(self.n_ex, -1)
        self.ex_names = tuple(str(n) for n in d["expression_names"])
        self.faces_all = d["faces"].astype(np.int64)
        self.uv = d["uv"].astype(np.float32)
        self.face_uv_idx_all = d["face_uv_idx"].astype(np.int64)
        self.region = d["region"].astype(np.int64)
        self.landmarks68 = d["landmarks68"].astype(np.int64)
        self.n_verts = self.neutral.shape[0]

        # mirror map of the (symmetric) template
        tree = cKDTree(self.neutral)
        _, self.mirror = tree.query(self.neutral * np.array([-1, 1, 1], np.float32))

        # --- kept triangles -----------------------------------------------------------------------------------
        f = self.faces_all
        fr = self.region[f]
        keep = ~(fr == R_EYESOCKET).any(1)
        eye = (fr == R_EYEBALL).all(1)
        # eyeball front hemisphere: per eyeball (x sign) centre, keep triangles whose centroid is in front
        c = self.neutral[f].mean(1)
        eye_front = np.zeros(len(f), bool)
        vr = self.region == R_EYEBALL
        self.eye_centres = []
        for s in (-1, 1):
            vm = vr & (np.sign(self.neutral[:, 0]) == s)
            ctr = 0.5 * (self.neutral[vm].min(0) + self.neutral[vm].max(0))
            self.eye_centres.append(ctr)
            tm = eye & (np.sign(c[:, 0]) == s)
            eye_front |= tm & (c[:, 2] > ctr[2])
        keep &= (~(fr == R_EYEBALL).any(1)) | eye_front
        self.tri_keep = np.nonzero(keep)[0]
        self.faces = f[keep]
        self.face_uv_idx = self.face_uv_idx_all[keep]
        tr = self.region[self.faces]
        # triangle class: region of the majority of its vertices
        self.tri_region = np.array([np.bincount(t, minlength=5).argmax() for t in tr])
        self.tri_is_face = self.tri_region == R_FACE
        self.tri_corr = np.isin(self.tri_region, [R_FACE, R_MOUTH])  # correspondence region
        self.used_verts = np.unique(self.faces)

        # eval region: face-region triangles (ICT region 0)
        self.semantic = self._vertex_semantics()
        # eyelids and brows: small areas that move a lot; sampled more densely (EXPR_EMPHASIS)
        emph = np.maximum(self.semantic["eyelids"], self.semantic["brows"])
        self.tri_expr_emphasis = emph[self.faces].max(1)
        # lips (outer and inner, SampleSizes.lip_emphasis): ~2 % of the face's surface samples without it
        self.tri_lip_emphasis = self.semantic["lips"][self.faces].max(1)
        # eyeball triangles per side (+x = the subject's left), dropped from the supervision of a closing eye
        centre_x = self.neutral[self.faces].mean(1)[:, 0]
        self.tri_eyeball_side = {s: (self.tri_region == R_EYEBALL) & (np.sign(centre_x) == sign)
                                 for s, sign in (("L", 1.0), ("R", -1.0))}

    # -- geometry ----------------------------------------------------------------------------------------------
    def vertices(self, w_id=None, w_ex=None) -> np.ndarray:
        """(V,3) float32 model-space vertices. w_id (100,) w_ex (53,), None = zeros."""
        v = self.neutral.reshape(-1).copy()
        if w_id is not None:
            v += np.asarray(w_id, np.float32) @ self._id_flat
        if w_ex is not None:
            v += np.asarray(w_ex, np.float32) @ self._ex_flat
        return v.reshape(-1, 3)

    def vertex_normals(self, v: np.ndarray) -> np.ndarray:
        f = self.faces
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        n = np.zeros_like(v)
        for k in range(3):
            for j in range(3):
                n[:, j] += np.bincount(f[:, k], weights=fn[:, j], minlength=len(v))
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        return n.astype(np.float32)

    def tri_areas(self, v: np.ndarray) -> np.ndarray:
        f = self.faces
        return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)

    # -- semantic vertex masks for the albedo (computed once on the mean head, in cm) ----------------------------
    def _vertex_semantics(self) -> dict:
        v = model_to_ict_cm(self.neutral.astype(np.float64))  # cm
        lm = v[self.landmarks68]
        x, y, z = v[:, 0], v[:, 1], v[:, 2]
        front = z > 4.0
        sem = {}

        def poly_mask(idx, pad):
            from matplotlib.path import Path as MPath
            pts = lm[idx][:, :2]
            path = MPath(pts)
            inside = path.contains_points(v[:, :2], radius=0.0)
            # soft edge: distance to polygon vertices (densified)
            dense = np.concatenate([np.linspace(pts[i], pts[(i + 1) % len(pts)], 8, endpoint=False)
                                    for i in range(len(pts))])
            dist = cKDTree(dense).query(v[:, :2])[0]
            m = np.where(inside, 1.0, np.clip(1 - dist / pad, 0, 1))
            return m

        lips = poly_mask(list(range(48, 60)), 0.25) * front * (self.region <= R_MOUTH)
        sem["lips"] = lips
        brow = np.zeros(len(v))
        for seg in (range(17, 22), range(22, 27)):
            pts = lm[list(seg)]
            dense = np.concatenate([np.linspace(pts[i], pts[i + 1], 10) for i in range(len(pts) - 1)])
            d = cKDTree(dense).query(v)[0]
            brow = np.maximum(brow, np.clip(1.3 - d / 0.5, 0, 1))
        sem["brows"] = np.clip(brow, 0, 1) * (self.region == R_FACE)
        # eyelids: face-region skin within ~1.2 cm of the eye contours (landmarks 36-47)
        lids = np.zeros(len(v))
        for seg in (range(36, 42), range(42, 48)):
            pts = lm[list(seg) + [seg[0]]]
            dense = np.concatenate([np.linspace(pts[i], pts[i + 1], 10) for i in range(len(pts) - 1)])
            lids = np.maximum(lids, np.clip(1.5 - cKDTree(dense).query(v)[0] / 0.8, 0, 1))
        sem["eyelids"] = lids * (self.region == R_FACE)
        # scalp: above a hairline that rises towards the front
        hair_y = np.interp(z, [-12, -6, 2, 6, 10], [-6.5, -3.0, 4.0, 8.0, 9.5])
        scalp = np.clip((y - hair_y) / 1.5 + 0.5, 0, 1)
        ear = (np.abs(x) > 6.5) & (z < 4.0) & (z > -3) & (y < 5) & (y > -5)
        scalp = scalp * (~ear)
        sem["scalp"] = scalp * np.isin(self.region, [R_FACE, R_HEAD])
        # beard area: below the nose, lower face / chin, front-ish
        beard = np.clip((lm[33, 1] - 0.5 - y) / 1.0, 0, 1) * np.clip((y - (lm[8, 1] - 4.0)) / 1.5, 0, 1)
        beard *= np.clip((z - 2.0) / 2.0, 0, 1) * (1 - sem["lips"]) * (self.region == R_FACE)
        sem["beard"] = beard
        # cheeks
        cheek = np.zeros(len(v))
        for s in (-1, 1):
            c = np.array([s * 4.5, -0.5, 8.5])
            cheek = np.maximum(cheek, np.exp(-np.sum((v - c) ** 2, 1) / (2 * 1.8 ** 2)))
        sem["cheeks"] = cheek * (self.region == R_FACE)
        # iris / pupil on the eyeball front
        iris = np.zeros(len(v))
        pupil = np.zeros(len(v))
        for ctr_m in self.eye_centres:
            ctr = model_to_ict_cm(ctr_m)
            dxy = np.sqrt((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2)
            iris = np.maximum(iris, np.clip((0.62 - dxy) / 0.06, 0, 1))
            pupil = np.maximum(pupil, np.clip((0.25 - dxy) / 0.05, 0, 1))
        eyeb = self.region == R_EYEBALL
        sem["iris"] = iris * eyeb
        sem["pupil"] = pupil * eyeb
        sem["eyeball"] = eyeb.astype(np.float64)
        sem["mouth"] = (self.region == R_MOUTH).astype(np.float64)
        return {k: m.astype(np.float32) for k, m in sem.items()}


# ---------------------------------------------------------------------------------------------------------------
# Anchors: official mean anchors aligned to the mean ICT head, snapped to its surface, official order kept
# ---------------------------------------------------------------------------------------------------------------
def derive_anchor_vertices(ict: ICTModel, official_anchors: np.ndarray, iters: int = 8) -> np.ndarray:
    """ICT vertex index (65,) for each official anchor (same order, pair/midline semantics kept).

    Similarity-aligns the official mean anchors to the mean ICT head (nearest-vertex ICP), snaps each anchor to the
    nearest allowed surface vertex and then symmetrises: odd member of each pair := mirror vertex of the even one
    (which side is listed first is kept from the official data), midline anchors snap to x=0 vertices.
    """
    A = np.asarray(official_anchors, np.float64)
    V = ict.neutral.astype(np.float64)
    allowed = np.zeros(ict.n_verts, bool)
    allowed[np.unique(ict.faces[np.isin(ict.tri_region, [R_FACE, R_HEAD])])] = True
    allowed &= np.isin(ict.region, [R_FACE, R_HEAD])
    ids = np.nonzero(allowed)[0]
    tree = cKDTree(V[ids])
    s, R, t = 1.0, np.eye(3), np.zeros(3)
    for _ in range(iters):
        X = s * A @ R.T + t
        _, j = tree.query(X)
        Y = V[ids[j]]
        s, R, t = fit_similarity(A, Y)
    X = s * A @ R.T + t
    out = np.zeros(65, np.int64)
    mid_ids = ids[np.abs(V[ids, 0]) < 1e-3]
    mid_tree = cKDTree(V[mid_ids])
    for i in range(30):
        a, b = 2 * i, 2 * i + 1
        # snap the average of (a, mirror(b)) so both sides contribute
        pa = 0.5 * (X[a] + X[b] * np.array([-1, 1, 1]))
        va = ids[tree.query(pa)[1]]
        out[a] = va
        out[b] = ict.mirror[va]
    for k in range(60, 65):
        p = X[k].copy()
        p[0] = 0.0
        out[k] = mid_ids[mid_tree.query(p)[1]]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sampling identities, expressions, appearance
# ---------------------------------------------------------------------------------------------------------------
_EX = {n: i for i, n in enumerate(arkit.ICT_NAMES)}


def _ex_vec(d: dict) -> np.ndarray:
    w = np.zeros(len(arkit.ICT_NAMES), np.float32)
    for k, val in d.items():
        w[_EX[k]] = val
    return w


# expression channels that the built-in model never drives (static eyes)
STATIC_CHANNELS = tuple(n for n in arkit.ICT_NAMES if n.startswith("eyeLook"))
_STATIC_IDX = np.array([_EX[n] for n in STATIC_CHANNELS])
_FREE_IDX = np.array([i for i in range(len(arkit.ICT_NAMES)) if i not in set(_STATIC_IDX.tolist())])

# expression combinations held out from training (validation only): a training expression is rejected when all
# channels of any of these sets are active (> 0.15) together.
HELDOUT_COMBOS = (
    ("mouthPucker", "browInnerUp_L", "browInnerUp_R"),
    ("jawOpen", "eyeBlink_L", "eyeBlink_R"),
    ("mouthSmile_R", "eyeSquint_R", "noseSneer_R"),
    ("mouthFunnel", "browDown_L", "browDown_R"),
    ("jawLeft", "mouthFrown_L", "mouthFrown_R"),
)
_HELD_IDX = [np.array([_EX[n] for n in c]) for c in HELDOUT_COMBOS]


def is_heldout_combo(w: np.ndarray, thr: float = 0.15) -> bool:
    return any(bool((w[idx] > thr).all()) for idx in _HELD_IDX)


def _presets(rng: np.random.Generator) -> dict:
    u = rng.uniform
    side = "_L" if rng.random() < 0.5 else "_R"
    other = "_R" if side == "_L" else "_L"
    k = rng.integers(0, 14)
    if k == 0:  # symmetric smile
        a = u(0.4, 1.0)
        return {"mouthSmile_L": a, "mouthSmile_R": a * u(0.85, 1.0), "cheekSquint_L": a * u(0, 0.7),
                "cheekSquint_R": a * u(0, 0.7), "eyeSquint_L": a * u(0, 0.5), "eyeSquint_R": a * u(0, 0.5),
                "jawOpen": u(0, 0.3)}
    if k == 1:  # asymmetric smile / smirk
        return {"mouthSmile" + side: u(0.5, 1.0), "mouthSmile" + other: u(0, 0.25), "cheekSquint" + side: u(0, 0.6),
                "mouthDimple" + side: u(0, 0.5)}
    if k == 2:  # wide jaw opening (surprise / yawn)
        return {"jawOpen": u(0.6, 1.0), "browInnerUp_L": u(0, 0.8), "browInnerUp_R": u(0, 0.8),
                "eyeWide_L": u(0, 0.6), "eyeWide_R": u(0, 0.6), "mouthFunnel": u(0, 0.3)}
    if k == 3:  # blink
        a = u(0.6, 1.0)
        return {"eyeBlink_L": a, "eyeBlink_R": a * u(0.9, 1.0)}
    if k == 4:  # wink
        return {"eyeBlink" + side: u(0.7, 1.0), "cheekSquint" + side: u(0, 0.5), "mouthSmile" + side: u(0, 0.4)}
    if k == 5:  # speech: jaw + lip shapes
        return {"jawOpen": u(0.1, 0.6), ["mouthFunnel", "mouthPucker", "mouthClose", "mouthRollLower",
                                         "mouthShrugUpper", "mouthLowerDown_L"][rng.integers(0, 6)]: u(0.2, 0.8)}
    if k == 6:  # frown / anger
        return {"browDown_L": u(0.4, 1), "browDown_R": u(0.4, 1), "mouthFrown_L": u(0, 0.8),
                "mouthFrown_R": u(0, 0.8), "noseSneer_L": u(0, 0.6), "noseSneer_R": u(0, 0.6)}
    if k == 7:  # brow raise
        return {"browInnerUp_L": u(0.3, 1), "browInnerUp_R": u(0.3, 1), "browOuterUp_L": u(0.2, 1),
                "browOuterUp_R": u(0.2, 1)}
    if k == 8:  # pucker / kiss
        return {"mouthPucker": u(0.4, 1), "mouthFunnel": u(0, 0.5)}
    if k == 9:  # cheek puff
        a = u(0.4, 1)
        return {"cheekPuff_L": a, "cheekPuff_R": a, "mouthClose": u(0, 0.3)}
    if k == 10:  # stretch / fear
        return {"mouthStretch_L": u(0.3, 1), "mouthStretch_R": u(0.3, 1), "jawOpen": u(0, 0.4),
                "eyeWide_L": u(0, 0.8), "eyeWide_R": u(0, 0.8)}
    if k == 11:  # jaw sideways / forward
        return {["jawLeft", "jawRight", "jawForward"][rng.integers(0, 3)]: u(0.3, 1), "jawOpen": u(0, 0.5)}
    if k == 12:  # sneer / disgust
        return {"noseSneer" + side: u(0.4, 1), "mouthUpperUp" + side: u(0.2, 0.9), "noseSneer" + other: u(0, 0.5)}
    return {"mouthPress_L": u(0.2, 1), "mouthPress_R": u(0.2, 1), "mouthRollUpper": u(0, 0.6)}


def sample_expression(rng: np.random.Generator, p_neutral: float = 0.12, allow_heldout: bool = False) -> np.ndarray:
    """Sparse realistic ICT expression weights (53,) in [0,1]; eye-gaze channels stay 0 (static eyes)."""
    for _ in range(100):
        if rng.random() < p_neutral:
            return np.zeros(len(arkit.ICT_NAMES), np.float32)
        w = np.zeros(len(arkit.ICT_NAMES), np.float32)
        if rng.random() < 0.75:
            w += _ex_vec(_presets(rng))
            if rng.random() < 0.3:
                w = np.maximum(w, _ex_vec(_presets(rng)))
        n_extra = rng.choice([0, 1, 2, 3], p=[0.35, 0.3, 0.2, 0.15]) if w.sum() > 0 else rng.integers(1, 5)
        for j in rng.choice(_FREE_IDX, size=n_extra, replace=False):
            w[j] = max(w[j], rng.uniform(0.1, 0.9))
        if rng.random() < 0.25:
            w[_EX["jawOpen"]] = max(w[_EX["jawOpen"]], rng.uniform(0.0, 1.0))
        w[_STATIC_IDX] = 0.0
        w = np.clip(w, 0.0, 1.0)
        if allow_heldout or not is_heldout_combo(w):
            return w
    return np.zeros(len(arkit.ICT_NAMES), np.float32)


def heldout_expression(rng: np.random.Generator, k: int) -> np.ndarray:
    """A validation expression built on held-out combo k (never produced by the training sampler)."""
    w = np.zeros(len(arkit.ICT_NAMES), np.float32)
    for j in _HELD_IDX[k % len(_HELD_IDX)]:
        w[j] = rng.uniform(0.5, 1.0)
    return w


def sample_identity(rng: np.random.Generator, n_id: int = 100, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(n_id) * scale).astype(np.float32)


_SKIN_LIGHT = np.array([0.93, 0.76, 0.66])
_SKIN_MID = np.array([0.78, 0.56, 0.42])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_HAIR = np.array([[0.07, 0.05, 0.04], [0.25, 0.16, 0.10], [0.45, 0.30, 0.17], [0.75, 0.62, 0.42],
                  [0.55, 0.25, 0.12], [0.55, 0.55, 0.55], [0.85, 0.85, 0.83]])
_IRIS = np.array([[0.30, 0.18, 0.10], [0.18, 0.10, 0.06], [0.30, 0.45, 0.60], [0.35, 0.45, 0.30]])


def sample_appearance(rng: np.random.Generator) -> np.ndarray:
    """Appearance parameters (16,): skin rgb, lip rgb, hair rgb, iris rgb, stubble, redness, noise amp, brow dens."""
    t = rng.beta(1.2, 1.2)
    skin = np.interp(t, [0, 0.5, 1], [0, 1, 2])
    base = _SKIN_LIGHT * (1 - min(skin, 1)) + _SKIN_MID * min(skin, 1) if skin <= 1 else \
        _SKIN_MID * (2 - skin) + _SKIN_DARK * (skin - 1)
    base = np.clip(base * rng.uniform(0.92, 1.08) + rng.normal(0, 0.02, 3), 0.05, 1)
    lips = np.clip(base * np.array([0.95, 0.62, 0.62]) * rng.uniform(0.75, 1.0) + np.array([0.05, 0, 0.02]), 0, 1)
    hair = _HAIR[rng.integers(0, len(_HAIR))] * rng.uniform(0.8, 1.15)
    iris = _IRIS[rng.integers(0, len(_IRIS))] * rng.uniform(0.8, 1.2)
    stubble = rng.choice([0.0, rng.uniform(0.1, 0.9)], p=[0.4, 0.6])
    redness = rng.uniform(0.0, 0.6)
    noise = rng.uniform(0.01, 0.05)
    brow = rng.uniform(0.4, 1.0)
    p = np.concatenate([base, lips, np.clip(hair, 0, 1), np.clip(iris, 0, 1), [stubble, redness, noise, brow]])
    return p.astype(np.float32)


def _uv_noise(uv: np.ndarray, seed: int, octaves=((9.0, 0.5), (23.0, 0.3), (57.0, 0.2))) -> np.ndarray:
    """Cheap procedural noise in [-1,1] over the mesh's UV space (sum of randomly oriented sinusoids)."""
    r = np.random.default_rng(seed)
    out = np.zeros(len(uv), np.float32)
    for f, a in octaves:
        for _ in range(3):
            ang = r.uniform(0, 2 * np.pi)
            d = np.array([np.cos(ang), np.sin(ang)], np.float32) * f * 2 * np.pi
            out += a / 3 * np.sin(uv @ d + r.uniform(0, 2 * np.pi)).astype(np.float32)
    return out


def albedo(ict: ICTModel, app: np.ndarray, tri: np.ndarray, bary: np.ndarray, noise_seed: int) -> np.ndarray:
    """Albedo in [0,1] (N,3) at surface samples (triangle index into ict.faces, barycentrics)."""
    skin, lips, hair, iris = app[0:3], app[3:6], app[6:9], app[9:12]
    stubble, redness, namp, brow_d = app[12], app[13], app[14], app[15]
    f = ict.faces[tri]
    uvc = ict.uv[ict.face_uv_idx[tri]]  # (N,3,2)
    uv = (uvc * bary[:, :, None]).sum(1)

    def m(name):
        return (ict.semantic[name][f] * bary).sum(1)[:, None]

    n1 = _uv_noise(uv, noise_seed)[:, None]
    n_hi = _uv_noise(uv * 7.0, noise_seed + 1, octaves=((83.0, 0.6), (151.0, 0.4)))[:, None]
    c = skin[None] * (1 + namp * 2 * n1)
    c = c + redness * 0.25 * m("cheeks") * (np.array([0.25, -0.08, -0.06])[None])
    c = c * (1 - m("lips")) + lips[None] * m("lips")
    dots = np.clip(n_hi * 2.0 + 0.2, 0, 1)
    hair_m = np.clip(m("scalp") * stubble * dots + m("beard") * stubble * 0.6 * dots, 0, 1)
    c = c * (1 - hair_m) + hair[None] * hair_m
    b = np.clip(m("brows") * brow_d * (0.6 + 0.4 * np.clip(n_hi + 0.5, 0, 1)), 0, 1)
    c = c * (1 - b) + hair[None] * b
    eb = m("eyeball")
    eye_c = np.array([0.92, 0.9, 0.88])[None] * (1 - m("iris")) + iris[None] * m("iris")
    eye_c = eye_c * (1 - m("pupil")) + 0.02 * m("pupil")
    c = c * (1 - eb) + eye_c * eb
    mo = m("mouth")
    c = c * (1 - mo) + np.array([0.45, 0.15, 0.15])[None] * mo
    return np.clip(c, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Supervision
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SampleSizes:
    """Points per training sample. The eyelid/brow emphasis (EXPR_EMPHASIS) and the hair take their points on top
    of the rest of the head's: of 650 face points ~160 fall on the lids and brows and ~490 on the rest of the face,
    where the model trained without the emphasis had ~470 of its 500 (whose face accuracy the hair model must
    keep); likewise 200 head points beside the hair's 100 and 500 head near points beside the hair's 150."""
    n_face: int = 650       # face-region surface points (lids and brows (1 + EXPR_EMPHASIS)x as dense)
    n_other: int = 300      # other surface points (head, neck, mouth socket, eyeballs; hair)
    n_near: int = 650       # near-surface points with signed-distance targets
    near_std: float = 0.006  # 1.5 mm
    n_off: int = 150        # off-surface points (+N(0, 0.05^2)) with approximate signed distance
    n_far: int = 160        # uniform in the box
    n_corr: int = 300       # neutral<->posed correspondences
    n_kd: int = 12000       # dense surface samples for the KD-tree distance
    hair_share: float = 1 / 3  # share of the non-face surface points on the hair (heads with scalp hair)
    hair_near_share: float = 0.23  # share of the near-surface points around the hair
    lip_emphasis: float = 0.0  # lip triangles sampled (1 + lip_emphasis)x as densely on the surface, near it and
    #                            for the correspondences (their weight is unchanged); 0: as the shipped models were
    #                            trained, where ~12 of the 650 face points fall on the lips


# eyelid / brow triangles are sampled (1 + EXPR_EMPHASIS x their emphasis) times as densely on the surface, near it
# and for the correspondences: a blink moves only a few cm^2 of skin by ~8 mm, too little of the uniform samples for
# the deformation to learn it (the model trained without it barely moved its lids and brows)
EXPR_EMPHASIS = 6.0
# ... and their correspondences weigh (1 + CORR_EMPHASIS x emphasis) times as much: lids and brows slide along the
# surface, so the signed distance barely changes and only the correspondences teach the motion
CORR_EMPHASIS = 10.0
# correspondences are sampled (1 + displacement / CORR_MOTION_SCALE) times as densely where the expression moves the
# skin (per triangle, ICT motion): a blink moves a 2 cm^2 strip of the upper lid by 5-8 mm, which uniform samples
# (even with the lid emphasis) hit with a handful of points
CORR_MOTION_SCALE = 0.004  # 1 mm
# an eye this closed (eyeBlink + 0.5 eyeSquint) has its eyeball dropped from the posed supervision: the closed lid
# slides ~8 mm over an eyeball 1-3 mm behind it, which no smooth deformation can map onto the open eye's eyeball;
# behind the closed lid is simply inside the head
EYE_CLOSED = 0.3


def visible_triangles(ict: "ICTModel", w_ex: np.ndarray) -> np.ndarray:
    """(F,) bool: kept triangles that are surface for expression w_ex (eyeballs of closing eyes dropped)."""
    vis = np.ones(len(ict.faces), bool)
    for side in ("L", "R"):
        closed = w_ex[ict.ex_names.index(f"eyeBlink_{side}")] + 0.5 * w_ex[ict.ex_names.index(f"eyeSquint_{side}")]
        if closed > EYE_CLOSED:
            vis &= ~ict.tri_eyeball_side[side]
    return vis


BOX_MIN = np.array([-0.75, -0.95, -0.85], np.float32)
BOX_MAX = np.array([0.75, 0.7, 0.45], np.float32)


def _sample_tris(rng, areas, mask, n):
    p = areas * mask
    p = p / p.sum()
    tri = rng.choice(len(areas), size=n, p=p)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1).astype(np.float32)
    return tri, bary


def _interp(vals, faces, tri, bary):
    return (vals[faces[tri]] * bary[:, :, None]).sum(1)


class Generator:
    """Fresh synthetic samples every call. Training and validation draw from disjoint random streams.

    ``batch(B)`` returns a dict of float32 numpy arrays with a leading batch axis (see ``make_sample``).
    """

    def __init__(self, ict: ICTModel, anchor_vertices: np.ndarray, seed: int = 0, sizes: SampleSizes | None = None,
                 id_scale: float = 1.0, p_neutral: float = 0.12, bald: bool = False):
        self.ict = ict
        self.anchor_vertices = np.asarray(anchor_vertices, np.int64)
        self.rng = np.random.default_rng(seed)
        self.sizes = sizes or SampleSizes()
        self.id_scale = id_scale
        self.p_neutral = p_neutral
        self.bald = bald  # every head without hair (the bald built-in model)

    # RNG state (for exact resume)
    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, st):
        self.rng.bit_generator.state = st

    def draw_params(self):
        r = self.rng
        w_id = sample_identity(r, self.ict.n_id, self.id_scale)
        w_ex = sample_expression(r, self.p_neutral)
        app = sample_appearance(r)
        seed = int(r.integers(0, 2 ** 31))
        return w_id, w_ex, app, seed, np.zeros(N_HAIR, np.float32) if self.bald else sample_hair(r)

    def batch(self, B: int) -> dict:
        samples = []
        for _ in range(B):
            w_id, w_ex, app, seed, hair = self.draw_params()
            samples.append(make_sample(self.ict, self.anchor_vertices, w_id, w_ex, app, seed, rng=self.rng,
                                       sizes=self.sizes, hair=hair))
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _take(rng, n, *parts):
    """Exactly n rows from the concatenation of parts (tuples of equal-length arrays), in order; repeats rows when
    the parts hold fewer than n (only with pathological hair that covers almost the whole head)."""
    cols = [np.concatenate(c) for c in zip(*parts)]
    m = len(cols[0])
    idx = np.arange(n) if m >= n else np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    return [c[idx] for c in cols]


def make_sample(ict: ICTModel, anchor_vertices, w_id, w_ex, app, noise_seed, rng, sizes: SampleSizes,
                hair: np.ndarray | None = None) -> dict:
    """One supervision sample for identity w_id (100,), expression w_ex (53,), appearance app (16,) and hair style
    hair (N_HAIR,) (None or all zeros: bald, the samples of the head alone).

    With hair, every target is of the union head + hair: surface points of the head under the hair are replaced by
    points on the hair, near / off / far signed distances are the minimum of the head's and the hair's.
    """
    S = sizes
    hair = np.zeros(N_HAIR, np.float32) if hair is None else np.asarray(hair, np.float32)
    vn = ict.vertices(w_id)
    is_neutral = not np.any(w_ex != 0)
    vp = vn if is_neutral else ict.vertices(w_id, w_ex)
    nrm_p = ict.vertex_normals(vp)
    nrm_n = nrm_p if is_neutral else ict.vertex_normals(vn)
    F = ict.faces
    areas = ict.tri_areas(vp)
    lips = 1.0 + S.lip_emphasis * ict.tri_lip_emphasis
    emph = (1.0 + EXPR_EMPHASIS * ict.tri_expr_emphasis) * lips
    vis = visible_triangles(ict, np.asarray(w_ex))

    # dense samples for approximate distances (and the hair's head distance)
    tk, bk = _sample_tris(rng, areas, vis, S.n_kd)
    kp = _interp(vp, F, tk, bk)
    kn = _interp(nrm_p, F, tk, bk)
    tree = cKDTree(kp)
    hv = HairVolume(hair, kp, vp[ict.landmarks68], head_tree=tree)
    has_hair = not hv.empty

    # surface points (with hair: head points under the hair dropped, hair points in the non-face bucket)
    over = 2 if has_hair else 1
    tf, bf = _sample_tris(rng, areas, ict.tri_is_face * emph, over * S.n_face)
    to, bo = _sample_tris(rng, areas, (~ict.tri_is_face & vis) * lips, over * S.n_other)
    parts_f = [(_interp(vp, F, tf, bf), _interp(nrm_p, F, tf, bf), tf, bf)]
    parts_o = [(_interp(vp, F, to, bo), _interp(nrm_p, F, to, bo), to, bo)]
    n_hair_surf = int(round(S.hair_share * S.n_other)) if hv.t0 > 0 else int(round(0.15 * S.n_other))
    n_hair_near = int(round(S.hair_near_share * S.n_near)) if has_hair else 0
    if has_hair:
        parts_f = [tuple(a[hv.sdf(parts_f[0][0]) > 0] for a in parts_f[0])]
        parts_o = [tuple(a[hv.sdf(parts_o[0][0]) > 0] for a in parts_o[0])]
        kn_u = kn / (np.linalg.norm(kn, axis=1, keepdims=True) + 1e-12)
        hs, hn = hv.surface_samples(rng, kp, kn_u, n_hair_surf + n_hair_near + max(0, S.n_face - len(parts_f[0][0])))
        # surface: hair points first fill the face bucket's shortage, then their share of the other bucket
        short_f = max(0, S.n_face - len(parts_f[0][0]))
        n_h_o = min(n_hair_surf, max(0, len(hs) - short_f - n_hair_near))
        n_head_o = S.n_other - n_h_o
        hair_tri = np.full(len(hs), -1)
        hair_bary = np.zeros((len(hs), 3), np.float32)
        h_face = (hs[:short_f], hn[:short_f], hair_tri[:short_f], hair_bary[:short_f])
        h_other = tuple(a[short_f:short_f + n_h_o] for a in (hs, hn, hair_tri, hair_bary))
        h_near = (hs[short_f + n_h_o:short_f + n_h_o + n_hair_near], hn[short_f + n_h_o:short_f + n_h_o + n_hair_near])
        n_hair_near = len(h_near[0])
        sf, nf_, tf, bf = _take(rng, S.n_face, parts_f[0], h_face)
        so_head = [a[:n_head_o] for a in parts_o[0]]
        so, no_, to, bo = _take(rng, S.n_other, tuple(so_head), h_other)
    else:
        sf, nf_, tf, bf = parts_f[0]
        so, no_, to, bo = parts_o[0]
    surf = np.concatenate([sf, so])
    sn = np.concatenate([nf_, no_])
    sn /= np.linalg.norm(sn, axis=1, keepdims=True) + 1e-12
    tri = np.concatenate([tf, to])
    bary = np.concatenate([bf, bo])
    on_head = tri >= 0
    col = np.zeros((len(surf), 3), np.float32)
    col[on_head] = albedo(ict, app, tri[on_head], bary[on_head], noise_seed)
    if not on_head.all():
        col[~on_head] = hair_albedo(surf[~on_head], app[6:9], noise_seed)

    # near-surface points: offset along the normal; |sdf| <= |eps| and <= KD distance
    n_head_near = S.n_near - n_hair_near
    tn, bn = _sample_tris(rng, areas, (0.3 + 0.7 * ict.tri_is_face) * emph * vis, n_head_near)
    pn = _interp(vp, F, tn, bn)
    nn_ = _interp(nrm_p, F, tn, bn)
    if n_hair_near:
        pn = np.concatenate([pn, h_near[0]])
        nn_ = np.concatenate([nn_, h_near[1]])
    nn_ /= np.linalg.norm(nn_, axis=1, keepdims=True) + 1e-12
    eps = rng.normal(0, S.near_std, (S.n_near, 1)).astype(np.float32)
    near = pn + eps * nn_
    dk, jk = tree.query(near)
    near_sdf = np.sign(eps[:, 0]) * np.minimum(np.abs(eps[:, 0]), dk)
    if has_hair:
        # head near points: union with the hair; hair near points: eps, union with the head's KD signed distance
        head_sd = np.sign(np.einsum("ij,ij->i", near - kp[jk], kn[jk])) * dk
        near_sdf[:n_head_near] = np.minimum(near_sdf[:n_head_near], hv.sdf(near[:n_head_near]))
        near_sdf[n_head_near:] = np.minimum(eps[n_head_near:, 0], head_sd[n_head_near:])

    # off-surface points with KD signed distance (sign from the nearest sample's normal)
    ti, bi = _sample_tris(rng, areas, vis, S.n_off)
    off = _interp(vp, F, ti, bi) + rng.normal(0, 0.05, (S.n_off, 3)).astype(np.float32)
    far = rng.uniform(BOX_MIN, BOX_MAX, (S.n_far, 3)).astype(np.float32)
    q = np.concatenate([off, far])
    dq, jq = tree.query(q)
    sgn = np.sign(np.einsum("ij,ij->i", q - kp[jq], kn[jq]))
    q_sdf = sgn * dq
    if has_hair:
        q_sdf = np.minimum(q_sdf, hv.sdf(q))

    # correspondences on face + mouth (same triangle & barycentrics, same normal offset)
    areas_n = areas if is_neutral else ict.tri_areas(vn)
    motion = np.linalg.norm(vp - vn, axis=1)[F].mean(1) / CORR_MOTION_SCALE
    tc, bc = _sample_tris(rng, areas_n, ict.tri_corr * emph * (1.0 + motion), S.n_corr)
    std = np.where(rng.random(S.n_corr) < 0.5, 0.01, 0.002).astype(np.float32)[:, None]
    e = rng.standard_normal((S.n_corr, 1)).astype(np.float32) * std
    nc_n = _interp(nrm_n, F, tc, bc)
    nc_n /= np.linalg.norm(nc_n, axis=1, keepdims=True) + 1e-12
    nc_p = _interp(nrm_p, F, tc, bc)
    nc_p /= np.linalg.norm(nc_p, axis=1, keepdims=True) + 1e-12
    c_neu = _interp(vn, F, tc, bc) + e * nc_n
    c_pos = _interp(vp, F, tc, bc) + e * nc_p

    return {
        "surf": surf.astype(np.float32), "surf_normal": sn.astype(np.float32), "surf_color": col,
        "surf_is_face": np.concatenate([np.ones(S.n_face), np.zeros(S.n_other)]).astype(np.float32),
        "surf_is_hair": (~on_head).astype(np.float32),
        "near": near.astype(np.float32), "near_sdf": near_sdf.astype(np.float32),
        "off": q[:S.n_off].astype(np.float32), "off_sdf": q_sdf[:S.n_off].astype(np.float32),
        "far": q[S.n_off:].astype(np.float32), "far_sdf": q_sdf[S.n_off:].astype(np.float32),
        "corr_posed": c_pos.astype(np.float32), "corr_neutral": c_neu.astype(np.float32),
        "corr_weight": (1.0 + CORR_EMPHASIS * ict.tri_expr_emphasis[tc]).astype(np.float32),
        "anchors": vn[anchor_vertices].astype(np.float32),
        "w_id": np.asarray(w_id, np.float32), "w_ex": np.asarray(w_ex, np.float32),
        "app": np.asarray(app, np.float32), "hair": hair,
        "arkit": arkit.ict_to_arkit(w_ex, ict.ex_names).astype(np.float32),
        "is_neutral": np.float32(is_neutral),
    }


# ---------------------------------------------------------------------------------------------------------------
# Validation set (fixed seeds, disjoint stream; held-out expression combos)
# ---------------------------------------------------------------------------------------------------------------
VAL_SEED = 900_001


def validation_params(n_ids: int = 4, seed: int = VAL_SEED):
    """List of (id_index, w_id, w_ex, app, noise_seed, label): per identity neutral, 2 held-out combos, 1 random
    expression and one wide jaw opening."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_ids):
        w_id = sample_identity(rng)
        app = sample_appearance(rng)
        exps = [("neutral", np.zeros(53, np.float32)),
                (f"heldout{(2 * i) % 5}", heldout_expression(rng, 2 * i)),
                (f"heldout{(2 * i + 1) % 5}", heldout_expression(rng, 2 * i + 1)),
                ("random", sample_expression(rng, p_neutral=0.0, allow_heldout=True)),
                ("jawOpen", _ex_vec({"jawOpen": rng.uniform(0.7, 1.0), "mouthFunnel": rng.uniform(0, 0.3)}))]
        for lab, w_ex in exps:
            out.append((i, w_id, w_ex, app, int(rng.integers(0, 2 ** 31)), lab))
    return out


HAIR_VAL_SEED = 900_077


def hair_validation_params(n_ids: int = 3, seed: int = HAIR_VAL_SEED):
    """List of (id_index, w_id, w_ex, app, noise_seed, hair, label): held-out identities with hair (beards
    allowed), each neutral and with one random expression; a stream disjoint from training and from
    ``validation_params``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_ids):
        w_id = sample_identity(rng)
        app = sample_appearance(rng)
        hair = sample_hair(rng, p_bald=0.0, p_beard=0.3, p_moustache=0.3)
        for lab, w_ex in (("neutral", np.zeros(53, np.float32)),
                          ("random", sample_expression(rng, p_neutral=0.0, allow_heldout=True))):
            out.append((i, w_id, w_ex, app, int(rng.integers(0, 2 ** 31)), hair, lab))
    return out

