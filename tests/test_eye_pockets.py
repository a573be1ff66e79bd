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
