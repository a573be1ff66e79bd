"""Video-baked albedo: per-frame observations of surface points, a robust combination across frames, and the
seamless blend with the model's albedo.

Shading is removed in linear light. The bake's image formation (``Lighting``) is a camera's: the pixel, decoded
from sRGB to linear RGB (``contracts.conventions.srgb_to_linear``), is the linear albedo ``a`` times the
per-channel SH irradiance ``S(n) = SH(n) @ sh``; one observation is ``a = srgb_to_linear(pixel) / S``. The
tracker fits its SH lighting as a factor on sRGB-encoded albedo (``backend.tracking.renderer.shade``), which a
linear-light division cannot reuse (``S`` on sRGB values is not ``S^2.2`` on linear ones: the sRGB curve's linear
toe), so the bake starts from the tracker's lighting carried over to linear light (``Lighting.from_fitted``) and
refits it in linear light against its own albedo estimate (``fit_lighting``, alternating with the combination).
Baked colours are the linear albedo encoded to sRGB, under the white-balanced fitted lighting (``white_balanced``).

Surface points are (triangle, barycentrics) pairs of the canonical mesh, so the same code bakes vertices (one-hot
barycentrics) and texels (points of a UV chart). Everything is batched over frames and points: arrays are
(T, N, …) for T frames and N points.
"""
from __future__ import annotations

import dataclasses
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
    min_shading: float = 0.5
    """Irradiance, as a share of the light that reaches the face (``Lighting.face_irradiance``), below which an
    observation is down-weighted (no weight at half of it): the division amplifies noise there, and there the
    SH lighting, fitted on the directions the face mostly shows, is least sure (eyelid creases, under the chin)."""
    lighting_iterations: int = 2
    """Rounds of refitting the linear-light lighting (``fit_lighting``: the direct light's shape and the bounce)
    to the observations against the surrounding skin's albedo."""
    reference_chroma_gap: float = 0.2
    """Chromaticity difference (``chromaticity``, mean over channels) between neighbouring vertices across which
    nothing flows into the skin albedo that ``fit_lighting`` fits against (``skin_reference``; all of it up to
    half this): shading changes brightness, not chromaticity, so a darker feature of another colour (brows, lips, a
    painted stripe) beside the skin is not taken for shadow (a sphere with a green cheek stripe, lit from the
    side: the light's side term came out 32 % too strong without it, 1 % with it). cap12_edit 0:24: neighbouring
    skin differs by ~0.03, the bright lid creases from their surroundings by 0.05 (90 %: 0.14)."""
    special_share: float = 0.25
    """A point with at least this share of its observation weight inside eye openings or the mouth interior is an
    eye / mouth point: eyes are open in fewer frames than they are seen at all (blinks, lids)."""
    inlier_distance: float = 0.06
    """Observations farther than this (sRGB-encoded, mean over channels) from the weighted median are dropped
    before the weighted mean (specular highlights, occluders, blinks)."""
    max_albedo: float = 0.9
    """Linear albedo the brightest well-seen colours may reach (``normalise_scale``)."""
    prior_weight: float = 0.1
    """Weight of the model albedo in the blend, in units of one frontal, unoccluded observation."""
    blend_smoothing: int = 2
    """Smoothing passes of the blend weight over the mesh (no seam where baked colours meet the model's)."""
    texture_frames: int = 8
    """Frames picked automatically (frontal, sharp, neutral) for the texture."""
    trusted_shading: float = 0.8
    """Irradiance (share of ``face_irradiance``) from which the shading the mesh predicts is fully trusted. Below
    it, down to ``min_shading``, a point's albedo may come out no brighter than ``shadow_excess`` times the
    surrounding skin's, in its hue (``limit_shadowed``): a fold the mesh has and the face lacks (lid creases under
    the brow, under the nose) is lit in the video like the face, and the division would bake a bright crease."""
    shadow_excess: float = 1.25
    """How much brighter (linear light) than the surrounding skin an untrusted point may come out
    (``limit_shadowed``). With the lighting refitted against the surrounding skin (``fit_lighting``) little is left
    to limit: held-out re-render L1 (benchmarks/bake_likeness.py) cap12_edit 0:24 / Intel 0:24 / cap12_edit 0:250
    3.54 / 3.66 / 4.99 with it, 3.42 / 3.64 / 4.92 without (faint orange lid creases left under neutral light);
    before the refit 4.60 / 4.91 / 5.91 with it."""
    shadow_passes: int = 8
    """Rounds of averaging over the mesh for the surrounding skin's brightness (``limit_shadowed``)."""
    highlight_excess: float = 1.25
    """How much brighter (linear light) than the surrounding skin any skin point may come out, however well the
    mesh predicts its light (``highlight_cap``): a highlight the skin shows in every frame (the sheen under the nose
    tip) is no albedo; outside the clip's light it was a bright patch under the nose in flat-light close-ups.
    cap12_edit 0:250 held-out re-render (benchmarks/bake_likeness.py): 5.00 with the limit, 4.99 without (nose
    region 6.76 vs 6.67)."""
    highlight_margin: int = 3
    """Rings of vertices around eye and mouth-interior points the highlight limit leaves alone (the whites of the
    eyes in their corners, the teeth): without it the eye region's held-out error rose 7.47 -> 7.96."""
    alignment_tolerance: float = 0.01
    """Distance of a feature point (brows, lids, lips) from its mesh vertex's projection, as a share of the head's
    size in the image, up to which the mesh and the image agree there (``alignment.feature_weights``: a frame
    weighs ``(best / residual) ** 2`` around the feature, ``best`` the residual of its best-aligned quarter of
    frames, at least this)."""
    alignment_radius_m: float = 0.012
    """Distance (metres, on the posed mesh) over which a feature point's alignment weighs the vertices around it."""


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


