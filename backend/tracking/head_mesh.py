"""Fixed-topology head mesh for tracking output and the draft silhouette.

- ``extract_canonical_mesh``: the neutral canonical mesh of an identity (``backend.model.meshing``'s narrow-band
  marching cubes with cubic cells, largest component).  Its per-frame vertices come from the model core's
  ``backend.model.meshing.warp_vertices`` (warm-started root finding, neighbour repair).
- ``outline_silhouette_loss``: the draft preset's cheap, differentiable silhouette term from projected vertices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..contracts.landmark_tables import MM_PER_UNIT
from . import masks as M
from . import raster


@dataclass
class HeadMesh:
    """The tracker's fixed-topology head mesh: a canonical (neutral) surface whose vertices are warped per frame."""

    vertices: np.ndarray   # (V, 3) float32 model units
    faces: np.ndarray      # (F, 3) int32


def extract_canonical_mesh(model, z_geo: torch.Tensor, resolution: int = 96, box=None,
                           keep_largest: bool = True) -> HeadMesh:
    """Neutral canonical mesh of identity ``z_geo`` (1, D_geo) for tracking: the model core's narrow-band
    marching cubes (``model.meshing.canonical_mesh``, no colours) with cubic cells -- ``resolution`` cells along the
    box's longest side, over a cube around the box -- keeping the largest connected component.

    ``resolution`` must be c * 2^k with 8 <= c <= 16 or a multiple of 16 (40, 80, 96, 128, ...).
    """
    from ..model.meshing import canonical_mesh

    lo, hi = (np.asarray(b, np.float64) for b in (box or model.cfg.mesh_box))
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    coarse = int(resolution)
    while coarse > 16 and coarse % 2 == 0:
        coarse //= 2
    mesh = canonical_mesh(model, z_geo, res=int(resolution), box=(centre - half, centre + half), coarse_res=coarse,
                          with_color=False)
    if not len(mesh.faces):
        raise RuntimeError("the identity's SDF has no zero crossing in the mesh box")
    v, f = mesh.vertices, mesh.faces
    if keep_largest:
        v, f = _largest_component(v, f)
    return HeadMesh(np.asarray(v, np.float32), np.asarray(f, np.int32))


def _largest_component(v: np.ndarray, f: np.ndarray):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(v)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    big = np.argmax(np.bincount(lab[f[:, 0]]))
    return _compact(v, f[lab[f[:, 0]] == big])[:2]


def _compact(v: np.ndarray, f: np.ndarray):
    """Drop the vertices no face uses. -> (vertices, faces renumbered, the kept vertices' old indices)."""
    used = np.unique(f)
    remap = np.full(len(v), -1, np.int64)
    remap[used] = np.arange(len(used))
    return v[used], remap[f], used


# the eyes' membrane sits this far (model units, 2 mm) behind the lid margins it spans (the cornea's depth)
EYE_MEMBRANE_DEPTH = 0.008


def fill_eye_pockets(mesh: HeadMesh, contours, depth: float = EYE_MEMBRANE_DEPTH) -> HeadMesh:
    """The mesh with the pockets behind its eye openings filled. MonoNPHM's surface has no eyeballs: between the
    lids it runs ~15 mm back into a pocket (cap12_edit), in whose shadow a renderer with shadows (Cycles, Eevee)
    draws the eyes black. ``contours``: one (k, 3) array per eye, the lid margin around the opening in order
    (canonical, model units, +z forward). Every vertex inside a contour seen from the front (x, y) and more than
    ``depth`` behind the plane the contour spans (least squares) moves forward onto ``depth`` behind it; the
    pocket's walls fold onto that membrane. Faces the folding turns to face backwards (all three corners moved,
    normal away from the front) are dropped with any vertex left without a face: coplanar with the membrane's
    front faces, they fought them for depth and drew the eyes mottled grey and white. Nothing moves backwards,
    nothing outside the openings moves."""
    v, f, _ = _fill_pockets(mesh.vertices, mesh.faces, contours, depth)
    return HeadMesh(v.astype(np.float32), f.astype(mesh.faces.dtype))


