"""Video-baked albedo (backend.bake) on a synthetic scene with a known albedo: a head-sized sphere with a green
stripe on one cheek, turning in front of the camera under SH lighting in linear light (the bake's image formation),
with an unlabelled red occluder over the stripe in some frames."""
import numpy as np
import pytest

from backend.bake.albedo import BakeConfig, FrameBatch, Lighting, Shading, bake_vertices, render_shaded
from backend.tracking import masks as M
from backend.tracking import raster

SKIN = np.array([200, 150, 120], np.uint8)
STRIPE = np.array([60, 170, 80], np.uint8)
RED = np.array([230, 30, 30], np.uint8)
K = np.array([[420.0, 0, 128], [0, 420.0, 128], [0, 0, 1]])
SIZE = (256, 256)
RADIUS = 0.09


def sphere(n_lat=40, n_lon=80):
    """UV sphere (V, 3) model axes (+z forward, out of the face), outward-wound triangles (F, 3)."""
    th = np.linspace(0, np.pi, n_lat)[1:-1]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = RADIUS * np.stack([np.sin(T) * np.sin(P), np.cos(T), np.sin(T) * np.cos(P)], -1).reshape(-1, 3)
    v = np.concatenate([v, [[0, RADIUS, 0], [0, -RADIUS, 0]]])
    n_ring = len(th)
    idx = np.arange(n_ring * n_lon).reshape(n_ring, n_lon)
    a, b = idx[:-1], np.roll(idx[:-1], -1, 1)
    c, d = idx[1:], np.roll(idx[1:], -1, 1)
    f = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    top, bottom = len(v) - 2, len(v) - 1
    caps = np.concatenate([np.stack([np.full(n_lon, top), idx[0], np.roll(idx[0], -1)], -1),
                           np.stack([np.full(n_lon, bottom), np.roll(idx[-1], -1), idx[-1]], -1)])
    f = np.concatenate([f, caps])
    # orient outward: the face normal must point away from the centre
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    flip = (fn * v[f].mean(1)).sum(1) < 0
    f[flip] = f[flip][:, ::-1]
    return v, f


def stripe_mask(v):
    """The cheek stripe: a horizontal band on the subject's left cheek."""
    return (v[:, 0] > 0.35 * RADIUS) & (np.abs(v[:, 1]) < 0.3 * RADIUS) & (v[:, 2] > 0)


def yaw(deg):
    r = np.deg2rad(deg)
    return np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])


@pytest.fixture(scope="module")
def scene():
    v, f = sphere()
    colours = np.where(stripe_mask(v)[:, None], STRIPE, SKIN).astype(np.uint8)
    lighting = Lighting(np.zeros((9, 3), np.float32))
    lighting.sh[0] = 0.9 / 0.28209
    lighting.sh[3] = 0.25       # light from the +x side
    lighting.sh[1] = -0.15
    flip = np.diag([1.0, -1.0, -1.0])         # model faces the OpenCV camera
    angles = np.linspace(-35, 35, 12)
    verts_cam = np.stack([(v @ (yaw(a) @ flip).T) + [0, 0, 0.55] for a in angles])
    img, covered = render_shaded(verts_cam, f, K, SIZE, lighting, colours)
    images = np.where(covered[..., None], img * 255 + 0.5, 90).astype(np.uint8)
    labels = np.where(covered, M.FACE, M.BACKGROUND).astype(np.uint8)
    # an unlabelled occluder (a hand) over the stripe in 3 of 12 frames
    occluded = [3, 6, 9]
    for t in occluded:
        uv = verts_cam[t][stripe_mask(v)]
        uv = uv[:, :2] / uv[:, 2:] * 420 + 128
        x0, y0 = np.floor(uv.min(0)).astype(int) - 3
        x1, y1 = np.ceil(uv.max(0)).astype(int) + 3
        images[t, max(y0, 0):y1, max(x0, 0):x1] = RED
    frames = FrameBatch(images, labels, np.zeros_like(covered), verts_cam)
    return dict(v=v, f=f, colours=colours, lighting=lighting, frames=frames, occluded=occluded)


def interior(f, mask):
    """Vertices whose whole one-ring has the same mask value (away from the stripe's blurred border)."""
    bad = np.zeros(len(mask), bool)
    mixed = mask[f].any(1) != mask[f].all(1)
    bad[f[mixed].ravel()] = True
    return ~bad


def test_rasterize_batch_matches_single_frames(scene):
    vc = scene["frames"].verts_cam[:3]
    batch = raster.rasterize_batch(vc, scene["f"], K, *SIZE[::-1])
    for t in range(3):
        one = raster.rasterize(vc[t], scene["f"], K, *SIZE[::-1])
        np.testing.assert_array_equal(batch.tri[t], one.tri)
        np.testing.assert_allclose(batch.depth[t], one.depth)


