"""Kernels chosen by measured speed on the running machine.

The canonical ensemble's typed matmuls have two layouts (``ensemble.EdgeLayout``): ``grouped`` (one segmented
matmul per layer, code rows folded into the first layers, chained no-grad activations) and ``blocked`` (one batched
matmul over type-homogeneous blocks).  Which is faster depends on the CPU and the model's width: on the AVX-512/AMX
reference host grouped wins at the official size (200 wide), while at the built-in size (64 wide) single layers ran
15-20 % faster blocked, with AVX-512 and with AVX2 kernels alike (2026-12-06, load average 10: 40k edges, 5.2 vs
6.6 ms and 27.6 vs 32.7 ms), while the whole model (grouped also folds and chains) measured within 1-5 % either way.
So the tracker times both on the model itself, once per machine (CPU, torch kernel level, torch version, model
widths), and switches from the default (grouped) only when blocked is clearly faster (``SWITCH_MARGIN``) and their
results agree within ``KERNEL_TOL``.  The choice is stored (``choices_file``) and reused by every later run: the
two layouts' roundings differ slightly, and a fit amplifies that (identity codes differed by up to 1e-3 between two
runs that chose differently under a load of 10), so a choice per run would make two runs of one clip differ.  A
resumed run also keeps the layout of the run it continues (``Tracker.state_dict``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict

import torch

from .devices import cpu_model

KERNEL_TOL = 1e-5
"""Largest difference between the layouts' SDF values, colours and code gradients, relative to the largest value
(at least 1), for a choice to be allowed."""
SWITCH_MARGIN = 0.05
"""Blocked must be this much faster (fraction of the grouped time) to replace the default."""

_CHOICES: Dict[str, dict] = {}  # machine-and-model key -> the measurement (this process's copy of choices_file)


def choices_file() -> Path:
    """Where measured kernel choices are kept: ``$MONONPHM_CACHE_DIR`` or ``~/.cache/mononphm``."""
    root = os.environ.get("MONONPHM_CACHE_DIR") or Path.home() / ".cache" / "mononphm"
    return Path(root) / "kernel_choices.json"


def _stored() -> Dict[str, dict]:
    try:
        data = json.loads(choices_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):   # none yet, unreadable or corrupt: measure again
        return {}


def _store(key: str, choice: dict) -> None:
    path = choices_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(_stored(), **{key: choice}), indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:                 # a read-only home: this process keeps its measurement
        pass


def choose_ensemble_layout(model, points: int = 1024, rounds: int = 2) -> dict:
    """Time the model's no-grad query (SDF + colour: meshes, vertex colours) plus a code-gradient step (tracking)
    with each layout, alternating, best of ``rounds``; set ``model.id_model.grouped`` to the faster one when the
    results agree within KERNEL_TOL (else keep the default).  CPU only: on GPUs the grouped layout is off anyway.
    Returns {"grouped", "grouped_s", "blocked_s", "max_diff" (relative)}: measured once per machine and model shape,
    then read back (this process, then ``choices_file``)."""
    device = next(model.parameters()).device
    field, cfg = model.id_model, model.cfg
    if device.type != "cpu" or not hasattr(torch, "_grouped_mm"):
        return {"grouped": False}
    key = (f"{cpu_model()}|{torch.backends.cpu.get_cpu_capability()}|torch {torch.__version__}|"
           f"{cfg.hidden_dim_geo},{cfg.hidden_dim_app},{cfg.hidden_dim_ex},{cfg.n_anchors},{cfg.n_neighbors}")
    if key not in _CHOICES:
        stored = _stored().get(key)
        if isinstance(stored, dict) and isinstance(stored.get("grouped"), bool):
            _CHOICES[key] = stored
        else:
            _CHOICES[key] = _measure(model, points, rounds)
            _store(key, _CHOICES[key])
    choice = _CHOICES[key]
    field.grouped = choice["grouped"]
    return choice


def prefer_grouped(grouped_s: float, blocked_s: float, max_diff: float) -> bool:
    """Keep the default (grouped) unless blocked is faster by SWITCH_MARGIN and agrees within KERNEL_TOL."""
    return blocked_s > (1 - SWITCH_MARGIN) * grouped_s or max_diff > KERNEL_TOL


def _measure(model, points: int, rounds: int) -> dict:
    cfg, field = model.cfg, model.id_model
    gen = torch.Generator().manual_seed(0)
    lo, hi = (torch.tensor(b, dtype=torch.float32) for b in cfg.mesh_box)
    x = lo + (hi - lo) * torch.rand(1, points, 3, generator=gen)
    z_geo, z_app, z_exp = (0.1 * torch.randn(z.shape, generator=gen) for z in model.zero_codes(1))

    def workload():
        sdf, col = model.query(x, z_geo, z_app, z_exp, chunk=points)
        zg = z_geo.clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x[:, : points // 4], zg, None, z_exp, with_color=False)
            (grad,) = torch.autograd.grad(out.sdf.sum(), zg)
        return sdf, col, grad

    best = {True: float("inf"), False: float("inf")}
    outputs = {}
    saved = field.grouped
    try:
        for r in range(rounds + 1):                  # round 0 warms both up
            for grouped in (True, False):
                field.grouped = grouped
                t0 = time.perf_counter()
                outputs[grouped] = workload()
                if r:
                    best[grouped] = min(best[grouped], time.perf_counter() - t0)
    finally:
        field.grouped = saved
    diff = max(float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
               for a, b in zip(outputs[True], outputs[False]))
    return {"grouped": prefer_grouped(best[True], best[False], diff), "grouped_s": round(best[True], 4),
            "blocked_s": round(best[False], 4), "max_diff": diff}