def _fill_pockets(vertices: np.ndarray, faces: np.ndarray, contours, depth: float):
    """``fill_eye_pockets`` -> (vertices (V', 3) float64, faces (F', 3), the kept vertices' old indices (V',))."""
    from skimage.measure import points_in_poly

    v = np.array(vertices, np.float64)
    moved = np.zeros(len(v), bool)
    forward = np.zeros((len(v), 3))                   # the membrane's front normal at each moved vertex
    for contour in contours:
        c = np.asarray(contour, np.float64)
        plane = np.linalg.lstsq(np.c_[c[:, :2], np.ones(len(c))], c[:, 2], rcond=None)[0]
        inside = np.flatnonzero(points_in_poly(v[:, :2], c[:, :2]))
        target = v[inside, :2] @ plane[:2] + plane[2] - depth
        deeper = v[inside, 2] < target
        behind = inside[deeper]
        v[behind, 2] = target[deeper]
        moved[behind] = True
        forward[behind] = np.r_[-plane[:2], 1.0] / np.linalg.norm(np.r_[-plane[:2], 1.0])
    f = np.asarray(faces, np.int64)
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    flipped = moved[f].all(1) & ((normal * forward[f[:, 0]]).sum(1) < 0)
    if not flipped.any():
        return v, f, np.arange(len(v))
    return _compact(v, f[~flipped])


def fill_posed_eye_pockets(posed: HeadMesh, canonical: np.ndarray, contours) -> tuple:
    """A posed surface of any tessellation (a frame's own marching-cubes mesh) with its eye pockets filled as the
    canonical mesh's are (``fill_eye_pockets``): ``canonical`` (V, 3) are its vertices carried back to the canonical
    space of the ``contours`` (the model's backward deformation); each vertex moves as filling moves its canonical
    point. -> (the filled posed mesh, the filled canonical points of its vertices)."""
    filled, faces, kept = _fill_pockets(canonical, posed.faces, contours, EYE_MEMBRANE_DEPTH)
    moved = filled - np.asarray(canonical, np.float64)[kept]
    return HeadMesh((posed.vertices[kept] + moved).astype(np.float32), faces.astype(posed.faces.dtype)), filled


# a vertex is on the hair where it lies this far (model units, 2 mm) outside the same identity's bald head
HAIR_MIN_OFFSET = 0.008


@torch.no_grad()
def hair_vertices(model, z_geo_bald: torch.Tensor, vertices: np.ndarray, z_exp: Optional[torch.Tensor] = None
                  ) -> np.ndarray:
    """(V,) uint8, 1 for vertices on the hair volume: outside the bald head (identity code ``z_geo_bald``, the same
    person with the hair parameters at 0; canonical for ``z_exp`` None, else posed with it) by > HAIR_MIN_OFFSET."""
    dev = z_geo_bald.device
    x = torch.as_tensor(np.asarray(vertices, np.float32), device=dev)[None]
    sdf = model.sdf_only(x, z_geo_bald, z_exp, neutral=z_exp is None)[0, :, 0]
    return (sdf > HAIR_MIN_OFFSET).cpu().numpy().astype(np.uint8)


def hair_over_face_mm(model, z_geo_bald: torch.Tensor, z_exp: torch.Tensor, points: torch.Tensor,
                      hit: torch.Tensor) -> torch.Tensor:
    """Mean over rays of how far (mm) their rendered surface points lie outside the same identity's bald head beyond
    HAIR_MIN_OFFSET (where ``hair_vertices`` calls a point hair): () differentiable in ``points`` only.

    z_geo_bald (1, D_geo) the bald identity code (``CodeSpace.z_geo_bald``), z_exp (1, D_exp) the frame's expression
    code (both held fixed: only the rendered surface may move), points (R, 3) posed model units, hit (R,) bool: rays
    that cross the surface (a miss has no rendered surface and adds 0)."""
    sdf = model(points[None], z_geo_bald.detach(), None, z_exp.detach(), neutral=False, with_color=False).sdf[0, :, 0]
    excess = (sdf - HAIR_MIN_OFFSET).clamp_min(0.0) * MM_PER_UNIT
    return (excess * hit.to(excess.dtype)).sum() / max(len(points), 1)