def sh_design(normals_cam: np.ndarray) -> np.ndarray:
    """Unit camera-space normals (…, 3) -> (…, 9) order-2 SH basis values (the tracker's basis and constants,
    ``backend.tracking.renderer.sh_basis``)."""
    import torch
    from ..tracking.renderer import sh_basis
    n = torch.as_tensor(np.ascontiguousarray(normals_cam.reshape(-1, 3)), dtype=torch.float32)
    return sh_basis(n).numpy().reshape(normals_cam.shape[:-1] + (9,))


def sh_irradiance(sh: np.ndarray, normals_cam: np.ndarray) -> np.ndarray:
    """SH coefficients (9, 3), unit camera-space normals (…, 3) -> irradiance (…, 3)."""
    return sh_design(normals_cam) @ np.asarray(sh, np.float32)


@dataclass
class Shading:
    """The tracker's fitted lighting and colour correction (package ``identity.npz``): ``pixel = A (2 S a - 1) + b``
    in [-1, 1] pixel units, with ``S`` a factor on sRGB-encoded albedo ``a`` (package convention: the model albedo
    with the colour affine applied). It renders today's model albedo and starts the bake's ``Lighting``."""

    sh: np.ndarray            # (9, 3) SH coefficients, camera space
    color_affine: np.ndarray  # (3, 3)
    color_bias: np.ndarray    # (3,)

    def light_colour(self) -> np.ndarray:
        """(3,) the lighting's colour (its ambient, degree-0 term), brightest channel 1."""
        return light_colour(self.sh)

    def irradiance(self, normals_cam: np.ndarray) -> np.ndarray:
        """Unit camera-space normals (…, 3) -> shading S (…, 3)."""
        return sh_irradiance(self.sh, normals_cam)

    def render(self, colours01: np.ndarray, normals_cam: np.ndarray) -> np.ndarray:
        """The tracker's image formation for package-convention colours (…, 3) -> pixel colours in [0, 1]."""
        inv = np.linalg.inv(self.color_affine.astype(np.float64))
        a = ((2 * colours01 - 1 - self.color_bias) @ inv.T + 1) / 2
        S = self.irradiance(normals_cam)
        return np.clip(((2 * S * a - 1) @ self.color_affine.T + self.color_bias + 1) / 2, 0, 1)


def light_colour(sh: np.ndarray) -> np.ndarray:
    """(3,) colour of SH lighting (9, 3): its ambient, degree-0 term per channel, brightest channel 1."""
    ambient = np.clip(np.asarray(sh[0], np.float64), 1e-6, None)
    return ambient / ambient.max()


