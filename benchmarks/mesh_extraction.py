"""Mesh extraction timings: canonical mesh (narrow-band marching cubes, effective res^3 over the official
box), per-frame fixed-topology positions (forward warp of a 30,000-vertex canonical mesh, warm-started from the
previous frames; the median of frames 1-5) and per-frame topology-varying marching cubes (band reused from the
previous frame).

Models: the built-in checkpoint (backend/models/builtin) when present, else randomly initialised networks
with the sphere-like geometric init (a head-sized blob), at the official and built-in sizes.
The LAST line printed is one JSON object.
Usage: python benchmarks/mesh_extraction.py [--threads 2] [--res 256] [--frame-res 128] [--quick]
       python benchmarks/mesh_extraction.py --replay RESULT_PACKAGE   (the fixed-topology warp on a tracked clip's
       identity, canonical mesh and expression codes, with the built-in model that tracked it)
       python benchmarks/mesh_extraction.py --replay RESULT_PACKAGE --score-frame-res 32,64,128 [--frames 4]
       (the per-frame topology-varying meshes of that clip at each resolution: time per frame beside their error, so
       a lower resolution cannot hide a quality loss -- accuracy: |SDF| of the posed model at 20k area-uniform samples
       of each mesh, mm; completeness: distance from 20k samples of a 256^3 reference mesh to the nearest of 200k
       samples of the mesh, mm; mean, p99 and max over the frames)

Each size runs in a fresh process (`--one-size`), as a user's run would.
The fixed-topology warp runs two expression trajectories: smooth (`per_frame_fixed_topology_s`) and jittery
(`per_frame_fixed_topology_jittery_s`), each with its cost in deformation passes per vertex (`..._passes`; a
Jacobian pass counts 4).
Last full run (2026-11-26 00:14, matmul peak 386 GFLOP/s): canonical official 10.4 s (warm process 10.1), built-in
2.87 s (warm 2.79; 2.72-2.92 in A/B runs at 00:00-00:13); fixed topology 30,000 vertices official smooth 0.224
s/frame (1.4 passes), jittery 0.459 (2.0), first frame 0.75; built-in 0.072 / 0.105 s; marching cubes official
2.94 s, built-in 0.79 s.  The built-in mesh is at this design's floor: 316k final-level SDF evaluations 1.37-1.49 s
(9.3 us per point and thread: softplus 35%, grouped GEMM 31% at ~119 GFLOP/s on one thread, kNN top-k 6%), 160k
vertex colours 0.82-0.93 s, coarse levels 0.22 s, band growth 0.15 s, marching cubes 0.08 s; measured and dropped
the same evening: per-cell kNN candidates (no faster: per-point gathers cost what the smaller top-k saves),
softplus as exp/log passes over L2-sized slices (slower than the fused kernel; equal with beta folded into the
weights: the next GEMMs lose what the activation gains), sharing k-nearest sets per cell (d9 - d8 is below a
0.005-unit cell's diagonal for half the cells), colour at band corners (as costly as colour at the vertices),
bf16 coarse passes (equal), final prune mass 1e-3 (2-4%, within noise).
Before (2026-11-25 22:53, matmul peak 380 GFLOP/s): canonical official 10.3 s (warm process 10.0), built-in
2.74 s (warm 2.69); fixed topology 30,000 vertices, official: smooth 0.235 s/frame (1.4 passes per vertex over frames
1-5; 1.0 once the motion persistence is known), jittery 0.452 s (2.0 passes: the random-init net moves every vertex
by more than the 10 um tolerance every frame), first (cold) frame 0.72 s; built-in 0.074 / 0.103 s; marching cubes
official 3.0 s, built-in 0.77 s.  (Replaying tracked codes of the sample clip through the built-in model on its
18k-vertex canonical mesh: 1.26-1.36 passes per vertex, against 1.92-2.10 at the former 1e-6 tolerance.)
The same code at 23:27, matmul peak 318-323 GFLOP/s (the host's slow phase): canonical official 11.9-12.0 s, built-in
3.21-3.24 s (warm 3.07-3.15); fixed topology official smooth 0.265 s/frame, jittery 0.52, first frame 0.78-0.82.
Before (22:09, matmul peak 353 GFLOP/s, tolerance 1e-6, constant-velocity starts): canonical official
11.1 s (warm process 10.5), built-in 3.04 s (warm 3.06); fixed topology 30,000 vertices official 0.51 s/frame
(0.507-0.524), built-in 0.14 s; marching cubes official 3.25 s, built-in 0.90 s.
Before (21:50, matmul peak 330-347 GFLOP/s): canonical official 11.6 s (warm process 11.2), built-in
3.27 s (warm 3.15; 2.9-3.4 over 21:30-21:52, against 3.3-3.5 for the session's starting code in the same minutes:
colour-only vertex queries, 4096-point chunks, code rows folded into the first layer); fixed topology 30,000
vertices official 0.51 s/frame (0.50-0.55), built-in 0.13 s; marching cubes official 3.3 s, built-in 0.87 s.
Before (20:58, matmul peak 360 GFLOP/s): canonical official 12.3 s, built-in 3.5 s; fixed topology
30,000 vertices official 0.49 s/frame (0.48-0.51), built-in 0.13 s; marching cubes official 3.2 s, built-in 0.99 s.
Before (2026-11-25 20:09-20:15, 2 threads, idle 2-core host): canonical 256^3 official 12.4-12.6 s (148k
vertices; bf16 coarse passes, 14.4 s with MONONPHM_COARSE_BF16=0), built-in 3.4-3.5 s (160k); fixed-topology warp of
30,000 vertices, official 0.50-0.54 s/frame (first frame 1.8-1.9 s; 0.46 s in a standalone run minutes earlier: the
host drifts), built-in 0.18 s; per-frame marching cubes at 128^3 built-in 0.94-1.02 s, official 3.3-3.5 s.
This host's speed drifts over the day (matmul peak 305-327 GFLOP/s in the morning, 357-424 in the afternoon).
(16:20-16:40, the warp on the whole 37k-vertex res-128 mesh: official 0.56-0.62 s/frame; canonical official
12.3-14.6 s, built-in 2.85-3.47 s.  14:53: official 17.05 s, built-in 3.55 s.  13:55, before the 4-fold last split,
float32 coarse passes and colour pruning: 28.1 s / 4.07 s; warp official 2.19 s, first frame 23.7 s.)
Earlier (d59ddb0, load average 3.2-4.3): canonical official 61.1 s, built-in 10.8 s.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend import BUILTIN_MODEL_DIR  # noqa: E402
from backend.model import MonoNPHM, MonoNPHMConfig, geometric_init, load_model  # noqa: E402
from backend.model.deformation import DeformationField  # noqa: E402
from backend.model.meshing import POSED_REUSE_TOL, PosedMesher, SurfaceMesh, canonical_mesh, warp_mesh  # noqa: E402
from backend.model.parallel import set_threads  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from host import describe_host, host_line  # noqa: E402
from model_throughput import mean_anchors, measure_in_fresh_process, report_size  # noqa: E402


FIXED_TOPOLOGY_VERTICES = 30000


def make_model(name: str):
    if name == "builtin" and (BUILTIN_MODEL_DIR / "model.pt").is_file():
        return load_model(BUILTIN_MODEL_DIR), "checkpoint"
    cfg = MonoNPHMConfig.official() if name == "official" else MonoNPHMConfig.builtin()
    torch.manual_seed(0)
    m = MonoNPHM(cfg, mean_anchors(cfg.n_anchors)).eval()
    geometric_init(m, 0.42)
    return m, "geometric-init blob"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--res", type=int, default=256, help="canonical mesh resolution (cells per axis)")
    ap.add_argument("--frame-res", type=int, default=128, help="per-frame posed marching-cubes resolution")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--sizes", default="official,builtin")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replay", default=None, help="a result package tracked with the built-in model")
    ap.add_argument("--score-frame-res", default=None, metavar="R1,R2,...",
                    help="with --replay: score per-frame meshes at these resolutions against a 256^3 reference")
    ap.add_argument("--one-size", default=None, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = ap.parse_args()
    res = 64 if args.quick else args.res
    frame_res = 64 if args.quick else args.frame_res
    if args.replay:
        set_threads(args.threads)
        if args.score_frame_res:
            host = describe_host()
            print(host_line(host), flush=True)
            resolutions = [int(r) for r in args.score_frame_res.split(",")]
            print(json.dumps({"host": host, **score_frame_res(Path(args.replay), resolutions, args.frames)}))
        else:
            print(json.dumps(replay_warp(Path(args.replay))))
        return
    if args.one_size:
        set_threads(args.threads)
        print(json.dumps(measure_size(args.one_size, res, frame_res, args.frames, args.quick)))
        return
    # Each size in a fresh process, as a user's run would be (no allocator or thread state carried over; back to
    # back, the built-in mesh measured 3.14 / 2.97 s after the official size and 3.47 / 3.16 s alone: within
    # run-to-run noise).
    set_threads(args.threads)
    # The host's speed drifts (+-15% within minutes): its fp32 matmul peak, measured now, dates the figures.
    host = describe_host(0.2 if args.quick else 1.0)
    print(host_line(host), flush=True)
    out = {"host": host, "threads": args.threads, "matmul_gflops": host["matmul_fp32_gflops"],
           "res": res, "frame_res": frame_res, "canonical_mesh_s": {},
           "canonical_mesh_warm_s": {}, "canonical_vertices": {}, "models": {}}
    for name in args.sizes.split(","):
        child = ["--threads", str(args.threads), "--res", str(args.res), "--frame-res", str(args.frame_res),
                 "--frames", str(args.frames)] + (["--quick"] if args.quick else [])
        one = measure_in_fresh_process(__file__, name, child)
        out["canonical_mesh_s"][name] = one["canonical_mesh_s"]
        out["canonical_mesh_warm_s"][name] = one["canonical_mesh_warm_s"]
        out["canonical_vertices"][name] = one["canonical_vertices"]
        out["models"][name] = one["model"]
        print(f"[{name}] canonical {res}^3: {one['canonical_mesh_s']} s (warm process {one['canonical_mesh_warm_s']} s), "
              f"{one['canonical_vertices']} vertices", flush=True)
        report_size(out, name, one["per_frame"])
    print(json.dumps(out))


@contextmanager
def count_deformation_rows():
    """Counts the deformation network's evaluated rows (a forward-mode Jacobian pass counts 4: its cost) into the
    yielded one-element list: per vertex, the warp's cost in deformation passes."""
    rows, forward = [0], DeformationField.forward

    def counted(self, x, *args, **kw):
        rows[0] += x.reshape(-1, 3).shape[0] * (4 if kw.get("with_jacobian") else 1)
        return forward(self, x, *args, **kw)

    DeformationField.forward = counted
    try:
        yield rows
    finally:
        DeformationField.forward = forward


