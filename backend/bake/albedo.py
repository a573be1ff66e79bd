"""Video-baked albedo: per-frame observations of surface points, a robust combination across frames, and the
seamless blend with the model's albedo.

Image formation is the tracker's (``backend.tracking.renderer.shade`` with the colour affine), in [-1, 1] pixel
units: ``pixel = A (2 S a - 1) + b`` with SH shading ``S = SH(n_cam) @ sh`` per channel, albedo ``a`` in [0, 1]
and the colour affine ``A``, ``b``. The tracker fits ``S`` as a factor on sRGB-encoded values, so one observation
inverts exactly that: ``u = (A⁻¹ (pixel - b) + 1) / 2 = S a``, ``a = u / S``. (Dividing linear RGB by ``S^2.2``
instead is exact only for a pure power law; the sRGB curve's linear toe puts it 4-7/255 off in shadows, and the
re-render error of cap12 rises from 4.9 to 5.7/255.) Everything after the inversion is linear RGB: the robust
combination, the blend, the USD colours. Baked colours are returned in the package's albedo convention (sRGB,
colour affine applied: ``(A (2 a - 1) + b + 1) / 2``), like the model albedo they replace; callers bake under the
white-balanced lighting (``Shading.white_balanced``).

Surface points are (triangle, barycentrics) pairs of the canonical mesh, so the same code bakes vertices (one-hot
barycentrics) and texels (points of a UV chart). Everything is batched over frames and points: arrays are
(T, N, …) for T frames and N points.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts.conventions import linear_to_srgb, srgb_to_linear
from ..tracking import masks as M
from ..tracking import raster

@dataclass(frozen=True)
class BakeConfig:
    """How observations are weighted and combined (defaults: the figures in benchmarks/bake_likeness.py)."""

    max_frames: int = 64
    """Frames used for the vertex colours, evenly spaced over the tracked frames (bounds time and memory)."""
    batch_frames: int = 8
    """Frames rasterised and sampled together."""
    depth_tolerance_m: float = 0.004
    """A point is visible when its depth is within this of the z-buffer at its pixel (metres)."""
    min_cos: float = 0.05
    """Cosine between the normal and the view ray below which an observation gets no weight (grazing views)."""
    edge_margin: float = 0.05
    """Weight ramps from 0 to 1 over this distance (fraction of the head's size in the image) from the rendered
    silhouette and from pixels labelled background (occluders, misfit)."""
    min_shading: float = 0.2
    """Shading below which an observation is down-weighted (dark, noisy after the division)."""
    special_share: float = 0.25
    """A point with at least this share of its observation weight inside eye openings or the mouth interior is an
    eye / mouth point: eyes are open in fewer frames than they are seen at all (blinks, lids)."""
    inlier_distance: float = 0.06
    """Observations farther than this (sRGB-encoded, mean over channels) from the weighted median are dropped
    before the weighted mean (specular highlights, occluders, blinks)."""
    prior_weight: float = 0.1
    """Weight of the model albedo in the blend, in units of one frontal, unoccluded observation."""
    blend_smoothing: int = 2
    """Smoothing passes of the blend weight over the mesh (no seam where baked colours meet the model's)."""
    texture_frames: int = 8
    """Frames picked automatically (frontal, sharp, neutral) for the texture."""


@dataclass
class SurfacePoints:
    """Points on the canonical mesh: triangle ``face`` (N,) int64 and ``bary`` (N, 3) float32."""

    face: np.ndarray
    bary: np.ndarray

    @classmethod
    def of_vertices(cls, faces: np.ndarray, n_vertices: int) -> "SurfacePoints":
        """Each vertex as a point of one of its triangles (one-hot barycentrics); vertices in no triangle get
        face -1 and are never observed."""
        faces = np.asarray(faces, np.int64)
        face = np.full(n_vertices, -1, np.int64)
        corner = np.zeros(n_vertices, np.int64)
        flat = faces.reshape(-1)
        face[flat] = np.arange(flat.size) // 3
        corner[flat] = np.arange(flat.size) % 3
        bary = np.zeros((n_vertices, 3), np.float32)
        bary[np.arange(n_vertices), corner] = 1.0
        return cls(face, bary)

    def __len__(self) -> int:
        return len(self.face)

    def subset(self, sl: slice) -> "SurfacePoints":
        return SurfacePoints(self.face[sl], self.bary[sl])

    def interpolate(self, faces: np.ndarray, attr: np.ndarray) -> np.ndarray:
        """Per-vertex ``attr`` (…, V, C) at the points -> (…, N, C) (0 for points without a face)."""
        tri = np.asarray(faces, np.int64)[np.maximum(self.face, 0)]           # (N, 3)
        out = sum(attr[..., tri[:, k], :] * self.bary[:, k, None] for k in range(3))
        return np.where((self.face >= 0)[:, None], out, 0)


@dataclass
class Shading:
    """The fitted lighting and colour correction (package ``identity.npz``)."""

    sh: np.ndarray            # (9, 3) SH coefficients, camera space
    color_affine: np.ndarray  # (3, 3)
    color_bias: np.ndarray    # (3,)

    def white_balanced(self) -> "Shading":
        """The same lighting made white: each channel divided by the lighting's colour (its ambient, degree-0
        term, relative to the brightest channel). The tracker cannot tell a tinted light from a tinted skin and
        fits the skin's tint into the light; colours baked under the white-balanced lighting keep it, so they look
        like the person in the clip, and render exactly as before with this lighting."""
        return Shading(self.sh / self.light_colour()[None], self.color_affine, self.color_bias)

    def light_colour(self) -> np.ndarray:
        """(3,) the lighting's colour, brightest channel 1."""
        ambient = np.clip(np.asarray(self.sh[0], np.float64), 1e-6, None)
        return ambient / ambient.max()

    def irradiance(self, normals_cam: np.ndarray) -> np.ndarray:
        """Unit camera-space normals (…, 3) -> shading S (…, 3)."""
        import torch
        from ..tracking.renderer import sh_basis
        n = torch.as_tensor(np.ascontiguousarray(normals_cam.reshape(-1, 3)), dtype=torch.float32)
        return (sh_basis(n) @ torch.as_tensor(self.sh, dtype=torch.float32)).numpy().reshape(normals_cam.shape)

    def to_package(self, albedo01: np.ndarray) -> np.ndarray:
        """Albedo in [0, 1] (sRGB) -> the package's convention (colour affine applied), clipped to [0, 1]."""
        return np.clip(((2 * albedo01 - 1) @ self.color_affine.T + self.color_bias + 1) / 2, 0, 1)

    def from_package(self, colours01: np.ndarray) -> np.ndarray:
        """Inverse of ``to_package`` (before clipping)."""
        inv = np.linalg.inv(self.color_affine.astype(np.float64))
        return ((2 * colours01 - 1 - self.color_bias) @ inv.T + 1) / 2

    def render(self, colours01: np.ndarray, normals_cam: np.ndarray) -> np.ndarray:
        """The tracker's image formation for package-convention colours (…, 3) -> pixel colours in [0, 1]."""
        a = self.from_package(colours01)
        S = self.irradiance(normals_cam)
        return np.clip(((2 * S * a - 1) @ self.color_affine.T + self.color_bias + 1) / 2, 0, 1)


@dataclass
class FrameBatch:
    """Frames to bake from: images with labels and the posed canonical mesh in camera space."""

    images: np.ndarray        # (T, H, W, 3) uint8
    labels: np.ndarray        # (T, H, W) uint8, backend.tracking.masks labels
    special: np.ndarray       # (T, H, W) bool: eye openings and mouth interior
    verts_cam: np.ndarray     # (T, V, 3) float64, metres, OpenCV camera space
    fit_weight: np.ndarray | None = None   # (T,) in [0, 1]: how far each frame's fit is trusted (None: all 1)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, sl: slice) -> "FrameBatch":
        return FrameBatch(self.images[sl], self.labels[sl], self.special[sl], self.verts_cam[sl],
                          None if self.fit_weight is None else self.fit_weight[sl])


def fit_weights(landmark_error_px: np.ndarray) -> np.ndarray:
    """(T,) per-frame weights from the fit's landmark errors: 1 up to the clip's median error, falling with the
    square of the ratio beyond it (a misplaced head smears the colours of its neighbours); unknown errors weigh 1."""
    e = np.asarray(landmark_error_px, np.float64)
    known = np.isfinite(e) & (e > 0)
    if not known.any():
        return np.ones(len(e), np.float32)
    ratio = np.where(known, np.median(e[known]) / np.where(known, e, 1.0), 1.0)
    return np.clip(ratio ** 2, 0.0, 1.0).astype(np.float32)


@dataclass
class Observations:
    """Per-frame estimates of the points' albedo: ``albedo_lin`` (T, N, 3) linear RGB, ``weight`` (T, N) >= 0,
    ``special`` (T, N) bool (seen in an eye opening or the mouth interior)."""

    albedo_lin: np.ndarray
    weight: np.ndarray
    special: np.ndarray

    @classmethod
    def concatenate(cls, parts, axis: int) -> "Observations":
        """Join along frames (axis 0) or points (axis 1)."""
        parts = list(parts)
        return cls(*(np.concatenate([getattr(p, k) for p in parts], axis=axis)
                     for k in ("albedo_lin", "weight", "special")))


def vertex_normals_batch(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(T, V, 3) -> (T, V, 3) area-weighted unit vertex normals (one sparse product for all frames)."""
    from scipy import sparse
    T, V, _ = verts.shape
    f = np.asarray(faces, np.int64)
    fn = np.cross(verts[:, f[:, 1]] - verts[:, f[:, 0]], verts[:, f[:, 2]] - verts[:, f[:, 0]])   # (T, F, 3)
    inc = sparse.csr_matrix((np.ones(f.size), (f.reshape(-1), np.repeat(np.arange(len(f)), 3))), shape=(V, len(f)))
    n = (inc @ fn.transpose(1, 0, 2).reshape(len(f), -1)).reshape(V, T, 3).transpose(1, 0, 2)
    return n / np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12, None)


def _edge_distance(valid: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> distance (px) of each valid pixel to the nearest invalid one, per frame (one EDT call: a
    huge spacing along T keeps frames apart)."""
    from scipy.ndimage import distance_transform_edt
    padded = np.pad(valid, ((0, 0), (1, 1), (1, 1)))       # the image border counts as an edge
    d = distance_transform_edt(padded, sampling=(1e6, 1.0, 1.0))
    return d[:, 1:-1, 1:-1].astype(np.float32)


def _bilinear(images: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """images (T, H, W, C) uint8, uv (T, N, 2) pixel coordinates (centres at i + 0.5) -> (T, N, C) in [0, 1]."""
    T, H, W, _ = images.shape
    x = np.clip(uv[..., 0] - 0.5, 0, W - 1)
    y = np.clip(uv[..., 1] - 0.5, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2)
    fx = (x - x0)[..., None].astype(np.float32)
    fy = (y - y0)[..., None].astype(np.float32)
    t = np.arange(T)[:, None]
    img = images.astype(np.float32) / 255.0

    def at(yy, xx):
        return img[t, yy, xx]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class FrameGeometry:
    """Per-batch z-buffer, edge distance and vertex normals of the posed mesh; samples any surface points."""

    def __init__(self, frames: FrameBatch, faces: np.ndarray, K: np.ndarray, shading: Shading, cfg: BakeConfig):
        self.frames, self.faces, self.K, self.shading, self.cfg = frames, np.asarray(faces), K, shading, cfg
        T, H, W = frames.labels.shape
        frag = raster.rasterize_batch(frames.verts_cam, self.faces, K, H, W)
        self.depth = frag.depth
        covered = frag.tri >= 0
        self.edge_dist = _edge_distance(covered & (frames.labels != M.BACKGROUND))
        # the head's size in the image: the margin scales with it
        self.size_px = np.sqrt(np.maximum(covered.reshape(T, -1).sum(1), 1)).astype(np.float32)
        self.normals = vertex_normals_batch(frames.verts_cam, self.faces)

    def observe(self, points: SurfacePoints) -> Observations:
        cfg, fr = self.cfg, self.frames
        T, H, W = fr.labels.shape
        pos = points.interpolate(self.faces, fr.verts_cam)                    # (T, N, 3)
        nrm = points.interpolate(self.faces, self.normals)
        nrm /= np.clip(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12, None)
        z = np.maximum(pos[..., 2], 1e-6)
        uv = np.stack([self.K[0, 0] * pos[..., 0] / z + self.K[0, 2], self.K[1, 1] * pos[..., 1] / z + self.K[1, 2]],
                      -1)
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H) & (pos[..., 2] > 0)
        px = np.clip(uv[..., 0].astype(np.int64), 0, W - 1)
        py = np.clip(uv[..., 1].astype(np.int64), 0, H - 1)
        t = np.arange(T)[:, None]
        visible = inside & (np.abs(pos[..., 2] - self.depth[t, py, px]) < cfg.depth_tolerance_m)
        visible &= (points.face >= 0)[None]
        cos = -(nrm * pos).sum(-1) / np.linalg.norm(pos, axis=-1).clip(1e-9)
        w_view = _ramp(cos, cfg.min_cos, 1.0)
        w_edge = _ramp(self.edge_dist[t, py, px] / self.size_px[:, None], 0.0, cfg.edge_margin)
        S = self.shading.irradiance(nrm)                                      # (T, N, 3)
        w_light = _ramp(S.mean(-1), 0.5 * cfg.min_shading, cfg.min_shading)
        weight = (visible * w_view * w_edge * w_light).astype(np.float32)
        if fr.fit_weight is not None:
            weight *= fr.fit_weight[:, None]
        pixel = _bilinear(fr.images, uv)
        inv = np.linalg.inv(self.shading.color_affine.astype(np.float64))
        u = ((2 * pixel - 1 - self.shading.color_bias) @ inv.T + 1) / 2       # = S a, sRGB-encoded
        a_lin = srgb_to_linear(np.clip(np.clip(u, 0, 1) / np.maximum(S, 0.5 * cfg.min_shading), 0, 1))
        return Observations(a_lin.astype(np.float32), weight, fr.special[t, py, px] & visible)


def observe(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, shading: Shading, points: SurfacePoints,
            cfg: BakeConfig, point_chunk: int = 262_144) -> Observations:
    """Observations of ``points`` in every frame, ``cfg.batch_frames`` frames and ``point_chunk`` points at a
    time -> Observations (T, N, …)."""
    parts = []
    for s in range(0, len(frames), cfg.batch_frames):
        geo = FrameGeometry(frames.subset(slice(s, s + cfg.batch_frames)), faces, K, shading, cfg)
        parts.append(Observations.concatenate((geo.observe(points.subset(slice(p, p + point_chunk)))
                                               for p in range(0, len(points), point_chunk)), axis=1))
    return Observations.concatenate(parts, axis=0)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-channel weighted median over axis 0: values (T, N, C), weights (T, N) -> (N, C)."""
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, 0)
    w = np.take_along_axis(np.broadcast_to(weights[..., None], values.shape), order, 0)
    cw = np.cumsum(w, 0)
    idx = np.argmax(cw >= 0.5 * cw[-1:], axis=0)
    return np.take_along_axis(v, idx[None], 0)[0]


@dataclass
class RobustAlbedo:
    """Combined observations: ``albedo_lin`` (N, 3) linear RGB, ``weight`` (N,) total inlier weight (0: never
    seen well), ``special`` (N,) bool (an eye or mouth-interior point)."""

    albedo_lin: np.ndarray
    weight: np.ndarray
    special: np.ndarray


def combine(obs: Observations, cfg: BakeConfig) -> RobustAlbedo:
    """Robust combination across frames.

    A point belongs to the eyes / mouth interior when ``cfg.special_share`` of its observation weight lies in those
    regions; it then uses only those observations, and every other point only the rest, so skin never smears into
    the eyes or the mouth and vice versa. Weighted median per channel, then the weighted mean of the observations
    near it.
    """
    w = obs.weight
    w_special = (w * obs.special).sum(0)
    special = w_special > cfg.special_share * w.sum(0)
    w = np.where(obs.special == special[None], w, 0.0).astype(np.float32)
    med = weighted_median(obs.albedo_lin, w)
    dist = np.abs(linear_to_srgb(obs.albedo_lin) - linear_to_srgb(med)[None]).mean(-1)
    w_in = w * (dist < cfg.inlier_distance)
    total = w_in.sum(0)
    mean = (w_in[..., None] * obs.albedo_lin).sum(0) / np.maximum(total, 1e-12)[:, None]
    return RobustAlbedo(np.where(total[:, None] > 0, mean, med).astype(np.float32), total, special)


def smooth_on_mesh(values: np.ndarray, faces: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` rounds of averaging each vertex with its one-ring: values (V,) or (V, C)."""
    from scipy import sparse
    V = len(values)
    f = np.asarray(faces, np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0], np.arange(V)])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2], np.arange(V)])
    A = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(V, V))
    A.data[:] = 1.0                                   # duplicate edges count once
    A = sparse.diags(1.0 / np.asarray(A.sum(1)).ravel()) @ A
    out = np.asarray(values, np.float64)
    for _ in range(passes):
        out = A @ out
    return out


