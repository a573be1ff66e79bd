"""Hair benchmark clips: held-out heads with procedural hair, rendered with the ground-truth alpha (numpy).

A clip is a held-out ICT-FaceKit identity of the geometry benchmark's stream (``synthetic.clip_parameters`` at index
``HAIR_INDEX_BASE + i``: jaw opening, smile, blinks, head motion) wearing a hair style from its own seed stream
(``training.hair.sample_hair``; no beard or moustache, which would have to follow the jaw) or, for ``bald`` clips,
none. The hair is a marching-cubes mesh of the style's signed-distance bound around the neutral head, moved rigidly
with the head; head and hair are rasterised together (z-buffer = their union) by the expression clips' renderer
(skin detail, key light + ambient, backgrounds, sensor noise) with the training generator's hair albedo.

Ground truth besides ``synthetic.GroundTruth`` (``gt.npz``): ``hair.npz`` with ``alpha`` (T, H, W) bool (head or
hair covers the pixel centre at 2x2 supersampling majority), ``hair_vertices`` (model units) / ``hair_triangles``
and ``hair_params``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..contracts import conventions
from ..training import data as ictdata
from ..training import hair as H
from . import expression_clips as ec
from . import synthetic

HAIR_INDEX_BASE = 600          # identities: synthetic.EVAL_SEED_BASE + 600 + i (the geometry benchmark uses 0..)
HAIR_SEED_BASE = 7_700_000     # hair styles and looks
RENDER_VERSION = 1
DEFAULT_CACHE = ec.DEFAULT_CACHE.parent / "hair"


@dataclass(frozen=True)
class HairClipSpec:
    index: int = 0
    bald: bool = False
    n_frames: int = 30
    fps: float = 25.0
    width: int = 384
    height: int = 384
    hfov_deg: float = 40.0
    distance_m: float = 0.62
    supersample: int = 2
    hair_cell: float = 0.01        # marching-cubes cell of the hair mesh (model units, 2.5 mm)

    @property
    def key(self) -> str:
        return f"hair{self.index:03d}{'_bald' if self.bald else ''}_{synthetic.recipe_digest(self, RENDER_VERSION)}"

    def intrinsics(self) -> conventions.Intrinsics:
        return conventions.Intrinsics.from_fov(self.width, self.height, self.hfov_deg)

    def synthetic_spec(self) -> synthetic.ClipSpec:
        return synthetic.ClipSpec(index=HAIR_INDEX_BASE + self.index, n_frames=self.n_frames, fps=self.fps,
                                  width=self.width, height=self.height, hfov_deg=self.hfov_deg,
                                  distance_m=self.distance_m)

    def expression_spec(self) -> ec.ExpressionClipSpec:
        """The renderer's settings (its recipe fields are unused here)."""
        return ec.ExpressionClipSpec(index=self.index, n_frames=self.n_frames, fps=self.fps, width=self.width,
                                     height=self.height, hfov_deg=self.hfov_deg, distance_m=self.distance_m,
                                     supersample=self.supersample)


def hair_style(spec: HairClipSpec) -> np.ndarray:
    if spec.bald:
        return H.BALD.copy()
    rng = np.random.default_rng(HAIR_SEED_BASE + spec.index)
    return H.sample_hair(rng, p_bald=0.0, p_beard=0.0, p_moustache=0.0)


