"""Held-out evaluation of a trained model (no images).

For each held-out identity (fixed seed stream, never trained on) x its expressions (neutral, two held-out
expression combos, one random expression, one wide jaw opening): fit codes to GT surface points with the networks
frozen, then measure the distance from GT face-region (ICT region 0) surface points to the model's zero level set,
found by Newton projection along the SDF gradient (x <- x - sdf * g / |g|^2), in mm.

    python -m backend.training.evaluate CKPT [--ids 4] [--steps 150] [--json out.json] [--png recon.png]

CKPT: a run checkpoint (ckpt_last.pt: EMA weights are used), a snapshot, or an exported model folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from ..contracts.landmark_tables import MM_PER_UNIT
from .modelwrap import build_model
from ..model import MonoNPHMConfig, load_model
from ..model.checkpoint import load_encoders
from ..model.encoders import ArkitRegressor, CodeEncoders
from ..model.parallel import set_threads


# ---------------------------------------------------------------------------------------------------------------
def load_for_eval(path):
    """-> (model, encoders, regressor, meta) from a run checkpoint, a snapshot or an exported model folder."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path)
    st = torch.load(path, map_location="cpu", weights_only=False)
    cfg = MonoNPHMConfig.from_dict(st["config"])
    model = build_model(cfg, torch.tensor(st["mean_anchors"]), init=False)
    enc = CodeEncoders(cfg.dim_geo, cfg.dim_app, cfg.dim_exp, n_id=st["encoders"]["geo.weight"].shape[1])
    reg = ArkitRegressor(cfg.dim_exp)
    model.load_state_dict(st["model"])
    enc.load_state_dict(st["encoders"])
    reg.load_state_dict(st["arkit_regressor"])
    if "ema" in st:  # full training checkpoint: evaluate the EMA weights
        with torch.no_grad():
            for dst, src in zip(list(model.parameters()) + list(enc.parameters()) + list(reg.parameters()),
                                st["ema"]):
                dst.copy_(src)
    meta = {"step": st.get("step"), "elapsed": st.get("elapsed"), "anchor_vertices": st.get("anchor_vertices")}
    return model.eval(), enc.eval(), reg.eval(), meta


def load_exported(model_dir):
    """-> (model, encoders, regressor, meta) like ``load_for_eval``, from an exported model folder."""
    model = load_model(model_dir)
    enc, reg = load_encoders(model_dir)
    tr = model.extra.get("training", {})
    meta = {"step": tr.get("step"), "elapsed": 60 * float(tr.get("minutes", 0)),
            "anchor_vertices": model.extra.get("anchor_ict_vertex")}
    return model.eval(), enc, reg, meta


def gt_points(ict, w_id, w_ex, n, rng, face_only=True):
    v = ict.vertices(w_id, w_ex)
    nrm = ict.vertex_normals(v)
    areas = ict.tri_areas(v)
    mask = ict.tri_is_face if face_only else np.ones(len(ict.faces), bool)
    tri, bary = D._sample_tris(rng, areas, mask, n)
    p = D._interp(v, ict.faces, tri, bary)
    nn = D._interp(nrm, ict.faces, tri, bary)
    nn /= np.linalg.norm(nn, axis=1, keepdims=True)
    return p.astype(np.float32), nn.astype(np.float32)


def project_distance(model, z_geo, z_exp, x, iters=6, chunk=4096):
    """Distance (N,) from points x (N,3) to the zero level set along the SDF gradient (NPHM units)."""
    out = []
    for s in range(0, len(x), chunk):
        x0 = x[s:s + chunk][None]
        xi = x0.clone()
        for _ in range(iters):
            o = model(xi, z_geo, None, z_exp, with_color=False, with_gradient=True, create_graph=False)
            g = o.gradient
            step = o.sdf * g / (g.pow(2).sum(-1, keepdim=True) + 1e-8)
            step = step.clamp(-0.05, 0.05)
            xi = (xi - step).detach()
        o = model(xi, z_geo, None, z_exp, with_color=False, with_gradient=True, create_graph=False)
        d = torch.linalg.vector_norm(xi - x0, dim=-1)[0]
        # where Newton did not land on the surface, use the first-order estimate |sdf|/|g| at the start
        bad = o.sdf[0, :, 0].abs() > 2e-4
        if bad.any():
            o0 = model(x0, z_geo, None, z_exp, with_color=False, with_gradient=True, create_graph=False)
            est = o0.sdf[0, :, 0].abs() / (torch.linalg.vector_norm(o0.gradient[0], dim=-1) + 1e-8)
            d = torch.where(bad, torch.maximum(est, d), d)
        out.append(d.detach())
    return torch.cat(out)


