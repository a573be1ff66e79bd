"""Baked colours on posed surfaces of any topology (the per-frame USD meshes): each posed point is carried back to
the canonical space by the model's backward deformation and takes the colour of the canonical surface there."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


class CanonicalColours:
    """Colours of the canonical mesh, looked up at canonical points.

    Args:
        vertices: (V, 3) canonical mesh vertices, model units.
        colours: (V, 3) uint8 sRGB.
        k: nearest vertices blended by inverse distance (smooth across the mesh's own vertex spacing).
    """

    def __init__(self, vertices: np.ndarray, colours: np.ndarray, k: int = 4):
        self.tree = cKDTree(np.asarray(vertices, np.float64))
        self.colours = np.asarray(colours, np.float64)
        self.k = k

    def at(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) canonical points, model units -> (N, 3) uint8."""
        d, i = self.tree.query(np.asarray(points, np.float64), k=self.k)
        w = 1.0 / np.maximum(d, 1e-6)
        c = (w[..., None] * self.colours[i]).sum(1) / w.sum(1, keepdims=True)
        return (np.clip(c, 0, 255) + 0.5).astype(np.uint8)

    @torch.no_grad()
    def at_posed(self, model, z_geo: torch.Tensor, z_exp: torch.Tensor, points: np.ndarray,
                 chunk: int = 32768) -> np.ndarray:
        """(N, 3) posed points (model units) of expression z_exp (1, D) -> (N, 3) uint8 via the backward
        deformation x -> x + δ(x)."""
        device = None if z_geo is None else z_geo.device   # the codes' device: the model's
        x = torch.as_tensor(np.asarray(points, np.float32), device=device)
        offsets = torch.cat([model.deformation(x[None, s:s + chunk], z_geo, z_exp)[0][0]
                             for s in range(0, len(x), chunk)]) if len(x) else x
        return self.at((x + offsets).cpu().numpy())