def replay_warp(package: Path) -> dict:
    """Per-frame fixed-topology warps of a tracked clip: the package's identity, canonical mesh and per-frame
    expression codes, through the built-in model, frame after frame as the tracker's outputs run."""
    from backend.contracts.conventions import NPHM_UNIT_M
    from backend.contracts.result_format import ResultPackage
    from backend.model.meshing import warp_vertices

    m, z_geo, z_exp = _replayed(package)
    if len(z_exp) < 2:
        raise SystemExit(f"--replay: {package} holds fewer than 2 tracked frames; track a longer clip first")
    can = ResultPackage(package).canonical_mesh()
    verts = torch.from_numpy(can.vertices / np.float32(NPHM_UNIT_M))
    times, passes, st = [], [], None
    for ze in z_exp:
        with count_deformation_rows() as rows:
            t = time.perf_counter()
            _, ok, st = warp_vertices(m, verts, can.triangles, z_geo, ze[None], st)
            times.append(time.perf_counter() - t)
        passes.append(rows[0] / len(verts))
    return {"package": str(package), "frames": len(times), "vertices": int(len(verts)),
            "replay_first_s": round(times[0], 3), "replay_s": round(float(np.median(times[1:])), 4),
            "replay_passes": round(float(np.mean(passes[1:])), 2),
            "replay_converged": round(float(ok.float().mean()), 5)}