def mesh_distance(model, z_geo, z_exp, pts, res=256, margin=0.04, chunk=65536):
    """Distance (N,) from points to a marching-cubes mesh of the posed model (cross-check of the projection).

    The grid covers the bounding box of `pts` plus `margin` with `res` voxels along its longest side (finer than a
    256^3 head box), evaluated coarse-to-fine: a grid 4x coarser, trilinear upsampling, exact re-evaluation where
    |sdf| < 3 coarse voxels. Distances: KD-tree over ~1.5M area-uniform samples of the mesh triangles.
    """
    from scipy.spatial import cKDTree
    from skimage.measure import marching_cubes
    lo = pts.min(0) - margin
    hi = pts.max(0) + margin
    h = float((hi - lo).max()) / (res - 1)
    n = np.ceil((hi - lo) / h).astype(int) + 1

    def ev(P):
        out = []
        for s in range(0, len(P), chunk):
            out.append(model.sdf_only(torch.from_numpy(P[s:s + chunk].astype(np.float32)), z_geo, z_exp)[0, :, 0])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    nc = (n + 3) // 4 + 1
    axes_c = [lo[i] + np.arange(nc[i]) * 4 * h for i in range(3)]
    Gc = np.stack(np.meshgrid(*axes_c, indexing="ij"), -1).reshape(-1, 3)
    sc = ev(Gc).reshape(*nc)
    up = torch.nn.functional.interpolate(torch.from_numpy(sc)[None, None], size=tuple((nc - 1) * 4 + 1),
                                         mode="trilinear", align_corners=True)[0, 0].numpy()[:n[0], :n[1], :n[2]]
    band = np.abs(up) < 3 * 4 * h
    idx = np.nonzero(band)
    P = lo + np.stack(idx, -1) * h
    up[idx] = ev(P)
    v, f, _, _ = marching_cubes(up, 0.0, spacing=(h, h, h))
    v = v + lo
    a = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    rng = np.random.default_rng(0)
    tri = rng.choice(len(f), size=1_500_000, p=a / a.sum())
    r1, r2 = rng.random(len(tri)), rng.random(len(tri))
    sq = np.sqrt(r1)
    bary = np.stack([1 - sq, sq * (1 - r2), sq * r2], 1)
    dense = (v[f[tri]] * bary[:, :, None]).sum(1)
    return cKDTree(dense).query(pts)[0], {"voxel_mm": h * MM_PER_UNIT, "grid": n.tolist(),
                                          "evaluated": int(Gc.shape[0] + len(P))}


_STATIC = [D.arkit.ICT_NAMES.index(n) for n in D.STATIC_CHANNELS]


def fit_identity(model, enc, pts_list, steps=150, n_pts=600, lr=0.05, reg_id=1e-3, reg_ex=1e-3, seed=0,
                 refine_codes=True, refine_exp=False, l1_ex=3e-4):
    """Fit one identity (shared w_id) and per-shape w_ex to surface points (list of (N,3) arrays).

    Parameterisation: ICT-coefficient space through the encoders (w_id 100-d, w_ex 53-d, w_ex projected to [0,1]),
    then (refine_codes) a free residual on z_geo (and on z_exp if refine_exp) for the last third of the steps.
    """
    gen = torch.Generator().manual_seed(seed)
    S = len(pts_list)
    P = [torch.from_numpy(p) for p in pts_list]
    w_id = torch.zeros(1, enc.geo.in_features, requires_grad=True)
    w_ex = torch.zeros(S, enc.exp.in_features, requires_grad=True)
    dz_geo = torch.zeros(1, enc.geo.out_features, requires_grad=True)
    dz_exp = torch.zeros(S, enc.exp.out_features, requires_grad=True)
    opt = torch.optim.Adam([w_id, w_ex], lr=lr)
    opt2 = torch.optim.Adam([dz_geo, dz_exp], lr=lr * 0.02)
    t_ref = int(steps * 2 / 3) if refine_codes else steps + 1
    for it in range(steps):
        if it == steps // 2:
            for g in opt.param_groups:
                g["lr"] = lr * 0.3
        x = torch.stack([p[torch.randint(len(p), (n_pts,), generator=gen)] for p in P])
        z_geo = enc.encode_geo(w_id) + dz_geo
        z_exp = enc.encode_exp(w_ex) + dz_exp
        o = model(x, z_geo.expand(S, -1), None, z_exp, with_color=False)
        loss = o.sdf.abs().mean() + reg_id * (w_id ** 2).mean() + reg_ex * (w_ex ** 2).mean() \
            + l1_ex * w_ex.abs().sum(1).mean() \
            + 1e-2 * ((dz_geo ** 2).sum() + (dz_exp ** 2).sum() / S)
        opt.zero_grad()
        opt2.zero_grad()
        loss.backward()
        opt.step()
        if it >= t_ref:
            opt2.step()
        with torch.no_grad():  # ICT expression weights live in [0, 1]; gaze channels stay 0 (static eyes)
            w_ex.clamp_(0.0, 1.0)
            w_ex[:, _STATIC] = 0.0
            if not refine_exp:
                dz_exp.zero_()
    with torch.no_grad():
        z_geo = enc.encode_geo(w_id) + dz_geo
        z_exp = enc.encode_exp(w_ex) + dz_exp
    return z_geo.detach(), z_exp.detach(), w_id.detach(), w_ex.detach()


