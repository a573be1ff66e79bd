"""Expression benchmark clips: every channel group the built-in model drives, with known ARKit curves (numpy).

Each clip is a held-out ICT-FaceKit identity performing timed expression events, rendered fast with the project's
numpy rasteriser (``backend.tracking.raster``: z-buffer, Lambertian key light + ambient, 2x2 supersampling, sensor
noise, H.264) so that tens of 60-frame clips fit on a laptop CPU; Cycles (``synthetic``/``cycles``) stays the
geometry benchmark's renderer.

Recipe (``expression_parameters``):
- ``CHANNEL_GROUPS``: 23 groups of ICT channels (blinks, squints, wide eyes, brows inner/outer/down, smiles, frowns,
  dimples, stretch, press, roll, pucker, funnel, jaw open/sideways/forward, mouth close, cheek puff/squint, sneer,
  upper/lower lip raise, mouth sideways); gaze stays 0 (the built-in model's eyes are static).
- Group clips: 3 events of 3 different groups, one per third of the clip, so the first ``ceil(23 / 3)`` clips of a
  seed range (``QUICK_CLIPS``) show every group once and 23 clips every group 3 times. L/R groups fire on both
  sides (the second side 0.8-1.0 of the first) or, 30 % of the time, on one side (winks, one-sided smiles ...).
  Half the group clips add one natural blink.
- Mixed clips (``MIXED_CLIPS`` after the group clips): speech-like jaw at 3-5 syllables/s with lip shapes
  (funnel, pucker, press, roll, smile, stretch, upper/lower lip), brows, blinks.
- Peaks ~ U(0.3, 1); blinks last 3-6 frames (raised cosine), other events 0.3-0.8 s; 60 frames at 25 fps.
- Pose: yaw up to +-35 deg (amplitude ~ U(10, 35)), pitch +-3..10, roll +-2..6, a drifting translation.
- Appearance outside the model's appearance space: the skin is a MakeHuman skin texture
  (``../shared/data/makehuman/skin``; layouts differ, so its high-passed pore/blotch detail, sampled at the ICT UVs,
  modulates a skin tone drawn from light to dark), lips/brows/eyes/mouth from the training generator's structure.
  The Lee Perry-Smith scan ships geometry only (no colours), so it cannot lend a texture.
- Lighting: random key direction and colour, ambient 0.2-0.5. Backgrounds: a plain gradient, procedural noise, or
  clutter (photos from scikit-image's bundled data, none with a face, plus random shapes).
- Seed ranges: ``TUNE_SEED_BASE`` (tune on these) and ``HELDOUT_SEED_BASE`` (report goals on these only); both are
  disjoint from the training streams and from ``synthetic.EVAL_SEED_BASE``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..contracts import arkit
from ..training import data as ictdata
from . import synthetic

TUNE_SEED_BASE = 7_500_000
HELDOUT_SEED_BASE = 7_600_000
RENDER_VERSION = 1
# Renders and packages take minutes per clip: kept between runs, outside the repository when the variable says so.
DEFAULT_CACHE = Path(os.environ.get("MONONPHM_EXPR_CACHE", synthetic.REPO_ROOT / ".cache" / "expr"))

CHANNEL_GROUPS: dict[str, tuple[str, ...]] = {
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "squint": ("eyeSquint_L", "eyeSquint_R"),
    "wide": ("eyeWide_L", "eyeWide_R"),
    "brow_inner_up": ("browInnerUp_L", "browInnerUp_R"),
    "brow_outer_up": ("browOuterUp_L", "browOuterUp_R"),
    "brow_down": ("browDown_L", "browDown_R"),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "frown": ("mouthFrown_L", "mouthFrown_R"),
    "dimple": ("mouthDimple_L", "mouthDimple_R"),
    "stretch": ("mouthStretch_L", "mouthStretch_R"),
    "press": ("mouthPress_L", "mouthPress_R"),
    "roll": ("mouthRollLower", "mouthRollUpper"),
    "pucker": ("mouthPucker",),
    "funnel": ("mouthFunnel",),
    "jaw_open": ("jawOpen",),
    "jaw_side": ("jawLeft", "jawRight"),
    "jaw_forward": ("jawForward",),
    "mouth_close": ("mouthClose",),
    "cheek_puff": ("cheekPuff_L", "cheekPuff_R"),
    "cheek_squint": ("cheekSquint_L", "cheekSquint_R"),
    "sneer": ("noseSneer_L", "noseSneer_R"),
    "lip_raise": ("mouthUpperUp_L", "mouthUpperUp_R", "mouthLowerDown_L", "mouthLowerDown_R", "mouthShrugLower",
                  "mouthShrugUpper"),
    "mouth_side": ("mouthLeft", "mouthRight"),
}
SIDED_GROUPS = ("blink", "squint", "wide", "brow_outer_up", "brow_down", "smile", "frown", "dimple", "stretch",
                "press", "cheek_squint", "sneer")
ALTERNATIVE_GROUPS = ("roll", "jaw_side", "lip_raise", "mouth_side")  # one channel of the group per event
GROUP_NAMES = tuple(CHANNEL_GROUPS)
EVENTS_PER_CLIP = 3
GROUP_CLIPS = len(GROUP_NAMES)                              # every group 3 times
QUICK_CLIPS = math.ceil(len(GROUP_NAMES) / EVENTS_PER_CLIP)  # every group once
MIXED_CLIPS = 6


def arkit_groups() -> dict[str, tuple[str, ...]]:
    """The channel groups in ARKit names (ICT halves of browInnerUp/cheekPuff become one channel)."""
    out = {}
    for g, names in CHANNEL_GROUPS.items():
        ak = []
        for n in names:
            a = arkit.ICT_TO_ARKIT[n][0]
            if a not in ak:
                ak.append(a)
        out[g] = tuple(ak)
    return out


@dataclass(frozen=True)
class ExpressionClipSpec:
    """Recipe of one expression clip (all fields enter the cache key)."""

    index: int = 0                 # clip index within its seed range (< GROUP_CLIPS: group clip, else mixed)
    seed_base: int = TUNE_SEED_BASE
    n_frames: int = 60
    fps: float = 25.0
    width: int = 384
    height: int = 384
    hfov_deg: float = 40.0
    distance_m: float = 0.45
    supersample: int = 2

    @property
    def seed(self) -> int:
        return self.seed_base + self.index

    @property
    def key(self) -> str:
        kind = "held" if self.seed_base == HELDOUT_SEED_BASE else "tune" if self.seed_base == TUNE_SEED_BASE else "x"
        return f"expr_{kind}{self.index:03d}_{synthetic.recipe_digest(self, RENDER_VERSION, 8)}"

    def intrinsics(self):
        from ..contracts import conventions

        return conventions.Intrinsics.from_fov(self.width, self.height, self.hfov_deg)

    def groups(self) -> tuple[str, ...]:
        """The groups this clip's events exercise ("mixed" for the speech-like clips)."""
        if self.index >= GROUP_CLIPS:
            return ("mixed",)
        return tuple(GROUP_NAMES[(EVENTS_PER_CLIP * self.index + e) % len(GROUP_NAMES)]
                     for e in range(EVENTS_PER_CLIP))


