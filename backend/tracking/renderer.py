"""NeuS-style volume rendering of an SDF with SH shading, made cheap for CPU tracking.

Per ray (reference 4.4-4.5, with the changes that make it fast):
1. **Find the surface first**: ``n_coarse`` SDF-only samples without autograd between the ray's entry and exit
   of the bounding sphere; the first sign change (or the closest approach for rays that miss) gives t*.
2. **Narrow band**: ``n_fine`` samples in [t* - band, t* + band], evaluated with autograd (SDF only); NeuS
   discrete opacity alpha_i = clip((Phi(f_i) - Phi(f_{i+1})) / Phi(f_i), 0, 1), Phi = sigmoid(inv_s * f),
   transmittance, weights w_i, opacity O = sum w_i and expected depth.
3. **Shade once per ray**: albedo and normal at the expected surface point x_s (one colour + gradient query per ray
   instead of one per sample), SH order-2 irradiance in camera space times albedo, pixel = O * shaded.

Tensors: rays (R, 3); samples (R, S); colours in [-1, 1] like the official tracker (albedo a in [-1, 1] maps to
[0, 1] before shading and back).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from ..contracts.conventions import NPHM_UNIT_M

# SH basis constants (reference 4.5, `compute_SH_shading`)
_SH_C = (0.28209, 1.02333, 0.85809, 0.42904, 0.24771)


class Field(Protocol):
    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) model-space points -> (N,) SDF (autograd follows the global grad mode)."""

    def shade_inputs(self, x: torch.Tensor):
        """(N, 3) -> albedo (N, 3) in [-1, 1], unnormalised gradient (N, 3) in model space (differentiable)."""


@dataclass
class RenderSettings:
    n_coarse: int = 24           # no-grad samples to find the surface
    n_fine: int = 12             # differentiable samples in the narrow band
    band: float = 0.03           # half-width of the band (model units; 0.03 = 7.5 mm)
    radius: float = 0.7          # bounding sphere (reference 4.4)
    chunk: int = 65536           # max points per no-grad query


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues, stable at 0)."""
    th2 = (omega * omega).sum(-1, keepdim=True)
    th = torch.sqrt(th2.clamp_min(1e-12))
    a = torch.where(th2 > 1e-8, torch.sin(th) / th, 1 - th2 / 6)
    b = torch.where(th2 > 1e-8, (1 - torch.cos(th)) / th2.clamp_min(1e-12), 0.5 - th2 / 24)
    x, y, z = omega.unbind(-1)
    o = torch.zeros_like(x)
    Kx = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(omega.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(Kx)
    return eye + a[..., None] * Kx + b[..., None] * (Kx @ Kx)


def camera_rays(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, pix: torch.Tensor):
    """Rays through pixel coordinates ``pix`` (N, 2) (pixel centres at i + 0.5) in model space.

    Pose convention: x_cam[m] = R @ (NPHM_UNIT_M * x_model) + t.
    Returns origins (N, 3) and unit directions (N, 3), model units.
    """
    d_cam = torch.stack([(pix[:, 0] - K[0, 2]) / K[0, 0], (pix[:, 1] - K[1, 2]) / K[1, 1],
                         torch.ones_like(pix[:, 0])], -1)
    d = d_cam @ R                       # R^T d for row vectors
    d = d / d.norm(dim=-1, keepdim=True)
    o = (-(t @ R) / NPHM_UNIT_M).expand_as(d)
    return o, d


def sphere_bounds(o: torch.Tensor, d: torch.Tensor, radius: float):
    """Entry/exit distances of rays with a sphere at the origin; misses get (0, 0) and hit=False."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    s = torch.sqrt(disc.clamp_min(0))
    near = (-b - s).clamp_min(0)
    far = (-b + s).clamp_min(0)
    return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.zeros_like(far)), hit & (far > 0)


def sh_basis(n: torch.Tensor) -> torch.Tensor:
    """Unit normals (N, 3) -> order-2 SH basis (N, 9) with the official constants."""
    x, y, z = n.unbind(-1)
    c0, c1, c2, c3, c4 = _SH_C
    one = torch.ones_like(x)
    return torch.stack([c0 * one, c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z, c4 * (3 * z * z - 1), c2 * x * z,
                        c3 * (x * x - y * y)], -1)


def sh_init(dtype=torch.float32, device=None) -> torch.Tensor:
    """(9, 3) coefficients with constant shading 1 (c0 = sqrt(4 pi) * ... such that S = 1)."""
    c = torch.zeros(9, 3, dtype=dtype, device=device)
    c[0] = 1.0 / _SH_C[0]
    return c


def shade(albedo: torch.Tensor, normal_cam: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """albedo (N, 3) in [-1, 1], camera-space unit normals (N, 3), sh (9, 3) -> colour (N, 3) in [-1, 1]."""
    S = sh_basis(normal_cam) @ sh
    return 2 * S * (albedo + 1) / 2 - 1


def neus_alpha(sdf: torch.Tensor, inv_s: float) -> torch.Tensor:
    """Discrete NeuS opacity from consecutive samples along each ray: sdf (R, S) -> alpha (R, S-1)."""
    phi = torch.sigmoid(sdf * inv_s)
    prev, nxt = phi[:, :-1], phi[:, 1:]
    return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0.0, 1.0)


def weights_from_alpha(alpha: torch.Tensor) -> torch.Tensor:
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-7], 1), 1)[:, :-1]
    return alpha * T