def test_stripe_comes_back_at_its_place_and_occluder_is_rejected(scene):
    v, f = scene["v"], scene["f"]
    model_albedo = np.full((len(v), 3), 128, np.uint8)
    baked, _ = bake_vertices(scene["frames"], f, K, scene["lighting"], model_albedo, BakeConfig())
    seen = baked.confidence > 0.9
    stripe = stripe_mask(v) & interior(f, stripe_mask(v)) & seen
    skin = ~stripe_mask(v) & interior(f, stripe_mask(v)) & seen & (v[:, 2] > 0)
    assert stripe.sum() > 30 and skin.sum() > 500, (stripe.sum(), skin.sum())
    err_stripe = np.abs(baked.colours[stripe].astype(float) - scene["colours"][stripe]).mean()
    err_skin = np.abs(baked.colours[skin].astype(float) - scene["colours"][skin]).mean()
    assert err_stripe < 6 and err_skin < 6, (err_stripe, err_skin)
    # the occluder's red never reaches the stripe: its worst vertex stays near the stripe colour
    assert np.abs(baked.colours[stripe].astype(float) - scene["colours"][stripe]).max() < 30
    # the right place: every well-seen vertex is nearer its own colour than the other one
    d_stripe = np.abs(baked.colours.astype(float) - STRIPE).sum(1)
    d_skin = np.abs(baked.colours.astype(float) - SKIN).sum(1)
    assert ((d_stripe < d_skin) == stripe_mask(v))[stripe | skin].mean() > 0.99


def test_lighting_is_refitted_in_linear_light(scene):
    """Started from flat lighting (no direction), the refit recovers the light from the +x side: the lit and the
    shadowed cheek come back the same skin colour, which the flat start alone cannot give (alternating fits
    converge slowly from that far; tracked clips start from the tracker's lighting)."""
    v, f = scene["v"], scene["f"]
    flat = Lighting(np.zeros((9, 3), np.float32))
    flat.sh[0] = scene["lighting"].sh[0]
    skin = ~stripe_mask(v) & interior(f, stripe_mask(v)) & (v[:, 2] > 0.5 * RADIUS)
    side = np.sign(v[:, 0]) * (np.abs(v[:, 0]) > 0.3 * RADIUS)

    def cheeks(cfg):
        baked, lighting = bake_vertices(scene["frames"], f, K, flat, np.full((len(v), 3), 128, np.uint8), cfg)
        c = baked.colours.astype(float)
        return np.abs(c[skin & (side > 0)].mean(0) - c[skin & (side < 0)].mean(0)).max(), lighting

    unfitted, _ = cheeks(BakeConfig(lighting_iterations=0))
    fitted, lighting = cheeks(BakeConfig(lighting_iterations=8))
    assert unfitted > 15 and fitted < 3, (unfitted, fitted)
    assert lighting.sh[3, 0] / lighting.sh[0, 0] == pytest.approx(0.25 / scene["lighting"].sh[0, 0], rel=0.2)


def test_refitted_light_has_one_colour(scene):
    """Started from lighting whose colour changes with direction (redder from below, as the tracker's per-channel
    fit can come out), the refit direct light has one colour in every direction and the evenly coloured skin comes
    back evenly coloured from forehead to chin: redness differs by 5 (refitted per channel, the light kept the
    tint it started with, which the video cannot tell from the skin's, and the albedo took the opposite: 43)."""
    from backend.bake.albedo import fibonacci_sphere
    v, f = scene["v"], scene["f"]
    tinted = Lighting(scene["lighting"].sh.copy())
    tinted.sh[1] += [-0.25, 0.1, 0.1]          # the y term: more red towards the chin (OpenCV: +y is down)
    baked, lighting = bake_vertices(scene["frames"], f, K, tinted, np.full((len(v), 3), 128, np.uint8),
                                    BakeConfig(lighting_iterations=2))
    n = fibonacci_sphere(256)
    direct = lighting.direct(n[n[:, 2] < 0])
    assert np.abs(direct / direct.mean(-1, keepdims=True) - 1).max() < 1e-4
    S = lighting.irradiance(n[n[:, 2] < 0])     # no bounced light in this scene: next to none fitted
    assert np.abs(S / S.mean(-1, keepdims=True) - 1).max() < 0.01
    skin = ~stripe_mask(v) & interior(f, stripe_mask(v)) & (v[:, 2] > 0.5 * RADIUS) & (baked.confidence > 0.9)
    chin, forehead = skin & (v[:, 1] < -0.4 * RADIUS), skin & (v[:, 1] > 0.4 * RADIUS)
    redness = baked.colours[:, 0].astype(float) - baked.colours[:, 1]
    assert chin.sum() > 20 and forehead.sum() > 20
    assert abs(redness[chin].mean() - redness[forehead].mean()) < 8, (redness[chin].mean(),
                                                                       redness[forehead].mean())


