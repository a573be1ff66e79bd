"""Texture option: a UV atlas of the canonical mesh (xatlas) and the albedo baked into it from chosen frames.

Texels are surface points (``albedo.SurfacePoints``) of the triangle covering them in the UV layout, so they are
observed and combined exactly like vertices, at the texture's resolution instead of the mesh's. Texels the chosen
frames do not see well take the baked vertex colours (which already fall back to the model albedo), blended by
confidence; the gutter between charts repeats the nearest chart texel, so mipmaps and filtering show no seams.
UV convention: (0, 0) is the image's bottom-left corner (Blender, glTF flip v on load).
"""
from __future__ import annotations

import numpy as np

from ..contracts.conventions import linear_to_srgb, srgb_to_linear
from ..tracking import raster
from .albedo import (BakeConfig, FrameBatch, Lighting, SurfacePoints, bake_points, limit_brightness,
                     limit_shadowed_colour)


def unwrap(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """UV atlas of the mesh -> per-corner texture coordinates (F, 3, 2) float32 in [0, 1]."""
    import xatlas
    vmap, tris, uv = xatlas.parametrize(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32))
    if not np.array_equal(vmap[tris], np.asarray(faces)):
        raise RuntimeError("xatlas reordered the triangles; the atlas does not match the mesh")
    return uv[tris].astype(np.float32)


def texel_points(uv: np.ndarray, size: int):
    """The texels covered by the atlas: SurfacePoints (N,) and their flat pixel indices (N,) in a size² image
    (row 0 at the top, i.e. v = 1)."""
    F = len(uv)
    corners = np.concatenate([uv[..., 0:1] * size, (1 - uv[..., 1:2]) * size, np.ones((F, 3, 1))], -1).reshape(-1, 3)
    frag = raster.rasterize(corners, np.arange(3 * F).reshape(F, 3), np.eye(3), size, size)
    pix = np.flatnonzero(frag.mask)
    return SurfacePoints(frag.tri.reshape(-1)[pix], frag.bary.reshape(-1, 3)[pix]), pix


def frame_scores(frames: FrameBatch, rotation: np.ndarray, z_exp: np.ndarray) -> np.ndarray:
    """How well each frame suits the texture (T,), higher is better: the sum of the frame's ranks for facing the
    camera (the model's forward axis against the view direction), sharpness (variance of the Laplacian of the grey
    image over the head) and a neutral expression (small expression code)."""
    from scipy.ndimage import convolve
    frontal = -rotation[:, 2, 2]
    grey = frames.images.astype(np.float32).mean(-1)
    lap = convolve(grey, np.array([[[0, 1, 0], [1, -4, 1], [0, 1, 0]]], np.float32), mode="nearest")
    head = frames.labels != 0
    sharp = (lap ** 2 * head).reshape(len(head), -1).sum(1) / np.maximum(head.reshape(len(head), -1).sum(1), 1)
    neutral = -np.linalg.norm(z_exp, axis=1)

    def rank(x):
        return np.argsort(np.argsort(x)).astype(np.float64)

    return rank(frontal) + rank(sharp) + rank(neutral)


def bake_texture(frames: FrameBatch, faces: np.ndarray, K: np.ndarray, lighting: Lighting, uv: np.ndarray,
                 vertex_colours_u8: np.ndarray, size: int = 2048, cfg: BakeConfig = BakeConfig(),
                 brightness_cap: np.ndarray | None = None) -> np.ndarray:
    """(size, size, 3) uint8 sRGB texture from ``frames`` under ``lighting`` (the vertex bake's); ``brightness_cap``
    (V,) the vertex bake's highlight limit (``BakedColours.brightness_cap``), interpolated to the texels."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    points, pix = texel_points(uv, size)
    robust = bake_points(frames, faces, K, lighting, points, cfg)
    fill = points.interpolate(faces, vertex_colours_u8.astype(np.float32) / 255.0)
    # where the predicted shading is not trusted, no brighter than the vertex colours (``albedo.limit_shadowed``)
    trust = np.where(robust.special, 1.0, robust.trust)
    albedo = limit_shadowed_colour(robust.albedo_lin, srgb_to_linear(fill), trust, cfg.shadow_excess)
    if brightness_cap is not None:
        albedo = limit_brightness(albedo, points.interpolate(faces, brightness_cap[:, None])[:, 0])
    baked = linear_to_srgb(albedo)
    alpha = np.zeros(size * size)
    alpha[pix] = robust.weight / (robust.weight + cfg.prior_weight)
    covered = np.zeros(size * size)
    covered[pix] = 1.0
    # soften the confidence across a few texels so baked and filled texels meet without a visible edge
    sigma = size / 1024
    alpha = (gaussian_filter(alpha.reshape(size, size), sigma) /
             np.maximum(gaussian_filter(covered.reshape(size, size), sigma), 1e-6)).reshape(-1)[pix]
    alpha = np.where(robust.weight > 0, alpha, 0.0)[:, None]
    image = np.zeros((size * size, 3))
    image[pix] = alpha * baked + (1 - alpha) * fill
    # gutter: every texel outside the charts repeats the nearest chart texel
    _, (iy, ix) = distance_transform_edt(covered.reshape(size, size) == 0, return_indices=True)
    image = image.reshape(size, size, 3)[iy, ix]
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    import cv2
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