_MEAN_TREE = {}


def mean_template_baseline(ict, pts):
    """Distance (N,) from points to the ICT mean head (all weights 0), dense-sample approximation (~0.05 mm)."""
    from scipy.spatial import cKDTree
    key = id(ict)
    if key not in _MEAN_TREE:
        v = ict.vertices()
        areas = ict.tri_areas(v)
        tri, bary = D._sample_tris(np.random.default_rng(0), areas, np.ones(len(ict.faces), bool), 600_000)
        _MEAN_TREE[key] = cKDTree(D._interp(v, ict.faces, tri, bary))
    return _MEAN_TREE[key].query(pts)[0]


def evaluate(path, n_ids=4, steps=150, n_eval=3000, ict=None, png=None, verbose=True, threads=None,
             mesh_check=0, hair_ids=0):
    if threads:
        set_threads(threads)
    t0 = time.time()
    model, enc, reg, meta = load_for_eval(path)
    for p in list(model.parameters()) + list(enc.parameters()) + list(reg.parameters()):
        p.requires_grad_(False)
    ict = ict or D.ICTModel()
    vp = D.validation_params(n_ids=n_ids)
    rng = np.random.default_rng(12345)
    per_shape = []
    ark_fit, ark_enc, ark_gt, ark_w = [], [], [], []
    recon_rows = []
    for i in range(n_ids):
        shapes = [p for p in vp if p[0] == i]
        fit_pts = [gt_points(ict, w_id, w_ex, 6000, rng, face_only=False)[0] for (_, w_id, w_ex, _, _, _) in shapes]
        z_geo, z_exp, w_id_f, w_ex_f = fit_identity(model, enc, fit_pts, steps=steps, seed=i)
        for s, (_, w_id, w_ex, app, _, lab) in enumerate(shapes):
            pts, _ = gt_points(ict, w_id, w_ex, n_eval, rng, face_only=True)
            d = project_distance(model, z_geo, z_exp[s:s + 1], torch.from_numpy(pts)).numpy() * MM_PER_UNIT
            base = mean_template_baseline(ict, pts) * MM_PER_UNIT
            rec = {"id": i, "expr": lab, "mean_mm": float(d.mean()), "median_mm": float(np.median(d)),
                   "p90_mm": float(np.percentile(d, 90)), "baseline_mean_mm": float(base.mean())}
            if len(per_shape) < mesh_check:
                dm, info = mesh_distance(model, z_geo, z_exp[s:s + 1], pts)
                rec["mesh_mean_mm"] = float(dm.mean() * MM_PER_UNIT)
                rec["mesh_median_mm"] = float(np.median(dm) * MM_PER_UNIT)
                rec["mesh_voxel_mm"] = info["voxel_mm"]
            per_shape.append(rec)
            gt_ark = D.arkit.ict_to_arkit(w_ex)
            with torch.no_grad():
                ark_fit.append(reg(z_exp[s:s + 1])[0].numpy())
                ark_enc.append(reg(enc.encode_exp(torch.from_numpy(w_ex)[None]))[0].numpy())
            ark_gt.append(gt_ark)
            ark_w.append(D.arkit.ict_to_arkit(np.clip(w_ex_f[s].numpy(), 0, 1)))
            if verbose:
                print(f"[eval] id {i} {lab:10s} mean {rec['mean_mm']:.3f} mm  median {rec['median_mm']:.3f}  "
                      f"p90 {rec['p90_mm']:.3f}  (mean template {rec['baseline_mean_mm']:.2f})",
                      file=sys.stderr, flush=True)
            if png and s in (0, 2, 4) and len(recon_rows) < 9:
                recon_rows.append(_render_pair(model, ict, w_id, w_ex, z_geo, z_exp[s:s + 1], rec, lab, rng))
    arr = lambda k: np.array([r[k] for r in per_shape])  # noqa: E731
    ark_fit, ark_enc, ark_gt, ark_w = map(np.array, (ark_fit, ark_enc, ark_gt, ark_w))
    active = [j for j, n in enumerate(D.arkit.ARKIT_NAMES) if n not in D.arkit.UNDRIVEN_ARKIT]
    res = {
        "checkpoint": str(path), "step": meta.get("step"), "train_minutes": (meta.get("elapsed") or 0) / 60,
        "n_shapes": len(per_shape), "fit_steps": steps, "n_eval_points": n_eval,
        "mean_mm": float(arr("mean_mm").mean()), "median_of_means_mm": float(np.median(arr("mean_mm"))),
        "median_mm": float(arr("median_mm").mean()), "p90_mm": float(arr("p90_mm").mean()),
        "max_shape_mean_mm": float(arr("mean_mm").max()),
        "neutral_mean_mm": float(np.mean([r["mean_mm"] for r in per_shape if r["expr"] == "neutral"])),
        "expr_mean_mm": float(np.mean([r["mean_mm"] for r in per_shape if r["expr"] != "neutral"])),
        "heldout_combo_mean_mm": float(np.mean([r["mean_mm"] for r in per_shape if r["expr"].startswith("heldout")])),
        "jaw_open_mean_mm": float(np.mean([r["mean_mm"] for r in per_shape if r["expr"] == "jawOpen"])),
        "baseline_mean_mm": float(arr("baseline_mean_mm").mean()),
        "mesh_check": [{k: r[k] for k in ("id", "expr", "mean_mm", "mesh_mean_mm", "mesh_median_mm",
                                          "mesh_voxel_mm")} for r in per_shape if "mesh_mean_mm" in r],
        "arkit_mae_fitted": float(np.abs(ark_fit - ark_gt)[:, active].mean()),
        "arkit_mae_fitted_weights": float(np.abs(ark_w - ark_gt)[:, active].mean()),
        "arkit_mae_encoded": float(np.abs(ark_enc - ark_gt)[:, active].mean()),
        "arkit_mae_zero_baseline": float(np.abs(ark_gt)[:, active].mean()),
        "per_shape": per_shape,
    }
    if hair_ids:
        res["hair"] = evaluate_hair(model, enc, ict, hair_ids, steps, n_eval, verbose)
    res["eval_seconds"] = time.time() - t0
    if png and recon_rows:
        from .plots import save_recon_grid
        save_recon_grid([r[:3] for r in recon_rows], png, titles=[r[3] for r in recon_rows])
    return res


