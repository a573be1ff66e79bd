"""The pockets behind the eye openings (MonoNPHM's surface has no eyeballs) are filled up to just behind the lids,
so renderers with shadows do not draw the eyes black (backend.tracking.head_mesh.fill_eye_pockets)."""
import numpy as np

from backend.tracking.head_mesh import EYE_MEMBRANE_DEPTH, HeadMesh, fill_eye_pockets


def face_with_pocket(tilt=0.2):
    """A grid 'face' (model units, +z forward) tilted forward at the top, with an eye opening: the vertices inside an
    ellipse lie 0.06 (15 mm) behind the surface. -> (mesh, inside, contour (16, 3) on the lid margin)."""
    xs = np.linspace(-0.2, 0.2, 81)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    surface = tilt * Y
    inside = (X / 0.08) ** 2 + (Y / 0.03) ** 2 < 1
    Z = np.where(inside, surface - 0.06, surface)
    v = np.stack([X, Y, Z], -1).reshape(-1, 3)
    idx = np.arange(v.shape[0]).reshape(X.shape)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    contour = np.stack([0.082 * np.cos(t), 0.032 * np.sin(t), tilt * 0.032 * np.sin(t)], -1)
    return HeadMesh(v.astype(np.float32), f.astype(np.int32)), inside.reshape(-1), contour


def test_eye_pocket_is_filled_to_just_behind_the_lids():
    mesh, inside, contour = face_with_pocket()
    filled = fill_eye_pockets(mesh, [contour])
    surface = 0.2 * mesh.vertices[:, 1]
    np.testing.assert_allclose(filled.vertices[inside, 2], surface[inside] - EYE_MEMBRANE_DEPTH, atol=1e-5)
    np.testing.assert_array_equal(filled.vertices[~inside], mesh.vertices[~inside])   # nothing else moves
    np.testing.assert_array_equal(filled.vertices[:, :2], mesh.vertices[:, :2])
    np.testing.assert_array_equal(filled.faces, mesh.faces)


def test_nothing_in_front_of_the_membrane_moves_back():
    mesh, inside, contour = face_with_pocket()
    bulging = HeadMesh(mesh.vertices.copy(), mesh.faces)
    bulging.vertices[inside, 2] = 0.2 * mesh.vertices[inside, 1] + 0.01     # an eyeball in front of the lids
    np.testing.assert_array_equal(fill_eye_pockets(bulging, [contour]).vertices, bulging.vertices)
    np.testing.assert_array_equal(fill_eye_pockets(mesh, []).vertices, mesh.vertices)


def test_per_frame_meshes_are_filled_as_the_canonical_mesh():
    """A frame's own surface (here the canonical grid moved and sheared by an expression: the backward deformation
    gives back the canonical points) keeps no pocket behind the lid contour: each vertex moves as filling moves its
    canonical point, and its colour is looked up at the filled canonical point."""
    from backend.tracking.head_mesh import fill_posed_eye_pockets
    mesh, inside, contour = face_with_pocket()
    canonical = mesh.vertices.astype(np.float64)
    shear = np.stack([0.1 * canonical[:, 1], 0.02 + 0 * canonical[:, 1], 0.05 * canonical[:, 0]], -1)
    posed = HeadMesh((canonical + shear).astype(np.float32), mesh.faces)
    filled, filled_canonical = fill_posed_eye_pockets(posed, canonical, [contour])
    np.testing.assert_allclose(filled_canonical, fill_eye_pockets(mesh, [contour]).vertices, atol=1e-6)
    surface = 0.2 * canonical[:, 1] + shear[:, 2]                 # the posed face's surface over each vertex
    np.testing.assert_allclose(filled.vertices[inside, 2], surface[inside] - EYE_MEMBRANE_DEPTH, atol=1e-5)
    np.testing.assert_array_equal(filled.vertices[~inside], posed.vertices[~inside])


def test_ibug68_tracks_fill_their_eye_pockets_too():
    """iBUG 68's six lid points per eye give the same contours (in MediaPipe's order) as MediaPipe's."""
    from backend.contracts.landmark_tables import IBUG68_FROM_MEDIAPIPE
    from backend.tracking import masks as M
    from backend.tracking.tracker import Tracker

    class Stub:   # the landmark table and canonical landmarks eye_contours reads: canonical point k at (k, 0, 0)
        lm_idx = np.arange(68)

        @staticmethod
        def canonical_landmarks(zg):
            import torch
            return torch.arange(68.0)[:, None] * torch.tensor([1.0, 0.0, 0.0])

    contours = Tracker.eye_contours(Stub(), None)
    assert len(contours) == 2
    for contour, mp in zip(contours, M.EYE_CONTOURS):
        ibug = contour[:, 0].astype(int)
        assert sorted(ibug) == list(range(36, 42)) or sorted(ibug) == list(range(42, 48))
        order = [list(mp).index(IBUG68_FROM_MEDIAPIPE[i]) for i in ibug]
        assert order == sorted(order)


def test_folded_walls_are_dropped_not_left_facing_backwards():
    """A pocket whose wall folds back under itself (a band of columns mirrored in x, deeper still): filled, the fold
    lies on the membrane facing backwards, where it fought the front faces for depth (mottled eyes). Those faces go,
    with the vertices only they used; the membrane's front faces still cover the opening."""
    mesh, inside, contour = face_with_pocket()
    v = mesh.vertices.reshape(81, 81, 3).copy()
    band = slice(36, 45)
    fold = inside.reshape(81, 81)[band]
    v[band, :, 0] = np.where(fold, v[band, :, 0][::-1], v[band, :, 0])
    v[band, :, 2] = np.where(fold, v[band, :, 2] - 0.02, v[band, :, 2])
    folded = HeadMesh(v.reshape(-1, 3), mesh.faces)
    filled = fill_eye_pockets(folded, [contour])
    w, f = filled.vertices.astype(np.float64), filled.faces
    on_membrane = np.isclose(w[:, 2], 0.2 * w[:, 1] - EYE_MEMBRANE_DEPTH, atol=1e-6)
    n = np.cross(w[f[:, 1]] - w[f[:, 0]], w[f[:, 2]] - w[f[:, 0]])
    flat = on_membrane[f].all(1)
    assert flat.sum() > 100 and (n[flat, 2] > 0).all()
    assert len(f) < len(mesh.faces) and len(np.unique(f)) == len(w) < len(mesh.vertices)
    area = 0.5 * n[flat, 2].sum()
    assert area > 0.95 * np.pi * 0.08 * 0.03, area               # the opening (ellipse) stays covered