def _bump_frames(T: int, centre: float, half_width: float) -> np.ndarray:
    """Raised cosine over frames (peak 1 at ``centre``), support (centre - half_width, centre + half_width)."""
    return synthetic._bump(np.arange(T, dtype=np.float64), centre, half_width)


def _blink(rng, T: int, centre: float) -> np.ndarray:
    """A blink lasting 3-6 frames (frames with a non-zero weight), peak ~ U(0.3, 1)."""
    frames = int(rng.integers(3, 7))
    return rng.uniform(0.3, 1.0) * _bump_frames(T, round(centre), (frames + 1) / 2)


def _event(rng, group: str, T: int, centre: float, fps: float, ex: dict) -> np.ndarray:
    """(T, 53) ICT weights of one event of ``group`` centred at frame ``centre``."""
    w = np.zeros((T, len(ex)))
    names = CHANNEL_GROUPS[group]
    if group == "blink":
        curve = _blink(rng, T, centre)
    else:
        curve = rng.uniform(0.3, 1.0) * _bump_frames(T, centre, rng.uniform(0.15, 0.4) * fps)
    if group in ALTERNATIVE_GROUPS:
        names = (names[int(rng.integers(len(names)))],)
    if group in SIDED_GROUPS and rng.uniform() < 0.3:
        names = (names[int(rng.integers(2))],)           # one side: a wink, a one-sided smile ...
    for k, n in enumerate(names):
        w[:, ex[n]] = curve * (1.0 if k == 0 else rng.uniform(0.8, 1.0))
    if group == "mouth_close":                              # lips pressed together while the jaw opens
        w[:, ex["jawOpen"]] = np.maximum(w[:, ex["mouthClose"]], curve) * rng.uniform(1.0, 1.3)
    return w