def evaluate_hair(model, enc, ict, n_ids=3, steps=150, n_eval=3000, verbose=True) -> dict:
    """Held-out heads with hair (``data.hair_validation_params``): fit the identity (ICT weights and, for a model
    with hair inputs, the hair parameters) to surface points of head + hair, then the distance (mm) from the
    union's face-region points and hair points to the zero level set. A bald model is the baseline."""
    vp = D.hair_validation_params(n_ids)
    sizes = D.SampleSizes(n_face=n_eval, n_other=2 * n_eval, hair_share=0.6, n_near=10, n_off=10, n_far=10,
                          n_corr=10)
    rows = []
    for i in range(n_ids):
        shapes = [p for p in vp if p[0] == i]
        samples = [D.make_sample(ict, np.zeros(65, np.int64), w_id, w_ex, app, ns, np.random.default_rng(ns), sizes,
                                 hair=hair) for (_, w_id, w_ex, app, ns, hair, _) in shapes]
        z_geo, z_exp, _, _ = fit_identity(model, enc, [s["surf"] for s in samples], steps=steps, seed=i)
        for k, (s, shape) in enumerate(zip(samples, shapes)):
            d = project_distance(model, z_geo, z_exp[k:k + 1], torch.from_numpy(s["surf"])).numpy() * MM_PER_UNIT
            hair_pts = s["surf_is_hair"] > 0
            face_pts = (s["surf_is_face"] > 0) & ~hair_pts
            rec = {"id": i, "expr": shape[-1], "face_mean_mm": float(d[face_pts].mean()),
                   "hair_mean_mm": float(d[hair_pts].mean()) if hair_pts.any() else None,
                   "hair_p90_mm": float(np.percentile(d[hair_pts], 90)) if hair_pts.any() else None}
            rows.append(rec)
            if verbose:
                print(f"[eval-hair] id {i} {rec['expr']:8s} face {rec['face_mean_mm']:.3f} mm  hair "
                      f"{rec['hair_mean_mm']:.3f} mm (p90 {rec['hair_p90_mm']:.2f})", file=sys.stderr, flush=True)
    hair = [r["hair_mean_mm"] for r in rows if r["hair_mean_mm"] is not None]
    return {"n_shapes": len(rows), "face_mean_mm": float(np.mean([r["face_mean_mm"] for r in rows])),
            "hair_mean_mm": float(np.mean(hair)), "hair_p90_mm": float(np.mean([r["hair_p90_mm"] for r in rows
                                                                                  if r["hair_p90_mm"] is not None])),
            "per_shape": rows}