class SilhouetteTargets:
    """Per-frame silhouette data derived from the labels (computed once per frame with numpy/cv2; the tensors on
    ``device``, the tracker's)."""

    def __init__(self, labels: np.ndarray, max_contour: int = 400, seed: int = 0, device=None):
        import cv2
        self.labels = labels
        H, W = labels.shape
        bg = (labels == M.BACKGROUND).astype(np.uint8)
        # distance (px) from each background pixel to the nearest non-background pixel
        dist = cv2.distanceTransform(bg, cv2.DIST_L2, 3) if bg.any() else np.zeros((H, W), np.float32)
        self.bg_dist = torch.as_tensor(dist, dtype=torch.float32, device=device)[None, None]
        target = M.is_head(labels).astype(np.uint8)
        self.target = target.astype(bool)
        # contour of the head region: where the surface outline must reach
        er = cv2.erode(target, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(target & (1 - er))
        if len(xs) > max_contour:
            sel = np.random.default_rng(seed).choice(len(xs), max_contour, replace=False)
            xs, ys = xs[sel], ys[sel]
        self.contour = torch.as_tensor(np.stack([xs + 0.5, ys + 0.5], -1), dtype=torch.float32, device=device)
        self.contour_pixels = np.zeros((H, W), bool)   # (H, W) the pixels of ``contour``
        self.contour_pixels[ys, xs] = True
        self.size = (H, W)


def sample_map(m: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a (1, C, H, W) map at pixel coordinates uv (N, 2) -> (N, C); border-clamped."""
    H, W = m.shape[-2:]
    g = torch.stack([uv[:, 0] / W * 2 - 1, uv[:, 1] / H * 2 - 1], -1)[None, None]
    return F.grid_sample(m, g.to(m.dtype), mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T


def outline_silhouette_loss(uv: torch.Tensor, visible_outline: torch.Tensor, tg: SilhouetteTargets,
                            face_size: float, covered: Optional[np.ndarray] = None) -> torch.Tensor:
    """Draft silhouette from projected mesh vertices (no volume rendering).

    - outside term: vertices landing on background pay their distance to the nearest non-background pixel;
    - inside term: face-region contour pixels not covered by the mesh pull the nearest outline vertex.
    uv: (V, 2) projected vertices (differentiable); visible_outline: (V,) bool, silhouette vertices (no grad);
    covered: (H, W) bool current mesh coverage (no grad), contour pixels inside it are satisfied.
    Distances are normalised by the face size in pixels.
    """
    out = sample_map(tg.bg_dist, uv)[:, 0]
    loss = (out / face_size).pow(2).mean()
    if tg.contour.shape[0] and bool(visible_outline.any()):
        c = tg.contour
        if covered is not None:
            ci = c.long().cpu().numpy()
            c = c[~torch.as_tensor(covered[ci[:, 1], ci[:, 0]], device=c.device)]
        if c.shape[0]:
            d = torch.cdist(c.to(uv.dtype), uv[visible_outline])            # (C, O)
            loss = loss + (d.min(1).values / face_size).pow(2).sum() / tg.contour.shape[0]
    return loss


def outline_vertices(verts_cam: np.ndarray, normals_cam: np.ndarray, thresh: float = 0.25) -> np.ndarray:
    """(V,) bool: vertices near the silhouette (view direction almost tangent)."""
    v = verts_cam / np.linalg.norm(verts_cam, axis=1, keepdims=True)
    return np.abs((v * normals_cam).sum(1)) < thresh


def coverage_iou(verts_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, labels: np.ndarray):
    """Mask IoU between the rendered mesh coverage and the head labels (IGNORE pixels excluded)."""
    H, W = labels.shape
    frag = raster.rasterize(verts_cam, faces, K, H, W)
    cov = frag.mask
    valid = labels != M.IGNORE
    tgt = M.is_head(labels)
    inter = (cov & tgt & valid).sum()
    union = ((cov | tgt) & valid).sum()
    return float(inter / union) if union else float("nan"), frag
