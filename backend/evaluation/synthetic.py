"""Synthetic ground-truth clips from held-out ICT-FaceKit heads (numpy; rendering is in ``cycles``).

Held-out identities: the training generator (``backend/training/data.py``) has no identity split — it draws fresh
continuous identity weights w_id ~ N(0, 1)^100 from ``np.random.default_rng(seed)`` streams (training: the
trainer's ``--seed``, small integers; validation: ``VAL_SEED`` = 900_001). Evaluation clip ``i`` draws its identity
and appearance from the documented disjoint stream ``np.random.default_rng(EVAL_SEED_BASE + i)``
(EVAL_SEED_BASE = 7_300_000); a continuous 100-d draw from another stream is a different person.

A clip: a smooth expression track (jaw opening, smile, one or two blinks) and a smooth head pose (yaw, pitch,
roll and a small translation drift) over ``n_frames`` at ``fps``; the head is the ICT light head with the
generator's procedural albedo baked into a UV texture (``bake_albedo_texture``).

Ground truth (``clip_ground_truth``) per frame: posed vertices in OpenCV camera space (metres), the similarity
pose (x_cam = s · R · x_model + t, model metres, docs/conventions.md), the evaluation triangle mask and the
intrinsics. ``render_clip`` caches renders + ground truth under ``.cache/evaluation/`` (git-ignored).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..contracts import conventions
from ..contracts import landmark_tables as lt
from ..training import data as ictdata

EVAL_SEED_BASE = 7_300_000
RENDER_VERSION = 4  # bump when the renderer or the clip recipe changes (invalidates caches)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "evaluation"

# model rotation that makes the face look into an OpenCV camera: model (x, y, z) -> camera (x, -y, -z)
FACING_CAMERA = np.diag([1.0, -1.0, -1.0])


def shared_dir() -> Path:
    """The shared read-only data folder (env MONONPHM_SHARED overrides); see backend.training.data.shared_dir."""
    return ictdata.shared_dir()


def recipe_digest(spec, render_version: int, digits: int = 10) -> str:
    """The first ``digits`` hex digits of the SHA-1 of a clip recipe (a dataclass: every field) and its renderer's
    version: the cached clip's name changes with anything that changes its pixels."""
    blob = json.dumps({**asdict(spec), "v": render_version}, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:digits]


@dataclass(frozen=True)
class ClipSpec:
    """Recipe of one synthetic clip (all fields enter the cache key)."""

    index: int = 0                 # held-out identity index: rng stream EVAL_SEED_BASE + index
    n_frames: int = 30
    fps: float = 25.0
    width: int = 384
    height: int = 384
    hfov_deg: float = 40.0
    distance_m: float = 0.62       # camera to model origin (head centre)
    samples: int = 12              # Cycles samples per pixel (no denoiser: residual noise acts as sensor noise)
    texture_tile: int = 768        # texels per UV tile side (N_UV_TILES tiles side by side)
    yaw_deg: float = 18.0          # pose amplitudes
    pitch_deg: float = 8.0
    roll_deg: float = 5.0

    @property
    def key(self) -> str:
        return f"clip{self.index:03d}_{recipe_digest(self, RENDER_VERSION)}"

    def intrinsics(self) -> conventions.Intrinsics:
        return conventions.Intrinsics.from_fov(self.width, self.height, self.hfov_deg)


@dataclass
class ClipParams:
    """Sampled content of a clip. Shapes: w_id (100,), app (16,), w_ex (T, 53), scale (T,), rotation (T, 3, 3),
    translation (T, 3) metres, euler_deg (T, 3) (yaw, pitch, roll about model y, x, z)."""

    w_id: np.ndarray
    app: np.ndarray
    noise_seed: int
    w_ex: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    euler_deg: np.ndarray