@torch.no_grad()
def find_surface(field: Field, o: torch.Tensor, d: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
                 n: int, chunk: int = 65536):
    """Coarse march: first sign change (+ to -) along each ray, refined by the secant rule.

    Returns t_surf (R,), crossed (R,) bool; for rays without a crossing t_surf is the closest approach
    (min |sdf|), so silhouette rays still get a band where the surface is nearest.
    """
    R = o.shape[0]
    u = torch.linspace(0, 1, n, dtype=o.dtype, device=o.device)
    ts = near[:, None] + (far - near)[:, None] * u[None]                  # (R, n)
    pts = (o[:, None] + d[:, None] * ts[..., None]).reshape(-1, 3)
    f = torch.cat([field.sdf(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)]).reshape(R, n)
    sign_change = (f[:, :-1] > 0) & (f[:, 1:] <= 0)
    crossed = sign_change.any(1)
    first = torch.argmax(sign_change.to(torch.int8), 1)
    f0 = f.gather(1, first[:, None])[:, 0]
    f1 = f.gather(1, (first + 1)[:, None])[:, 0]
    t0 = ts.gather(1, first[:, None])[:, 0]
    t1 = ts.gather(1, (first + 1)[:, None])[:, 0]
    t_cross = t0 + (t1 - t0) * f0 / (f0 - f1).clamp_min(1e-9)
    t_min = ts.gather(1, f.abs().argmin(1, keepdim=True))[:, 0]
    return torch.where(crossed, t_cross, t_min), crossed


def render_rays(field: Field, o: torch.Tensor, d: torch.Tensor, inv_s: float, settings: RenderSettings,
                R_cam: Optional[torch.Tensor] = None, sh: Optional[torch.Tensor] = None, with_color: bool = True):
    """Volume-render rays (model space). Returns a dict:
        opacity (R,), depth (R,) model units along the ray, crossed (R,) bool, and with colour:
        color (R, 3) in [-1, 1] (= O * shaded albedo), albedo (R, 3), normal_cam (R, 3).
    R_cam (3, 3) rotates model-space normals into the camera frame for SH shading.
    """
    near, far, hit = sphere_bounds(o, d, settings.radius)
    t_s, crossed = find_surface(field, o, d, near, far, settings.n_coarse, settings.chunk)
    # narrow band: a fixed half-width, but never wider than the coarse step (so the band holds the crossing)
    step = (far - near) / max(settings.n_coarse - 1, 1)
    half = torch.clamp(step, max=settings.band).clamp_min(1e-3)
    u = torch.linspace(-1, 1, settings.n_fine, dtype=o.dtype, device=o.device)
    ts = (t_s[:, None] + half[:, None] * u[None]).clamp_min(0)             # (R, S)
    pts = o[:, None] + d[:, None] * ts[..., None]
    Rn, S = ts.shape
    f = field.sdf(pts.reshape(-1, 3)).reshape(Rn, S)
    alpha = neus_alpha(f, inv_s)                                           # (R, S-1)
    w = weights_from_alpha(alpha)
    w = w * hit[:, None].to(w.dtype)
    tm = 0.5 * (ts[:, 1:] + ts[:, :-1])
    opacity = w.sum(1)
    depth = (w * tm).sum(1) / opacity.clamp_min(1e-6)
    out = {"opacity": opacity, "depth": depth, "crossed": crossed & hit, "t_surface": t_s}
    if with_color:
        xs = o + d * depth[:, None]
        albedo, grad = field.shade_inputs(xs)
        n = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        n_cam = n @ R_cam.T if R_cam is not None else n
        sh = sh if sh is not None else sh_init(o.dtype, o.device)
        col = shade(albedo, n_cam, sh)
        out.update(color=opacity[:, None] * col, albedo=albedo, normal_cam=n_cam)
    return out


class SphereField:
    """Analytic SDF of a sphere (tests): sdf = |x - c| - r, constant albedo."""

    def __init__(self, radius: float = 0.3, center=(0.0, 0.0, 0.0), albedo=(0.2, 0.0, -0.2)):
        self.r = radius
        self.c = torch.tensor(center, dtype=torch.float32)
        self.a = torch.tensor(albedo, dtype=torch.float32)

    def sdf(self, x):
        return (x - self.c.to(x.dtype)).norm(dim=-1) - self.r

    def shade_inputs(self, x):
        g = (x - self.c.to(x.dtype))
        return self.a.to(x.dtype).expand_as(x), g / g.norm(dim=-1, keepdim=True)


class ModelField:
    """A posed MonoNPHM (one code set) as a render field. Points (N, 3) in posed model space."""

    def __init__(self, model, z_geo, z_app, z_exp, anchors=None, neutral: bool = False):
        self.m, self.zg, self.za, self.ze = model, z_geo, z_app, z_exp
        self.anchors = anchors
        self.neutral = neutral

    def sdf(self, x):
        o = self.m(x[None], self.zg, None, self.ze, neutral=self.neutral, with_color=False, anchors=self.anchors)
        return o.sdf[0, :, 0]

    def shade_inputs(self, x):
        o = self.m(x[None], self.zg, self.za, self.ze, neutral=self.neutral, with_color=True, with_gradient=True,
                   anchors=self.anchors)
        return o.color[0], o.gradient[0]


def inv_s_schedule(it: int, n_iter: int, start: float = 0.3, end: float = 0.8) -> float:
    """Sharpness e^{10 v}, v rising linearly from ``start`` to ``end`` over the first 60% of the run."""
    v = start + (end - start) * min(1.0, it / max(1.0, 0.6 * n_iter))
    return math.exp(10 * v)
