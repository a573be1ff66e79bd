"""Held-out quality vs training time: evaluate run snapshots / checkpoints and print a table.

    .venv/bin/python benchmarks/train_quality.py runs/builtin/snapshots/step_*.pt runs/builtin/ckpt_last.pt \
        [--ids 4] [--steps 120] [--points 2000] [--out runs/builtin/quality.json]

Each checkpoint is scored with backend.training.evaluate (codes fitted to GT surface points of held-out identities
x expressions, networks frozen; mean distance from GT face-region points to the zero level set, mm).
Results are appended to --out (JSON list) so several sittings build one curve.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--ids", type=int, default=4)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from backend.training.evaluate import evaluate

    rows = []
    out = Path(a.out) if a.out else None
    if out and out.exists():
        rows = json.loads(out.read_text())
    for c in a.checkpoints:
        r = evaluate(c, n_ids=a.ids, steps=a.steps, n_eval=a.points, threads=a.threads, verbose=False)
        r.pop("per_shape", None)
        rows.append(r)
        print(f"{Path(c).name:24s} step {r['step']:>6} {r['train_minutes']:7.1f} min  mean {r['mean_mm']:.3f} mm  "
              f"median {r['median_mm']:.3f}  p90 {r['p90_mm']:.3f}  neutral {r['neutral_mean_mm']:.3f}  "
              f"expr {r['expr_mean_mm']:.3f}  jaw {r['jaw_open_mean_mm']:.3f}  (template {r['baseline_mean_mm']:.3f})"
              f"  arkit MAE fitted {r['arkit_mae_fitted']:.3f}", flush=True)
        if out:
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
