"""The result package: a folder the backend writes as frames finish and the Blender add-on imports.

Contract: docs/result-format.md. numpy + standard library only (the add-on imports it).

Layout::

    RESULT/
      manifest.json           format, version, clip, fps, image size, intrinsics, model, per-frame records
      canonical_mesh.npz      vertices (V,3) f32 metres model axes · triangles (F,3) i32 · albedo (V,3) u8 sRGB
      identity.npz            z_geo, z_app (f32 vectors) · sh_coeffs (9,3) · color_affine (3,3) · color_bias (3,)
      frames/chunk_NNNNNN.npz per-frame arrays, one row per frame (frame_index says which)
      meshes.usdc             optional: per-frame meshes with colours (topology-varying output)
      tracker_state.npz       optional: whatever the tracker needs to resume

Every file is written to a temporary name and renamed (atomic on POSIX and Windows), and the manifest is
rewritten after each chunk, so a crash or cancel never leaves a half-written file referenced.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .protocol import BadInputError
from .track_config import OUTPUT_MODES

FORMAT_NAME = "mononphm-result"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
CANONICAL_MESH = "canonical_mesh.npz"
IDENTITY = "identity.npz"
FRAMES_DIR = "frames"
USD_SEQUENCE = "meshes.usdc"
TRACKER_STATE = "tracker_state.npz"

FRAME_STATUSES = ("tracked", "interpolated", "no_face", "failed")
USABLE_STATUSES = ("tracked", "interpolated")  # frames with a pose and expression that importers animate

# Array schemas: name -> (dtype kind, shape). Symbols: V vertices, F triangles, K rows in a chunk,
# E expression code size, G / P identity / appearance code sizes.
CANONICAL_SCHEMA = {
    "vertices": ("float32", ("V", 3)),
    "triangles": ("int32", ("F", 3)),
    "albedo": ("uint8", ("V", 3)),
}
IDENTITY_SCHEMA = {
    "z_geo": ("float32", ("G",)),
    "z_app": ("float32", ("P",)),
    "sh_coeffs": ("float32", (9, 3)),
    "color_affine": ("float32", (3, 3)),
    "color_bias": ("float32", (3,)),
}
FRAME_SCHEMA = {
    "frame_index": ("int32", ("K",)),
    "scale": ("float32", ("K",)),
    "rotation": ("float32", ("K", 3, 3)),
    "translation": ("float32", ("K", 3)),
    "z_exp": ("float32", ("K", "E")),
}
OPTIONAL_FRAME_SCHEMA = {
    "vertices": ("float32", ("K", "V", 3)),
    "arkit": ("float32", ("K", 52)),
}
QUALITY_KEYS = ("landmark_error_px", "photometric_error", "mask_iou")


class PackageError(BadInputError):
    """A result package that cannot be read or written; the message names the file and the problem."""

    code = "bad_package"


@dataclass(frozen=True)
class FrameRecord:
    """One tracked (or filled-in) source frame, as listed in the manifest."""

    index: int
    time_s: float
    status: str = "tracked"
    landmark_error_px: float | None = None
    photometric_error: float | None = None
    mask_iou: float | None = None

    def to_json(self, chunk: str) -> dict:
        if self.status not in FRAME_STATUSES:
            raise ValueError(f"frame status {self.status!r} not in {FRAME_STATUSES}")
        return {"index": int(self.index), "time_s": float(self.time_s), "status": self.status, "chunk": chunk,
                "landmark_error_px": _opt_float(self.landmark_error_px),
                "photometric_error": _opt_float(self.photometric_error),
                "mask_iou": _opt_float(self.mask_iou)}


@dataclass(frozen=True)
class CanonicalMesh:
    vertices: np.ndarray  # (V, 3) float32, metres, model axes
    triangles: np.ndarray  # (F, 3) int32
    albedo: np.ndarray  # (V, 3) uint8, sRGB


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- atomic writes ----------------------------------------------------------------------------------------------

def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed npz atomically (uncompressed: the add-on reads it with memory maps)."""
    plain = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for key, value in plain.items():
        if value.dtype == object:
            raise TypeError(f"{path.name}:{key} is an object array; only numeric arrays are allowed")
    _atomic_write_bytes(Path(path), lambda handle: np.savez(handle, **plain))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (a reader never sees a half-written file)."""
    _atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode("utf-8")))


# --- safe reads -------------------------------------------------------------------------------------------------

def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an npz safely (no pickles) into memory; errors become PackageError."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path.name} is missing from the result package {path.parent}",
                           "Re-run tracking into this folder to rebuild it, or import a complete package.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise PackageError(f"{path.name} contains pickled Python objects, which are never loaded",
                               "This file was not written by MonoNPHM; re-run tracking.") from None
        raise PackageError(f"{path.name} is corrupt ({exc})", "Re-run tracking to rewrite it.") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise PackageError(f"{path.name} is truncated or corrupt ({type(exc).__name__}: {exc})",
                           "Re-run tracking; finished frames in other chunks are kept.") from None


def check_arrays(name: str, arrays: Mapping[str, np.ndarray], schema: Mapping[str, tuple],
                 sizes: dict[str, int], *, required: bool = True) -> None:
    """Check dtype and shape of ``arrays`` against ``schema``; binds free size symbols into ``sizes``."""
    for key, (dtype, shape) in schema.items():
        if key not in arrays:
            if required:
                raise PackageError(f"{name} has no array '{key}'", "The package is incomplete; re-run tracking.")
            continue
        value = arrays[key]
        if value.dtype != np.dtype(dtype):
            raise PackageError(f"{name}:{key} has dtype {value.dtype}, expected {dtype}",
                               "The package was written by another tool or version; re-run tracking.")
        if value.ndim != len(shape):
            raise PackageError(f"{name}:{key} has shape {value.shape}, expected {len(shape)} dimensions "
                               f"{_shape_text(shape)}", "Re-run tracking to rewrite the package.")
        for axis, (want, got) in enumerate(zip(shape, value.shape)):
            if isinstance(want, str):
                bound = sizes.setdefault(want, got)
                if bound != got:
                    raise PackageError(f"{name}:{key} axis {axis} is {got}, expected {want}={bound} "
                                       f"as elsewhere in the package", "Re-run tracking to rewrite the package.")
            elif want != got:
                raise PackageError(f"{name}:{key} has shape {value.shape}, expected {_shape_text(shape)}",
                                   "Re-run tracking to rewrite the package.")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# --- writer -----------------------------------------------------------------------------------------------------

class ResultWriter:
    """Creates a package or reopens one to resume; writes frames as they finish.

    ``header`` holds the run description: ``source`` (dict with ``path``, ``kind``), ``fps``, ``image_size``
    [W, H], ``intrinsics`` (Intrinsics.to_dict()), ``model`` (dict with ``name`` …), ``output_mode``,
    ``settings`` (free dict). Reopening a package written for another clip or model raises PackageError, so
    earlier results are never mixed with new ones.
    """

    def __init__(self, root: str | os.PathLike, header: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self._check_header(header)
        manifest_path = self.root / MANIFEST
        if manifest_path.exists():
            existing = read_manifest(self.root)
            for key in ("source", "model"):
                old, new = _identity_of(existing.get(key)), _identity_of(header.get(key))
                if old != new:
                    raise PackageError(
                        f"{self.root} already holds a result for a different {key} ({old} vs {new})",
                        "Choose an empty output folder, or delete the old result first.")
            self.manifest = existing
            self.manifest.update({k: v for k, v in header.items() if k not in ("frames",)})
            self.manifest["state"] = "running"
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise PackageError(f"{self.root} exists, is not empty and holds no result package",
                                   "Choose an empty or new output folder.")
            self.manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": _now(),
                             **dict(header), "state": "running", "frames": [], "usd": None,
                             "has_canonical_mesh": False, "has_identity": False}
        self._chunk_counter = 1 + max((_chunk_number(f["chunk"]) for f in self.manifest["frames"]), default=-1)
        self._flush_manifest()

    @staticmethod
    def _check_header(header: Mapping[str, Any]) -> None:
        for key in ("source", "fps", "image_size", "intrinsics", "model", "output_mode"):
            if key not in header:
                raise ValueError(f"result header lacks {key!r}")
        if header["output_mode"] not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}")

    # -- queries
    @property
    def done_frames(self) -> set[int]:
        """Source indices already tracked (status 'tracked'); a resumed run skips these."""
        return {f["index"] for f in self.manifest["frames"] if f["status"] == "tracked"}

    @property
    def has_identity(self) -> bool:
        return bool(self.manifest.get("has_identity"))

    def identity(self) -> dict[str, np.ndarray]:
        return load_npz(self.root / IDENTITY)

    # -- writes
    def write_canonical_mesh(self, vertices: np.ndarray, triangles: np.ndarray, albedo: np.ndarray) -> None:
        arrays = {"vertices": np.asarray(vertices, np.float32), "triangles": np.asarray(triangles, np.int32),
                  "albedo": np.asarray(albedo, np.uint8)}
        check_arrays(CANONICAL_MESH, arrays, CANONICAL_SCHEMA, {})
        save_npz_atomic(self.root / CANONICAL_MESH, arrays)
        self.manifest["has_canonical_mesh"] = True
        self.manifest["vertex_count"] = int(arrays["vertices"].shape[0])
        self._flush_manifest()

    def write_identity(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
        check_arrays(IDENTITY, arrays, IDENTITY_SCHEMA, {})
        save_npz_atomic(self.root / IDENTITY, arrays)
        self.manifest["has_identity"] = True
        self._flush_manifest()

    def write_tracker_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        save_npz_atomic(self.root / TRACKER_STATE, arrays)

    def tracker_state(self) -> dict[str, np.ndarray] | None:
        path = self.root / TRACKER_STATE
        return load_npz(path) if path.exists() else None

    def write_frames(self, records: Iterable[FrameRecord], arrays: Mapping[str, np.ndarray]) -> str:
        """Write one chunk of finished frames (rows in ``records`` order) and list them in the manifest.

        Frames already in the manifest are replaced (re-tracking with --overwrite); chunks no frame refers to
        any more are deleted after the manifest no longer names them.
        """
        records = list(records)
        if not records:
            raise ValueError("write_frames needs at least one frame")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        arrays["frame_index"] = np.array([r.index for r in records], np.int32)
        for key, (dtype, _) in {**FRAME_SCHEMA, **OPTIONAL_FRAME_SCHEMA}.items():
            if key in arrays:
                arrays[key] = arrays[key].astype(dtype, copy=False)
        sizes: dict[str, int] = {"K": len(records)}
        if "vertex_count" in self.manifest:
            sizes["V"] = self.manifest["vertex_count"]
        if "expression_dim" in self.manifest:
            sizes["E"] = self.manifest["expression_dim"]
        check_arrays("frame chunk", arrays, FRAME_SCHEMA, sizes)
        check_arrays("frame chunk", arrays, OPTIONAL_FRAME_SCHEMA, sizes, required=False)
        chunk = f"{FRAMES_DIR}/chunk_{self._chunk_counter:06d}.npz"
        self._chunk_counter += 1
        save_npz_atomic(self.root / chunk, arrays)
        self.manifest["expression_dim"] = int(arrays["z_exp"].shape[1])
        new = {r.index: r.to_json(chunk) for r in records}
        kept = [f for f in self.manifest["frames"] if f["index"] not in new]
        self.manifest["frames"] = sorted(kept + list(new.values()), key=lambda f: f["index"])
        self._flush_manifest()
        self._collect_garbage()
        return chunk

    def set_usd(self, relative_path: str | None) -> None:
        self.manifest["usd"] = relative_path
        self._flush_manifest()

    def finish(self, state: str = "complete") -> None:
        """Mark the run ``complete``, ``cancelled`` or ``failed`` (frames written so far stay valid)."""
        self.manifest["state"] = state
        self._flush_manifest()

    def _flush_manifest(self) -> None:
        self.manifest["updated"] = _now()
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def _collect_garbage(self) -> None:
        used = {f["chunk"] for f in self.manifest["frames"]}
        for path in (self.root / FRAMES_DIR).glob("chunk_*.npz"):
            if f"{FRAMES_DIR}/{path.name}" not in used:
                path.unlink(missing_ok=True)


def _identity_of(value: Any) -> Any:
    """What must match for a resume to be safe: the clip path / the model name+path."""
    if isinstance(value, dict):
        return {k: value.get(k) for k in ("path", "name") if k in value}
    return value


def _chunk_number(chunk: str) -> int:
    match = re.search(r"chunk_(\d+)\.npz$", chunk)
    return int(match.group(1)) if match else -1


# --- reader -----------------------------------------------------------------------------------------------------

def read_manifest(root: str | os.PathLike) -> dict:
    """Read and validate ``manifest.json`` (format, version, required keys, frame records)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise PackageError(f"{root} is not a folder", "Pick the result folder that contains manifest.json.")
    if not path.is_file():
        raise PackageError(f"{root} has no {MANIFEST}; it is not a MonoNPHM result package",
                           "Pick the folder the backend wrote (it contains manifest.json).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{MANIFEST} in {root} is not valid JSON ({exc})",
                           "The file is damaged; re-run tracking into this folder to rewrite it.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise PackageError(f"{path} is not a MonoNPHM result manifest", "Pick a folder written by the backend.")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise PackageError(f"result package version {version} is not supported (this version reads "
                           f"{FORMAT_VERSION})", "Update the add-on, or re-run tracking with this version.")
    for key in ("source", "fps", "image_size", "intrinsics", "frames", "state"):
        if key not in manifest:
            raise PackageError(f"{MANIFEST} lacks '{key}'", "Re-run tracking to rewrite the package.")
    frames = manifest["frames"]
    if not isinstance(frames, list):
        raise PackageError(f"{MANIFEST}: 'frames' must be a list", "Re-run tracking to rewrite the package.")
    for record in frames:
        if not isinstance(record, dict) or not {"index", "time_s", "status", "chunk"} <= record.keys():
            raise PackageError(f"{MANIFEST}: malformed frame record {record!r}",
                               "Re-run tracking to rewrite the package.")
        if not re.fullmatch(rf"{FRAMES_DIR}/chunk_\d+\.npz", str(record["chunk"])):
            # Never follow a path out of the package.
            raise PackageError(f"{MANIFEST}: frame {record['index']} names an invalid chunk {record['chunk']!r}",
                               "Re-run tracking to rewrite the package.")
    indices = [r["index"] for r in frames]
    if indices != sorted(set(indices)):
        raise PackageError(f"{MANIFEST}: frame indices are not unique and sorted",
                           "Re-run tracking to rewrite the package.")
    return manifest


class ResultPackage:
    """Validating reader of a result package; arrays load lazily, each checked against the schema."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self._mesh: CanonicalMesh | None = None

    @property
    def frames(self) -> list[dict]:
        return self.manifest["frames"]

    @property
    def frame_indices(self) -> np.ndarray:
        return np.array([f["index"] for f in self.frames], dtype=np.int64)

    @property
    def times_s(self) -> np.ndarray:
        return np.array([f["time_s"] for f in self.frames], dtype=np.float64)

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def image_size(self) -> tuple[int, int]:
        width, height = self.manifest["image_size"]
        return int(width), int(height)

    @property
    def usd_path(self) -> Path | None:
        name = self.manifest.get("usd")
        if not name:
            return None
        path = self.root / Path(name).name  # stays inside the package
        if not path.is_file():
            raise PackageError(f"{path.name} is listed in the manifest but missing",
                               "Re-run tracking with the per-frame mesh output to rewrite it.")
        return path

    def intrinsics(self):
        from .conventions import Intrinsics

        try:
            return Intrinsics.from_dict(self.manifest["intrinsics"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{MANIFEST}: invalid intrinsics ({exc})",
                               "Re-run tracking to rewrite the package.") from None

    def quality(self, key: str) -> np.ndarray:
        """Per-frame fit quality (T,) float64, NaN where unknown; key in QUALITY_KEYS."""
        if key not in QUALITY_KEYS:
            raise KeyError(key)
        return np.array([np.nan if f.get(key) is None else f[key] for f in self.frames], dtype=np.float64)

    def canonical_mesh(self) -> CanonicalMesh:
        if self._mesh is None:
            arrays = load_npz(self.root / CANONICAL_MESH)
            sizes: dict[str, int] = {}
            check_arrays(CANONICAL_MESH, arrays, CANONICAL_SCHEMA, sizes)
            tris = arrays["triangles"]
            if tris.size and (tris.min() < 0 or tris.max() >= sizes["V"]):
                raise PackageError(f"{CANONICAL_MESH}: triangle indices out of range 0..{sizes['V'] - 1}",
                                   "Re-run tracking to rewrite the package.")
            if not np.isfinite(arrays["vertices"]).all():
                raise PackageError(f"{CANONICAL_MESH}: vertices contain NaN or infinity",
                                   "Re-run tracking to rewrite the package.")
            self._mesh = CanonicalMesh(arrays["vertices"], tris, arrays["albedo"])
        return self._mesh

    def identity(self) -> dict[str, np.ndarray]:
        arrays = load_npz(self.root / IDENTITY)
        check_arrays(IDENTITY, arrays, IDENTITY_SCHEMA, {})
        return arrays

    def frame_arrays(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Per-frame arrays stacked in manifest frame order: name -> (T, …).

        ``keys`` defaults to every array present in all chunks. Each chunk is validated; a frame listed in the
        manifest but missing from its chunk is an error.
        """
        frames = self.frames
        if not frames:
            return {}
        sizes: dict[str, int] = {}
        if self.manifest.get("has_canonical_mesh"):
            sizes["V"] = int(self.canonical_mesh().vertices.shape[0])
        chunks: dict[str, dict[str, np.ndarray]] = {}
        for name in dict.fromkeys(f["chunk"] for f in frames):
            arrays = load_npz(self.root / name)
            chunk_sizes = dict(sizes, K=int(arrays.get("frame_index", np.zeros(0)).shape[0]))
            check_arrays(name, arrays, FRAME_SCHEMA, chunk_sizes)
            check_arrays(name, arrays, OPTIONAL_FRAME_SCHEMA, chunk_sizes, required=False)
            sizes.setdefault("E", chunk_sizes["E"])
            if chunk_sizes["E"] != sizes["E"]:
                raise PackageError(f"{name}: expression size {chunk_sizes['E']} differs from other chunks",
                                   "Re-run tracking to rewrite the package.")
            chunks[name] = arrays
        common = set.intersection(*(set(a) for a in chunks.values())) - {"frame_index"}
        wanted = sorted(common) if keys is None else list(keys)
        missing = [k for k in wanted if k not in common]
        if missing:
            raise PackageError(f"frame arrays {missing} are not present in every chunk",
                               "Re-run tracking with the output mode that writes them.")
        out = {}
        for key in wanted:
            rows = []
            for record in frames:
                arrays = chunks[record["chunk"]]
                hit = np.flatnonzero(arrays["frame_index"] == record["index"])
                if hit.size != 1:
                    raise PackageError(f"{record['chunk']} has no row for frame {record['index']}",
                                       "Re-run tracking for that frame with --overwrite.")
                rows.append(hit[0])
            out[key] = np.stack([chunks[r["chunk"]][key][i] for r, i in zip(frames, rows)])
        return out