@dataclass
class Lighting:
    """The bake's image formation, in linear light: ``srgb_to_linear(pixel) = S(n) * a`` per channel, with linear
    albedo ``a`` and irradiance ``S(n) = D(n) + bounce * max(D_face - D(n), 0)`` of the camera-space normal ``n``:
    the direct light ``D(n) = SH(n) @ sh``, and where it is weaker than on the face (``D_face``: ``face_level``),
    light bounced off the face itself (skin-coloured, from the cheeks into the lid creases and under the nose)
    making up the share ``bounce`` of the shortfall. The bake's division and the re-render
    (``render``, ``render_shaded``) both use ``irradiance``."""

    sh: np.ndarray   # (9, 3) SH coefficients of the direct light, camera space, linear light
    bounce: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.float32))
    """(3,) per channel, the share of the direct light's shortfall below the face's level that bounced light makes
    up (0: none; fitted by ``fit_lighting``)."""

    REFERENCE_ALBEDO = 0.5
    """sRGB-encoded albedo at which ``from_fitted`` matches the tracker's lighting (mid skin tones)."""

    @classmethod
    def from_fitted(cls, fitted: Shading) -> "Lighting":
        """The tracker's lighting carried over to linear light: on directions facing the camera, the linear factor
        that takes ``REFERENCE_ALBEDO`` to the tracker's predicted pixel (colour affine aside: it is close to the
        identity), fitted by least squares. A starting point for ``fit_lighting``."""
        n = fibonacci_sphere(512)
        n = n[n[:, 2] < 0.2]                        # the hemisphere facing the camera (OpenCV: -z towards it)
        ref = cls.REFERENCE_ALBEDO
        target = srgb_to_linear(np.clip(fitted.irradiance(n) * ref, 0, 1)) / srgb_to_linear(ref)
        sh, *_ = np.linalg.lstsq(sh_design(n), target, rcond=None)
        return cls(sh.astype(np.float32))

    def direct(self, normals_cam: np.ndarray) -> np.ndarray:
        """Unit camera-space normals (…, 3) -> the direct light D (…, 3)."""
        return sh_irradiance(self.sh, normals_cam)

    def face_level(self) -> np.ndarray:
        """(3,) the direct light on the face: its mean over directions facing the camera, weighted by how squarely
        they face it."""
        n = fibonacci_sphere(512)
        facing = np.clip(-n[:, 2], 0, None)
        return (facing[:, None] * self.direct(n)).sum(0) / facing.sum()

    def shortfall(self, normals_cam: np.ndarray) -> np.ndarray:
        """Unit camera-space normals (…, 3) -> (…, 3) how far the direct light falls below the face's level."""
        return np.maximum(self.face_level() - self.direct(normals_cam), 0)

    def irradiance(self, normals_cam: np.ndarray) -> np.ndarray:
        """Unit camera-space normals (…, 3) -> linear irradiance S (…, 3)."""
        direct = self.direct(normals_cam)
        return direct + np.asarray(self.bounce, np.float32) * np.maximum(self.face_level() - direct, 0)

    def face_irradiance(self) -> np.ndarray:
        """(3,) the light that reaches the face: the mean irradiance over directions facing the camera, weighted
        by how squarely they face it."""
        n = fibonacci_sphere(512)
        facing = np.clip(-n[:, 2], 0, None)
        return (facing[:, None] * self.irradiance(n)).sum(0) / facing.sum()

    def light_colour(self) -> np.ndarray:
        """(3,) the lighting's colour where the face is seen (``face_irradiance``), brightest channel 1. (Not the
        ambient term: fitted to normals on one hemisphere, the ambient and the towards-camera terms trade off
        against each other.)"""
        colour = np.clip(self.face_irradiance(), 1e-6, None)
        return colour / colour.max()

    def white_balanced(self) -> "Lighting":
        """The same lighting made white: each channel divided by the lighting's colour. A fit cannot tell a tinted
        light from a tinted skin (it fits part of the skin's tint into the light); albedo baked under white
        lighting keeps the tint, so it looks like the person in the clip under white light."""
        return dataclasses.replace(self, sh=(self.sh / self.light_colour()[None]).astype(np.float32))

    def render(self, colours01: np.ndarray, normals_cam: np.ndarray) -> np.ndarray:
        """sRGB colours (…, 3) in [0, 1] lit by this lighting -> sRGB pixel colours in [0, 1]."""
        lin = srgb_to_linear(np.clip(colours01, 0, 1)) * self.irradiance(normals_cam)
        return linear_to_srgb(np.clip(lin, 0, 1))


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (3 - np.sqrt(5)) * k
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


@dataclass
class FrameBatch:
    """Frames to bake from: images with labels and the posed canonical mesh in camera space."""

    images: np.ndarray        # (T, H, W, 3) uint8
    labels: np.ndarray        # (T, H, W) uint8, backend.tracking.masks labels
    special: np.ndarray       # (T, H, W) bool: eye openings and mouth interior
    verts_cam: np.ndarray     # (T, V, 3) float64, metres, OpenCV camera space
    fit_weight: np.ndarray | None = None   # (T,) in [0, 1]: how far each frame's fit is trusted (None: all 1)
    landmarks: np.ndarray | None = None    # (T, L, 2) the detector's points, pixels (NaN: no face; None: unknown)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, sl: slice) -> "FrameBatch":
        return FrameBatch(self.images[sl], self.labels[sl], self.special[sl], self.verts_cam[sl],
                          None if self.fit_weight is None else self.fit_weight[sl],
                          None if self.landmarks is None else self.landmarks[sl])


def fit_weights(landmark_error_px: np.ndarray) -> np.ndarray:
    """(T,) per-frame weights from the fit's landmark errors: 1 up to the clip's median error, falling with the
    square of the ratio beyond it (a misplaced head smears the colours of its neighbours); unknown errors weigh 1."""
    e = np.asarray(landmark_error_px, np.float64)
    known = np.isfinite(e) & (e > 0)
    if not known.any():
        return np.ones(len(e), np.float32)
    ratio = np.where(known, np.median(e[known]) / np.where(known, e, 1.0), 1.0)
    return np.clip(ratio ** 2, 0.0, 1.0).astype(np.float32)


