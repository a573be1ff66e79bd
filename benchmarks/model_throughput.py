"""MonoNPHM model throughput on CPU: batched implementation vs a per-type-loop baseline, vs matmul peak.

Measures, at the official size and at the built-in size, points/s for
  (a) SDF-only inference (posed, no colour, no grad),
  (b) SDF + colour inference,
  (c) a tracking step: SDF, colour and d sdf/dx with create_graph, loss backward to the codes, as one graph with
      torch's intra-op threads (what the tracker does; `track_step_chunked_pts_per_s`: chunks of the point set
      forward/backward-ed on Python worker threads instead, `backend.model.parallel.backward_in_chunks`),
beside the straightforward per-type-loop implementation (`backend/model/reference_loop.py`) of the same model
(run with the same chunk threading, so the ratio measures the batching alone),
and the achieved matmul FLOP/s of (a) beside the machine's measured dense fp32 matmul FLOP/s.

The LAST line printed is one JSON object (official size at top level, `builtin` sub-object).
Usage: python benchmarks/model_throughput.py [--threads 2] [--quick]

Each size runs in a fresh process (`--one-size`); the tracking step is the best of >= 4 steps (it was best of 1-2,
and one-graph (c) then ranged 2,400-6,200 pts/s between runs).
Last full run (2026-11-26 00:02, peak 378 GFLOP/s, bf16 2,355): official (a) 34,600 (38% of peak, 76% of the kernel
bound 45,500), bf16 (a) 65,800, (b) 22,800, (c) 5,750 (chunked 5,910); built-in (a) 160,000 (b) 116,000 (c) 26,600
(chunked 29,800), bf16 (a) 205,000; the per-type loop: official 15,800 / 11,400 / 1,890.
Before (2026-11-25 23:25, the host's slow phase: peak 327 GFLOP/s, bf16 2,162): official (a) 30,100 (38% of
peak, 76% of the kernel bound 39,600), bf16 (a) 58,600, (b) 20,200, (c) 5,200 (chunked 5,390); built-in (a) 148,000
(b) 111,000 (c) 26,200, bf16 (a) 183,000; the per-type loop: official 14,000 / 9,400 / 1,800.
Before (2026-11-25 20:58, peak 360 GFLOP/s, bf16 2,193): official (a) 32,100 (37% of peak, 70% of the kernel
bound 46,200), bf16 (a) 63,500, (b) 21,200, (c) 5,800; built-in (a) 148,000 (b) 105,000 (c) 27,900, bf16 (a) 226,000.
Before it (2026-11-25 20:08, 2 threads, idle 2-core host; this host's speed drifts over the day: matmul fp32 peak
305-327 GFLOP/s in the morning, 357-424 in the afternoon, so compare figures of one run only): peak 320 GFLOP/s
(bf16 1,846); official (a) 29,400 (b) 20,200 (c) 5,500 pts/s (chunked 5,100), 121 GFLOP/s = 38% of peak, 73% of the
kernel bound (40,400 pts/s: grouped matmul 125 GFLOP/s and softplus 1.55 ns per element on one thread, x2; with no
gather/kNN/blend work at all (a) could reach 50-53% of the peak); (a) in bfloat16 (the coarse mesh passes): 52,700
(64,800 at 19:42); loop (a) 12,600, (c) 1,770.  Built-in (a) 135,000 (b) 111,000 (c) 26,800, bf16 (a) 220,000.
Since 16:33: type groups padded to 16 rows (bf16 (a) 13,900 -> 37,900: oneDNN had JIT-compiled a kernel per ragged
group), chained no-grad layers (+9% fp32, +16% bf16), bf16 softplus by table lookup (-> 52,700-64,800), oneDNN
fused linear in the deformation value path.
(16:33, peak 357: official (a) 28,600 (b) 19,700 (c) 5,900, bf16 (a) 13,900-20,600; built-in (a) 161,000 (b) 116,000
(c) 28,900.  Morning runs, 14:58-15:24, peak 305-327: official (a) 23,900-26,000 (b) 16,000-17,400 (c) 4,760-5,240.)
Earlier (d59ddb0, load average 3.2-4.3, peak 116 GFLOP/s): official (a) 10,941 (b) 6,975 (c) 1,741.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend.model import MonoNPHM, MonoNPHMConfig  # noqa: E402
from backend.model.meshing import bf16_supported  # noqa: E402
from backend.model.parallel import backward_in_chunks, map_chunks, set_threads  # noqa: E402
from backend.model.reference_loop import loop_forward  # noqa: E402
from host import describe_host, host_line, matmul_peak, timeit  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("MONONPHM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def mean_anchors(n: int) -> torch.Tensor:
    f = shared_dir() / "fixtures" / "official-parity" / "anchors_65.npy"
    if f.is_file() and n == 65:
        return torch.tensor(np.load(f), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)  # head-like synthetic anchors when the official file is absent
    d = torch.randn(n, 3, generator=g)
    return d / d.norm(dim=-1, keepdim=True) * torch.tensor([0.3, 0.45, 0.4])


def report_size(out: dict, name: str, result: dict) -> None:
    """Print one size's figures and merge them into the JSON summary: the official size at the top level (the
    issue's keys), other sizes as sub-objects."""
    print(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if name == "official":
        out.update(result)
    else:
        out[name] = result


def measure_in_fresh_process(script: str, name: str, args: list) -> dict:
    """Run ``script --one-size name *args`` in a new interpreter and return the JSON object it prints last.

    Each model size is measured in its own process, as a user's run would be (no allocator or thread state carried
    over from the other size); a failing child stops the benchmark with its stderr."""
    proc = subprocess.run([sys.executable, script, "--one-size", name, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flops_per_point(cfg: MonoNPHMConfig, edges_per_point: float, color: bool, posed: bool = True) -> float:
    """Matmul FLOPs per query point actually executed by the batched path (code rows are per anchor, ~0)."""
    H, L = cfg.hidden_dim_ex, cfg.n_layers_ex
    ex = 2 * (3 * H + (L - 1) * H * H + 3 * H + H * (3 + cfg.n_hyper)) if posed else 0
    Hg, Ha = cfg.hidden_dim_geo, cfg.hidden_dim_app
    geo = 2 * (cfg.dim_canonical * Hg + (cfg.n_layers_geo - 1) * Hg * Hg + Hg)
    col = 2 * (Hg * cfg.bottleneck_dim + cfg.bottleneck_dim ** 2 + cfg.bottleneck_dim * Ha
               + (cfg.n_layers_app - 1) * Ha * Ha + 3 * Ha)
    return ex + edges_per_point * (geo + (col if color else 0))


def kernel_bound(cfg: MonoNPHMConfig, edges_per_point: float, flops_sdf: float, min_time: float) -> dict:
    """What the two kernels every point needs allow for (a), measured at the model's shapes on this machine.

    Per point, (a) runs `flops_sdf` matmul FLOPs as per-type (grouped) matmuls and one softplus(beta=100) per hidden
    unit (exp + log1p: no matmul peak applies to it).  Both kernels are timed alone on one thread with denormals
    flushed, as each chunk worker runs them (`parallel.map_chunks`), and scaled by the thread count (ideal scaling):
    (a) <= threads / (matmul time + softplus time) per point, before any gather, kNN or blending work.
    """
    from backend.model.parallel import flush_denormals

    threads = torch.get_num_threads()

    H, T = cfg.hidden_dim_geo, cfg.n_types
    rows = 2048 * T  # about a chunk's edges, evenly spread over the types
    x = torch.randn(rows, H + 8)
    w = torch.randn(T, H, H + 8).transpose(1, 2)  # the layout the ensemble passes (column-major per type)
    offs = torch.cumsum(torch.full((T,), rows // T), 0).to(torch.int32)
    z = torch.randn(rows, H) * 0.1
    out = torch.empty_like(z)
    torch.set_num_threads(1)
    try:
        with flush_denormals():
            mm_s = timeit(lambda: torch._grouped_mm(x, w, offs=offs), min_time)
            sp_s = timeit(lambda: torch._C._nn.softplus(z, 100.0, 20.0, out=out), min_time)
    finally:
        torch.set_num_threads(threads)
    mm_gflops = 2 * rows * (H + 8) * H / mm_s / 1e9
    sp_ns = sp_s / z.numel() * 1e9
    Hx, Lx = cfg.hidden_dim_ex, cfg.n_layers_ex
    sp_per_point = edges_per_point * cfg.n_layers_geo * H + Lx * Hx  # ensemble + deformation hidden units
    per_point_s = flops_sdf / (mm_gflops * 1e9) + sp_per_point * sp_ns * 1e-9
    return {"grouped_matmul_gflops_1thread": mm_gflops, "softplus_ns_per_element_1thread": sp_ns,
            "kernel_bound_sdf_pts_per_s": threads / per_point_s}


def bench_size(cfg: MonoNPHMConfig, args, peak: float) -> dict:
    torch.manual_seed(0)
    m = MonoNPHM(cfg, mean_anchors(cfg.n_anchors)).eval()
    for p in m.parameters():
        p.requires_grad_(False)  # tracking optimises codes only
    zg = torch.randn(1, cfg.dim_geo) * 0.03
    za = torch.randn(1, cfg.dim_app) * 0.03
    ze = torch.randn(1, cfg.dim_exp) * 0.1
    lo, hi = torch.tensor([-0.4, -0.5, -0.45]), torch.tensor([0.4, 0.5, 0.45])
    g = torch.Generator().manual_seed(1)

    def pts(n):
        return (lo + (hi - lo) * torch.rand(1, n, 3, generator=g))

    N, Nt, Nl, Nlt = args.points, args.track_points, args.loop_points, args.loop_track_points
    x, xt, xl, xlt = pts(N), pts(Nt), pts(Nl), pts(Nlt)
    T = args.min_time
    out = {}
    chunk = args.chunk
    out["sdf_pts_per_s"] = N / timeit(lambda: m.sdf_only(x, zg, ze, chunk=chunk), T)
    out["sdf_color_pts_per_s"] = N / timeit(lambda: m.query(x, zg, za, ze, chunk=chunk), T)

    def track_step(fwd, xx, chunked=False):
        """One tracking iteration over xx: loss on SDF, colour and eikonal(gradient), backward to the codes.

        chunked: the loss is a sum over points, so chunks are forward/backward-ed on worker threads
        (`backend.model.parallel.backward_in_chunks`, one intra-op thread each); otherwise one graph."""
        n = xx.shape[1]

        def step():
            leaves = [z.clone().requires_grad_(True) for z in (zg, za, ze)]

            def loss_fn(s, e):
                sdf, col, grad = fwd(xx[:, s:e], *leaves)
                return (sdf.abs().sum() + col.abs().sum() + (grad.norm(dim=-1) - 1).abs().sum()) / n

            if chunked:
                backward_in_chunks(loss_fn, n, n)
            else:
                loss_fn(0, n).backward()
        return step

    def fast(xx, a, b, c):
        o = m(xx, a, b, c, with_gradient=True, create_graph=True)
        return o.sdf, o.color, o.gradient

    def loop(xx, a, b, c):
        return loop_forward(m, xx, a, b, c, with_gradient=True, create_graph=True)

    def loop_query(xx, with_color):
        def run(s, e):
            return loop_forward(m, xx[:, s:e], zg, za if with_color else None, ze, with_color=with_color)[0]
        return lambda: map_chunks(run, xx.shape[1], chunk)

    # A step takes ~1 s at the official size: time several (best of >= 4) so one slow step does not decide it.
    out["track_step_pts_per_s"] = Nt / timeit(track_step(fast, xt), 4 * T)
    out["track_step_chunked_pts_per_s"] = Nt / timeit(track_step(fast, xt, chunked=True), 4 * T)
    with torch.inference_mode():
        out["loop_sdf_pts_per_s"] = Nl / timeit(loop_query(xl, False), T, 3)
        out["loop_sdf_color_pts_per_s"] = Nl / timeit(loop_query(xl, True), T, 3)
    out["loop_track_step_pts_per_s"] = Nlt / timeit(track_step(loop, xlt), T, 3)
    if bf16_supported():
        # Last: sustained bf16 (AMX) work was seen to slow the float32 timings that follow it.
        out["sdf_bf16_pts_per_s"] = N / timeit(lambda: m.sdf_only(x, zg, ze, chunk=chunk,
                                                                  compute_dtype=torch.bfloat16), T)
    with torch.no_grad():
        xs = x[:, :8192]
        o = m(xs, zg, za, ze, with_color=False)
    epp = o.kept_edges / xs.shape[1]
    out["edges_per_point"] = epp
    out["edges_per_point_exact"] = cfg.n_neighbors + 1
    f_sdf = flops_per_point(cfg, epp, color=False)
    out["achieved_gflops"] = out["sdf_pts_per_s"] * f_sdf / 1e9
    out["achieved_gflops_sdf_color"] = out["sdf_color_pts_per_s"] * flops_per_point(cfg, epp, color=True) / 1e9
    out["mflop_per_point_sdf"] = f_sdf / 1e6
    out["sdf_goal_bound_pts_per_s"] = peak * 1e9 / f_sdf  # what the measured fp32 peak allows for (a)
    out["fraction_of_peak_sdf"] = out["achieved_gflops"] / peak
    out.update(kernel_bound(cfg, epp, f_sdf, T))
    out["fraction_of_kernel_bound_sdf"] = out["sdf_pts_per_s"] / out["kernel_bound_sdf_pts_per_s"]
    for k in ("sdf", "sdf_color", "track_step"):
        out[f"speedup_{k}"] = out[f"{k}_pts_per_s"] / out[f"loop_{k}_pts_per_s"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller inputs, shorter timing (smoke run)")
    ap.add_argument("--sizes", default="official,builtin")
    ap.add_argument("--one-size", default=None, help=argparse.SUPPRESS)  # internal: one size in this process
    ap.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    q = args.quick
    args.points = 4096 if q else 32768
    args.track_points = 1024 if q else 4096
    args.loop_points = 512 if q else 2048
    args.loop_track_points = 256 if q else 512
    args.chunk = 8192
    args.min_time = 0.2 if q else 1.0
    if args.one_size:
        cfg = MonoNPHMConfig.official() if args.one_size == "official" else MonoNPHMConfig.builtin()
        t0 = time.perf_counter()
        r = bench_size(cfg, args, args.peak)
        r["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(r))
        return
    host = describe_host(args.min_time)
    print(host_line(host), flush=True)
    peak = host["matmul_fp32_gflops"]
    res = {"host": host, "threads": args.threads, "matmul_gflops": peak}
    if bf16_supported():
        res["matmul_bf16_gflops"] = round(matmul_peak(torch.bfloat16, args.min_time), 1)
    for name in args.sizes.split(","):
        child = ["--peak", repr(peak), "--threads", str(args.threads)] + (["--quick"] if q else [])
        report_size(res, name, measure_in_fresh_process(__file__, name, child))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
