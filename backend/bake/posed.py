"""Baked colours on posed surfaces of any topology (the per-frame USD meshes).

A tracking run, which holds the model, carries each posed point back to the canonical space by the model's backward
deformation (``canonical_points``) and takes the colour of the canonical surface there (``CanonicalColours.at``). A
re-bake holds no model; it recolours the package's USD meshes in posed space instead (``recolour_mesh_sequence``):
each USD vertex takes the colour of the nearest points of the same frame's posed canonical mesh (the package's
per-frame vertices: the same surface, another tessellation)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..contracts.result_format import ResultPackage


class CanonicalColours:
    """Colours of the canonical mesh, and its hair vertices, looked up at canonical points.

    Args:
        vertices: (V, 3) vertices of the mesh the colours belong to (the canonical mesh in model units, or a
            frame's posed copy of it).
        colours: (V, 3) uint8 sRGB.
        k: nearest vertices blended by inverse distance (smooth across the mesh's own vertex spacing).
        hair: (V,) uint8, 1 for the vertices on the hair volume (``tracking.head_mesh.hair_vertices``), or None
            (a model without hair).
    """

    def __init__(self, vertices: np.ndarray, colours: np.ndarray, k: int = 4, hair: Optional[np.ndarray] = None):
        self.tree = cKDTree(np.asarray(vertices, np.float64))
        self.colours = np.asarray(colours, np.float64)
        self.hair = None if hair is None else np.asarray(hair, np.float64)
        self.k = k

    def lookup(self, points: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(N, 3) points (the vertices' units) -> (N, 3) uint8 colours and (N,) uint8 hair flags (the blended flags
        of the nearest vertices > 0.5; None without ``hair``): the per-frame meshes' hair from the lookup their colours
        make anyway (a posed query of the bald head at every vertex was 3/4 of the hair's extra meshing time)."""
        d, i = self.tree.query(np.asarray(points, np.float64), k=self.k)
        w = 1.0 / np.maximum(d, 1e-6)
        w /= w.sum(1, keepdims=True)
        c = (w[..., None] * self.colours[i]).sum(1)
        hair = None if self.hair is None else ((w * self.hair[i]).sum(1) > 0.5).astype(np.uint8)
        return (np.clip(c, 0, 255) + 0.5).astype(np.uint8), hair

    def at(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) points (the vertices' units) -> (N, 3) uint8."""
        return self.lookup(points)[0]


@torch.no_grad()
def canonical_points(model, z_geo: torch.Tensor, z_exp: torch.Tensor, points: np.ndarray,
                     chunk: int = 32768) -> np.ndarray:
    """(N, 3) posed points (model units) of expression z_exp (1, D) -> (N, 3) their canonical points by the backward
    deformation x -> x + δ(x)."""
    device = None if z_geo is None else z_geo.device   # the codes' device: the model's
    x = torch.as_tensor(np.asarray(points, np.float32), device=device)
    offsets = torch.cat([model.deformation(x[None, s:s + chunk], z_geo, z_exp)[0][0]
                         for s in range(0, len(x), chunk)]) if len(x) else x
    return (x + offsets).cpu().numpy()


def recolour_mesh_sequence(pkg: ResultPackage, colours: np.ndarray, out) -> None:
    """Write the package's per-frame USD meshes to ``out`` (geometry and timing as they are) coloured by the
    canonical-mesh ``colours`` (V, 3) uint8, looked up on each frame's posed canonical mesh."""
    from ..usd_export import FrameMesh, read_mesh_sequence, write_mesh_sequence
    fps, frames = read_mesh_sequence(pkg.usd_path)
    posed = pkg.frame_arrays(["vertices"])["vertices"]                 # (T, V, 3) metres, before the rigid pose
    row = {int(i): k for k, i in enumerate(pkg.frame_indices)}

    def recoloured():
        for frame in frames:
            lookup = CanonicalColours(posed[row[frame.frame_index]], colours)
            yield FrameMesh(frame.frame_index, frame.vertices, frame.triangles, lookup.at(frame.vertices))

    write_mesh_sequence(out, recoloured(), fps)