def test_dark_shading_is_judged_against_the_light_on_the_face():
    """Observations where the light is weak next to what reaches the face weigh less, and none at all below half of
    ``min_shading``, whatever the lighting's overall scale (which the video cannot tell from the albedo's)."""
    from backend.bake.albedo import Observations
    sh = np.zeros((9, 3), np.float32)
    sh[0], sh[1] = 1.0 / 0.28209, -0.9           # light from above (OpenCV: -y)
    normals = np.array([[[0, 0, -1], [0, -0.6, -0.8], [0, 0.8, -0.6], [0, 1, 0]]], np.float32)
    obs = Observations(np.full((1, 4, 3), 0.2, np.float32), normals, np.ones((1, 4), np.float32),
                       np.zeros((1, 4), bool))
    cfg = BakeConfig()
    weights = [obs.albedo(Lighting(sh * scale), cfg)[1][0] for scale in (0.3, 1.0, 4.0)]
    for w in weights[1:]:
        np.testing.assert_allclose(w, weights[0], atol=1e-6)
    assert weights[0][0] == 1 and weights[0][1] == 1 and weights[0][3] == 0 and weights[0][2] < 1


def test_colours_never_clip_whatever_the_lighting_scale(scene):
    """Started from lighting a third as bright as the truth (albedo would come out at 1.7 in linear light), the
    bake settles the scale so the brightest colours stay within ``max_albedo``: the colours keep their ratio to
    the truth (one scale for all channels, skin and stripe), none is clipped."""
    from backend.contracts.conventions import srgb_to_linear
    v, f = scene["v"], scene["f"]
    dim = Lighting(scene["lighting"].sh / 3)
    baked, lighting = bake_vertices(scene["frames"], f, K, dim, np.full((len(v), 3), 128, np.uint8),
                                    BakeConfig(lighting_iterations=0))
    well = (baked.confidence > 0.9) & interior(f, stripe_mask(v)) & (v[:, 2] > 0)
    ratio = srgb_to_linear(baked.colours[well] / 255.0) / srgb_to_linear(scene["colours"][well] / 255.0)
    assert np.percentile(np.abs(ratio - np.median(ratio)), 95) < 0.05 and np.median(ratio) > 1.2, np.median(ratio)
    assert srgb_to_linear(baked.colours[well].max() / 255.0) < BakeConfig().max_albedo + 0.02
    np.testing.assert_allclose(lighting.sh * np.median(ratio), scene["lighting"].sh, atol=0.03 * 3.2)


def test_white_balance_takes_the_light_on_the_face():
    """Equal ambient terms, but the light towards the camera is red: the light's colour is red, and the
    white-balanced lighting is white on the camera-facing directions."""
    from backend.bake.albedo import fibonacci_sphere
    sh = np.zeros((9, 3), np.float32)
    sh[0] = 3.0
    sh[2] = [-1.0, -0.5, 0.0]          # z term: more red towards the camera (OpenCV: -z)
    lighting = Lighting(sh)
    colour = lighting.light_colour()
    assert colour[0] == 1 and colour[2] < 0.8 and colour[0] > colour[1] > colour[2]
    n = fibonacci_sphere(512)
    facing = np.clip(-n[:, 2], 0, None)[:, None]
    seen = (facing * lighting.white_balanced().irradiance(n)).sum(0)
    np.testing.assert_allclose(seen / seen.max(), 1, atol=1e-5)