def _bump(t: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    """Raised-cosine bump in [0, 1] (smooth, compact support)."""
    x = np.clip((t - centre) / half_width, -1.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def _rot(axis: str, deg: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations about a model axis."""
    a = np.radians(np.asarray(deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    if axis == "x":
        m = [o, z, z, z, c, -s, z, s, c]
    elif axis == "y":
        m = [c, z, s, z, o, z, -s, z, c]
    else:
        m = [c, -s, z, s, c, z, z, z, o]
    return np.stack(m, -1).reshape(-1, 3, 3)


def clip_parameters(spec: ClipSpec) -> ClipParams:
    """Deterministic identity/appearance (held-out stream) and smooth expression + pose tracks for ``spec``."""
    rng = np.random.default_rng(EVAL_SEED_BASE + spec.index)
    w_id = ictdata.sample_identity(rng)
    app = ictdata.sample_appearance(rng)
    app[12] = 0.0  # clean-shaven: the generator's stubble dots read as white speckles on a bald mesh in renders
    noise_seed = int(rng.integers(0, 2 ** 31))
    T = spec.n_frames
    dur = T / spec.fps
    t = np.arange(T) / spec.fps
    ex = {n: i for i, n in enumerate(ictdata.arkit.ICT_NAMES)}
    w_ex = np.zeros((T, len(ex)), np.float32)
    u = rng.uniform
    # jaw opening (with a little funnel), then a smile, blinks anywhere
    jaw = u(0.5, 0.9) * _bump(t, u(0.25, 0.45) * dur, u(0.18, 0.28) * dur)
    w_ex[:, ex["jawOpen"]] = jaw
    w_ex[:, ex["mouthFunnel"]] = u(0.0, 0.25) * jaw
    smile = u(0.5, 0.9) * _bump(t, u(0.62, 0.8) * dur, u(0.18, 0.25) * dur)
    for side in ("_L", "_R"):
        w_ex[:, ex["mouthSmile" + side]] = smile * u(0.9, 1.0)
        w_ex[:, ex["cheekSquint" + side]] = smile * u(0.2, 0.5)
    blink = np.zeros(T)
    for c in u(0.1, 0.9, size=int(rng.integers(1, 3))) * dur:
        blink = np.maximum(blink, _bump(t, c, 0.12))
    w_ex[:, ex["eyeBlink_L"]] = blink
    w_ex[:, ex["eyeBlink_R"]] = blink * u(0.9, 1.0)
    w_ex = np.clip(w_ex, 0.0, 1.0)

    def wave(amp):
        f = u(0.4, 0.8) / max(dur, 1e-6)  # 0.4-0.8 cycles over the clip
        return amp * u(0.6, 1.0) * np.sin(2 * np.pi * f * t + u(0, 2 * np.pi))

    yaw, pitch, roll = wave(spec.yaw_deg), wave(spec.pitch_deg), wave(spec.roll_deg)
    R = FACING_CAMERA[None] @ _rot("y", yaw) @ _rot("x", pitch) @ _rot("z", roll)
    trans = np.stack([wave(0.015), wave(0.012), spec.distance_m + wave(0.02)], 1)
    return ClipParams(w_id, app, noise_seed, w_ex, np.ones(T), R, trans, np.stack([yaw, pitch, roll], 1))


# ---------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------
def evaluation_triangles(ict: "ictdata.ICTModel") -> np.ndarray:
    """(F,) bool over ``ict.faces``: the face region (ICT region 0) without ears, scalp and neck (below the jaw
    line), as the reference crop keeps the face only (skin, brows, nose, lips; no hair, ears, neck; eyes and the
    mouth interior are other ICT regions already)."""
    v = lt.model_to_ict_cm(ict.neutral.astype(np.float64))  # cm, ICT frame
    c = v[ict.faces].mean(1)
    ear = (np.abs(c[:, 0]) > 6.5) & (c[:, 2] < 4.0)
    scalp = ict.semantic["scalp"][ict.faces].mean(1) > 0.5
    # neck: below the jaw line (iBUG-68 landmarks 0..16 of the mean head, y as a function of x)
    jaw = v[ict.landmarks68[:17]]
    order = np.argsort(jaw[:, 0])
    jaw_y = np.interp(c[:, 0], jaw[order, 0], jaw[order, 1])
    neck = (c[:, 1] < jaw_y) | (np.abs(c[:, 0]) > np.abs(jaw[:, 0]).max())
    behind = c[:, 2] < 3.0  # stray region-0 patches behind the jaw and in the ear
    return ict.tri_is_face & ~ear & ~scalp & ~neck & ~behind


@dataclass
class GroundTruth:
    """Ground truth of a clip. vertices_cam (T, V, 3) float32 metres (OpenCV camera), triangles (F, 3),
    eval_tri (F,) bool, face_region_tri (F,) bool (ICT region 0), scale (T,), rotation (T, 3, 3),
    translation (T, 3), w_ex (T, 53), w_id (100,), K (3, 3), width/height, fps."""

    vertices_cam: np.ndarray
    triangles: np.ndarray
    eval_tri: np.ndarray
    face_region_tri: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    w_ex: np.ndarray
    w_id: np.ndarray
    K: np.ndarray
    width: int
    height: int
    fps: float

    @property
    def intrinsics(self) -> conventions.Intrinsics:
        return conventions.Intrinsics(float(self.K[0, 0]), float(self.K[1, 1]), float(self.K[0, 2]),
                                      float(self.K[1, 2]), int(self.width), int(self.height))

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> "GroundTruth":
        d = np.load(path, allow_pickle=False)
        kw = {k: d[k] for k in d.files}
        kw["width"], kw["height"], kw["fps"] = int(kw["width"]), int(kw["height"]), float(kw["fps"])
        return cls(**kw)


def posed_vertices(ict: "ictdata.ICTModel", w_id: np.ndarray, w_ex: np.ndarray, scale: np.ndarray,
                   rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(T, V, 3) camera-space metres: x_cam = s · R · (0.25 · x_nphm) + t for each frame's expression w_ex (T, 53)."""
    base = ict.vertices(w_id).reshape(-1)
    model = (base[None] + np.asarray(w_ex, np.float32) @ ict._ex_flat).reshape(len(w_ex), -1, 3)
    model_m = conventions.nphm_to_metres(model.astype(np.float64))
    return (scale[:, None, None] * np.einsum("tij,tvj->tvi", rotation, model_m) + translation[:, None]).astype(
        np.float32)


def clip_ground_truth(ict: "ictdata.ICTModel", spec: ClipSpec, params: ClipParams | None = None) -> GroundTruth:
    p = params or clip_parameters(spec)
    intr = spec.intrinsics()
    return GroundTruth(
        vertices_cam=posed_vertices(ict, p.w_id, p.w_ex, p.scale, p.rotation, p.translation),
        triangles=ict.faces.astype(np.int32), eval_tri=evaluation_triangles(ict),
        face_region_tri=ict.tri_is_face.copy(), scale=p.scale.astype(np.float32),
        rotation=p.rotation.astype(np.float32), translation=p.translation.astype(np.float32),
        w_ex=p.w_ex.astype(np.float32), w_id=p.w_id.astype(np.float32), K=intr.matrix(),
        width=spec.width, height=spec.height, fps=float(spec.fps))


# ---------------------------------------------------------------------------------------------------------------
# Albedo texture
# ---------------------------------------------------------------------------------------------------------------
N_UV_TILES = 2
"""The kept ICT triangles use UV tiles u in [0, 1) (face) and [1, 2) (head, mouth). The eyeballs share UVs with
each other and with the face, so they are not textured: they get per-corner colours (``corner_albedo``)."""


def atlas_uv(ict: "ictdata.ICTModel") -> np.ndarray:
    """(F, 3, 2) per-corner UVs of ``ict.faces`` in the single-image atlas (u / N_UV_TILES, v)."""
    return ict.uv[ict.face_uv_idx].astype(np.float64) / np.array([N_UV_TILES, 1.0])


def textured_triangles(ict: "ictdata.ICTModel") -> np.ndarray:
    """(F,) bool: triangles that use the UV texture (all but the eyeballs)."""
    return ict.tri_region != ictdata.R_EYEBALL


def corner_albedo(ict: "ictdata.ICTModel", app: np.ndarray, noise_seed: int) -> np.ndarray:
    """(F, 3, 3) albedo (sRGB in [0, 1]) at the three corners of every triangle of ``ict.faces``."""
    n = len(ict.faces)
    tri = np.repeat(np.arange(n), 3)
    bary = np.tile(np.eye(3, dtype=np.float32), (n, 1))
    return ictdata.albedo(ict, app, tri, bary, noise_seed).reshape(n, 3, 3)


def _uv_lookup(uvt: np.ndarray, tree: cKDTree, q: np.ndarray, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Triangle (N,) (-1 if none) and barycentrics (N, 3) of UV points q (N, 2) in UV triangles uvt (F, 3, 2)."""
    _, cand = tree.query(q, k=k)
    a, b, c = uvt[cand, 0], uvt[cand, 1], uvt[cand, 2]  # (n, k, 2)
    v0, v1, v2 = b - a, c - a, q[:, None] - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-20, den, np.inf)
    bv = (d11 * d20 - d01 * d21) / den
    bw = (d00 * d21 - d01 * d20) / den
    bu = 1.0 - bv - bw
    inside = (bu >= -1e-6) & (bv >= -1e-6) & (bw >= -1e-6)
    hit = inside.any(1)
    first = np.argmax(inside, axis=1)
    r = np.arange(len(q))
    tri = np.where(hit, cand[r, first], -1)
    bary = np.stack([bu[r, first], bv[r, first], bw[r, first]], 1)
    return tri, np.clip(bary, 0.0, 1.0)


def bake_albedo_texture(ict: "ictdata.ICTModel", app: np.ndarray, noise_seed: int, tile: int = 768,
                        supersample: int = 2, chunk: int = 131072) -> np.ndarray:
    """The generator's procedural albedo (``ictdata.albedo``) baked into a UV atlas image.

    Each texel averages ``supersample``² stratified evaluations (box filter: the generator's finest noise is
    above the texel Nyquist rate and would alias otherwise). Returns (H, W, 3) float32 sRGB-encoded values in
    [0, 1], H = tile, W = N_UV_TILES · tile, row 0 at the **bottom** (v = 0, Blender's pixel order). Texels outside
    every UV triangle take the nearest covered texel.
    """
    from scipy import ndimage

    H, W = tile, N_UV_TILES * tile
    tex_ids = np.flatnonzero(textured_triangles(ict))
    uvt = ict.uv[ict.face_uv_idx[tex_ids]].astype(np.float64)  # (F', 3, 2) tile units, u in [0, N_UV_TILES)
    tree = cKDTree(uvt.mean(1))
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    base = np.stack([jj.ravel(), ii.ravel()], 1).astype(np.float64)
    acc = np.zeros((H * W, 3), np.float64)
    cnt = np.zeros(H * W, np.float64)
    offs = (np.arange(supersample) + 0.5) / supersample
    for oy in offs:
        for ox in offs:
            q = (base + np.array([ox, oy])) / tile
            for s in range(0, len(q), chunk):
                tri, bary = _uv_lookup(uvt, tree, q[s:s + chunk])
                hit = np.flatnonzero(tri >= 0)
                if hit.size:
                    col = ictdata.albedo(ict, app, tex_ids[tri[hit]], bary[hit].astype(np.float32), noise_seed)
                    acc[s + hit] += col
                    cnt[s + hit] += 1.0
    cov = (cnt > 0).reshape(H, W)
    img = (acc / np.maximum(cnt, 1.0)[:, None]).reshape(H, W, 3)
    if not cov.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~cov, return_indices=True)
        img = img[iy, ix]
    return img.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Rendering + cache
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RenderedClip:
    """Paths of a cached clip: ``video`` (mp4), ``frames_dir`` (PNG sequence), ``gt`` (npz), ``meta`` (json)."""

    spec: ClipSpec
    folder: Path
    video: Path
    frames_dir: Path
    gt_path: Path
    meta: dict

    def ground_truth(self) -> GroundTruth:
        return GroundTruth.load(self.gt_path)

    def frame_paths(self) -> list[Path]:
        return sorted(self.frames_dir.glob("frame_*.png"))


@dataclass
class CachedClip:
    """A clip cached in ``folder``: ``video`` (clip.mp4), ``gt_path`` (gt.npz, a ``GroundTruth``), ``meta`` (the
    json written last); the expression and hair suites' clips."""

    spec: object
    folder: Path
    meta: dict

    @property
    def video(self) -> Path:
        return self.folder / "clip.mp4"

    @property
    def gt_path(self) -> Path:
        return self.folder / "gt.npz"

    def ground_truth(self) -> GroundTruth:
        return GroundTruth.load(self.gt_path)


def write_mp4(frames: list[np.ndarray], path: Path, fps: float, crf: int = 12) -> None:
    """Encode (H, W, 3) uint8 RGB frames as H.264 mp4 (yuv420p) with PyAV; written atomically."""
    import av
    from fractions import Fraction

    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        st.width, st.height = frames[0].shape[1], frames[0].shape[0]
        st.pix_fmt = "yuv420p"
        st.options = {"crf": str(crf), "preset": "medium"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    tmp.replace(path)


def render_clip(spec: ClipSpec, cache_dir: Path | None = None, ict: "ictdata.ICTModel | None" = None,
                threads: int = 1, log=print) -> RenderedClip:
    """Render ``spec`` with Cycles (or reuse the cache) and return its paths.

    Layout: ``<cache>/<spec.key>/{clip.mp4, frames/frame_NNNN.png, gt.npz, meta.json}``; ``meta.json`` is
    written last, so a folder without it is incomplete and re-rendered.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    folder = cache_dir / spec.key
    meta_path = folder / "meta.json"
    res = RenderedClip(spec, folder, folder / "clip.mp4", folder / "frames", folder / "gt.npz", {})
    if meta_path.is_file():
        res.meta = json.loads(meta_path.read_text())
        return res
    folder.mkdir(parents=True, exist_ok=True)
    res.frames_dir.mkdir(exist_ok=True)
    ict = ict or ictdata.ICTModel()
    params = clip_parameters(spec)
    gt = clip_ground_truth(ict, spec, params)
    gt.save(res.gt_path)
    t0 = time.time()
    tex = bake_albedo_texture(ict, params.app, params.noise_seed, spec.texture_tile)
    t_tex = time.time() - t0
    from . import cycles

    t0 = time.time()
    frames = cycles.render_sequence(gt.vertices_cam, gt.triangles, atlas_uv(ict), tex, gt.intrinsics,
                                    res.frames_dir, samples=spec.samples, threads=threads, log=log,
                                    corner_colors=corner_albedo(ict, params.app, params.noise_seed),
                                    corner_material=~textured_triangles(ict))
    t_render = time.time() - t0
    write_mp4(frames, res.video, spec.fps)
    res.meta = {"spec": asdict(spec), "key": spec.key, "render_version": RENDER_VERSION,
                "texture_bake_s": round(t_tex, 2), "render_s": round(t_render, 2),
                "render_s_per_frame": round(t_render / spec.n_frames, 3),
                "intrinsics": gt.intrinsics.to_dict(), "eval_seed": EVAL_SEED_BASE + spec.index}
    meta_path.write_text(json.dumps(res.meta, indent=1))
    return res


# ---------------------------------------------------------------------------------------------------------------
# Ground-truth face points (the analogue of the reference's cropped Kinect point cloud, 6.2/6.3)
# ---------------------------------------------------------------------------------------------------------------
def gt_face_points(gt: GroundTruth, frame: int, n_points: int = 8000, seed: int = 0,
                   min_view_cos: float = 0.2, occluder: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Visible face points of one frame: (n, 3) camera-space metres and (n, 3) unit normals (towards the camera).

    Area-uniform samples on the evaluation triangles (``GroundTruth.eval_tri``), kept when the view-angle cosine
    exceeds ``min_view_cos`` (reference 6.2 keeps cosine > 0.2) and the point is not occluded by the head itself
    (splat z-buffer of the whole mesh at the clip's resolution) nor by ``occluder``, a camera-space mesh (V, 3)
    metres / (F, 3) in the frame (a hair volume: the reference crop keeps no hair, so skin under it is no face).
    Normals are interpolated vertex normals.
    """
    from .mesh_ops import sample_surface, splat_visibility, vertex_normals

    rng = np.random.default_rng(seed * 100_003 + frame)
    v = gt.vertices_cam[frame].astype(np.float64)
    f = gt.triangles.astype(np.int64)
    vn = vertex_normals(v, f)
    pts, tri, bary = sample_surface(v, f, 3 * n_points, rng, gt.eval_tri)
    nrm = np.einsum("nk,nkc->nc", bary, vn[f[tri]])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-12
    view_cos = -np.einsum("ij,ij->i", nrm, pts / np.linalg.norm(pts, axis=1, keepdims=True))
    keep = view_cos > min_view_cos
    keep &= splat_visibility(pts, v, f, gt.K, gt.width, gt.height, rng)
    if occluder is not None and len(occluder[1]):
        # its own splat, dense enough that no pixel it covers is left empty (e^-8 of them)
        keep &= splat_visibility(pts, occluder[0], occluder[1], gt.K, gt.width, gt.height, rng, samples_per_pixel=8.0)
    idx = np.flatnonzero(keep)[:n_points]
    return pts[idx], nrm[idx]