def _speech(rng, T: int, fps: float, ex: dict) -> np.ndarray:
    """(T, 53) speech-like weights: syllabic jaw, lip shapes, brows and blinks."""
    w = np.zeros((T, len(ex)))
    t = np.arange(T) / fps
    rate = rng.uniform(3.0, 5.0)
    jaw = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 1.5
    w[:, ex["jawOpen"]] = jaw * rng.uniform(0.3, 0.8) * (0.6 + 0.4 * rng.uniform(size=T).round())
    for n in ("mouthFunnel", "mouthPucker", "mouthPress_L", "mouthRollLower", "mouthSmile_L", "mouthStretch_L",
              "mouthUpperUp_L", "mouthLowerDown_L"):
        for _ in range(int(rng.integers(0, 3))):
            curve = rng.uniform(0.3, 1.0) * _bump_frames(T, rng.uniform(0, T), rng.uniform(0.1, 0.25) * fps)
            w[:, ex[n]] = np.maximum(w[:, ex[n]], curve)
            if n.endswith("_L"):
                other = ex[arkit.mirror_name(n)]
                w[:, other] = np.maximum(w[:, other], curve * rng.uniform(0.8, 1.0))
    brow = rng.choice(["brow_inner_up", "brow_outer_up", "brow_down"])
    w += _event(rng, str(brow), T, rng.uniform(0.2, 0.8) * T, fps, ex)
    for c in rng.uniform(0.1, 0.9, size=int(rng.integers(1, 3))) * T:
        w += _event(rng, "blink", T, c, fps, ex)
    return w


def expression_track(spec: ExpressionClipSpec, rng: np.random.Generator) -> np.ndarray:
    """(T, 53) ICT expression weights in [0, 1] of the clip (see the module docstring)."""
    ex = {n: i for i, n in enumerate(arkit.ICT_NAMES)}
    T = spec.n_frames
    if spec.index >= GROUP_CLIPS:
        w = _speech(rng, T, spec.fps, ex)
    else:
        w = np.zeros((T, len(ex)))
        for e, g in enumerate(spec.groups()):
            centre = (e + rng.uniform(0.35, 0.65)) * T / EVENTS_PER_CLIP
            w += _event(rng, g, T, centre, spec.fps, ex)
        if rng.uniform() < 0.5:
            w += _event(rng, "blink", T, rng.uniform(0.05, 0.95) * T, spec.fps, ex)
    return np.clip(w, 0.0, 1.0).astype(np.float32)


@dataclass
class Look:
    """Appearance and scene of a clip: skin texture file, skin tone (3,), key light direction (3,) camera frame,
    light colour (3,), ambient, background kind ('plain' | 'noise' | 'clutter'), noise seed."""

    skin: str
    tone: np.ndarray
    light_dir: np.ndarray
    light_colour: np.ndarray
    ambient: float
    background: str
    seed: int


def sample_look(rng) -> Look:
    skins = sorted((synthetic.shared_dir() / "data" / "makehuman" / "skin").glob("*.jpg"))
    if not skins:
        raise FileNotFoundError("no MakeHuman skin textures under ../shared/data/makehuman/skin")
    t = rng.uniform()
    tone = (1 - t) * np.array([0.93, 0.74, 0.62]) + t * np.array([0.30, 0.19, 0.13])
    tone = np.clip(tone * rng.uniform(0.9, 1.1, 3), 0.05, 1.0)
    az, el = np.radians(rng.uniform(-60, 60)), np.radians(rng.uniform(-10, 45))
    light = np.array([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)])
    colour = np.clip(np.array([1.0, 0.97, 0.92]) * rng.uniform(0.85, 1.15, 3), 0.6, 1.2)
    return Look(str(skins[int(rng.integers(len(skins)))]), tone, light, colour, float(rng.uniform(0.2, 0.5)),
                str(rng.choice(["plain", "noise", "clutter"])), int(rng.integers(0, 2 ** 31)))