def _replayed(package: Path):
    """(built-in model, z_geo (1, D), z_exp (T, E)) of a package tracked with the built-in model."""
    from backend.contracts.protocol import BackendError
    from backend.contracts.result_format import ResultPackage

    try:
        pkg = ResultPackage(package)
        identity, frames = pkg.identity(), pkg.frame_arrays(["z_exp"])
    except BackendError as exc:
        raise SystemExit(f"--replay: {exc.message}. {exc.hint}".rstrip())
    m, kind = make_model("builtin")
    if kind != "checkpoint":
        raise SystemExit("--replay needs the built-in checkpoint (backend/models/builtin/model.pt)")
    z_geo = torch.from_numpy(identity["z_geo"]).float()[None]
    z_exp = torch.from_numpy(frames.get("z_exp", np.zeros((0, m.cfg.dim_exp), np.float32))).float()
    if z_geo.shape[1] != m.cfg.dim_geo or z_exp.shape[1] != m.cfg.dim_exp:
        raise SystemExit(f"{package} was not tracked with this built-in model (code sizes differ)")
    return m, z_geo, z_exp


def score_frame_res(package: Path, resolutions: list, n_frames: int, reference_res: int = 256) -> dict:
    """Per-frame topology-varying meshes of a tracked clip at each resolution (a PosedMesher per resolution, frame
    after frame as the tracker's USD output runs, with its reuse tolerance): seconds per frame (frames after the
    first) beside their error
    against the SDF and a reference_res^3 mesh (see the module docstring)."""
    m, z_geo, z_exp = _replayed(package)
    z_exp = z_exp[np.linspace(0, len(z_exp) - 1, min(n_frames, len(z_exp))).round().astype(int)]
    reference = reference_samples(m, z_geo, z_exp, reference_res)
    out = {"package": str(package), "frames": len(z_exp), "reference_res": reference_res, "res": {}}
    for res in resolutions:
        mesher, times, meshes = PosedMesher(m, res=res, reuse_tol=POSED_REUSE_TOL), [], []   # as the tracker
        for ze in z_exp:
            t = time.perf_counter()
            meshes.append(mesher(z_geo, None, ze[None], with_color=False))
            times.append(time.perf_counter() - t)
        out["res"][res] = {"s_per_frame": round(float(np.median(times[1:] or times)), 3),
                           "vertices": int(len(meshes[-1].vertices)),
                           **mesh_errors(m, z_geo, z_exp, [(mesh.vertices, mesh.faces) for mesh in meshes],
                                         reference)}
        print(f"{res}^3: {out['res'][res]}", flush=True)
    return out


