"""Speed of the built-in MonoNPHM sizes on CPU: training steps/s and inference points/s.

    .venv/bin/python benchmarks/train_speed.py [--threads 1] [--steps 6] [--presets builtin,small,wide]

Prints one JSON line per preset: parameters, MB (float32), training s/step (B=8, default sample sizes),
SDF-only no-grad points/s, first-order (SDF + backward to codes) points/s, and SDF + d/dx with create_graph
(tracking with normals) points/s. Needs the shared ICT-FaceKit data for the training step.
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.model.parallel import set_threads  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe_host, host_line  # noqa: E402
from backend.training.modelwrap import build_model, model_config  # noqa: E402


def presets():
    b = model_config("builtin")
    return {
        "builtin": b,
        "small": dataclasses.replace(b, hidden_dim_geo=48, hidden_dim_app=48, hidden_dim_ex=96, name="small"),
        "wide": dataclasses.replace(b, hidden_dim_geo=96, hidden_dim_app=96, hidden_dim_ex=192, name="wide"),
    }


def bench_inference(model, n=8192, reps=3):
    cfg = model.cfg
    zg = torch.randn(1, cfg.dim_geo) * 0.01
    ze = torch.randn(1, cfg.dim_exp) * 0.01
    x = (torch.rand(1, n, 3) - 0.5) * 0.8
    res = {}
    with torch.no_grad():
        model(x, zg, None, ze, with_color=False)
        t = time.time()
        for _ in range(reps):
            model(x, zg, None, ze, with_color=False)
        res["sdf_nograd_pts_s"] = n * reps / (time.time() - t)
    zg.requires_grad_(True)
    ze.requires_grad_(True)
    t = time.time()
    for _ in range(reps):
        o = model(x, zg, None, ze, with_color=False)
        o.sdf.abs().mean().backward()
    res["first_order_pts_s"] = n * reps / (time.time() - t)
    m = n // 4
    t = time.time()
    for _ in range(reps):
        o = model(x[:, :m], zg, None, ze, with_color=False, with_gradient=True)
        (o.sdf.abs().mean() + (o.gradient.norm(dim=-1) - 1).abs().mean()).backward()
    res["with_normals_pts_s"] = m * reps / (time.time() - t)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--presets", default="builtin,small,wide")
    a = ap.parse_args()
    set_threads(a.threads)
    host = describe_host()
    print(host_line(host), flush=True)
    for name in a.presets.split(","):
        cfg = presets()[name]
        model = build_model(cfg, torch.zeros(cfg.n_anchors, 3))
        n_par = sum(p.numel() for p in model.parameters())
        rec = {"host": host, "preset": name, "threads": a.threads, "params": n_par,
               "mb_float32": round(n_par * 4 / 1e6, 2)}
        rec.update({k: round(v) for k, v in bench_inference(model).items()})
        try:
            from backend.training.train import Trainer, parse_args
            import backend.training.train as T
            orig = T.model_config
            T.model_config = lambda p, _c=cfg: _c
            tr = Trainer(parse_args(["--out", "/tmp/bench_train_" + name]))
            T.model_config = orig
            tr.train_step()
            t = time.time()
            for _ in range(a.steps):
                tr.train_step()
            rec["train_s_per_step_B8"] = round((time.time() - t) / a.steps, 3)
        except FileNotFoundError as e:
            rec["train_s_per_step_B8"] = f"skipped: {e}"
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
