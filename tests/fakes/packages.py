"""Synthetic result packages written with the real backend.contracts.result_format.ResultWriter (numpy only)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.contracts import result_format as rf  # noqa: E402
from backend.contracts.conventions import Intrinsics  # noqa: E402


def grid_head(vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed-ish sphere grid of about ``vertices`` vertices (metres, model axes, radius 0.1 m)."""
    n = max(4, int(math.sqrt(vertices)))
    m = max(4, -(-vertices // n))
    th = np.linspace(0.1, math.pi - 0.1, n)
    ph = np.linspace(0, 2 * math.pi, m, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(T) * np.cos(P), np.cos(T), np.sin(T) * np.sin(P)], -1).reshape(-1, 3) * 0.1
    i, j = np.meshgrid(np.arange(n - 1), np.arange(m), indexing="ij")
    a = (i * m + j).ravel()
    b = (i * m + (j + 1) % m).ravel()
    c = ((i + 1) * m + j).ravel()
    d = ((i + 1) * m + (j + 1) % m).ravel()
    tris = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int32)
    albedo = np.zeros((len(v), 3), np.uint8)
    albedo[:, 0] = np.linspace(0, 255, len(v)).astype(np.uint8)
    albedo[:, 1] = 128
    albedo[:, 2] = (np.arange(len(v)) % 256).astype(np.uint8)
    return v.astype(np.float32), tris, albedo


def frame_vertices(canon: np.ndarray, index: int) -> np.ndarray:
    """Deterministic per-frame deformation: x stretched by 1 + 0.01·index (so a frame is identifiable)."""
    out = canon.copy()
    out[:, 0] *= 1.0 + 0.01 * index
    return out


def pose(index: int) -> tuple[float, np.ndarray, np.ndarray]:
    yaw = 0.02 * index
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)
    t = np.array([0.01 * math.sin(index * 0.1), 0.0, 0.6], np.float32)
    return 1.0 + 0.001 * index, rot, t


def landmark_error(index: int) -> float:
    return 8.0 if index % 25 == 7 else 1.0 + 0.01 * index


def make_package(root, *, frames: int = 100, vertices: int = 2000, stride: int = 1, chunk: int = 25,
                 arkit: bool = True, output_mode: str = "shape_keys", usd: bool = False, fps: float = 25.0,
                 width: int = 320, height: int = 240, source_path: str = "/nonexistent/clip.mp4",
                 state: str = "complete", hair: bool = False) -> Path:
    root = Path(root)
    header = {"source": {"path": source_path, "kind": "video", "frame_count": frames * stride}, "fps": fps,
              "image_size": [width, height],
              "intrinsics": Intrinsics(0.9375 * width, 0.9375 * width, width / 2 + 5, height / 2 - 3, width,
                                            height).to_dict(),
              "model": {"name": "builtin"}, "output_mode": output_mode, "settings": {"preset": "draft"}}
    writer = rf.ResultWriter(root, header)
    canon, tris, albedo = grid_head(vertices)
    writer.write_canonical_mesh(canon, tris, albedo, hair=hair_of(canon) if hair else None)
    writer.write_identity({"z_geo": np.zeros(8), "z_app": np.zeros(8), "sh_coeffs": np.zeros((9, 3)),
                           "color_affine": np.eye(3), "color_bias": np.zeros(3)})
    indices = list(range(0, frames * stride, stride))
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        records = [rf.FrameRecord(i, i / fps, "tracked", landmark_error(i), 0.01, 0.9) for i in part]
        poses = [pose(i) for i in part]
        arrays = {"scale": np.array([p[0] for p in poses], np.float32),
                  "rotation": np.stack([p[1] for p in poses]),
                  "translation": np.stack([p[2] for p in poses]),
                  "z_exp": np.zeros((len(part), 4), np.float32)}
        if output_mode in ("shape_keys", "both"):
            arrays["vertices"] = np.stack([frame_vertices(canon, i) for i in part])
        if arkit:
            arrays["arkit"] = np.stack([np.full(52, (i % 10) / 10.0, np.float32) for i in part])
        writer.write_frames(records, arrays)
    if usd:
        write_usd(root, indices, canon, tris, albedo, fps, hair)
        writer.set_usd(rf.USD_SEQUENCE)
    writer.finish(state)
    return root


def usd_colors(albedo: np.ndarray, index: int) -> np.ndarray:
    out = albedo.copy()
    out[:, 1] = (index * 7) % 256
    return out


def hair_of(vertices: np.ndarray) -> np.ndarray:
    """(V,) uint8 fake hair: the top cap of the grid head (model y > 0.05 m)."""
    return (np.asarray(vertices)[:, 1] > 0.05).astype(np.uint8)


def write_usd(root, indices, canon, tris, albedo, fps, hair: bool = False) -> None:
    """Write meshes.usdc with backend.usd_export — in a subprocess, so usd-core's pxr never meets bpy's USD
    libraries in one process (and the bpy-4.5-only env can borrow the project's .venv)."""
    np.savez(Path(root) / ".usd_input.npz", indices=np.array(indices), canon=canon, tris=tris, albedo=albedo)
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
        "from backend.usd_export import write_usd_sequence\n"
        "from fakes.packages import frame_vertices, hair_of, usd_colors\n"
        "d = np.load(sys.argv[3])\n"
        "tris = d['tris']\n"
        "def frames():\n"
        "    for i in d['indices']:\n"
        "        i = int(i); keep = len(tris) - (i % 3)  # topology changes between frames\n"
        "        v = frame_vertices(d['canon'], i)\n"
        "        hair = (hair_of(v),) if sys.argv[6] == '1' else ()\n"
        "        yield (i, v, tris[:keep], usd_colors(d['albedo'], i)) + hair\n"
        "write_usd_sequence(sys.argv[4], frames(), float(sys.argv[5]))\n")
    subprocess.run([usd_python(), "-c", code, str(REPO), str(REPO / "tests"), str(Path(root) / ".usd_input.npz"),
                    str(Path(root) / rf.USD_SEQUENCE), str(fps), "1" if hair else "0"], check=True)
    (Path(root) / ".usd_input.npz").unlink()


def usd_python() -> str:
    """An interpreter with usd-core (pxr): this one, or the project's .venv."""
    import importlib.util

    if importlib.util.find_spec("pxr") is not None:
        return sys.executable
    for cand in (REPO / ".venv" / "bin" / "python", REPO / ".venv" / "Scripts" / "python.exe"):
        if cand.is_file():
            return str(cand)
    raise RuntimeError("no interpreter with usd-core (pxr) found; run python3 build.py setup")