MAX_OBSERVED_ALBEDO = 4.0
"""Bound on one observation's linear albedo: above 1 until the lighting's scale is settled (``normalise_scale``)."""


@dataclass
class Observations:
    """What each frame shows of the points, before any lighting: ``pixel_lin`` (T, N, 3) the frame's colour in
    linear RGB, ``normal`` (T, N, 3) unit camera-space normals, ``weight`` (T, N) >= 0 how far the observation is
    trusted (visibility, view angle, edges, the frame's fit), ``special`` (T, N) bool (seen in an eye opening or
    the mouth interior)."""

    pixel_lin: np.ndarray
    normal: np.ndarray
    weight: np.ndarray
    special: np.ndarray

    FIELDS = ("pixel_lin", "normal", "weight", "special")

    @classmethod
    def concatenate(cls, parts, axis: int) -> "Observations":
        """Join along frames (axis 0) or points (axis 1)."""
        parts = list(parts)
        return cls(*(np.concatenate([getattr(p, k) for p in parts], axis=axis) for k in cls.FIELDS))

    def albedo(self, lighting: Lighting, cfg: "BakeConfig", with_trust: bool = False):
        """Per-observation linear albedo under ``lighting`` -> (albedo_lin (T, N, 3), weight (T, N)): the weight
        falls off where the shading is dark (``BakeConfig.min_shading``). ``with_trust`` adds (T, N) in [0, 1]: how
        far the predicted shading is trusted (1 from ``BakeConfig.trusted_shading`` up, see ``limit_shadowed``)."""
        S = lighting.irradiance(self.normal.astype(np.float32))
        face = max(float(lighting.face_irradiance().mean()), 1e-6)
        relative = S.mean(-1) / face
        w_light = _ramp(relative, 0.5 * cfg.min_shading, cfg.min_shading)
        floor = 0.5 * cfg.min_shading * face
        a = np.clip(self.pixel_lin / np.maximum(S, floor), 0, MAX_OBSERVED_ALBEDO)
        out = a.astype(np.float32), (self.weight * w_light).astype(np.float32)
        if with_trust:
            out += (_ramp(relative, cfg.min_shading, cfg.trusted_shading).astype(np.float32),)
        return out


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
    """Per-batch z-buffer, edge distance and vertex normals of the posed mesh; observes any surface points."""

    def __init__(self, frames: FrameBatch, faces: np.ndarray, K: np.ndarray, cfg: BakeConfig):
        self.frames, self.faces, self.K, self.cfg = frames, np.asarray(faces), K, cfg
        T, H, W = frames.labels.shape
        frag = raster.rasterize_batch(frames.verts_cam, self.faces, K, H, W)
        self.depth = frag.depth
        covered = frag.tri >= 0
        self.edge_dist = _edge_distance(covered & (frames.labels != M.BACKGROUND))
        # the head's size in the image: the margin scales with it
        self.size_px = np.sqrt(np.maximum(covered.reshape(T, -1).sum(1), 1)).astype(np.float32)
        self.normals = vertex_normals_batch(frames.verts_cam, self.faces)
        self.alignment: np.ndarray | None = None
        """(T, V) per-vertex weights from the features' alignment (``alignment.feature_weights``; set by
        ``frame_geometries``, which sees every frame), or None."""

    def project(self, points: SurfacePoints):
        """-> positions (T, N, 3) camera space, pixel coordinates uv (T, N, 2), visible (T, N) bool (in the image
        and in front in the z-buffer)."""
        fr = self.frames
        T, H, W = fr.labels.shape
        pos = points.interpolate(self.faces, fr.verts_cam)                    # (T, N, 3)
        z = np.maximum(pos[..., 2], 1e-6)
        uv = np.stack([self.K[0, 0] * pos[..., 0] / z + self.K[0, 2], self.K[1, 1] * pos[..., 1] / z + self.K[1, 2]],
                      -1)
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H) & (pos[..., 2] > 0)
        px = np.clip(uv[..., 0].astype(np.int64), 0, W - 1)
        py = np.clip(uv[..., 1].astype(np.int64), 0, H - 1)
        t = np.arange(T)[:, None]
        visible = inside & (np.abs(pos[..., 2] - self.depth[t, py, px]) < self.cfg.depth_tolerance_m)
        return pos, uv, visible & (points.face >= 0)[None]

    def observe(self, points: SurfacePoints) -> Observations:
        cfg, fr = self.cfg, self.frames
        T, H, W = fr.labels.shape
        pos, uv, visible = self.project(points)
        nrm = points.interpolate(self.faces, self.normals)
        nrm /= np.clip(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12, None)
        px = np.clip(uv[..., 0].astype(np.int64), 0, W - 1)
        py = np.clip(uv[..., 1].astype(np.int64), 0, H - 1)
        t = np.arange(T)[:, None]
        cos = -(nrm * pos).sum(-1) / np.linalg.norm(pos, axis=-1).clip(1e-9)
        w_view = _ramp(cos, cfg.min_cos, 1.0)
        w_edge = _ramp(self.edge_dist[t, py, px] / self.size_px[:, None], 0.0, cfg.edge_margin)
        weight = (visible * w_view * w_edge).astype(np.float32)
        if fr.fit_weight is not None:
            weight *= fr.fit_weight[:, None]
        if self.alignment is not None:
            weight *= points.interpolate(self.faces, self.alignment[..., None])[..., 0]
        pixel_lin = srgb_to_linear(_bilinear(fr.images, uv)).astype(np.float32)
        return Observations(pixel_lin, nrm.astype(np.float16), weight, fr.special[t, py, px] & visible)