def _render_pair(model, ict, w_id, w_ex, z_geo, z_exp, rec, lab, rng, res=120):
    from .plots import splat_points
    v = ict.vertices(w_id, w_ex)
    nrm = ict.vertex_normals(v)
    areas = ict.tri_areas(v)
    tri, bary = D._sample_tris(rng, areas, np.ones(len(ict.faces), bool), 250_000)
    p = D._interp(v, ict.faces, tri, bary)
    n = D._interp(nrm, ict.faces, tri, bary)
    gt = splat_points(p, n, res=res)
    pred = sphere_trace_image(model, z_geo, z_exp, res=res)
    return gt, pred, f"{rec['mean_mm']:.2f}mm", f"id{rec['id']} {lab}"


def sphere_trace_image(model, z_geo, z_exp, res=120, box=((-0.45, -0.75), (0.45, 0.5)), z0=0.6, iters=40):
    from .plots import shade
    (x0, y0), (x1, y1) = box
    ry = int(round(res * (y1 - y0) / (x1 - x0)))
    xs = np.linspace(x0, x1, res)
    ys = np.linspace(y1, y0, ry)
    X, Y = np.meshgrid(xs, ys)
    o = torch.from_numpy(np.stack([X, Y, np.full_like(X, z0)], -1).reshape(-1, 3).astype(np.float32))[None]
    t = torch.zeros(o.shape[1])
    with torch.no_grad():
        for _ in range(iters):
            p = o.clone()
            p[0, :, 2] -= t
            s = model(p, z_geo, None, z_exp, with_color=False).sdf[0, :, 0]
            t = t + s.clamp(min=-0.02) * 0.9
        p = o.clone()
        p[0, :, 2] -= t
        s = model(p, z_geo, None, z_exp, with_color=False).sdf[0, :, 0]
    hit = (s.abs() < 3e-3) & (t < 1.6)
    g = model(p, z_geo, None, z_exp, with_color=False, with_gradient=True, create_graph=False).gradient[0]
    n = torch.nn.functional.normalize(g, dim=-1).numpy()
    return shade(n.reshape(ry, res, 3), hit.numpy().reshape(ry, res))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m backend.training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--ids", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--points", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--hair-ids", type=int, default=0,
                    help="also evaluate N held-out identities with hair (face and hair-region distances)")
    ap.add_argument("--mesh-check", type=int, default=0,
                    help="also score the first N shapes against a marching-cubes mesh (res 256 over the face box)")
    a = ap.parse_args(argv)
    res = evaluate(a.checkpoint, n_ids=a.ids, steps=a.steps, n_eval=a.points, png=a.png, threads=a.threads,
                   mesh_check=a.mesh_check, hair_ids=a.hair_ids)
    summary = {k: v for k, v in res.items() if k != "per_shape"}
    if "hair" in summary:
        summary["hair"] = {k: v for k, v in summary["hair"].items() if k != "per_shape"}
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