def match_colours(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-channel gain and offset taking ``source`` (N, 3) to ``target`` (N, 3) in weighted least squares,
    applied to ``source``: the model albedo takes the subject's tone where it fills in."""
    w = weight / max(float(weight.sum()), 1e-12)
    if (weight > 0).sum() < 16:
        return source
    ms, mt = (w[:, None] * source).sum(0), (w[:, None] * target).sum(0)
    cov = (w[:, None] * (source - ms) * (target - mt)).sum(0)
    var = (w[:, None] * (source - ms) ** 2).sum(0)
    gain = np.clip(cov / np.maximum(var, 1e-6), 0.25, 4.0)
    return np.clip((source - ms) * gain + mt, 0, 1)


@dataclass
class BakedColours:
    """Result of a vertex bake: ``colours`` (V, 3) uint8 (package convention), ``confidence`` (V,) float32 in
    [0, 1] (share of the baked estimate in the blend with the model albedo), ``special`` (V,) bool."""

    colours: np.ndarray
    confidence: np.ndarray
    special: np.ndarray


def blend_vertices(robust: RobustAlbedo, model_albedo_u8: np.ndarray, faces: np.ndarray, shading: Shading,
                   cfg: BakeConfig) -> BakedColours:
    """Package-convention vertex colours: the baked estimate where seen well, the model albedo (matched to the
    subject's tone) elsewhere, with a blend weight smoothed over the mesh so the transition has no seam."""
    baked = shading.to_package(linear_to_srgb(robust.albedo_lin))
    model = model_albedo_u8.astype(np.float64) / 255.0
    alpha = robust.weight / (robust.weight + cfg.prior_weight)
    trusted = alpha * (alpha > 0.5) * ~robust.special
    fill = match_colours(model, baked, trusted)
    baked = np.where(robust.weight[:, None] > 0, baked, fill)
    alpha = smooth_on_mesh(alpha, faces, cfg.blend_smoothing)
    colours = alpha[:, None] * baked + (1 - alpha[:, None]) * fill
    return BakedColours((np.clip(colours, 0, 1) * 255 + 0.5).astype(np.uint8), alpha.astype(np.float32),
                        robust.special)


def bake_vertices(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, shading: Shading,
                  model_albedo_u8: np.ndarray, cfg: BakeConfig = BakeConfig()) -> BakedColours:
    """Vertex colours of the canonical mesh from ``frames`` (its posed copies in ``frames.verts_cam``)."""
    points = SurfacePoints.of_vertices(faces, len(model_albedo_u8))
    robust = combine(observe(frames, faces, K, shading, points, cfg), cfg)
    return blend_vertices(robust, model_albedo_u8, faces, shading, cfg)


def render_shaded(verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple, shading: Shading,
                  colours_u8: np.ndarray, uv: np.ndarray | None = None):
    """The posed mesh under the fitted lighting, as the tracker's image formation predicts the frames, coloured by
    per-vertex colours (V, 3) uint8 or, with ``uv`` (F, 3, 2), by a texture (S, S, 3) uint8 (row 0 at v = 1);
    package colour convention. verts_cam (T, V, 3) -> images (T, H, W, 3) float in [0, 1], coverage (T, H, W)."""
    W, H = size
    frag = raster.rasterize_batch(verts_cam, faces, K, H, W)
    covered = frag.tri >= 0
    tri = np.asarray(faces, np.int64)[frag.tri[covered]]                  # (n, 3)
    t = np.nonzero(covered)[0]
    bary = frag.bary[covered]
    normals = vertex_normals_batch(verts_cam, faces)
    n = np.einsum("nk,nkc->nc", bary, normals[t[:, None], tri])
    n /= np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12, None)
    if uv is None:
        c = np.einsum("nk,nkc->nc", bary, colours_u8[tri].astype(np.float32) / 255.0)
    else:
        S = colours_u8.shape[0]
        st = np.einsum("nk,nkc->nc", bary, uv[frag.tri[covered]])
        c = _bilinear(colours_u8[None], np.stack([st[:, 0] * S, (1 - st[:, 1]) * S], -1)[None])[0]
    out = np.zeros(covered.shape + (3,), np.float32)
    out[covered] = shading.render(c, n)
    return out, covered
