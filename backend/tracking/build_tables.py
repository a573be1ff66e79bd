"""Developer tool: derive MediaPipe-478 <-> ICT-FaceKit surface correspondences by rendering the ICT neutral head
from several views, running the MediaPipe face mesh on the renders and looking each landmark up on the rendered
surface. Prints the table literal stored in ``backend/contracts/landmark_tables.py`` (``MEDIAPIPE_ICT_VERTEX``,
``MEDIAPIPE_ICT_POS``).

    python -m backend.tracking.build_tables --ict /path/to/ict_face_model_light_head_f16.npz
"""
from __future__ import annotations

import argparse

import numpy as np

from ..contracts import landmark_tables as lt
from ..contracts.conventions import NPHM_UNIT_M, Intrinsics
from . import camera, raster
from .landmarks import MediaPipeLandmarker

def ict_render_setup(npz):
    V = lt.ict_cm_to_model(npz["neutral"].astype(np.float64))
    F = npz["faces"].astype(np.int64)
    reg = npz["region"]
    F = F[np.isin(reg[F], [0, 1, 2, 4]).all(1)]
    return V, F, reg


def ict_albedo(V, reg):
    alb = np.tile(np.array([[0.85, 0.62, 0.52]]), (len(V), 1))
    alb[reg == 4] = [0.95, 0.95, 0.95]
    eb = np.flatnonzero(reg == 4)
    for side in (V[eb, 0] < 0, V[eb, 0] > 0):
        ids = eb[side]
        if ids.size:
            alb[ids[V[ids, 2] > V[ids, 2].max() - 0.012]] = [0.2, 0.12, 0.08]
    return alb


def mediapipe_on_mesh(V, F, alb, views, size=512, fov=30.0):
    """3D surface points (in V's frame) under each MediaPipe landmark, per view: (n_views, 478, 3), NaN if missed."""
    K = Intrinsics.from_fov(size, size, fov).matrix()
    det = MediaPipeLandmarker(video_mode=False)
    out = np.full((len(views), 478, 3), np.nan)
    for i, (yaw, pitch) in enumerate(views):
        R, t = camera.look_at_pose(0.9, yaw_deg=yaw, pitch_deg=pitch)
        vc = (NPHM_UNIT_M * V) @ R.T + t
        img, frag = raster.render_rgb(vc, F, K, size, size, alb, background=np.array([60, 90, 120]))
        lm = det(img)
        if not lm.found:
            continue
        px = np.clip(np.floor(lm.points).astype(int), 0, size - 1)
        tri = frag.tri[px[:, 1], px[:, 0]]
        ok = tri >= 0
        b = frag.bary[px[ok, 1], px[ok, 0]]
        out[i, ok] = np.einsum("nk,nkc->nc", b, V[F[tri[ok]]])
    det.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ict", required=True)
    a = ap.parse_args(argv)
    d = np.load(a.ict)
    V, F, reg = ict_render_setup(d)
    alb = ict_albedo(V, reg)
    views = [(y, p) for y in (-12, 0, 12) for p in (-8, 0, 8)]
    pts = mediapipe_on_mesh(V, F, alb, views)
    med = np.nanmedian(pts, 0)                        # (478, 3)
    spread = np.nanmedian(np.linalg.norm(pts - med, axis=-1), 0)
    cand = np.flatnonzero(np.isin(reg, [0, 1, 2]))
    dd = np.linalg.norm(V[cand][None] - med[:, None], axis=-1)
    vid = cand[np.argmin(dd, 1)]
    print("# spread (mm) median/max:", np.median(spread) * lt.MM_PER_UNIT, np.max(spread) * lt.MM_PER_UNIT)
    print("MEDIAPIPE_ICT_VERTEX = (" + ", ".join(str(int(v)) for v in vid) + ")")
    print("MEDIAPIPE_ICT_POS_MM = (" + ", ".join(f"({x:.1f}, {y:.1f}, {z:.1f})" for x, y, z in med * lt.MM_PER_UNIT) + ")")


if __name__ == "__main__":
    main()