def hair_mesh(ict, w_id: np.ndarray, params: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh (vertices (V, 3) model units, triangles (F, 3)) of the hair around the neutral head."""
    from skimage.measure import marching_cubes

    v = ict.vertices(w_id)
    rng = np.random.default_rng(0)
    tri, bary = ictdata._sample_tris(rng, ict.tri_areas(v), np.ones(len(ict.faces), bool), 60000)
    vol = H.HairVolume(params, ictdata._interp(v, ict.faces, tri, bary), v[ict.landmarks68])
    lo = np.array([-0.8, H.BOTTOM_LOW - 0.1, -1.0])
    hi = np.array([0.8, 0.8, 0.5])
    axes = [np.arange(lo[k], hi[k] + cell, cell) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    sdf = vol.sdf(grid).reshape(*(len(a) for a in axes))
    verts, faces, _, _ = marching_cubes(sdf, 0.0, spacing=(cell, cell, cell))
    return (verts + lo).astype(np.float32), faces[:, ::-1].astype(np.int32)  # outward winding like the ICT mesh


class HairClipRenderer(ec.ClipRenderer):
    """The expression clips' renderer with a second, rigid mesh (the hair) in the same z-buffer."""

    def __init__(self, ict, spec: HairClipSpec, params: synthetic.ClipParams, look: ec.Look,
                 hair_vertices: np.ndarray, hair_triangles: np.ndarray):
        super().__init__(ict, spec.expression_spec(), params, look)
        self.hair_v, self.hair_f = hair_vertices, hair_triangles

    def frame_with_alpha(self, vertices_cam: np.ndarray, hair_cam: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        from ..tracking import raster

        sp = self.spec
        s = sp.supersample
        Hs, Ws = sp.height * s, sp.width * s
        f_head = self.ict.faces
        n_head = len(f_head)
        verts = np.concatenate([vertices_cam, hair_cam])
        faces = np.concatenate([f_head, self.hair_f + len(vertices_cam)])
        frag = raster.rasterize(verts, faces, self.Ks, Hs, Ws)
        m = frag.mask
        on_head = m & (frag.tri < n_head)
        on_hair = m & (frag.tri >= n_head)
        img = np.repeat(np.repeat(self.background, s, 0), s, 1).copy()
        n = raster.interpolate(frag, faces, raster.vertex_normals(verts, faces))
        L = self.look.light_dir / np.linalg.norm(self.look.light_dir)

        def shade(mask, alb):
            nn = n[mask] / np.clip(np.linalg.norm(n[mask], axis=-1, keepdims=True), 1e-9, None)
            lam = np.clip(nn @ L, 0, None)[:, None]
            img[mask] = alb * (self.look.ambient + (1 - self.look.ambient) * lam) * self.look.light_colour

        tri, bary = frag.tri[on_head], frag.bary[on_head].astype(np.float32)
        alb = ictdata.albedo(self.ict, self.app, tri, bary, self.params.noise_seed)
        uv = (self.ict.uv[self.ict.face_uv_idx[tri]] * bary[..., None]).sum(1) % 1.0
        dh, dw = self.detail.shape
        det = self.detail[((1 - uv[:, 1]) * (dh - 1)).astype(int), (uv[:, 0] * (dw - 1)).astype(int)]
        sw = (self.skin_weight[f_head[tri]] * bary).sum(1)
        shade(on_head, alb * (1 + sw * (det - 1))[:, None])
        if on_hair.any():
            ht = frag.tri[on_hair] - n_head
            x_model = (self.hair_v[self.hair_f[ht]] * frag.bary[on_hair][..., None]).sum(1)
            shade(on_hair, H.hair_albedo(x_model, self.params.app[6:9], self.params.noise_seed))
        img = img.reshape(sp.height, s, sp.width, s, 3).mean((1, 3))
        img = img + rng.normal(0, 0.012, img.shape)
        alpha = m.reshape(sp.height, s, sp.width, s).mean((1, 3)) >= 0.5
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), alpha


@dataclass
class HairClip(synthetic.CachedClip):
    """A cached clip of a head with hair; ``hair.npz`` beside it holds the hair mesh and the ground-truth alpha."""

    spec: HairClipSpec

    def hair_truth(self) -> dict:
        d = np.load(self.folder / "hair.npz", allow_pickle=False)
        out = {k: d[k] for k in d.files}
        out["alpha"] = np.unpackbits(out["alpha_bits"], axis=-1)[..., :self.spec.width].astype(bool)
        return out


def hair_to_camera(hair_vertices: np.ndarray, gt: synthetic.GroundTruth, frame: int) -> np.ndarray:
    """(V, 3) camera metres of the rigid hair mesh in ``frame`` (x_cam = s R x_metres + t, like the head)."""
    x = conventions.nphm_to_metres(np.asarray(hair_vertices, np.float64))
    return (gt.scale[frame] * x @ gt.rotation[frame].T.astype(np.float64) + gt.translation[frame]).astype(np.float64)


def render_hair_clip(spec: HairClipSpec, cache_dir: Path | None = None, ict=None, log=None) -> HairClip:
    """Render ``spec`` (or reuse ``<cache>/<key>/`` when its meta.json, written last, exists)."""
    folder = Path(cache_dir or DEFAULT_CACHE) / spec.key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return HairClip(spec, folder, json.loads(meta_path.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    ict = ict or ictdata.ICTModel()
    sspec = spec.synthetic_spec()
    params = synthetic.clip_parameters(sspec)
    look = ec.sample_look(np.random.default_rng(HAIR_SEED_BASE + 10_000 + spec.index))
    gt = synthetic.clip_ground_truth(ict, sspec, params)
    gt.save(folder / "gt.npz")
    style = hair_style(spec)
    t0 = time.time()
    if spec.bald:
        hv, hf = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    else:
        hv, hf = hair_mesh(ict, params.w_id, style, spec.hair_cell)
    renderer = HairClipRenderer(ict, spec, params, look, hv, hf)
    rng = np.random.default_rng(look.seed + 1)
    frames, alphas = [], []
    for i, v in enumerate(gt.vertices_cam):
        img, alpha = renderer.frame_with_alpha(v.astype(np.float64), hair_to_camera(hv, gt, i), rng)
        frames.append(img)
        alphas.append(alpha)
        if log:
            log(f"{spec.key}: frame {i + 1}/{spec.n_frames}")
    np.savez_compressed(folder / "hair.npz", alpha_bits=np.packbits(np.stack(alphas), axis=-1),
                        hair_vertices=hv, hair_triangles=hf, hair_params=style)
    synthetic.write_mp4(frames, folder / "clip.mp4", spec.fps, crf=18)
    from PIL import Image

    Image.fromarray(frames[spec.n_frames // 2]).save(folder / "middle.png")
    meta = {"spec": asdict(spec), "key": spec.key, "hair_params": dict(zip(H.HAIR_NAMES, style.round(3).tolist())),
            "render_s_per_frame": round((time.time() - t0) / spec.n_frames, 3),
            "look": {"skin": Path(look.skin).name, "background": look.background}}
    meta_path.write_text(json.dumps(meta, indent=1))
    return HairClip(spec, folder, meta)
