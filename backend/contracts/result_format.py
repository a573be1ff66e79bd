"""The result package: a folder the backend writes as frames finish and the Blender add-on imports.

Contract: docs/result-format.md. numpy + standard library only (the add-on imports it).

Layout::

    RESULT/
      manifest.json           format, version, clip, fps, image size, intrinsics, model, per-frame records
      canonical_mesh.npz      vertices (V,3) f32 metres model axes · triangles (F,3) i32 · albedo (V,3) u8 sRGB
                              optional: baked_albedo (V,3) u8 sRGB · baked_confidence (V,) f32 · uv (F,3,2) f32
                              · hair (V,) u8 (1 = the vertex is on the hair volume)
      identity.npz            z_geo, z_app (f32 vectors) · sh_coeffs (9,3) · color_affine (3,3) · color_bias (3,)
      frames/chunk_NNNNNN.npz per-frame arrays, one row per frame (frame_index says which)
      meshes.usdc             optional: per-frame meshes with colours (topology-varying output)
      texture.png             optional: baked albedo texture (8-bit sRGB RGB PNG) for the canonical mesh's uv
      tracker_state.npz       optional: whatever the tracker needs to resume
      .lock                   while a process writes: its pid (an OS lock on the file excludes a second writer)

Every file is written to a temporary name and renamed (atomic on POSIX and Windows), and the manifest is
rewritten after each chunk, so a crash or cancel never leaves a half-written file referenced. A package holds
only plain files: readers and the writer refuse symbolic links and special files inside it, so nothing is read
or written outside the folder.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import re
import socket
import stat
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
TEXTURE = "texture.png"
TRACKER_STATE = "tracker_state.npz"
LOCK = ".lock"

FRAME_STATUSES = ("tracked", "interpolated", "no_face", "failed")
USABLE_STATUSES = ("tracked", "interpolated")  # frames with a pose and expression that importers animate
RUN_STATES = ("running", "complete", "cancelled", "failed")
SOURCE_KINDS = ("video", "images", "image")

# Limits of the format: larger values are refused before anything is allocated.
MAX_JSON_DEPTH = 64
MAX_FRAME_COUNT = 10**8  # source.frame_count and frame indices
MAX_IMAGE_SIDE = 1 << 16
SIZE_LIMITS = {"V": 5_000_000, "F": 10_000_000, "E": 4096, "G": 4096, "P": 4096, "K": MAX_FRAME_COUNT}

# Array schemas: name -> (dtype kind, shape). Symbols: V vertices, F triangles, K rows in a chunk,
# E expression code size, G / P identity / appearance code sizes.
CANONICAL_SCHEMA = {
    "vertices": ("float32", ("V", 3)),
    "triangles": ("int32", ("F", 3)),
    "albedo": ("uint8", ("V", 3)),
}
OPTIONAL_CANONICAL_SCHEMA = {
    "baked_albedo": ("uint8", ("V", 3)),
    "baked_confidence": ("float32", ("V",)),
    "uv": ("float32", ("F", 3, 2)),
    "hair": ("uint8", ("V",)),
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


class DiskFullError(PackageError):
    """The disk (or quota) filled up while writing; files written before stay valid."""

    code = "disk_full"


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
    albedo: np.ndarray  # (V, 3) uint8, sRGB: the model's appearance-space albedo
    baked_albedo: np.ndarray | None = None  # (V, 3) uint8, sRGB: colours baked from the video (None: not baked)
    baked_confidence: np.ndarray | None = None  # (V,) float32 in [0, 1]: share of the video in baked_albedo
    uv: np.ndarray | None = None  # (F, 3, 2) float32: texture coordinates of each triangle corner (TEXTURE)
    hair: np.ndarray | None = None  # (V,) uint8: 1 where the vertex is on the hair volume (None: model without hair)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- atomic writes ----------------------------------------------------------------------------------------------

def _atomic_write_bytes(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> PackageError:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFullError(f"the disk is full: {path.name} could not be written to {path.parent}",
                             "Free some disk space and run the same command again: the frames written before "
                             "are kept and the run resumes after them.")
    return PackageError(f"cannot write {path} ({exc.strerror or exc})",
                        "Choose an output folder you can write to.")


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

def package_entry(root: str | os.PathLike, relative: str, *, folder: bool = False) -> Path:
    """``root/relative``, refused when it, or a folder on the way, is a symbolic link or not a plain file (a plain
    folder with ``folder``).

    The package folder itself may be reached through a link; nothing inside it may point elsewhere. A missing
    entry is returned as is (callers report it in their own words).
    """
    root = Path(root)
    path = root
    parts = Path(relative).parts
    for depth, part in enumerate(parts, 1):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break
        leaf = depth == len(parts) and not folder
        if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) if leaf else stat.S_ISDIR(mode)):
            what = "a symbolic link" if stat.S_ISLNK(mode) else ("not a regular file" if leaf else "not a folder")
            raise PackageError(f"{Path(*parts[:depth]).as_posix()} in the result package {root} is {what}",
                               "A result package holds only plain files and its frames/ folder; copy the "
                               "package without links, or re-run tracking into a new folder.")
    return root / relative


def check_package_tree(root: str | os.PathLike) -> None:
    """Refuse symbolic links and special files anywhere in the package's top level and its frames/ folder."""
    root = Path(root)
    for folder in (root, root / FRAMES_DIR):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            package_entry(root, FRAMES_DIR, folder=True)  # raises: frames/ is a file or a special file
            raise
        for entry in entries:
            relative = entry.name if folder == root else f"{FRAMES_DIR}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if relative == FRAMES_DIR:
                    continue
                if entry.is_symlink():  # never reached on POSIX; junctions on Windows
                    package_entry(root, relative)
                continue
            package_entry(root, relative)