def frame_geometries(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, cfg: BakeConfig) -> list:
    """``FrameGeometry`` of every ``cfg.batch_frames`` frames, with the features' alignment weights where the
    frames have the detector's points (``feature_alignment``)."""
    geometries = [FrameGeometry(frames.subset(slice(s, s + cfg.batch_frames)), faces, K, cfg)
                  for s in range(0, len(frames), cfg.batch_frames)]
    weights = feature_alignment(geometries, frames, cfg)
    if weights is not None:
        for s, g in zip(range(0, len(frames), cfg.batch_frames), geometries):
            g.alignment = weights[s:s + cfg.batch_frames]
    return geometries


def feature_alignment(geometries: list, frames: FrameBatch, cfg: BakeConfig) -> np.ndarray | None:
    """(T, V) per-vertex weights from how well the posed mesh matches the detector's brows, lids and lips in each
    frame (``backend.bake.alignment``), or None without the detector's points."""
    from .alignment import feature_landmarks, feature_weights, landmark_vertices
    if frames.landmarks is None:
        return None
    ids = feature_landmarks(frames.landmarks.shape[1])
    if not len(ids):
        return None
    points = frames.landmarks[:, ids].astype(np.float64)                    # (T, L, 2)
    vertices = SurfacePoints.of_vertices(geometries[0].faces, frames.verts_cam.shape[1])
    _, uv, visible = (np.concatenate(x) for x in zip(*(g.project(vertices) for g in geometries)))
    size = np.concatenate([g.size_px for g in geometries]).astype(np.float64)
    anchor = landmark_vertices(uv, visible, points, cfg.alignment_tolerance * size)
    ok = anchor >= 0
    a = np.maximum(anchor, 0)
    t = np.arange(len(frames))[:, None]
    residual = np.linalg.norm(uv[t, a] - points, axis=-1) / size[:, None]
    residual = np.where(ok[None] & visible[t, a], residual, np.nan)[:, ok]
    return feature_weights(residual, frames.verts_cam[0, anchor[ok]], frames.verts_cam[0], cfg.alignment_tolerance,
                           cfg.alignment_radius_m)


def observe(geometries: list, points: SurfacePoints) -> Observations:
    """Observations (T, N, …) of ``points`` in the frames of ``geometries`` (``frame_geometries``)."""
    return Observations.concatenate((g.observe(points) for g in geometries), axis=0)


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
    seen well), ``special`` (N,) bool (an eye or mouth-interior point), ``trust`` (N,) the inliers' mean trust in
    the predicted shading (``Observations.albedo``; 1: fully lit)."""

    albedo_lin: np.ndarray
    weight: np.ndarray
    special: np.ndarray
    trust: np.ndarray

    @classmethod
    def concatenate(cls, parts) -> "RobustAlbedo":
        parts = list(parts)
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("albedo_lin", "weight", "special", "trust")))


def residual(albedo_lin: np.ndarray, reference_lin: np.ndarray) -> np.ndarray:
    """Distance of observations (T, N, 3) from reference albedo (N, 3): mean absolute difference over the channels,
    sRGB-encoded (perceptually even, so one threshold serves dark and light colours) -> (T, N)."""
    return np.abs(linear_to_srgb(albedo_lin) - linear_to_srgb(reference_lin)[None]).mean(-1)


def combine(obs: Observations, lighting: Lighting, cfg: BakeConfig) -> RobustAlbedo:
    """Robust combination across frames of the observations' albedo under ``lighting``.

    A point belongs to the eyes / mouth interior when ``cfg.special_share`` of its observation weight lies in those
    regions; it then uses only those observations, and every other point only the rest, so skin never smears into
    the eyes or the mouth and vice versa. Weighted median per channel, then the weighted mean of the observations
    near it.
    """
    albedo, w, trust = obs.albedo(lighting, cfg, with_trust=True)
    w_special = (w * obs.special).sum(0)
    special = w_special > cfg.special_share * w.sum(0)
    w = np.where(obs.special == special[None], w, 0.0).astype(np.float32)
    med = weighted_median(albedo, w)
    w_in = w * (residual(albedo, med) < cfg.inlier_distance)
    total = w_in.sum(0)
    mean = (w_in[..., None] * albedo).sum(0) / np.maximum(total, 1e-12)[:, None]
    w_t = np.where(total > 0, w_in, w)
    trust = (w_t * trust).sum(0) / np.maximum(w_t.sum(0), 1e-12)
    return RobustAlbedo(np.where(total[:, None] > 0, mean, med).astype(np.float32), total, special,
                        np.where(w_t.sum(0) > 0, trust, 1.0).astype(np.float32))


def brightness(albedo_lin: np.ndarray) -> np.ndarray:
    """(…, 3) linear RGB -> (…,) mean over the channels."""
    return albedo_lin.mean(-1)


def chromaticity(albedo_lin: np.ndarray) -> np.ndarray:
    """(…, 3) linear RGB -> (…, 3) the colour at unit ``brightness``."""
    return albedo_lin / np.maximum(brightness(albedo_lin), 1e-6)[..., None]


def limit_shadowed_colour(albedo_lin: np.ndarray, reference_lin: np.ndarray, trust: np.ndarray,
                          excess: float = 1.0) -> np.ndarray:
    """Albedo (N, 3) taken towards ``reference_lin`` (N, 3) as ``trust`` (N,) falls from 1 to 0: its brightness
    (mean over channels) scaled by ``min(1, b_ref / b) ** (1 - trust)`` (never brighter than the reference where
    trust is 0; darker stays darker) and its chromaticity (the colour at unit brightness) mixed with the
    reference's in the share ``1 - trust``. Smooth in both."""
    b = np.maximum(brightness(albedo_lin), 1e-6)
    b_ref = np.maximum(brightness(reference_lin), 1e-6)
    m = (1 - trust)[:, None]
    chroma = (1 - m) * chromaticity(albedo_lin) + m * chromaticity(reference_lin)
    scale = np.minimum(excess * b_ref / b, 1.0) ** (1 - trust)
    return (chroma * (b * scale)[:, None]).astype(np.float32)


