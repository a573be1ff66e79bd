"""What a benchmark's figures were measured on: printed beside every figure (one definition for all benchmarks).

``describe_host()`` -> {cpu, cpu_flags (the ones that matter: AVX2, AVX-512, AVX512-BF16, AMX), torch's kernel level
(``ATEN_CPU_CAPABILITY``, e.g. forced to avx2 to stand in for an AVX2-only CPU), threads, fp32 matmul GFLOP/s, the
load average, the GPU when one is used}.  The matmul peak dates a figure on a host whose speed drifts; the load
average says whether others shared the cores (a figure taken beside a load above the core count is not a speed of
the code, only an A/B beside its baseline in the same minute is).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.model.devices import cpu_model  # noqa: E402

# /proc/cpuinfo flag -> the name a reader looks for
FLAGS_THAT_MATTER = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_bf16": "AVX512-BF16",
                     "avx512_fp16": "AVX512-FP16", "amx_bf16": "AMX-BF16", "amx_tile": "AMX-TILE"}


def cpu_flags() -> list[str]:
    """The flags of FLAGS_THAT_MATTER the CPU reports (Linux; elsewhere torch's own probes)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [name for flag, name in FLAGS_THAT_MATTER.items() if flag in present]
    probes = {"AVX512-BF16": torch.cpu._is_avx512_bf16_supported, "AMX-TILE": torch.cpu._is_amx_tile_supported}
    return [name for name, probe in probes.items() if probe()]


def timeit(fn, min_time: float, max_reps: int = 20) -> float:
    """Best time of one call (like the timeit module): repeats until min_time or max_reps, after a warm-up call.
    The best rather than the mean, because the first large autograd graphs of a process still grow the allocator."""
    fn()  # warm-up
    best, reps, t0 = float("inf"), 0, time.perf_counter()
    while True:
        t1 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t1)
        reps += 1
        if time.perf_counter() - t0 >= min_time or reps >= max_reps:
            return best


def matmul_peak(dtype=torch.float32, min_time: float = 0.3, device: str = "cpu") -> float:
    """Dense square matmul GFLOP/s of this machine now (best of n = 1024, 2048)."""
    best = 0.0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for n in (1024, 2048):
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))

        def mm():
            a @ b
            sync()
        best = max(best, 2 * n ** 3 / timeit(mm, min_time) / 1e9)
    return best


def describe_host(peak_time: float = 0.3, device: str = "cpu") -> dict:
    """The host line of a benchmark's JSON (see the module docstring); ``device`` 'cuda' adds the GPU and its
    fp32 matmul peak."""
    out = {"cpu": cpu_model(), "cpu_flags": cpu_flags(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
           "threads": torch.get_num_threads(), "cores": os.cpu_count(),
           "matmul_fp32_gflops": round(matmul_peak(torch.float32, peak_time), 1),
           "load_avg": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
           "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        out["gpu_matmul_fp32_gflops"] = round(matmul_peak(torch.float32, peak_time, "cuda"), 1)
    return out


def host_line(host: dict) -> str:
    """One readable line of ``describe_host``'s dict (for stderr beside the figures)."""
    gpu = f", GPU {host['gpu']} ({host['gpu_matmul_fp32_gflops']} GFLOP/s)" if "gpu" in host else ""
    return (f"{host['cpu']} [{' '.join(host['cpu_flags'])}; torch kernels {host['torch_cpu_capability']}], "
            f"{host['threads']} threads, fp32 matmul {host['matmul_fp32_gflops']} GFLOP/s, "
            f"load {' '.join(map(str, host['load_avg']))}{gpu}")


if __name__ == "__main__":
    h = describe_host()
    print(host_line(h))
