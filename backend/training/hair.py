"""Procedural hair volumes over the synthetic heads, evaluated as signed-distance bounds (numpy only).

No hair meshes exist offline, so hair is built from closed, smooth volumes around the posed head:

* **scalp hair**: a shell of thickness ``T(x)`` around the head surface (``d_head(x) - T(x)``, ``d_head`` the
  distance to dense surface samples), intersected with a crop region in model space: above a sloping front hairline
  (lowered in the middle by bangs), or behind a side plane (temples / in front of the ears); above a bottom plane
  (the length: above the ears, ear length, jaw, shoulders); minus a narrow parting slab on top.
* **long hair** (bottom below the skull): a vertical elliptic cylinder as wide as the skull hanging behind the side
  plane down to the bottom plane, smooth-unioned with the shell.
* **beard / moustache**: shells around the lower face cropped by planes and a capsule through the posed mouth
  corners (so they follow the jaw and leave the lips free).

Every part is 1-Lipschitz (distances to point sets, planes normalised by their gradient norm, the shell divided by
``1 + Lip(T)``), and max / min / polynomial smooth-min keep that, so ``hair_sdf`` never overestimates the distance to
its zero level set: a valid sphere-tracing / Newton bound and a closed volume (``hair_sdf > 0`` outside a bounded
region).

The style is a parameter vector ``params`` (``N_HAIR``,) that extends the identity conditioning (the z_geo encoder
reads ``[w_id (100), params]``). All zeros is a bald, beardless head, so zero-initialised encoder columns reproduce a
model trained without hair.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# name, meaning of the value (all in [-1, 1] or [0, 1]; 0 everywhere = bald)
HAIR_NAMES = (
    "thickness",      # [0, 1] scalp hair thickness, 0 = bald (then every scalp entry is 0)
    "hairline",       # [-1, 1] front hairline height (-1 low, 1 receding)
    "bangs",          # [0, 1] fringe over the forehead (hairline lowered in the middle)
    "side",           # [-1, 1] side plane (how far forward the hair reaches at the temples)
    "length",         # [0, 1] bottom of the hair: above the ears (0) ... shoulders (1)
    "nape_tilt",      # [-1, 1] bottom higher at the back (-1) or at the front (1)
    "parting_x",      # [-1, 1] parting position (x)
    "parting",        # [0, 1] parting width, 0 = none
    "volume",         # [0, 1] extra volume at the sides
    "asymmetry",      # [-1, 1] thicker on the subject's right (-1) or left (1)
    "beard",          # [0, 1] beard thickness, 0 = none
    "moustache",      # [0, 1] moustache thickness, 0 = none
)
N_HAIR = len(HAIR_NAMES)
# (low, high) of each parameter, as above: the range the training data covers
HAIR_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (-1.0, 1.0), (0.0, 1.0),
               (0.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0))
# the scalp entries: 0 whenever the thickness is 0 (``sample_hair``), so the model never saw them on a bald scalp
SCALP_PARAMS = HAIR_NAMES[1:10]
_I = {n: i for i, n in enumerate(HAIR_NAMES)}
BALD = np.zeros(N_HAIR, np.float32)

# geometry in model units (1 = 0.25 m; y up, z forward): mean ICT head top y 0.46, back z -0.61, brows y ~0.15
T_MIN, T_MAX = 0.02, 0.16          # scalp hair thickness 5 mm .. 4 cm
HAIRLINE_Y, HAIRLINE_Z = 0.28, 0.15  # front hairline height at the forehead, where it is measured
HAIRLINE_SLOPE = 0.8               # the hairline falls towards the back (dy/dz)
MIN_FRINGE_Y = 0.21                # bangs end >= ~1.5 cm above the brows (eyelids and brows stay visible)
SIDE_Z, SIDE_TILT = -0.03, 0.35    # side plane z = SIDE_Z + SIDE_TILT * (y - 0.1): hair behind it
BOTTOM_TOP, BOTTOM_LOW = 0.12, -0.66  # bottom plane: above the ears .. shoulders
LONG_BELOW = -0.22                 # bottoms below this hang a curtain from the skull
BEARD_T, MOUSTACHE_T = 0.06, 0.03  # up to 1.5 cm / 7.5 mm
SMOOTH_K = 0.04                    # smooth-union radius of shell and curtain (1 cm)
D_CLAMP = 0.3                      # head distances are clamped here (> every thickness)
# The marching-cubes box of a model trained with hair (posed NPHM space; ``MonoNPHMConfig.mesh_box``). The official
# box ends at y = -0.5, 2 cm below the chin of these heads (mean head: -0.42): it cut the neck above the tracker's
# neck line (0.15 face heights below the chin, ~-0.53, lower as the head nods), so the hair-region silhouette pulled
# at a neck the mesh lacked (step-950 model: hair clips' IoU 0.82 -> 0.87, bald clip 0.86 -> 0.91); and it cut thick
# shoulder-length hair, which reaches y = BOTTOM_LOW and |x| = 0.69.
MESH_BOX = ((-0.7, -0.7, -0.95), (0.7, 0.75, 0.4))

# ICT landmarks-68 indices used to place the beard
_LM_NOSE_BOTTOM, _LM_CHIN, _LM_MOUTH_L, _LM_MOUTH_R, _LM_LIP_TOP, _LM_LIP_BOTTOM = 33, 8, 48, 54, 51, 57
_LM_JAW_L, _LM_JAW_R = 2, 14


def sample_hair(rng: np.random.Generator, p_bald: float = 0.2, p_beard: float = 0.2,
                p_moustache: float = 0.2) -> np.ndarray:
    """A random hair style (N_HAIR,) float32; exactly BALD with probability ~ p_bald * (1-p_beard) * (1-p_moust)."""
    p = np.zeros(N_HAIR, np.float32)
    u = rng.uniform
    if rng.random() >= p_bald:
        p[_I["thickness"]] = u(0.05, 1.0)
        p[_I["hairline"]] = u(-1.0, 1.0)
        p[_I["bangs"]] = u(0.0, 1.0) if rng.random() < 0.35 else 0.0
        p[_I["side"]] = u(-1.0, 1.0)
        p[_I["length"]] = rng.beta(1.1, 1.4)
        p[_I["nape_tilt"]] = u(-1.0, 1.0)
        if rng.random() < 0.5:
            p[_I["parting_x"]] = u(-1.0, 1.0)
            p[_I["parting"]] = u(0.1, 1.0)
        p[_I["volume"]] = u(0.0, 1.0)
        p[_I["asymmetry"]] = u(-1.0, 1.0) if rng.random() < 0.5 else 0.0
    if rng.random() < p_beard:
        p[_I["beard"]] = u(0.2, 1.0)
    if rng.random() < p_moustache:
        p[_I["moustache"]] = u(0.3, 1.0)
    return p


def _plane(x: np.ndarray, grad: np.ndarray, offset: float) -> np.ndarray:
    """Exact signed distance to {x . grad + offset = 0}, negative on the side grad points away from."""
    g = np.asarray(grad, np.float64)
    return (x @ g + offset) / np.linalg.norm(g)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (<= min(a, b); 1-Lipschitz when a and b are)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _segment_distance(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((x - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(x - (a + t[:, None] * ab), axis=1)


class HairVolume:
    """The hair of one posed head as a signed-distance bound.

    params: (N_HAIR,) style; head_points: (K, 3) dense samples of the posed head surface (model units);
    landmarks: (68, 3) posed ICT landmarks-68 (model units).
    """

    def __init__(self, params: np.ndarray, head_points: np.ndarray, landmarks: np.ndarray,
                 head_tree: cKDTree | None = None):
        self.params = np.asarray(params, np.float64)
        self.head_tree = head_tree if head_tree is not None else cKDTree(head_points)
        p = self.params
        self.t0 = T_MIN + (T_MAX - T_MIN) * p[_I["thickness"]] if p[_I["thickness"]] > 0 else 0.0
        self.beard_t = BEARD_T * p[_I["beard"]]
        self.moustache_t = MOUSTACHE_T * p[_I["moustache"]]
        self.empty = self.t0 <= 0 and self.beard_t <= 0 and self.moustache_t <= 0
        self.lm = np.asarray(landmarks, np.float64)
        hp = np.asarray(head_points, np.float64)
        # skull section above the ears: width and depth of the hanging curtain
        band = hp[(hp[:, 1] > 0.12) & (hp[:, 1] < 0.3)]
        self.skull_half_width = float(np.abs(band[:, 0]).max()) if len(band) else 0.42
        self.skull_back = float(band[:, 2].min()) if len(band) else -0.6

    # -- parts ---------------------------------------------------------------------------------------------------
    def _thickness(self, x):
        """T(x) and its Lipschitz bound: side volume (x^2) and left/right asymmetry (linear in x)."""
        p = self.params
        vol, asym = 0.05 * p[_I["volume"]], 0.25 * p[_I["asymmetry"]]
        xc = np.clip(x[:, 0], -0.6, 0.6)
        t = self.t0 * (1.0 + asym * xc / 0.6) + vol * (xc / 0.6) ** 2
        lip = self.t0 * abs(asym) / 0.6 + vol * 2.0 / 0.6
        return t, lip

    def _region(self, x):
        """Crop region of the scalp hair (negative inside)."""
        p = self.params
        y_f = HAIRLINE_Y + 0.06 * p[_I["hairline"]]
        # front: y > y_f + s (z - z_f) - bangs(x); bangs bump exp(-x^2/w^2), Lipschitz in x <= b sqrt(2/e) / w
        b = max(0.0, min(0.1 * p[_I["bangs"]], y_f - MIN_FRINGE_Y))
        w = 0.16
        fringe = b * np.exp(-(x[:, 0] / w) ** 2)
        lip_front = np.sqrt(1.0 + HAIRLINE_SLOPE ** 2 + (b * np.sqrt(2.0 / np.e) / w) ** 2)
        front = (y_f + HAIRLINE_SLOPE * (x[:, 2] - HAIRLINE_Z) - fringe - x[:, 1]) / lip_front
        # side: z < SIDE_Z + 0.06 side + SIDE_TILT (y - 0.1)
        z_s = SIDE_Z + 0.06 * p[_I["side"]]
        side = _plane(x, (0.0, -SIDE_TILT, 1.0), -(z_s - SIDE_TILT * 0.1))
        # bottom: y > y_b + tilt (z + 0.2)
        y_b = BOTTOM_TOP + (BOTTOM_LOW - BOTTOM_TOP) * p[_I["length"]]
        tilt = 0.25 * p[_I["nape_tilt"]]
        bottom = _plane(x, (0.0, -1.0, tilt), y_b + 0.2 * tilt)
        region = np.maximum(np.minimum(front, side), bottom)
        if p[_I["parting"]] > 0:  # minus a narrow slab from the front to the crown
            half = 0.004 + 0.012 * p[_I["parting"]]
            slab = np.maximum.reduce([np.abs(x[:, 0] - 0.12 * p[_I["parting_x"]]) - half, 0.3 - x[:, 1],
                                      -0.25 - x[:, 2]])
            region = np.maximum(region, -slab)
        return region, y_b, z_s

    def _scalp(self, x, d):
        t, lip = self._thickness(x)
        shell = (d - t) / (1.0 + lip)
        region, y_b, z_s = self._region(x)
        hair = np.maximum(shell, region)
        if y_b < LONG_BELOW:  # long hair: curtain from the skull down to the bottom plane
            ax = self.skull_half_width + self.t0
            z_back = self.skull_back - self.t0
            az = 0.5 * (z_s + 0.05 - z_back)
            zc = z_back + az
            ell = np.sqrt((x[:, 0] / ax) ** 2 + ((x[:, 2] - zc) / az) ** 2)
            curtain = np.maximum.reduce([(ell - 1.0) * min(ax, az), region, x[:, 1] - 0.2])
            hair = _smin(hair, curtain, SMOOTH_K)
        return hair

    def _facial(self, x, d):
        lm = self.lm
        out = np.full(len(x), np.inf)
        mouth_r = 0.5 * np.linalg.norm(lm[_LM_LIP_TOP] - lm[_LM_LIP_BOTTOM]) + 0.02
        mouth = _segment_distance(x, lm[_LM_MOUTH_L], lm[_LM_MOUTH_R]) - mouth_r
        y_nose = lm[_LM_NOSE_BOTTOM, 1]
        if self.beard_t > 0:
            jaw_z = 0.5 * (lm[_LM_JAW_L, 2] + lm[_LM_JAW_R, 2])
            region = np.maximum.reduce([
                x[:, 1] - (y_nose - 0.05),                  # below the cheeks
                lm[_LM_CHIN, 1] - 0.14 - x[:, 1],           # down to the upper neck
                jaw_z - 0.04 - x[:, 2],                     # in front of the ears
                -mouth,                                     # lips free
            ])
            out = np.minimum(out, np.maximum(d - self.beard_t, region))
        if self.moustache_t > 0:
            half_w = 0.5 * np.linalg.norm(lm[_LM_MOUTH_L] - lm[_LM_MOUTH_R]) + 0.015
            region = np.maximum.reduce([
                x[:, 1] - (y_nose - 0.012),                 # under the nose
                lm[_LM_LIP_TOP, 1] + 0.008 - x[:, 1],       # above the upper lip
                np.abs(x[:, 0] - lm[_LM_NOSE_BOTTOM, 0]) - half_w,
                lm[_LM_NOSE_BOTTOM, 2] - 0.12 - x[:, 2],    # front of the face only
            ])
            out = np.minimum(out, np.maximum(d - self.moustache_t, region))
        return out

    # -- public --------------------------------------------------------------------------------------------------
    def sdf(self, x: np.ndarray) -> np.ndarray:
        """(N,) signed-distance bound of the hair at points x (N, 3); +inf everywhere for a bald, beardless head."""
        x = np.asarray(x, np.float64)
        if self.empty:
            return np.full(len(x), np.inf)
        return self._sdf_at(x, self._head_distance(x)[0])

    def _head_distance(self, x):
        # distances beyond D_CLAMP are clamped (still 1-Lipschitz; the zero set is within T_MAX + BEARD_T of the
        # head): far queries are what makes the KD-tree slow
        d, j = self.head_tree.query(x, distance_upper_bound=D_CLAMP)
        return np.minimum(d, D_CLAMP), j

    def _sdf_at(self, x, d):
        out = np.full(len(x), np.inf)
        if self.t0 > 0:
            out = self._scalp(x, d)
        if self.beard_t > 0 or self.moustache_t > 0:
            out = np.minimum(out, self._facial(x, d))
        return out

    def sdf_and_gradient(self, x: np.ndarray, h: float = 1e-3):
        """(N,) sdf and (N, 3) central-difference gradient; the offsets reuse each point's nearest head sample
        (one KD query per point instead of seven)."""
        x = np.asarray(x, np.float64)
        d, j = self._head_distance(x)
        f = self._sdf_at(x, d)
        far = j >= self.head_tree.n
        near_pt = self.head_tree.data[np.minimum(j, self.head_tree.n - 1)]
        offs = np.concatenate([np.eye(3), -np.eye(3)]) * h
        xo = (x[None] + offs[:, None]).reshape(-1, 3)
        do = np.linalg.norm(xo - np.tile(near_pt, (6, 1)), axis=1)
        do = np.where(np.tile(far, 6), D_CLAMP, np.minimum(do, D_CLAMP))
        fo = self._sdf_at(xo, do).reshape(6, len(x))
        return f, ((fo[:3] - fo[3:]) / (2 * h)).T

    def surface_samples(self, rng: np.random.Generator, head_points: np.ndarray, head_normals: np.ndarray, n: int,
                        iters: int = 5, tol: float = 1e-3):
        """Up to n points on the hair's zero level set, roughly uniform over it, and their unit normals.

        Seeds: head samples pushed out along their normal by the local thickness, plus uniform points in the
        curtain's box; Newton steps ``x <- x - f g / |g|^2`` project them; points that do not converge are dropped.
        """
        if self.empty:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
        hp = np.asarray(head_points, np.float64)
        inside = self.sdf(hp) < 0  # head samples under the hair
        idx = np.nonzero(inside)[0]
        if len(idx) == 0:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
        m = 2 * n
        pick = idx[rng.integers(0, len(idx), m)]
        t = np.maximum(-self.sdf(hp[pick]), 0.005)
        seeds = hp[pick] + head_normals[pick] * t[:, None] * rng.uniform(0.6, 1.4, (m, 1))
        y_b = BOTTOM_TOP + (BOTTOM_LOW - BOTTOM_TOP) * self.params[_I["length"]]
        if self.t0 > 0 and y_b < LONG_BELOW:  # the curtain's outside below the skull
            k = m // 2
            ang = rng.uniform(0, 2 * np.pi, k)
            r = self.skull_half_width + self.t0
            extra = np.stack([r * np.cos(ang), rng.uniform(y_b, 0.1, k), -0.2 + 0.5 * r * np.sin(ang)], 1)
            seeds = np.concatenate([seeds, extra])
        x = seeds
        for _ in range(iters):
            f, g = self.sdf_and_gradient(x)
            x = x - (f / np.maximum((g * g).sum(1), 1e-6))[:, None] * g
        f, g = self.sdf_and_gradient(x)
        ok = np.abs(f) < tol
        g = g[ok]
        x = x[ok]
        if len(x) == 0:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
        # thin out clusters: keep points roughly uniform in space (one per ~voxel of the sample spacing)
        order = rng.permutation(len(x))
        x = x[order]
        g = g[order]
        key = np.floor(x / 0.012).astype(np.int64)
        _, first = np.unique(key, axis=0, return_index=True)
        keep = np.sort(first)
        keep = keep[rng.permutation(len(keep))[:n]]
        x, g = x[keep], g[keep]
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
        return x.astype(np.float32), g.astype(np.float32)


def hair_albedo(x: np.ndarray, hair_rgb: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3) hair colour in [0, 1] at points x: base colour, strand streaks (mostly along y) and lighter tips."""
    r = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    streak = np.zeros(len(x))
    for f, a in ((40.0, 0.5), (95.0, 0.3), (210.0, 0.2)):
        for _ in range(2):
            d = r.normal(size=3) * np.array([1.0, 0.15, 1.0])
            d /= np.linalg.norm(d)
            streak += a / 2 * np.sin(f * (x @ d) + r.uniform(0, 2 * np.pi))
    tips = np.clip(-x[:, 1] / 0.6, 0.0, 1.0) * r.uniform(0.0, 0.25)
    c = np.asarray(hair_rgb, np.float64)[None] * (1.0 + 0.22 * streak[:, None] + tips[:, None])
    return np.clip(c, 0.0, 1.0).astype(np.float32)
