"""Compute devices: which are present, which one a run uses, and what it is called.

Tracking, meshing and the model core run the same code on every device: tensors are created on the device of the
model (``next(model.parameters()).device``) or of their inputs, and only the CPU-side steps (PnP, the mesh
rasteriser, marching cubes, the package writer) move arrays to the host.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import List

import torch

from ..contracts.protocol import BadInputError

AUTO_ORDER = ("cuda", "mps", "cpu")
"""``--device auto`` takes the first of these that is present."""


def available_devices() -> List[str]:
    """Devices this torch build can use here, CPU first."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str) -> str:
    """The device a run uses for ``--device name``: ``auto`` -> the first present of ``AUTO_ORDER``; a named device
    that is not present is a clear error (exit 2)."""
    devices = available_devices()
    if name == "auto":
        return next(d for d in AUTO_ORDER if d in devices)
    if name not in devices:
        raise BadInputError(f"device '{name}' is not available here (available: {', '.join(devices)})",
                            "Choose 'auto' or 'cpu', or install a torch build with that accelerator.")
    return name


def to_numpy(t: torch.Tensor):
    """A tensor's values as a numpy array, from any device (for the CPU-side steps: PnP, the rasteriser, marching
    cubes, the package)."""
    return t.detach().cpu().numpy()


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere the platform's processor string)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """A person-readable name of a resolved device: the GPU's name, or the CPU's model."""
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    if device == "mps":
        return f"Apple GPU (MPS), {platform.machine()}"
    return cpu_model()