def expression_parameters(spec: ExpressionClipSpec) -> tuple[synthetic.ClipParams, Look]:
    """Identity, appearance, expression and pose of a clip (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    w_id = ictdata.sample_identity(rng)
    app = ictdata.sample_appearance(rng)
    app[12] = 0.0  # no stubble dots (a bald mesh with speckles reads as noise)
    noise_seed = int(rng.integers(0, 2 ** 31))
    w_ex = expression_track(spec, rng)
    T, dur = spec.n_frames, spec.n_frames / spec.fps
    t = np.arange(T) / spec.fps

    def wave(amp):
        f = rng.uniform(0.3, 0.8) / dur
        return amp * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))

    yaw, pitch, roll = wave(rng.uniform(10, 35)), wave(rng.uniform(3, 10)), wave(rng.uniform(2, 6))
    R = (synthetic.FACING_CAMERA[None] @ synthetic._rot("y", yaw) @ synthetic._rot("x", pitch)
         @ synthetic._rot("z", roll))
    trans = np.stack([wave(0.012), wave(0.01), spec.distance_m + wave(0.02)], 1)
    params = synthetic.ClipParams(w_id, app, noise_seed, w_ex, np.ones(T), R, trans, np.stack([yaw, pitch, roll], 1))
    return params, sample_look(rng)


# ---------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------
def _skin_detail(path: str) -> np.ndarray:
    """(H, W) multiplicative skin detail of a texture: luminance over its 31-px local mean, clipped to 0.88-1.12
    (pores and blotches survive; the texture's own features, in another UV layout, are flattened)."""
    from PIL import Image
    from scipy import ndimage

    img = np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0
    lum = img.mean(-1)
    return np.clip(lum / np.maximum(ndimage.uniform_filter(lum, 31), 1e-3), 0.88, 1.12).astype(np.float32)


def _background(look: Look, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float background in [0, 1]."""
    rng = np.random.default_rng(look.seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    c0, c1 = rng.uniform(0.1, 0.8, 3), rng.uniform(0.1, 0.8, 3)
    ang = rng.uniform(0, 2 * np.pi)
    g = np.clip(0.5 + (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)), 0, 1)[..., None]
    bg = (1 - g) * c0 + g * c1
    if look.background == "noise":
        from scipy import ndimage

        n = ndimage.gaussian_filter(rng.standard_normal((height, width)), rng.uniform(3, 12))
        bg = bg * (1 + 0.6 * (n / (np.abs(n).max() + 1e-9)))[..., None]
    elif look.background == "clutter":
        import skimage.data
        from PIL import Image

        photo = getattr(skimage.data, str(rng.choice(["coffee", "chelsea", "rocket", "immunohistochemistry"])))()
        bg = np.asarray(Image.fromarray(photo).resize((width, height)), np.float64) / 255.0
        for _ in range(int(rng.integers(4, 10))):       # shapes in front of the photo: edges near the head
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.04, 0.15) * width
            if rng.uniform() < 0.5:
                m = (yy * max(height, width) - cy) ** 2 + (xx * max(height, width) - cx) ** 2 < r * r
            else:
                m = (np.abs(yy * max(height, width) - cy) < r) & (np.abs(xx * max(height, width) - cx) < 0.5 * r)
            bg[m] = rng.uniform(0, 1, 3)
    return np.clip(bg, 0, 1)


class ClipRenderer:
    """Renders one clip's frames: rasterise at ``supersample``x, per-pixel albedo (generator structure x real skin
    detail x tone), Lambertian key light + ambient, box-filter down, sensor noise."""

    def __init__(self, ict, spec: ExpressionClipSpec, params: synthetic.ClipParams, look: Look):
        self.ict, self.spec, self.params, self.look = ict, spec, params, look
        self.K = spec.intrinsics().matrix().astype(np.float64)
        s = spec.supersample
        self.Ks = np.diag([s, s, 1.0]) @ self.K  # pixel centre i + 0.5 -> subpixels s·i .. s·i + s - 1 (box mean)
        self.detail = _skin_detail(look.skin)
        self.background = _background(look, spec.height, spec.width)
        app = params.app.copy()
        app[0:3] = look.tone
        self.app = app
        self.skin_weight = 1.0 - np.clip(ict.semantic["lips"] + ict.semantic["brows"] + ict.semantic["eyeball"]
                                         + ict.semantic["mouth"], 0, 1)

    def frame(self, vertices_cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from ..tracking import raster

        sp = self.spec
        s = sp.supersample
        H, W = sp.height * s, sp.width * s
        f = self.ict.faces
        frag = raster.rasterize(vertices_cam, f, self.Ks, H, W)
        m = frag.mask
        tri, bary = frag.tri[m], frag.bary[m].astype(np.float32)
        alb = ictdata.albedo(self.ict, self.app, tri, bary, self.params.noise_seed)
        uv = (self.ict.uv[self.ict.face_uv_idx[tri]] * bary[..., None]).sum(1) % 1.0
        dh, dw = self.detail.shape
        det = self.detail[((1 - uv[:, 1]) * (dh - 1)).astype(int), (uv[:, 0] * (dw - 1)).astype(int)]
        sw = (self.skin_weight[f[tri]] * bary).sum(1)
        alb = alb * (1 + sw * (det - 1))[:, None]
        n = raster.interpolate(frag, f, raster.vertex_normals(vertices_cam, f))[m]
        n /= np.clip(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9, None)
        L = self.look.light_dir / np.linalg.norm(self.look.light_dir)
        lam = np.clip(n @ L, 0, None)[:, None]
        col = alb * (self.look.ambient + (1 - self.look.ambient) * lam) * self.look.light_colour
        img = np.repeat(np.repeat(self.background, s, 0), s, 1).copy()
        img[m] = col
        img = img.reshape(sp.height, s, sp.width, s, 3).mean((1, 3))
        img = img + rng.normal(0, 0.012, img.shape)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass
class ExpressionClip(synthetic.CachedClip):
    """A cached expression clip (``meta``: groups, look)."""

    spec: ExpressionClipSpec


def render_expression_clip(spec: ExpressionClipSpec, cache_dir: Path | None = None, ict=None,
                           log=None) -> ExpressionClip:
    """Render ``spec`` (or reuse ``<cache>/<key>/`` when its meta.json, written last, exists)."""
    folder = Path(cache_dir or DEFAULT_CACHE) / spec.key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return ExpressionClip(spec, folder, json.loads(meta_path.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    ict = ict or ictdata.ICTModel()
    params, look = expression_parameters(spec)
    sspec = synthetic.ClipSpec(index=spec.index, n_frames=spec.n_frames, fps=spec.fps, width=spec.width,
                               height=spec.height, hfov_deg=spec.hfov_deg, distance_m=spec.distance_m)
    gt = synthetic.clip_ground_truth(ict, sspec, params)
    gt.save(folder / "gt.npz")
    t0 = time.time()
    renderer = ClipRenderer(ict, spec, params, look)
    rng = np.random.default_rng(look.seed + 1)
    frames = []
    for i, v in enumerate(gt.vertices_cam):
        frames.append(renderer.frame(v.astype(np.float64), rng))
        if log:
            log(f"{spec.key}: frame {i + 1}/{spec.n_frames}")
    synthetic.write_mp4(frames, folder / "clip.mp4", spec.fps, crf=18)
    from PIL import Image

    Image.fromarray(frames[spec.n_frames // 2]).save(folder / "middle.png")
    meta = {"spec": asdict(spec), "key": spec.key, "groups": list(spec.groups()), "render_version": RENDER_VERSION,
            "render_s_per_frame": round((time.time() - t0) / spec.n_frames, 3),
            "look": {"skin": Path(look.skin).name, "tone": look.tone.round(3).tolist(), "ambient": look.ambient,
                     "background": look.background}, "seed": spec.seed}
    meta_path.write_text(json.dumps(meta, indent=1))
    return ExpressionClip(spec, folder, meta)


def clip_specs(seed_base: int, quick: bool) -> list[ExpressionClipSpec]:
    """The quick subset (every group once) or the full set (every group 3x + the mixed clips) of a seed range."""
    n = QUICK_CLIPS if quick else GROUP_CLIPS + MIXED_CLIPS
    idx = list(range(n))
    if quick:
        idx.append(GROUP_CLIPS)  # one mixed clip
    return [ExpressionClipSpec(index=i, seed_base=seed_base) for i in idx]


__all__ = ["CHANNEL_GROUPS", "GROUP_NAMES", "TUNE_SEED_BASE", "HELDOUT_SEED_BASE", "ExpressionClipSpec",
           "ExpressionClip", "arkit_groups", "expression_parameters", "expression_track", "render_expression_clip",
           "clip_specs"]