def reference_samples(model, z_geo: torch.Tensor, z_exp: torch.Tensor, res: int = 256) -> list:
    """20k area-uniform samples (model units) of each frame's res^3 posed mesh, for the expressions z_exp (T, E)."""
    from backend.evaluation.mesh_ops import sample_surface

    rng = np.random.default_rng(1)
    mesher = PosedMesher(model, res=res)
    return [sample_surface(mesh.vertices, mesh.faces, 20000, rng)[0]
            for mesh in (mesher(z_geo, None, ze[None], with_color=False) for ze in z_exp)]


def mesh_errors(model, z_geo: torch.Tensor, z_exp: torch.Tensor, meshes: list, reference: list) -> dict:
    """Error of per-frame posed meshes ((vertices (V, 3) model units, triangles (F, 3)) for the expressions z_exp
    (T, E), identity z_geo (1, D)): accuracy, |SDF| of the posed model at 20k area-uniform samples of each mesh, and
    completeness, the distance from each frame's ``reference_samples`` to the nearest of 200k samples of the mesh;
    mm, [mean, p99, max] over the frames."""
    from scipy.spatial import cKDTree

    from backend.contracts.landmark_tables import MM_PER_UNIT
    from backend.evaluation.mesh_ops import sample_surface

    rng = np.random.default_rng(0)
    accuracy, completeness = [], []
    for ze, (vertices, faces), ref_points in zip(z_exp, meshes, reference):
        pts = sample_surface(vertices, faces, 200000, rng)[0]
        sdf = model.sdf_only(torch.from_numpy(pts[:20000]).float()[None], z_geo, ze[None])[0, :, 0]
        accuracy.append(sdf.abs().numpy() * MM_PER_UNIT)
        completeness.append(cKDTree(pts).query(ref_points)[0] * MM_PER_UNIT)
    acc, comp = np.concatenate(accuracy), np.concatenate(completeness)
    return {"accuracy_mm": [round(float(x), 3) for x in (acc.mean(), np.percentile(acc, 99), acc.max())],
            "completeness_mm": [round(float(x), 3) for x in (comp.mean(), np.percentile(comp, 99), comp.max())]}