def skin_reference(robust: RobustAlbedo, faces: np.ndarray, cfg: BakeConfig,
                   chroma_gap: float | None = None) -> np.ndarray:
    """(N, 3) the albedo of the well-lit skin around each vertex: the albedo of well-seen skin averaged over the
    mesh (``cfg.shadow_passes`` rounds), weighted by the trust in its shading to the 4th power, so half-trusted
    points, themselves often too bright, barely count; a vertex with no such skin near keeps its own albedo. Eyes
    and the mouth interior never count. With ``chroma_gap``, nothing flows between neighbours whose chromaticities
    differ by that much (all of it up to half): brows, lips and coloured features then keep out of the skin's
    reference."""
    w = (robust.trust * (robust.weight > 0) * ~robust.special).astype(np.float64) ** 4
    similar = None
    if chroma_gap is not None:
        e = mesh_edges(faces)
        chroma = chromaticity(robust.albedo_lin)
        similar = 1 - _ramp(np.abs(chroma[e[:, 0]] - chroma[e[:, 1]]).mean(-1), 0.5 * chroma_gap, chroma_gap)
    num = smooth_on_mesh(w[:, None] * robust.albedo_lin, faces, cfg.shadow_passes, similar)
    den = smooth_on_mesh(w, faces, cfg.shadow_passes, similar)
    return np.where(den[:, None] > 1e-9, num / np.maximum(den, 1e-12)[:, None], robust.albedo_lin)


def highlight_cap(robust: RobustAlbedo, reference_lin: np.ndarray, faces: np.ndarray, cfg: BakeConfig) -> np.ndarray:
    """(N,) the linear brightness (``brightness``) no colour may exceed: ``cfg.highlight_excess`` times the
    surrounding skin's (``reference_lin``, ``skin_reference``), however well lit (a highlight in every frame, like
    the sheen under the nose tip, is no albedo); ``MAX_OBSERVED_ALBEDO`` (no cap) on eyes, the mouth interior,
    their ``cfg.highlight_margin`` rings (the whites of the eyes in their corners, the teeth) and unseen points."""
    exempt = (smooth_on_mesh(robust.special.astype(np.float64), faces, cfg.highlight_margin) > 0) | (robust.weight <= 0)
    return np.where(exempt, MAX_OBSERVED_ALBEDO, cfg.highlight_excess * brightness(reference_lin)).astype(np.float32)