def test_tracker_lighting_carried_over_to_linear_light():
    """``Lighting.from_fitted``: the tracker's sRGB-space shading of a mid-tone albedo, rendered in linear light,
    gives the same pixels (within 3/255 on normals facing the camera)."""
    from backend.bake.albedo import fibonacci_sphere
    sh = np.zeros((9, 3), np.float32)
    sh[0], sh[3], sh[2] = [2.9, 2.3, 2.0], 0.4, -0.3
    fitted = Shading(sh, np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    n = fibonacci_sphere(400)
    n = n[n[:, 2] < -0.3]
    albedo = np.full((len(n), 3), Lighting.REFERENCE_ALBEDO)
    np.testing.assert_allclose(Lighting.from_fitted(fitted).render(albedo, n), fitted.render(albedo, n),
                               atol=3 / 255)


def test_occluded_frames_alone_would_contaminate(scene):
    """Control: the occluder is strong enough to matter (baking only from occluded frames paints it red)."""
    v, f = scene["v"], scene["f"]
    only = scene["frames"].subset(np.array(scene["occluded"]))
    baked, _ = bake_vertices(only, f, K, scene["lighting"], np.full((len(v), 3), 128, np.uint8), BakeConfig())
    stripe = stripe_mask(v) & interior(f, stripe_mask(v)) & (baked.confidence > 0.5)
    assert stripe.sum() > 20
    assert baked.colours[stripe, 0].mean() > 150   # red


def test_unseen_vertices_take_the_model_albedo_in_the_subjects_tone(scene):
    v, f = scene["v"], scene["f"]
    rng = np.random.default_rng(0)
    model_albedo = np.clip(128 + rng.normal(0, 20, (len(v), 3)), 0, 255).astype(np.uint8)
    baked, _ = bake_vertices(scene["frames"], f, K, scene["lighting"], model_albedo, BakeConfig())
    back = v[:, 2] < -0.8 * RADIUS         # faces away from the camera in every frame
    assert back.sum() > 50
    assert baked.confidence[back].max() < 0.05
    # the back keeps the model's variation but moves to the subject's tone (the skin's mean colour)
    assert np.abs(baked.colours[back].mean(0) - scene["colours"][~stripe_mask(v) & (v[:, 2] > 0)].mean(0)).max() < 25
    assert np.corrcoef(baked.colours[back, 1].astype(float), model_albedo[back, 1].astype(float))[0, 1] > 0.9


def test_eye_and_mouth_regions_keep_their_own_colour(scene):
    """Points seen often enough inside the eye / mouth-interior masks use only those observations: a dark eye
    patch keeps its colour although the eyelid (skin) covers it in two thirds of the frames."""
    v, f = scene["v"], scene["f"]
    fr = scene["frames"]
    eye = (np.abs(v[:, 0] + 0.3 * RADIUS) < 0.2 * RADIUS) & (np.abs(v[:, 1] - 0.35 * RADIUS) < 0.15 * RADIUS) \
        & (v[:, 2] > 0)
    dark = scene["colours"].copy()
    dark[eye] = 20
    img, covered = render_shaded(fr.verts_cam, f, K, SIZE, scene["lighting"], dark)
    images = np.where(covered[..., None], img * 255 + 0.5, 90).astype(np.uint8)
    eye_px = render_shaded(fr.verts_cam, f, K, SIZE, scene["lighting"],
                           np.where(eye[:, None], 255, 0).astype(np.uint8))[0][..., 1] > 0.5
    special = eye_px.copy()
    blink = np.arange(len(fr)) % 3 != 0            # eyelid closed: skin over the eye, no eye mask
    images[blink] = fr.images[blink]
    special[blink] = False
    frames = FrameBatch(images, fr.labels, special, fr.verts_cam)
    baked, _ = bake_vertices(frames, f, K, scene["lighting"], np.full((len(v), 3), 128, np.uint8), BakeConfig())
    core = eye & interior(f, eye) & (baked.confidence > 0.5)
    assert core.sum() > 5
    assert baked.colours[core].mean() < 40


def test_bake_command_refuses_bad_input_and_keeps_the_package(tmp_path, capsys):
    import json

    from backend.cli import main
    from backend.contracts.result_format import ResultPackage
    from fakes.packages import make_package

    assert main(["bake", str(tmp_path / "missing")]) == 2
    pkg = make_package(tmp_path / "res", frames=4, vertices=300)          # its clip path does not exist
    before = (pkg / "canonical_mesh.npz").read_bytes()
    assert main(["bake", str(pkg), "--frames", "50:60"]) == 2
    assert main(["bake", str(pkg)]) == 2
    errors = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"error"' in line]
    assert "no tracked frames" in errors[1]["message"]
    assert "cannot open the tracked clip" in errors[2]["message"] and errors[2]["hint"]
    assert (pkg / "canonical_mesh.npz").read_bytes() == before
    assert ResultPackage(pkg).manifest["state"] == "complete" and "bake" not in ResultPackage(pkg).manifest


def test_package_keeps_model_albedo_beside_the_bake_and_validates_it(tmp_path):
    from backend.contracts import result_format as rf
    from fakes.packages import make_package

    pkg = make_package(tmp_path / "res", frames=2, vertices=300)
    canon = rf.ResultPackage(pkg).canonical_mesh()
    V, F = len(canon.vertices), len(canon.triangles)
    writer = rf.ResultWriter(pkg, rf.read_manifest(pkg))
    with pytest.raises(rf.PackageError, match="baked_albedo"):
        writer.write_bake(canon, np.zeros((V + 1, 3), np.uint8), np.zeros(V + 1), {"frames": [0]})
    with pytest.raises(rf.PackageError, match="uv"):
        writer.write_bake(canon, np.zeros((V, 3), np.uint8), np.zeros(V), {"frames": [0]}, np.zeros((F, 2, 2)),
                          b"png")
    writer.write_bake(canon, np.full((V, 3), 7, np.uint8), np.full(V, 0.5), {"frames": [0, 1]},
                      np.zeros((F, 3, 2)), b"png")
    got = rf.ResultPackage(pkg)
    mesh = got.canonical_mesh()
    np.testing.assert_array_equal(mesh.albedo, canon.albedo)
    assert mesh.baked_albedo[0, 0] == 7 and mesh.baked_confidence.dtype == np.float32 and mesh.uv.shape == (F, 3, 2)
    assert got.texture_path.read_bytes() == b"png" and got.manifest["bake"]["frames"] == [0, 1]
    writer.write_bake(canon, np.full((V, 3), 9, np.uint8), np.full(V, 0.5), {"frames": [1]})   # no texture: removed
    assert rf.ResultPackage(pkg).texture_path is None and not (pkg / rf.TEXTURE).exists()
    assert rf.ResultPackage(pkg).canonical_mesh().uv is None
    writer.write_canonical_mesh(canon.vertices, canon.triangles, canon.albedo)        # a new identity: no bake
    assert rf.ResultPackage(pkg).canonical_mesh().baked_albedo is None and "bake" not in writer.manifest


def test_texture_holds_the_stripe_at_its_place(scene):
    from backend.bake.texture import bake_texture, texel_points, unwrap
    v, f = scene["v"], scene["f"]
    vertex_colours = np.full((len(v), 3), 128, np.uint8)
    uv = unwrap(v, f)
    assert uv.shape == (len(f), 3, 2) and uv.min() >= 0 and uv.max() <= 1
    size = 256
    tex = bake_texture(scene["frames"], f, K, scene["lighting"], uv, vertex_colours, size, BakeConfig())
    points, pix = texel_points(uv, size)
    pos = points.interpolate(f, v[None])[0]                          # each texel's point on the sphere
    colours = tex.reshape(-1, 3)[pix].astype(float)
    truth = np.where(stripe_mask(pos)[:, None], STRIPE, SKIN).astype(float)
    front = pos[:, 2] > 0.3 * RADIUS                                 # well seen in every frame
    inner = front & (np.abs(np.abs(pos[:, 1]) - 0.3 * RADIUS) > 0.04 * RADIUS) \
        & (np.abs(pos[:, 0] - 0.35 * RADIUS) > 0.04 * RADIUS)        # away from the stripe's edges
    assert inner.sum() > 2000
    assert np.abs(colours[inner] - truth[inner]).mean() < 6
    assert np.abs(colours[inner & stripe_mask(pos)] - truth[inner & stripe_mask(pos)]).max() < 30   # no red
    back = pos[:, 2] < -0.8 * RADIUS                                 # never seen: the vertex colours
    assert np.abs(colours[back] - 128).max() < 2


def test_badly_fitted_frames_weigh_less():
    from backend.bake.albedo import fit_weights
    np.testing.assert_allclose(fit_weights(np.array([2.0, 2.0, 2.0, 4.0, np.nan])), [1, 1, 1, 0.25, 1])
    np.testing.assert_allclose(fit_weights(np.full(3, np.nan)), 1)


def test_posed_points_take_the_colour_of_their_canonical_point():
    """Per-frame meshes: a posed point is carried back by the backward deformation and coloured there."""
    import torch

    from backend.bake.posed import CanonicalColours, canonical_points

    class Shifted:   # backward deformation: posed -> canonical is x + (0.1, 0, 0)
        def deformation(self, x, z_geo, z_exp):
            return torch.tensor([0.1, 0.0, 0.0]).expand_as(x), None

    xs = np.linspace(-0.5, 0.5, 41)
    canonical = np.stack(np.meshgrid(xs, xs, [0.0], indexing="ij"), -1).reshape(-1, 3)
    colours = np.where(canonical[:, :1] > 0, [200, 20, 20], [20, 20, 200]).astype(np.uint8)
    posed = np.array([[-0.2, 0.0, 0.0], [0.2, 0.1, 0.0], [-0.04, -0.3, 0.0]])   # canonical x: -0.1, 0.3, 0.06
    got, hair = CanonicalColours(canonical, colours).lookup(canonical_points(Shifted(), None, None, posed))
    np.testing.assert_array_equal(got[:, 0] > 100, [False, True, True])
    assert hair is None
    # the hair vertices (a model with hair) are carried back the same way
    _, hair = CanonicalColours(canonical, colours, hair=canonical[:, 0] > 0.25).lookup(
        canonical_points(Shifted(), None, None, posed))
    np.testing.assert_array_equal(hair, [0, 1, 0])


def down_facing_band_scene(band_light, lighting=None):
    """A sphere under ``lighting`` (default: from above, OpenCV -y), turning in front of the camera, with a band on
    the lower front (a 'nose': normals facing down, away from the light) shown lit by ``band_light`` instead.
    -> (frames, vertices, faces, band, ``lighting``)."""
    v, f = sphere()
    if lighting is None:
        lighting = Lighting(np.zeros((9, 3), np.float32))
        lighting.sh[0] = 1.0 / 0.28209
        lighting.sh[1] = -0.8
    flip = np.diag([1.0, -1.0, -1.0])
    verts_cam = np.stack([(v @ (yaw(a) @ flip).T) + [0, 0, 0.55] for a in np.linspace(-25, 25, 8)])
    y = v[:, 1] / RADIUS
    band = (y > -0.75) & (y < -0.4) & (np.abs(v[:, 0]) < 0.4 * RADIUS) & (v[:, 2] > 0)
    colours = np.tile(SKIN, (len(v), 1))
    img, covered = render_shaded(verts_cam, f, K, SIZE, lighting, colours)
    lit, _ = render_shaded(verts_cam, f, K, SIZE, band_light, colours)
    in_band = render_shaded(verts_cam, f, K, SIZE, band_light, np.where(band[:, None], 255, 0).astype(np.uint8))[0]
    img = np.where(in_band[..., 1:2] > 0.5, lit, img)
    frames = FrameBatch(np.where(covered[..., None], img * 255 + 0.5, 90).astype(np.uint8),
                        np.where(covered, M.FACE, M.BACKGROUND).astype(np.uint8), np.zeros_like(covered), verts_cam)
    return frames, v, f, band, lighting


def crease_and_skin(frames, v, f, band, lighting, cfg):
    """Bake -> (colours (V, 3) 0-255, the band's and the skin's mean linear colour, the fitted lighting)."""
    from backend.contracts.conventions import srgb_to_linear
    baked, fitted = bake_vertices(frames, f, K, lighting, np.full((len(v), 3), 128, np.uint8), cfg)
    y = v[:, 1] / RADIUS
    well = (baked.confidence > 0.5) & interior(f, band)
    crease, skin = well & band, well & ~band & (v[:, 2] > 0.5 * RADIUS) & (np.abs(y) < 0.35)
    assert crease.sum() > 15 and skin.sum() > 100, (crease.sum(), skin.sum())
    lin = srgb_to_linear(baked.colours / 255.0)
    c = baked.colours.astype(float)
    return c[crease].mean() - c[skin].mean(), lin[crease].mean(0), lin[skin].mean(0), fitted


def test_skin_the_lighting_predicts_too_dark_does_not_come_back_as_a_bright_crease():
    """Under a 'nose' the video shows plain skin, lit like the face with orange light (bounced from the cheeks; a
    fold the mesh has and the face lacks), where the SH lighting from above predicts a third to a half of that.
    Dividing by it baked a bright, saturated crease (cap12_edit's orange upper lids and bright patches under the
    nose): 1.59x the skin in linear light (+27/255). The lighting refitted against the surrounding skin
    (``fit_lighting``) lets light come from below, and a skin-coloured bounce: 1.19x (+10/255) before any limit,
    the fitted bounce orange; with no excess allowed (``limit_shadowed``) +5/255. (Its chromaticity stays 0.14
    off the skin's: only this band has the orange light, which one light for the whole sphere cannot give.)"""
    on_face = Lighting(np.zeros((9, 3), np.float32))
    scene = down_facing_band_scene(on_face)
    on_face.sh[0] = 0.9 * scene[4].face_irradiance() / 0.28209 * [1.0, 0.8, 0.7]    # bounced off skin: orange
    scene = down_facing_band_scene(on_face)
    _, crease_lin, skin_lin, fitted = crease_and_skin(*scene, BakeConfig(shadow_excess=np.inf))
    assert crease_lin.mean() / skin_lin.mean() < 1.25, crease_lin.mean() / skin_lin.mean()
    assert fitted.bounce[0] > fitted.bounce[1] > fitted.bounce[2] and fitted.bounce[0] > 0.1, fitted.bounce
    excess, _, _, _ = crease_and_skin(*scene, BakeConfig(shadow_excess=1.0))
    assert excess < 8, excess


def test_bounced_light_is_fitted_and_divided_out():
    """The whole sphere under light from above plus skin-coloured light bounced into where it is weak (the bake's
    own image formation, ``Lighting.irradiance``), the bake started without any bounce: the fit finds an orange
    bounce, and the down-facing skin comes back the skin's colour and brightness."""
    truth = Lighting(np.zeros((9, 3), np.float32), np.array([0.6, 0.35, 0.2], np.float32))
    truth.sh[0], truth.sh[1] = 1.0 / 0.28209, -0.8
    frames, v, f, band, _ = down_facing_band_scene(truth, truth)
    start = Lighting(truth.sh.copy())
    _, crease_lin, skin_lin, fitted = crease_and_skin(frames, v, f, band, start, BakeConfig(shadow_excess=np.inf))
    bounced = fitted.bounce * fitted.face_level()      # the bounced light's colour (the direct light's is white)
    assert bounced[0] > bounced[1] > bounced[2] and fitted.bounce.min() > 0.1, fitted.bounce
    np.testing.assert_allclose(crease_lin / crease_lin.mean(), skin_lin / skin_lin.mean(), atol=0.05)
    assert abs(crease_lin.mean() / skin_lin.mean() - 1) < 0.1, crease_lin.mean() / skin_lin.mean()


def test_shadowed_colour_limit_keeps_darker_colours_and_trusted_ones():
    from backend.bake.albedo import limit_shadowed_colour
    ref = np.array([[0.4, 0.2, 0.1]] * 3, np.float32)
    albedo = np.array([[0.9, 0.3, 0.05], [0.9, 0.3, 0.05], [0.1, 0.05, 0.05]], np.float32)
    out = limit_shadowed_colour(albedo, ref, np.array([0.0, 1.0, 0.0], np.float32))
    np.testing.assert_allclose(out[0], ref[0], atol=1e-6)       # untrusted and brighter: the reference
    np.testing.assert_allclose(out[1], albedo[1], atol=1e-6)    # trusted: untouched
    assert out[2].mean() == pytest.approx(albedo[2].mean()) and out[2][0] / out[2][2] == pytest.approx(4.0)


BROW = np.array([70, 50, 40], np.uint8)


def moving_brow_scene(n_lat=40, n_lon=80, brow_ring=12):
    """The sphere with a dark brow (three rings of vertices on the front) that the mesh does not move: in 8 of 20
    frames the brow sits on the mesh's brow, in the other 12 the image shows it 4, 6 or 8 rings higher (29-58 mm;
    4 frames each). The detector's brow points follow the brow in the image."""
    from backend.contracts import landmark_tables as L
    v, f = sphere(n_lat, n_lon)
    ring = np.repeat(np.arange(n_lat - 2), n_lon)
    ring = np.concatenate([ring, [-1, -1]])
    front = (v[:, 2] > 0) & (np.abs(v[:, 0]) < 0.75 * RADIUS)
    lighting = Lighting(np.zeros((9, 3), np.float32))
    lighting.sh[0] = 0.9 / 0.28209
    flip = np.diag([1.0, -1.0, -1.0])
    lifts = np.array([0, 4, 0, 6, 8] * 4)                   # rings the image's brow sits above the mesh's
    angles = np.linspace(-20, 20, len(lifts))
    verts_cam = np.stack([(v @ (yaw(a) @ flip).T) + [0, 0, 0.55] for a in angles])
    images = np.zeros((len(lifts), SIZE[1], SIZE[0], 3), np.uint8)
    landmarks = np.full((len(lifts), 478, 2), np.nan, np.float32)
    centre_line = (np.arange(-10, 10) % n_lon)                   # 20 longitudes across the front
    for t, lift in enumerate(lifts):
        brow = front & (np.abs(ring - (brow_ring - lift)) <= 1)
        colours = np.where(brow[:, None], BROW, SKIN).astype(np.uint8)
        img, covered = render_shaded(verts_cam[t:t + 1], f, K, SIZE, lighting, colours)
        images[t] = np.where(covered[0, ..., None], img[0] * 255 + 0.5, 90).astype(np.uint8)
        p = verts_cam[t, (brow_ring - lift) * n_lon + centre_line]
        landmarks[t, list(L.MP_BROWS)] = p[:, :2] / p[:, 2:] * K[0, 0] + K[0, 2]
    covered = raster.rasterize_batch(verts_cam, f, K, *SIZE[::-1]).tri >= 0
    labels = np.where(covered, M.FACE, M.BACKGROUND).astype(np.uint8)
    frames = FrameBatch(images, labels, np.zeros_like(covered), verts_cam, landmarks=landmarks)
    mesh_brow = front & (ring == brow_ring) & (np.abs(v[:, 0]) < 0.5 * RADIUS)
    return frames, v, f, lighting, mesh_brow


def test_features_are_baked_from_the_frames_where_the_mesh_matches_the_image():
    """A brow the mesh does not follow: without the detector's points every frame counts and the brow, on the
    mesh's brow in 8 of 20 frames only, comes back skin-coloured; weighted by how far the brow points are from the
    mesh's brow in each frame, the mesh's brow takes the brow's colour from the 8 frames where the two agree."""
    import dataclasses
    frames, v, f, lighting, mesh_brow = moving_brow_scene()
    model = np.full((len(v), 3), 128, np.uint8)
    aligned, _ = bake_vertices(frames, f, K, lighting, model, BakeConfig())
    blind, _ = bake_vertices(dataclasses.replace(frames, landmarks=None), f, K, lighting, model, BakeConfig())
    assert mesh_brow.sum() >= 10
    err_aligned = np.abs(aligned.colours[mesh_brow].astype(float) - BROW).mean()
    err_blind = np.abs(blind.colours[mesh_brow].astype(float) - BROW).mean()
    assert err_aligned < 12 and err_blind > 60, (err_aligned, err_blind)


def test_feature_points_of_each_landmark_scheme():
    from backend.bake.alignment import feature_landmarks
    from backend.contracts import landmark_tables as L
    mp = feature_landmarks(478)
    assert set(L.MP_BROWS) <= set(mp) and set(L.MP_LIPS) <= set(mp) and not set(L.MP_NOSE) & set(mp)
    ibug = feature_landmarks(68)
    assert set(range(48, 68)) <= set(ibug) and set(range(36, 48)) <= set(ibug) and not set(range(17)) & set(ibug)
    assert len(feature_landmarks(5)) == 0


def test_a_highlight_in_every_frame_is_not_baked_as_a_bright_patch(scene):
    """Scattered vertices 1.6x as bright as the skin (linear light) in every frame, as the sheen under the nose tip
    is: they come back at most about ``highlight_excess`` (1.25x) as bright as the skin around them; without the
    limit, ~1.6x."""
    from backend.contracts.conventions import linear_to_srgb, srgb_to_linear
    v, f = sphere(80, 160)
    front = np.flatnonzero((v[:, 2] > 0.8 * RADIUS))
    spot = np.zeros(len(v), bool)
    spot[front[::97]] = True
    bright = (np.clip(linear_to_srgb(1.6 * srgb_to_linear(SKIN / 255.0)), 0, 1) * 255 + 0.5).astype(np.uint8)
    colours = np.where(spot[:, None], bright, SKIN).astype(np.uint8)
    flip = np.diag([1.0, -1.0, -1.0])
    verts_cam = np.stack([(v @ (yaw(a) @ flip).T) + [0, 0, 0.55] for a in np.linspace(-20, 20, 6)])
    img, covered = render_shaded(verts_cam, f, K, SIZE, scene["lighting"], colours)
    frames = FrameBatch(np.where(covered[..., None], img * 255 + 0.5, 90).astype(np.uint8),
                        np.where(covered, M.FACE, M.BACKGROUND).astype(np.uint8), np.zeros_like(covered), verts_cam)
    model = np.full((len(v), 3), 128, np.uint8)
    core = spot
    skin = ~spot & (v[:, 2] > 0.8 * RADIUS) & interior(f, spot)

    def ratio(cfg):
        baked, _ = bake_vertices(frames, f, K, scene["lighting"], model, cfg)
        lin = srgb_to_linear(baked.colours / 255.0)
        return lin[core].mean() / lin[skin].mean()

    assert core.sum() > 5
    assert 1.1 < ratio(BakeConfig()) < 1.3
    assert ratio(BakeConfig(highlight_excess=np.inf)) > 1.45


def test_feature_point_is_tied_to_the_vertex_under_it_in_the_most_frames():
    """A point over vertex 3 in 60 of 100 frames and spread over vertices 5-8 in the others is tied to
    vertex 3, also when the candidates come from 8 frames only."""
    from backend.bake.alignment import landmark_vertices
    T = 100
    uv = np.broadcast_to(np.arange(10.0)[None, :, None] * [10.0, 0.0], (T, 10, 2)).copy()
    over = np.where(np.arange(T) % 5 < 3, 3, 5 + np.arange(T) % 4)
    points = uv[np.arange(T), over][:, None] + 0.5
    visible = np.ones((T, 10), bool)
    for n in (100, 8):
        assert landmark_vertices(uv, visible, points, np.full(T, 1.0), max_candidates=n)[0] == 3


def test_texture_keeps_to_the_vertex_bakes_highlight_limit(scene):
    """The texture's texels keep to the vertex bake's brightness cap (``BakedColours.brightness_cap``), as its
    vertex colours do: with a cap of half the skin's brightness on every vertex no texel is brighter."""
    from backend.bake.albedo import limit_brightness
    from backend.bake.texture import bake_texture, unwrap
    from backend.contracts.conventions import linear_to_srgb, srgb_to_linear
    v, f = scene["v"], scene["f"]
    baked, lighting = bake_vertices(scene["frames"], f, K, scene["lighting"], np.full((len(v), 3), 128, np.uint8),
                                    BakeConfig())
    assert baked.brightness_cap is not None and baked.brightness_cap.shape == (len(v),)
    uv = unwrap(v, f)
    cap = np.full(len(v), 0.5 * srgb_to_linear(SKIN / 255.0).mean(), np.float32)
    capped_colours = (linear_to_srgb(limit_brightness(srgb_to_linear(baked.colours / 255.0), cap)) * 255 + 0.5
                      ).astype(np.uint8)
    free = bake_texture(scene["frames"], f, K, lighting, uv, capped_colours, 64, BakeConfig())
    capped = bake_texture(scene["frames"], f, K, lighting, uv, capped_colours, 64, BakeConfig(), cap)
    brightness = [srgb_to_linear(t / 255.0).mean(-1).max() for t in (free, capped)]
    assert brightness[1] < cap[0] * 1.03 < brightness[0], (brightness, cap[0])