@dataclass(frozen=True)
class ArrayHeader:
    """dtype and shape of an npz member, read from its npy header (nothing is allocated)."""

    dtype: np.dtype
    shape: tuple

    @property
    def ndim(self) -> int:
        return len(self.shape)


def npz_headers(path: Path) -> dict[str, ArrayHeader]:
    """The arrays an npz declares, from the npy headers of its members, checked against the bytes present.

    A member must be stored uncompressed (as the writer does) and hold exactly the bytes its header declares, so a
    small file that declares a huge array is refused here, before any array is loaded.
    """
    path = Path(path)
    name = path.name
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise PackageError(f"{name} holds {info.filename!r}, which is not an array",
                                       "This file was not written by MonoNPHM; re-run tracking.")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise PackageError(f"{name}:{info.filename} is compressed; package arrays are stored "
                                       "uncompressed", "Re-run tracking to rewrite the package.")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        raise ValueError(f"unsupported npy version {version}")
                    shape, _, dtype = read(member, max_header_size=10000)
                    offset = member.tell()
                if dtype.hasobject:
                    raise PackageError(f"{name} contains pickled Python objects, which are never loaded",
                                       "This file was not written by MonoNPHM; re-run tracking.")
                count = math.prod(shape)
                if count * dtype.itemsize != info.file_size - offset:
                    raise PackageError(f"{name}:{info.filename} declares a {dtype} array of shape {shape} "
                                       f"({count * dtype.itemsize} bytes) but holds {info.file_size - offset}",
                                       "The file is damaged or was not written by MonoNPHM; re-run tracking.")
                headers[info.filename[:-4]] = ArrayHeader(dtype, tuple(shape))
    except PackageError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:
        raise PackageError(f"{name} is truncated or corrupt ({type(exc).__name__}: {exc})",
                           "Re-run tracking; finished frames in other chunks are kept.") from None
    return headers