def limit_brightness(albedo_lin: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) scaled down, hue kept, where its ``brightness`` exceeds ``cap`` (N,)."""
    scale = np.minimum(cap / np.maximum(brightness(albedo_lin), 1e-6), 1.0)
    return (albedo_lin * scale[:, None]).astype(np.float32)


def limit_shadowed(robust: RobustAlbedo, reference_lin: np.ndarray, cap: np.ndarray, cfg: BakeConfig) -> RobustAlbedo:
    """Vertex albedo where the predicted shading is not trusted (``RobustAlbedo.trust`` < 1) kept no brighter than
    ``cfg.shadow_excess`` times the surrounding skin's (``reference_lin``, ``skin_reference``), in its hue, and
    everywhere within the highlight ``cap`` (``highlight_cap``). Darker stays darker (nostrils, the lid line). Eyes
    and the mouth interior are left alone."""
    trust = np.where(robust.special, 1.0, robust.trust)
    albedo = limit_shadowed_colour(robust.albedo_lin, reference_lin, trust, cfg.shadow_excess)
    return dataclasses.replace(robust, albedo_lin=limit_brightness(albedo, cap))


def bake_points(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, lighting: Lighting, points: SurfacePoints,
                cfg: BakeConfig, max_observations: int = 4_000_000) -> RobustAlbedo:
    """``combine`` for many points (texels): the frames' geometry once, then the points in chunks of at most
    ``max_observations`` observations (bounded memory)."""
    geometries = frame_geometries(frames, faces, K, cfg)
    chunk = max(1, max_observations // max(len(frames), 1))
    return RobustAlbedo.concatenate(combine(observe(geometries, points.subset(slice(p, p + chunk))), lighting, cfg)
                                    for p in range(0, len(points), chunk))


def fit_lighting(obs: Observations, robust: RobustAlbedo, reference_lin: np.ndarray, lighting: Lighting,
                 cfg: BakeConfig, max_rows: int = 500_000) -> Lighting:
    """Refit the lighting in linear light to the observations: one directional shape ``l`` for the three channels
    and the bounce ``b`` (``Lighting``), weighted least squares of
    ``pixel_lin = (SH(n) @ l + b * shortfall(n)) * reference`` over every channel of the skin observations that
    ``combine`` kept as inliers (eyes, the mouth interior, occluders and highlights do not pull the light), with the
    shortfall of the current lighting (hence the rounds); no channel's bounce below 0. At most ``max_rows``
    observations, evenly strided.

    ``reference_lin`` (N, 3) is the albedo of the well-lit skin around each point (``skin_reference``), not the
    point's own: with its own albedo, which the division under the current lighting gave it, every point agrees
    with whatever contrast the lighting started from (the tracker's, carried over to linear light), and the fit
    never learns it. Against the surrounding skin, how bright a fold facing away from the light is in the video
    sets how much light comes from there (cap12_edit 0:24: the start's lighting gave the directions the face
    barely shows 0.40 of the light on the face, where the video showed ~0.8; refitted 0.66). The bounce the fit finds
    is skin-coloured (cap12_edit 0:24: 0.43 / 0.29 / 0.32 of the shortfall in R / G / B).

    One shape, hence one light colour (which ``Lighting.white_balanced`` then takes out): per-channel shapes, fitted
    on the one hemisphere the camera sees, tinted the directions it barely sees (cap12_edit: blue from above, no
    blue from the side) and the division baked the opposite tints into the albedo there (green lids, purple
    temples under neutral light)."""
    albedo, w = obs.albedo(lighting, cfg)
    w = w * (residual(albedo, robust.albedo_lin) < cfg.inlier_distance) * ~obs.special * ~robust.special[None]
    t, n = np.nonzero(w > 0)
    if len(t) < 64:
        return lighting
    step = max(1, len(t) // max_rows)
    t, n = t[::step], n[::step]
    normal = obs.normal[t, n].astype(np.float32)
    Y = sh_design(normal).astype(np.float64)                                # (O, 9)
    sw = np.sqrt(w[t, n]).astype(np.float64)[:, None]                       # (O, 1)
    ref = reference_lin[n] * sw                                             # (O, 3)
    shortfall = lighting.shortfall(normal).astype(np.float64)               # (O, 3) under the current light
    X = np.concatenate([Y[:, None, :] * ref[..., None],                     # (O, 3, 9) the direct light's shape
                        np.eye(3)[None] * (shortfall * ref)[..., None]], -1).reshape(-1, 12)   # + bounce (3)
    y = (obs.pixel_lin[t, n] * sw).reshape(-1)
    fit = np.linalg.lstsq(X, y, rcond=None)[0]
    if (fit[9:] < 0).any():             # light is never taken away: refit without the negative bounce channels
        keep = np.r_[np.ones(9, bool), fit[9:] >= 0]
        fit = np.zeros(12)
        fit[keep] = np.linalg.lstsq(X[:, keep], y, rcond=None)[0]
    return Lighting(np.repeat(fit[:9, None], 3, 1).astype(np.float32), np.clip(fit[9:], 0, None).astype(np.float32))


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) the mesh's undirected edges, each once."""
    f = np.asarray(faces, np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    return np.unique(e, axis=0)


def smooth_on_mesh(values: np.ndarray, faces: np.ndarray, passes: int,
                   edge_weight: np.ndarray | None = None) -> np.ndarray:
    """``passes`` rounds of averaging each vertex with its one-ring: values (V,) or (V, C). ``edge_weight`` (E,)
    in [0, 1] weighs the edges of ``mesh_edges`` (0: nothing flows across; None: all 1)."""
    from scipy import sparse
    V = len(values)
    e = mesh_edges(faces)
    w = np.ones(len(e)) if edge_weight is None else np.asarray(edge_weight, np.float64)
    A = sparse.csr_matrix((np.concatenate([w, w, np.ones(V)]),
                           (np.concatenate([e[:, 0], e[:, 1], np.arange(V)]),
                            np.concatenate([e[:, 1], e[:, 0], np.arange(V)]))), shape=(V, V))
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
    [0, 1] (share of the baked estimate in the blend with the model albedo), ``special`` (V,) bool,
    ``brightness_cap`` (V,) float32 the linear brightness no albedo there may exceed (``highlight_cap``; the
    texture keeps to it too), or None."""

    colours: np.ndarray
    confidence: np.ndarray
    special: np.ndarray
    brightness_cap: np.ndarray | None = None


def blend_vertices(robust: RobustAlbedo, model_albedo_u8: np.ndarray, faces: np.ndarray,
                   cfg: BakeConfig) -> BakedColours:
    """sRGB vertex colours: the baked estimate where seen well, the model albedo (matched to the subject's tone)
    elsewhere, with a blend weight smoothed over the mesh so the transition has no seam."""
    baked = linear_to_srgb(robust.albedo_lin)
    model = model_albedo_u8.astype(np.float64) / 255.0
    alpha = robust.weight / (robust.weight + cfg.prior_weight)
    trusted = alpha * (alpha > 0.5) * ~robust.special
    fill = match_colours(model, baked, trusted)
    baked = np.where(robust.weight[:, None] > 0, baked, fill)
    alpha = smooth_on_mesh(alpha, faces, cfg.blend_smoothing)
    colours = alpha[:, None] * baked + (1 - alpha[:, None]) * fill
    return BakedColours((np.clip(colours, 0, 1) * 255 + 0.5).astype(np.uint8), alpha.astype(np.float32),
                        robust.special)


def bake_vertices(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, lighting: Lighting,
                  model_albedo_u8: np.ndarray, cfg: BakeConfig = BakeConfig()):
    """Vertex colours of the canonical mesh from ``frames`` (its posed copies in ``frames.verts_cam``), starting
    from ``lighting`` (e.g. ``Lighting.from_fitted``): ``cfg.lighting_iterations`` rounds of combining the
    observations and refitting the white-balanced lighting to them. -> (BakedColours, the final Lighting)."""
    obs = observe(frame_geometries(frames, faces, K, cfg), SurfacePoints.of_vertices(faces, len(model_albedo_u8)))
    robust = combine(obs, lighting, cfg)
    for _ in range(cfg.lighting_iterations):
        reference = skin_reference(robust, faces, cfg, cfg.reference_chroma_gap)
        lighting = fit_lighting(obs, robust, reference, lighting, cfg).white_balanced()
        robust = combine(obs, lighting, cfg)
    robust, lighting = normalise_scale(robust, lighting, cfg)
    reference = skin_reference(robust, faces, cfg)
    cap = highlight_cap(robust, reference, faces, cfg)
    baked = blend_vertices(limit_shadowed(robust, reference, cap, cfg), model_albedo_u8, faces, cfg)
    return dataclasses.replace(baked, brightness_cap=cap), lighting


def normalise_scale(robust: RobustAlbedo, lighting: Lighting, cfg: BakeConfig):
    """Albedo and lighting rescaled (the video cannot tell their scales apart: the product is what it shows) so
    the brightest well-seen colours (the 99.5th percentile of the skin points' brightest channel) stay within
    ``cfg.max_albedo`` and no baked colour clips; only ever darkens. -> (RobustAlbedo, Lighting)."""
    seen = (robust.weight > 0) & ~robust.special
    if not seen.any():
        return robust, lighting
    k = max(float(np.percentile(robust.albedo_lin[seen].max(1), 99.5)) / cfg.max_albedo, 1.0)
    return (dataclasses.replace(robust, albedo_lin=(robust.albedo_lin / k).astype(np.float32)),
            dataclasses.replace(lighting, sh=(lighting.sh * k).astype(np.float32)))


def render_shaded(verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple, lighting,
                  colours_u8: np.ndarray, uv: np.ndarray | None = None):
    """The posed mesh under ``lighting`` (a ``Lighting``, or the tracker's ``Shading`` for its own albedo), coloured
    by per-vertex colours (V, 3) uint8 or, with ``uv`` (F, 3, 2), by a texture (S, S, 3) uint8 (row 0 at v = 1).
    verts_cam (T, V, 3) -> images (T, H, W, 3) float in [0, 1], coverage (T, H, W)."""
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
    out[covered] = lighting.render(c, n)
    return out, covered
