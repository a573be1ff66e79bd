"""Renderer checks against an analytic sphere."""
import math

import numpy as np
import torch

from backend.contracts.conventions import Intrinsics
from backend.tracking import camera, renderer


def _setup(size=64):
    intr = Intrinsics.from_fov(size, size, 30.0)
    K = torch.tensor(intr.matrix(), dtype=torch.float32)
    R, t = camera.look_at_pose(1.0)           # head origin 1 m in front of the camera
    return intr, K, torch.tensor(R, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)


def test_sphere_opacity_depth_and_normals():
    size = 64
    intr, K, R, t = _setup(size)
    ys, xs = np.mgrid[0:size, 0:size]
    pix = torch.tensor(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1), dtype=torch.float32)
    o, d = renderer.camera_rays(K, R, t, pix)
    field = renderer.SphereField(radius=0.3)
    out = renderer.render_rays(field, o, d, inv_s=math.exp(8.0), settings=renderer.RenderSettings(n_coarse=32),
                               R_cam=R)
    # analytic: ray hits iff distance from the centre to the ray < r
    oc = -o
    tc = (oc * d).sum(-1)
    dist = (oc - tc[:, None] * d).norm(dim=-1)
    inside = dist < 0.3 - 0.01
    outside = dist > 0.3 + 0.01
    assert inside.sum() > 200
    assert out["opacity"][inside].min() > 0.97
    assert out["opacity"][outside].max() < 0.03
    t_true = tc - torch.sqrt((0.09 - dist ** 2).clamp_min(0))
    err = (out["depth"][inside] - t_true[inside]).abs()
    assert err.mean() < 2e-3 and err.max() < 1e-2                      # < 0.5 mm mean in a 0.25 m/unit world
    # camera-space normals: the centre pixel sees the normal pointing back at the camera (-z in OpenCV)
    p = o + d * t_true[:, None]
    n_true = (p / p.norm(dim=-1, keepdim=True)) @ R.T
    cos = (out["normal_cam"][inside] * n_true[inside]).sum(-1)
    assert cos.mean() > 0.999
    assert n_true[inside][:, 2].max() < 0                              # facing the camera (-z in OpenCV)
    # SH init shades 1: colour = albedo where opaque
    assert torch.allclose(out["color"][inside], field.a.expand(int(inside.sum()), 3), atol=0.05)


def test_sphere_gradients_flow_to_radius():
    size = 24
    intr, K, R, t = _setup(size)
    ys, xs = np.mgrid[0:size, 0:size]
    pix = torch.tensor(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1), dtype=torch.float32)
    o, d = renderer.camera_rays(K, R, t, pix)
    r = torch.tensor(0.2, requires_grad=True)

    class F:
        def sdf(self, x):
            return x.norm(dim=-1) - r

        def shade_inputs(self, x):
            return torch.zeros_like(x), x

    out = renderer.render_rays(F(), o, d, math.exp(6.0), renderer.RenderSettings(), with_color=False)
    out["opacity"].sum().backward()
    assert r.grad is not None and r.grad > 0                          # bigger sphere -> more opacity


def test_so3_exp_matches_rodrigues():
    w = torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.0, 0.0]])
    Rt = renderer.so3_exp(w)
    for i in range(2):
        assert np.allclose(Rt[i].numpy(), camera.rodrigues(w[i].numpy()), atol=1e-6)


def test_scale_gradient_keeps_value_and_scales_gradient():
    """The identity stage's landmark share: forward value unchanged, gradient times the factor (0 blocks it)."""
    from backend.tracking.tracker import scale_gradient
    x = torch.tensor([0.5, -2.0, 3.0], requires_grad=True)
    for factor in (1.0, 0.1, 0.0):
        y = scale_gradient(x * 2, factor)
        assert torch.equal(y.detach(), (x * 2).detach())
        (g,) = torch.autograd.grad((y ** 2).sum(), x)
        assert torch.allclose(g, factor * 8 * x.detach())


def test_coverage_is_the_rasterised_mask():
    """`raster.coverage` (the draft outline's mesh coverage) equals `rasterize(...).mask`, pixel for pixel, and
    covers the projected sphere's disc."""
    from skimage.measure import marching_cubes
    from backend.tracking import raster
    g = np.linspace(-1, 1, 32)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    v, f, _, _ = marching_cubes(np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.7, 0.0, spacing=(2 / 31,) * 3)
    v = v - 1 + np.array([0.1, -0.05, 3.0])
    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    mask = raster.coverage(v, f, K, 120, 160)
    assert np.array_equal(mask, raster.rasterize(v, f, K, 120, 160).mask)
    r_px = 200 * 0.7 / np.sqrt(3.0 ** 2 - 0.7 ** 2)          # the sphere's silhouette radius in pixels
    assert abs(mask.sum() / (np.pi * r_px ** 2) - 1) < 0.05
    # on chosen pixels only (the draft outline's contour): the same values there, nothing elsewhere
    pixels = np.zeros_like(mask)
    pixels[::7, ::5] = True
    pixels[60, 40:120] = True   # a row across the disc's edge
    assert np.array_equal(raster.coverage(v, f, K, 120, 160, pixels), mask & pixels)
    assert not raster.coverage(v, f, K, 120, 160, np.zeros_like(mask)).any()


def test_rasteriser_keeps_the_nearest_fragment_and_the_first_of_equals():
    """The z-buffer: each pixel shows the triangle nearest to the camera (checked against every triangle's own
    rasterisation), equally near duplicates resolve to the lower triangle id, and ``interpolate(where=)`` gives the
    full image's values at those pixels."""
    from backend.tracking import raster
    rng = np.random.default_rng(3)
    K = np.array([[60.0, 0, 20], [0, 60.0, 15], [0, 0, 1]])
    n = 40
    centre = rng.uniform([-0.3, -0.2, 1.5], [0.3, 0.2, 2.5], (n, 1, 3))
    v = (centre + rng.normal(0, 0.15, (n, 3, 3))).reshape(-1, 3)
    f = np.arange(3 * n).reshape(n, 3)
    f = np.concatenate([f, f[[5, 9]]])                  # triangles 40, 41 duplicate 5 and 9 exactly
    frag = raster.rasterize(v, f, K, 30, 40)
    depth = np.full((len(f), 30, 40), np.inf)
    for k in range(len(f)):                            # each triangle alone
        one = raster.rasterize(v, f[k:k + 1], K, 30, 40)
        depth[k][one.mask] = one.depth[one.mask]
    nearest = np.where(np.isfinite(depth).any(0), depth.argmin(0), -1)   # argmin: the first of equals
    assert frag.mask.sum() > 100 and (frag.tri == nearest).all()
    assert np.array_equal(frag.depth[frag.mask], depth.min(0)[frag.mask].astype(np.float32))
    assert not np.isin(frag.tri, [40, 41]).any() and np.isin(frag.tri, [5, 9]).any()
    attr = rng.normal(size=(len(v), 4))
    where = frag.mask & (np.arange(40)[None] % 3 == 0)
    assert np.array_equal(raster.interpolate(frag, f, attr, where=where), raster.interpolate(frag, f, attr)[where])