def measure_size(name: str, res: int, frame_res: int, frames: int, quick: bool) -> dict:
    """Canonical mesh (first call of the process, then once more warm), fixed-topology warps and posed marching cubes
    for one size."""
    m, kind = make_model(name)
    g = torch.Generator().manual_seed(3)
    zg = torch.randn(1, m.cfg.dim_geo, generator=g) * 0.02
    za = torch.randn(1, m.cfg.dim_app, generator=g) * 0.02
    z0 = torch.randn(1, m.cfg.dim_exp, generator=g) * 0.2
    dz = torch.randn(1, m.cfg.dim_exp, generator=g) * 0.02
    t = time.perf_counter()
    can = canonical_mesh(m, zg, za, res=res)
    canonical_s = round(time.perf_counter() - t, 2)
    # Again in the warm process (a long-lived backend: thread pool, allocator pages and kernels already set up).
    t = time.perf_counter()
    canonical_mesh(m, zg, za, res=res)
    canonical_warm_s = round(time.perf_counter() - t, 2)
    # Fixed topology on a 30k-vertex mesh (the goal's size): res 128 gives 37-40k vertices on a head-sized surface;
    # its first 30,000 (marching cubes emits them slice by slice, so a contiguous part) with the faces among them.
    small = can if quick else canonical_mesh(m, zg, za, res=128)
    if len(small.vertices) > FIXED_TOPOLOGY_VERTICES:
        inside = (small.faces < FIXED_TOPOLOGY_VERTICES).all(1)
        small = SurfaceMesh(small.vertices[:FIXED_TOPOLOGY_VERTICES], small.faces[inside], None)
    # Two expression trajectories: smooth (constant code velocity: the start prediction extrapolates) and jittery
    # (the same drift plus per-frame noise of the same size, like tracked codes, whose per-frame accelerations exceed
    # their velocities: 1.6x in the draft/standard results of the sample clip).
    jitter = torch.randn(frames + 1, m.cfg.dim_exp, generator=g) * 0.02
    fixed = {}
    for trajectory in ("smooth", "jittery"):
        times, passes, st = [], [], None
        for f in range(frames + 1):
            ze = z0 + f * dz + (jitter[f:f + 1] if trajectory == "jittery" else 0)
            with count_deformation_rows() as rows:
                t = time.perf_counter()
                _, ok, st = warp_mesh(m, small, zg, ze, state=st)
                times.append(time.perf_counter() - t)
            passes.append(rows[0] / len(small.vertices))
        fixed[trajectory] = (times, passes, ok)
    frames_fixed, passes, ok = fixed["smooth"]
    # Topology-varying marching cubes in posed space, band reused from the previous frame.
    pm = PosedMesher(m, res=frame_res)
    frames_mc = []
    for f in range(frames + 1):
        t = time.perf_counter()
        pm(zg, za, z0 + f * dz)
        frames_mc.append(time.perf_counter() - t)
    return {
        "model": kind,
        "canonical_mesh_s": canonical_s,
        "canonical_mesh_warm_s": canonical_warm_s,
        "canonical_vertices": int(len(can.vertices)),
        "per_frame": {
            "fixed_topology_vertices": int(len(small.vertices)),
            "per_frame_fixed_topology_first_s": round(frames_fixed[0], 3),
            # median: frame 1 has no constant-velocity start yet (one previous frame), the rest of a clip does
            "per_frame_fixed_topology_s": round(float(np.median(frames_fixed[1:])), 3),
            "per_frame_fixed_topology_each_s": [round(x, 3) for x in frames_fixed[1:]],
            "per_frame_fixed_topology_passes": round(float(np.mean(passes[1:])), 2),
            "per_frame_fixed_topology_jittery_s": round(float(np.median(fixed["jittery"][0][1:])), 3),
            "per_frame_fixed_topology_jittery_passes": round(float(np.mean(fixed["jittery"][1][1:])), 2),
            "fixed_topology_converged": round(float(min(ok.float().mean(), fixed["jittery"][2].float().mean())), 5),
            "per_frame_marching_cubes_first_s": round(frames_mc[0], 2),
            "per_frame_marching_cubes_s": round(float(np.mean(frames_mc[1:])), 2),
            "per_frame_marching_cubes_evaluated_points": int(pm.last_evaluated),
        },
    }


if __name__ == "__main__":
    main()