def load_npz(path: Path, schema: Mapping[str, tuple] | None = None, sizes: dict[str, int] | None = None,
             *, optional: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Load every array of an npz safely (no pickles, no links, sizes checked first); errors become PackageError.

    With ``schema`` (and ``optional``), dtypes and shapes are checked from the npy headers against it, binding the
    size symbols in ``sizes`` and the limits in SIZE_LIMITS, before anything is loaded; floating arrays of the
    schema must then be finite.
    """
    path = Path(path)
    root, relative = (path.parent.parent, f"{path.parent.name}/{path.name}") if path.parent.name == FRAMES_DIR \
        else (path.parent, path.name)
    package_entry(root, relative)
    if not path.is_file():
        raise PackageError(f"{path.name} is missing from the result package {root}",
                           "Re-run tracking into this folder to rebuild it, or import a complete package.")
    headers = npz_headers(path)
    if schema is not None:
        sizes = {} if sizes is None else sizes
        check_arrays(path.name, headers, schema, sizes)
        check_arrays(path.name, headers, optional or {}, sizes, required=False)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:
        raise PackageError(f"{path.name} is corrupt ({exc})", "Re-run tracking to rewrite it.") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise PackageError(f"{path.name} is truncated or corrupt ({type(exc).__name__}: {exc})",
                           "Re-run tracking; finished frames in other chunks are kept.") from None
    for key in {**(schema or {}), **(optional or {})}:
        value = arrays.get(key)
        if value is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
            raise PackageError(f"{path.name}:{key} contains NaN or infinity", "Re-run tracking to rewrite it.")
    return arrays


def check_arrays(name: str, arrays: Mapping[str, np.ndarray], schema: Mapping[str, tuple],
                 sizes: dict[str, int], *, required: bool = True) -> None:
    """Check dtype and shape of ``arrays`` (arrays or ArrayHeader) against ``schema``; binds free size symbols
    into ``sizes`` (within SIZE_LIMITS)."""
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
                limit = SIZE_LIMITS.get(want)
                if limit is not None and got > limit:
                    raise PackageError(f"{name}:{key} axis {axis} is {got}, over the format's limit {want} <= "
                                       f"{limit}", "The file was not written by MonoNPHM; re-run tracking.")
                bound = sizes.setdefault(want, got)
                if bound != got:
                    raise PackageError(f"{name}:{key} axis {axis} is {got}, expected {want}={bound} "
                                       f"as elsewhere in the package", "Re-run tracking to rewrite the package.")
            elif want != got:
                raise PackageError(f"{name}:{key} has shape {value.shape}, expected {_shape_text(shape)}",
                                   "Re-run tracking to rewrite the package.")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# --- the writer's lock ------------------------------------------------------------------------------------------

def _try_lock(handle) -> bool:
    """Take the OS lock on an open lock file without waiting; False when another process holds it.

    The OS drops the lock when its process dies (even by SIGKILL), so a lock file left behind is stale by itself.
    """
    if os.name == "nt":
        import msvcrt

        handle.seek(1 << 20)  # lock a byte past the pid text, which stays readable
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def lock_owner(root: str | os.PathLike) -> dict | None:
    """Who is writing the package at ``root`` now: the lock file's record (``pid``, ``host``, ``since``), or None
    when no process holds the lock (no lock file, or a stale one left by a killed run)."""
    path = Path(root) / LOCK
    try:
        with open(path, "rb") as handle:
            if _try_lock(handle):
                return None  # closing the file releases the probe's lock at once
            handle.seek(0)
            text = handle.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": None, "host": None, "since": None}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = {}
    record = record if isinstance(record, dict) else {}
    return {k: record.get(k) for k in ("pid", "host", "since")}


def _locked_error(root: Path, owner: Mapping[str, Any]) -> PackageError:
    who = f"process {owner.get('pid')}" + (f" on {owner['host']}" if owner.get("host") else "")
    return PackageError(f"{root} is being written by another tracking run ({who}, started "
                        f"{owner.get('since') or 'at an unknown time'})",
                        "Wait for that run to finish or cancel it, or choose another output folder.")


class PackageLock:
    """The lock of the one process allowed to write a package: ``RESULT/.lock`` holds its pid, host and start
    time, and an OS lock on that file (``flock`` / ``msvcrt.locking``) keeps every other writer out."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK
        self._handle = None

    def acquire(self) -> None:
        package_entry(self.path.parent, LOCK)
        while True:
            handle = open(self.path, "a+b")
            if not _try_lock(handle):
                handle.close()
                raise _locked_error(self.path.parent, lock_owner(self.path.parent) or {})
            # The previous holder may have deleted the file between our open and lock: retry on the new file.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}).encode())
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder keeps the file; the OS lock is what counts
        self._handle.close()
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None


# --- writer -----------------------------------------------------------------------------------------------------

class ResultWriter:
    """Creates a package or reopens one to resume; writes frames as they finish.

    ``header`` holds the run description: ``source`` (dict with ``path``, ``kind``), ``fps``, ``image_size``
    [W, H], ``intrinsics`` (Intrinsics.to_dict()), ``model`` (dict with ``name`` …), ``output_mode``,
    ``settings`` (free dict). Reopening a package written for another clip, model, camera, image size or preset
    raises PackageError, so earlier results are never mixed with new ones. The writer holds the package's lock
    from construction until ``finish`` / ``abort``; a second writer is refused.
    """

    def __init__(self, root: str | os.PathLike, header: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self._check_header(header)
        self.check_can_write(self.root, header)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(self.root, exc) from None
        self._lock = PackageLock(self.root)
        self._lock.acquire()
        try:
            self._open(header)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, header: Mapping[str, Any]) -> None:
        self._check_folder(self.root, header)  # again, now that no other writer can change the folder
        if (self.root / MANIFEST).exists():
            self.manifest = read_manifest(self.root)
            counted = self.manifest["source"].get("frame_count")
            self.manifest.update({k: v for k, v in header.items() if k not in ("frames",)})
            if counted and header["source"].get("frame_count"):  # a run of a shorter range may count fewer
                self.manifest["source"] = dict(header["source"],
                                               frame_count=max(counted, header["source"]["frame_count"]))
            self.manifest["state"] = "running"
        else:
            self.manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": _now(),
                             **dict(header), "state": "running", "frames": [], "usd": None,
                             "has_canonical_mesh": False, "has_identity": False}
        self._chunk_counter = 1 + max((_chunk_number(f["chunk"]) for f in self.manifest["frames"]), default=-1)
        self._flush_manifest()

    @classmethod
    def check_can_write(cls, root: str | os.PathLike, header: Mapping[str, Any]) -> None:
        """Everything that would refuse writing ``header``'s run into ``root``, checked without writing:
        the folder is writable and holds nothing else, no other run writes it, and an existing result was tracked
        from the same clip, model, camera and settings (PackageError otherwise)."""
        cls._check_folder(root, header)
        owner = lock_owner(root)
        if owner is not None:
            raise _locked_error(Path(root), owner)

    @staticmethod
    def _check_folder(root: str | os.PathLike, header: Mapping[str, Any]) -> None:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise PackageError(f"the output {root} is a file, not a folder",
                               "Pass a folder for --out (it is created if missing).")
        existing = root if root.exists() else next((p for p in root.parents if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PackageError(f"cannot write into {existing or root}: permission denied" if existing is not None
                               and existing.is_dir() else f"cannot create the output folder {root}",
                               "Choose an output folder you can write to.")
        if not root.exists():
            return
        check_package_tree(root)
        if not (root / MANIFEST).exists():
            if any(entry.name != LOCK for entry in root.iterdir()):
                raise PackageError(f"{root} exists, is not empty and holds no result package",
                                   "Choose an empty or new output folder.")
            return
        existing_manifest = read_manifest(root)
        for key, (old, new) in _run_identity(existing_manifest, header).items():
            if old != new:
                raise PackageError(
                    f"{root} already holds a result tracked with a different {key} ({old} vs {new}); the identity "
                    "and every frame there belong to the old setting",
                    "Use another output folder for this run (or delete the old result first); --overwrite keeps "
                    "the old identity, so it is no fix.")

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
        """Source indices already tracked (``tracked_frames``); a resumed run skips these."""
        return tracked_frames(self.manifest)

    @property
    def has_identity(self) -> bool:
        return bool(self.manifest.get("has_identity"))

    def identity(self) -> dict[str, np.ndarray]:
        return load_npz(self.root / IDENTITY, IDENTITY_SCHEMA)

    # -- writes
    def write_canonical_mesh(self, vertices: np.ndarray, triangles: np.ndarray, albedo: np.ndarray,
                             hair: np.ndarray | None = None) -> None:
        arrays = {"vertices": np.asarray(vertices, np.float32), "triangles": np.asarray(triangles, np.int32),
                  "albedo": np.asarray(albedo, np.uint8)}
        if hair is not None:
            arrays["hair"] = np.asarray(hair, np.uint8)
        sizes: dict[str, int] = {}
        check_arrays(CANONICAL_MESH, arrays, CANONICAL_SCHEMA, sizes)
        check_arrays(CANONICAL_MESH, arrays, OPTIONAL_CANONICAL_SCHEMA, sizes, required=False)
        self._save(CANONICAL_MESH, arrays)
        package_entry(self.root, TEXTURE).unlink(missing_ok=True)   # a new mesh: an earlier bake no longer applies
        self.manifest.pop("bake", None)
        self.manifest["has_canonical_mesh"] = True
        self.manifest["vertex_count"] = int(arrays["vertices"].shape[0])
        self._flush_manifest()

    def write_bake(self, mesh: CanonicalMesh, baked_albedo: np.ndarray, baked_confidence: np.ndarray,
                   settings: Mapping[str, Any], uv: np.ndarray | None = None, texture_png: bytes | None = None) -> None:
        """Rewrite the canonical mesh ``mesh`` (as written: vertices, triangles, model albedo) with baked colours
        (and optionally a texture with its uv).

        ``settings`` (frames used, …) is recorded as the manifest's ``bake``. A bake without a texture removes an
        older texture, so the package never pairs colours and a texture from different bakes.
        """
        arrays = {"vertices": np.asarray(mesh.vertices, np.float32), "triangles": np.asarray(mesh.triangles, np.int32),
                  "albedo": np.asarray(mesh.albedo, np.uint8), "baked_albedo": np.asarray(baked_albedo, np.uint8),
                  "baked_confidence": np.asarray(baked_confidence, np.float32)}
        if uv is not None:
            arrays["uv"] = np.asarray(uv, np.float32)
        if mesh.hair is not None:
            arrays["hair"] = np.asarray(mesh.hair, np.uint8)
        sizes: dict[str, int] = {}
        check_arrays(CANONICAL_MESH, arrays, CANONICAL_SCHEMA, sizes)
        check_arrays(CANONICAL_MESH, arrays, OPTIONAL_CANONICAL_SCHEMA, sizes, required=False)
        if (uv is None) != (texture_png is None):
            raise ValueError("a texture needs its uv and vice versa")
        self._check_locked()
        texture = package_entry(self.root, TEXTURE)
        if texture_png is not None:
            _atomic_write_bytes(texture, lambda handle: handle.write(texture_png))
        self._save(CANONICAL_MESH, arrays)
        if texture_png is None:
            texture.unlink(missing_ok=True)
        self.manifest["bake"] = {**dict(settings), "texture": TEXTURE if texture_png is not None else None}
        self._flush_manifest()

    def write_identity(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
        check_arrays(IDENTITY, arrays, IDENTITY_SCHEMA, {})
        self._save(IDENTITY, arrays)
        self.manifest["has_identity"] = True
        self._flush_manifest()

    def write_tracker_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._save(TRACKER_STATE, arrays)

    def tracker_state(self) -> dict[str, np.ndarray] | None:
        path = package_entry(self.root, TRACKER_STATE)
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
        self._save(chunk, arrays)
        self.manifest["expression_dim"] = int(arrays["z_exp"].shape[1])
        new = {r.index: r.to_json(chunk) for r in records}
        kept = [f for f in self.manifest["frames"] if f["index"] not in new]
        self.manifest["frames"] = sorted(kept + list(new.values()), key=lambda f: f["index"])
        self._flush_manifest()
        self._collect_garbage()
        return chunk

    def drop_frames(self, indices: Iterable[int]) -> None:
        """Remove frames from the package (their records, then chunks no record refers to any more)."""
        drop = set(indices)
        self.manifest["frames"] = [f for f in self.manifest["frames"] if f["index"] not in drop]
        self._flush_manifest()
        self._collect_garbage()

    def set_usd(self, relative_path: str | None) -> None:
        self.manifest["usd"] = relative_path
        self._flush_manifest()

    def finish(self, state: str = "complete") -> None:
        """Mark the run ``complete``, ``cancelled`` or ``failed`` (frames written so far stay valid) and release
        the package's lock."""
        try:
            self.manifest["state"] = state
            self._flush_manifest()
        finally:
            self._lock.release()

    def abort(self, state: str) -> None:
        """``finish(state)`` on the way out of an error: a manifest that cannot be written (a full disk) keeps
        its last valid version, and the lock is released either way."""
        try:
            self.finish(state)
        except PackageError:
            pass

    def _save(self, relative: str, arrays: Mapping[str, np.ndarray]) -> None:
        self._check_locked()
        save_npz_atomic(package_entry(self.root, relative), arrays)

    def _flush_manifest(self) -> None:
        self._check_locked()
        self.manifest["updated"] = _now()
        write_json_atomic(package_entry(self.root, MANIFEST), self.manifest)

    def _check_locked(self) -> None:
        if not self._lock.held:
            raise RuntimeError(f"the writer of {self.root} has finished; open a new ResultWriter to write again")

    def _collect_garbage(self) -> None:
        used = {f["chunk"] for f in self.manifest["frames"]}
        package_entry(self.root, FRAMES_DIR, folder=True)
        for entry in os.scandir(self.root / FRAMES_DIR):
            relative = f"{FRAMES_DIR}/{entry.name}"
            if re.fullmatch(r"chunk_\d+\.npz", entry.name) and relative not in used \
                    and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)


def _run_identity(manifest: Mapping[str, Any], header: Mapping[str, Any]) -> dict[str, tuple]:
    """What must match for a resume or extension to be safe, old vs new: the clip, the model, the camera (image
    size and intrinsics) and the settings the identity was fitted with (preset, --max-size)."""
    def settings(m):
        return m.get("settings") if isinstance(m.get("settings"), dict) else {}

    return {"source": (_identity_of(manifest.get("source")), _identity_of(header.get("source"))),
            "model": (_identity_of(manifest.get("model")), _identity_of(header.get("model"))),
            "image size": (manifest.get("image_size"), list(header.get("image_size") or [])),
            "camera (intrinsics)": (manifest.get("intrinsics"), header.get("intrinsics")),
            "preset": (settings(manifest).get("preset"), settings(header).get("preset")),
            "--max-size": (settings(manifest).get("max_size"), settings(header).get("max_size"))}


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
    """Read and validate ``manifest.json``: format, version, every field's type and range, frame records."""
    root = Path(root)
    if not root.is_dir():
        raise PackageError(f"{root} is not a folder", "Pick the result folder that contains manifest.json.")
    path = package_entry(root, MANIFEST)
    if not path.is_file():
        raise PackageError(f"{root} has no {MANIFEST}; it is not a MonoNPHM result package",
                           "Pick the folder the backend wrote (it contains manifest.json).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise PackageError(f"{MANIFEST} in {root} is not valid JSON ({str(exc)[:200]})",
                           "The file is damaged; re-run tracking into this folder to rewrite it.") from None
    if _json_depth(manifest) > MAX_JSON_DEPTH:
        raise PackageError(f"{MANIFEST} is nested deeper than {MAX_JSON_DEPTH} levels",
                           "The file was not written by MonoNPHM; re-run tracking.")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise PackageError(f"{path} is not a MonoNPHM result manifest", "Pick a folder written by the backend.")
    version = manifest.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise PackageError(f"result package version {version!r} is not supported (this version reads "
                           f"{FORMAT_VERSION})", "Update the add-on, or re-run tracking with this version.")
    for key in ("source", "fps", "image_size", "intrinsics", "frames", "state"):
        if key not in manifest:
            raise PackageError(f"{MANIFEST} lacks '{key}'", "Re-run tracking to rewrite the package.")
    _check_manifest_fields(manifest)
    return manifest


def read_manifest_or_none(root: str | os.PathLike) -> dict | None:
    """``read_manifest``, or None where ``root`` holds no valid package (not written yet, damaged, foreign)."""
    try:
        return read_manifest(root)
    except PackageError:
        return None


def tracked_frames(manifest: dict) -> set[int]:
    """Source indices of the package's tracked frames (status 'tracked'): what a resumed run does not fit again."""
    return {f["index"] for f in manifest["frames"] if f["status"] == "tracked"}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative: a hostile file cannot exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad_field(what: str) -> PackageError:
    return PackageError(f"{MANIFEST}: {what}", "The package is damaged or was not written by MonoNPHM; re-run "
                                               "tracking to rewrite it.")


def _check_manifest_fields(manifest: dict) -> None:
    """Types and ranges of the manifest's fields (docs/result-format.md)."""
    source = manifest["source"]
    if not isinstance(source, dict) or not isinstance(source.get("path", ""), str) \
            or source.get("kind", "video") not in SOURCE_KINDS:
        raise _bad_field(f"'source' must hold a path string and a kind in {SOURCE_KINDS}")
    frame_count = source.get("frame_count")
    if frame_count is not None and not (_is_int(frame_count) and 0 < frame_count <= MAX_FRAME_COUNT):
        raise _bad_field(f"source.frame_count must be an integer in 1..{MAX_FRAME_COUNT}, not {frame_count!r}")
    fps = manifest["fps"]
    if not (_is_number(fps) and fps > 0):
        raise _bad_field(f"'fps' must be a positive number, not {fps!r}")
    size = manifest["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= MAX_IMAGE_SIDE for v in size)):
        raise _bad_field(f"'image_size' must be [width, height] in pixels (1..{MAX_IMAGE_SIDE}), not {size!r}")
    intr = manifest["intrinsics"]
    if not (isinstance(intr, dict) and all(_is_number(intr.get(k)) for k in ("fx", "fy", "cx", "cy"))
            and intr["fx"] > 0 and intr["fy"] > 0 and [intr.get("width"), intr.get("height")] == size):
        raise _bad_field(f"'intrinsics' must hold positive finite fx, fy, finite cx, cy and the image size "
                         f"{size}, not {intr!r}")
    if manifest["state"] not in RUN_STATES:
        raise _bad_field(f"'state' must be one of {RUN_STATES}, not {manifest['state']!r}")
    if manifest.get("output_mode", "shape_keys") not in OUTPUT_MODES:
        raise _bad_field(f"'output_mode' must be one of {OUTPUT_MODES}")
    for key in ("model", "settings"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise _bad_field(f"'{key}' must be an object")
    for key in ("has_canonical_mesh", "has_identity"):
        if not isinstance(manifest.get(key, False), bool):
            raise _bad_field(f"'{key}' must be true or false")
    for key, symbol in (("vertex_count", "V"), ("expression_dim", "E")):
        value = manifest.get(key)
        if value is not None and not (_is_int(value) and 0 < value <= SIZE_LIMITS[symbol]):
            raise _bad_field(f"'{key}' must be an integer in 1..{SIZE_LIMITS[symbol]}, not {value!r}")
    if manifest.get("usd") not in (None, USD_SEQUENCE):
        raise _bad_field(f"'usd' must be null or {USD_SEQUENCE!r}, not {manifest.get('usd')!r}")
    frames = manifest["frames"]
    if not isinstance(frames, list):
        raise _bad_field("'frames' must be a list")
    stop = frame_count or MAX_FRAME_COUNT
    for record in frames:
        if not isinstance(record, dict) or not {"index", "time_s", "status", "chunk"} <= record.keys():
            raise _bad_field(f"malformed frame record {str(record)[:200]}")
        index = record["index"]
        if not (_is_int(index) and 0 <= index < stop):
            raise _bad_field(f"frame index {index!r} is not an integer in 0..{stop - 1} (source.frame_count)")
        if not re.fullmatch(rf"{FRAMES_DIR}/chunk_\d+\.npz", str(record["chunk"])):
            # Never follow a path out of the package.
            raise _bad_field(f"frame {index} names an invalid chunk {str(record['chunk'])[:200]!r}")
        if not _is_number(record["time_s"]):
            raise _bad_field(f"frame {index}: time_s must be a finite number, not {record['time_s']!r}")
        if record["status"] not in FRAME_STATUSES:
            raise _bad_field(f"frame {index}: unknown status {str(record['status'])[:50]!r} (one of "
                             f"{FRAME_STATUSES})")
        for key in QUALITY_KEYS:
            if record.get(key) is not None and not _is_number(record[key]):
                raise _bad_field(f"frame {index}: {key} must be a finite number or null, not {record[key]!r}")
    indices = [r["index"] for r in frames]
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise _bad_field("frame indices are not unique and sorted")


class ResultPackage:
    """Validating reader of a result package; arrays load lazily, each checked against the schema."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        check_package_tree(self.root)
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
        path = package_entry(self.root, USD_SEQUENCE)  # read_manifest allows no other name
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
            sizes = self._manifest_sizes()
            arrays = load_npz(self.root / CANONICAL_MESH, CANONICAL_SCHEMA, sizes, optional=OPTIONAL_CANONICAL_SCHEMA)
            tris = arrays["triangles"]
            if tris.size and (tris.min() < 0 or tris.max() >= sizes["V"]):
                raise PackageError(f"{CANONICAL_MESH}: triangle indices out of range 0..{sizes['V'] - 1}",
                                   "Re-run tracking to rewrite the package.")
            self._mesh = CanonicalMesh(arrays["vertices"], tris, arrays["albedo"], arrays.get("baked_albedo"),
                                       arrays.get("baked_confidence"), arrays.get("uv"), arrays.get("hair"))
        return self._mesh

    @property
    def texture_path(self) -> Path | None:
        """The baked texture (``TEXTURE``) when the manifest's ``bake`` lists one and the mesh has its uv."""
        name = (self.manifest.get("bake") or {}).get("texture")
        if not name:
            return None
        path = package_entry(self.root, TEXTURE)  # a fixed name: never a path from the manifest
        if not path.is_file() or self.canonical_mesh().uv is None:
            raise PackageError(f"{TEXTURE} is listed in the manifest but it or its uv is missing",
                               "Re-bake with a texture: python -m backend bake RESULT --texture")
        return path

    def identity(self) -> dict[str, np.ndarray]:
        return load_npz(self.root / IDENTITY, IDENTITY_SCHEMA)

    def _manifest_sizes(self) -> dict[str, int]:
        """Array sizes the manifest declares (V, E): every file must agree with them."""
        return {symbol: self.manifest[key] for key, symbol in (("vertex_count", "V"), ("expression_dim", "E"))
                if key in self.manifest}

    def frame_arrays(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Per-frame arrays stacked in manifest frame order: name -> (T, …).

        ``keys`` defaults to every array present in all chunks. Each chunk is validated; a frame listed in the
        manifest but missing from its chunk is an error.
        """
        frames = self.frames
        if not frames:
            return {}
        sizes = self._manifest_sizes()
        if self.manifest.get("has_canonical_mesh"):
            sizes["V"] = int(self.canonical_mesh().vertices.shape[0])
        chunks: dict[str, dict[str, np.ndarray]] = {}
        for name in dict.fromkeys(f["chunk"] for f in frames):
            chunk_sizes = dict(sizes)
            arrays = load_npz(self.root / name, FRAME_SCHEMA, chunk_sizes, optional=OPTIONAL_FRAME_SCHEMA)
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
