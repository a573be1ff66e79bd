"""PNG plots: loss curves from log.jsonl / val.jsonl, and held-out reconstructions next to ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _read_jsonl(path: Path):
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def plot_losses(run_dir, out_png=None, keys=("total", "surf_sdf", "near_sdf", "off_sdf", "normals", "eikonal",
                                               "color", "corresp", "anchors", "arkit")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = _read_jsonl(run_dir / "log.jsonl")
    val = _read_jsonl(run_dir / "val.jsonl")
    if not rows:
        return None
    # a resumed run may repeat steps: keep the last record per step
    by_step = {r["step"]: r for r in rows}
    steps = np.array(sorted(by_step))
    n = len(keys)
    cols = 5
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)))
    vs = {r["step"]: r for r in val}
    vsteps = np.array(sorted(vs))
    for ax, k in zip(axes.ravel(), keys):
        y = np.array([by_step[s].get(k, np.nan) for s in steps], float)
        if len(y) > 20:
            w = max(1, len(y) // 100)
            ys = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(steps[:len(ys)] + (w - 1) // 2, ys, lw=1, label="train")
        else:
            ax.plot(steps, y, lw=1, label="train")
        if len(vsteps):
            ax.plot(vsteps, [vs[s].get(k, np.nan) for s in vsteps], "o-", ms=2, lw=1, label="held-out")
        ax.set_title(k, fontsize=9)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png) if out_png else run_dir / "losses.png"
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def shade(normals: np.ndarray, mask: np.ndarray, light=(0.3, 0.4, 1.0)) -> np.ndarray:
    l = np.asarray(light, float)
    l /= np.linalg.norm(l)
    s = np.clip(normals @ l, 0, 1) * 0.8 + 0.2
    img = np.where(mask, s, 1.0)
    return img


def splat_points(points, normals, res=160, box=((-0.45, -0.75), (0.45, 0.5))):
    """Orthographic frontal z-buffer of dense surface points -> shaded (res_y, res_x) image (GT rendering)."""
    (x0, y0), (x1, y1) = box
    ry = int(round(res * (y1 - y0) / (x1 - x0)))
    ix = ((points[:, 0] - x0) / (x1 - x0) * (res - 1)).round().astype(int)
    iy = ((y1 - points[:, 1]) / (y1 - y0) * (ry - 1)).round().astype(int)
    ok = (ix >= 0) & (ix < res) & (iy >= 0) & (iy < ry)
    zbuf = np.full((ry, res), -np.inf)
    nbuf = np.zeros((ry, res, 3))
    order = np.argsort(points[ok, 2])
    ixs, iys, z, n = ix[ok][order], iy[ok][order], points[ok, 2][order], normals[ok][order]
    for dy in (0, 1):  # 2x2 footprint closes the gaps between samples
        for dx in (0, 1):
            yy, xx = np.minimum(iys + dy, ry - 1), np.minimum(ixs + dx, res - 1)
            front = z >= zbuf[yy, xx]
            zbuf[yy[front], xx[front]] = z[front]
            nbuf[yy[front], xx[front]] = n[front]
    return shade(nbuf, np.isfinite(zbuf))


def save_recon_grid(rows, out_png, titles=None):
    """rows: list of (gt_img, pred_img, err_text)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.6))
    axes = np.asarray(axes).reshape(2, n)
    for j, (gt, pred, txt) in enumerate(rows):
        axes[0, j].imshow(gt, cmap="gray", vmin=0, vmax=1)
        axes[1, j].imshow(pred, cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title((titles[j] if titles else "") + "\nGT", fontsize=7)
        axes[1, j].set_title(f"model {txt}", fontsize=7)
        for a in axes[:, j]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
