#!/usr/bin/env python3
"""Project tasks (standard library only).

    python3 build.py setup       create/reuse .venv (requirements-dev.txt) and .venv-bpy45 (bpy 4.5 LTS tests)
    python3 build.py test        setup, pytest over tests/ in .venv, then the Blender tests again with bpy 4.5
    python3 build.py demo [...]  setup, then .venv/bin/python scripts/demo.py [...]
    python3 build.py extension   stage the add-on + manifest + backend, build and validate dist/<id>-<ver>.zip
    python3 build.py bench       setup, then run every benchmarks/*.py

Both environments are reused when their requirements did not change (a hash is stored inside them).
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BPY45 = ROOT / ".venv-bpy45"
BPY45_REQUIREMENTS = ["bpy==4.5.15", "numpy==1.26.4", "pytest==9.2.0"]
ADDON_DIR = ROOT / "mononphm_blender"
BACKEND_DIR = ROOT / "backend"
DIST = ROOT / "dist"
STAGE = ROOT / "build" / "extension"
STAMP = ".mononphm-requirements.sha256"
# Backend files never shipped: caches, tests, training runs; models/ ships only the built-in checkpoint.
BACKEND_EXCLUDE = ["__pycache__", "*.pyc", "*.pyo", ".*", "tests", "test_*.py", "*.log", "runs", "wandb"]


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list, **kw) -> int:
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.call([str(c) for c in cmd], **kw)


def find_python311() -> str:
    """A Python 3.11 to create the environments from (bpy 4.5/5.0 wheels are cp311)."""
    candidates = [sys.executable, shutil.which("python3.11"), shutil.which("python3"), shutil.which("python")]
    if os.name == "nt":
        candidates.append(shutil.which("py"))
    for cand in filter(None, candidates):
        args = [cand, "-3.11"] if cand.endswith(("py", "py.exe")) else [cand]
        try:
            out = subprocess.run(args + ["-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "True":
            return cand if len(args) == 1 else f"{cand} -3.11"
    sys.exit("build.py: Python 3.11 is required (bpy is built for 3.11); install it and run with python3.11")


def _requirements_hash(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ensure_venv(venv: Path, pip_args: list[str], hash_parts: list[str]) -> Path:
    py = venv_python(venv)
    digest = _requirements_hash(hash_parts)
    stamp = venv / STAMP
    if py.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        log(f"reusing {venv.name}")
        return py
    if not py.is_file():
        base = find_python311().split(" ")
        if run(base + ["-m", "venv", str(venv)]) != 0:
            sys.exit(f"build.py: could not create {venv}")
    if run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q"] + pip_args) != 0:
        sys.exit(f"build.py: installing packages into {venv.name} failed")
    stamp.write_text(digest)
    return py


def task_setup(_args=None, *, bpy45: bool = True) -> Path:
    files = [ROOT / "requirements-dev.txt", ROOT / "requirements-batch.txt", ROOT / "requirements.txt"]
    py = ensure_venv(VENV, ["-r", str(ROOT / "requirements-dev.txt")], [f.read_text() for f in files])
    if bpy45:
        ensure_venv(VENV_BPY45, BPY45_REQUIREMENTS, BPY45_REQUIREMENTS)
    return py


def task_test(args) -> int:
    py = task_setup(bpy45=not args.no_bpy45)
    extra = list(args.pytest_args or [])
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    log("pytest (bpy 5.0, full suite)")
    code = run([py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"] + extra, cwd=ROOT, env=env)
    code45 = 0
    if not args.no_bpy45:
        blender_tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_blender_*.py"))
        if blender_tests:
            # One process per file: the bpy 4.5 wheel's interpreter hangs at exit after the tests pass when several of
            # these files share one process (seen with five of them; each file alone exits cleanly).
            log("pytest (bpy 4.5 LTS, Blender-side tests, one process per file)")
            for test_file in blender_tests:
                file_code = run([venv_python(VENV_BPY45), "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"]
                                + extra, cwd=ROOT, env=env)
                code45 = code45 or (0 if file_code == 5 else file_code)  # 5: pytest args selected none of the file
    if code or code45:
        log(f"tests FAILED (bpy 5.0 exit {code}, bpy 4.5 exit {code45})")
        return 1
    log("all tests passed")
    return 0


def task_demo(args) -> int:
    py = task_setup(bpy45=False)
    return run([py, ROOT / "scripts" / "demo.py", *args.rest], cwd=ROOT)


def task_bench(args) -> int:
    py = task_setup(bpy45=False)
    code = 0
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        code |= run([py, script, *args.rest], cwd=ROOT)
    return code


# --- extension ----------------------------------------------------------------------------------------------

def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _copy_tree(src: Path, dst: Path, patterns: list[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d, patterns))
        for name in sorted(filenames):
            if _excluded(name, patterns):
                continue
            target = dst / rel / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(dirpath) / name, target)


def blender_ext_cli(py: Path) -> Path:
    """Blender's own extension builder/validator (bl_pkg/cli/blender_ext.py), shipped inside the bpy wheel."""
    code = "import bpy, os; print(os.path.dirname(bpy.__file__))"
    site = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('bpy').submodule_search_locations[0])"],
                          capture_output=True, text=True).stdout.strip()
    hits = sorted(glob.glob(os.path.join(site, "*", "scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")))
    if not hits:
        sys.exit(f"build.py: blender_ext.py not found in the bpy wheel at {site} ({code})")
    return Path(hits[-1])


def blender_valid_tags(cli: Path) -> Path:
    """Blender's list of extension tags (what ``blender --command extension validate`` enforces)."""
    return cli.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"


def stage_extension(stage: Path = STAGE) -> Path:
    """Zip root = the add-on package (its LICENSE: GPL-3.0-or-later); manifest at the root; backend/ (+ built-in
    model, and the repository's MIT LICENSE), requirements.txt and requirements-batch.txt."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    _copy_tree(ADDON_DIR, stage, ["__pycache__", "*.pyc", ".*"])
    shutil.copy2(ROOT / "blender_manifest.toml", stage / "blender_manifest.toml")
    for name in ("requirements.txt", "requirements-batch.txt"):   # Set Up Backend installs either
        shutil.copy2(ROOT / name, stage / name)
    _copy_tree(BACKEND_DIR, stage / "backend", BACKEND_EXCLUDE + ["models"])
    shutil.copy2(ROOT / "LICENSE", stage / "backend" / "LICENSE")
    builtin = BACKEND_DIR / "models" / "builtin"
    if builtin.is_dir():
        # the model card's training figures (*.png) stay in the repository: nothing at run time reads them
        _copy_tree(builtin, stage / "backend" / "models" / "builtin", ["__pycache__", "*.pyc", ".*", "*.png"])
        init = BACKEND_DIR / "models" / "__init__.py"
        if init.is_file():
            shutil.copy2(init, stage / "backend" / "models" / "__init__.py")
    else:
        log("warning: backend/models/builtin is missing; the extension ships without the built-in model")
    return stage


def task_extension(args=None) -> Path:
    py = task_setup(bpy45=False) if not (args and args.python) else Path(args.python)
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    stage = stage_extension()
    cli = blender_ext_cli(py)
    out_dir = Path(args.out) if args and args.out else DIST
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if zip_path.exists():
        zip_path.unlink()
    tags = ["--valid-tags", blender_valid_tags(cli)]
    if run([py, cli, "validate", stage, *tags]) != 0:
        sys.exit("build.py: the staged extension does not validate")
    if run([py, cli, "build", "--source-dir", stage, "--output-filepath", zip_path, *tags]) != 0:
        sys.exit("build.py: building the extension failed")
    if run([py, cli, "validate", zip_path, *tags]) != 0:
        sys.exit("build.py: the built zip does not validate")
    log(f"extension: {zip_path} ({zip_path.stat().st_size / 1e6:.1f} MB)")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="task", required=True)
    sub.add_parser("setup", help="create or reuse .venv and .venv-bpy45")
    t = sub.add_parser("test", help="run the test suite (bpy 5.0 and bpy 4.5)")
    t.add_argument("--no-bpy45", action="store_true", help="skip the bpy 4.5 run")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    d = sub.add_parser("demo", help="run scripts/demo.py on the built-in sample")
    d.add_argument("rest", nargs=argparse.REMAINDER)
    e = sub.add_parser("extension", help="build and validate the extension zip into dist/")
    e.add_argument("--out", default=None, help="output folder (default dist/)")
    e.add_argument("--python", default=None, help="interpreter with the bpy wheel (default: .venv's)")
    b = sub.add_parser("bench", help="run benchmarks/*.py")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.task == "setup":
        task_setup()
        return 0
    if args.task == "test":
        return task_test(args)
    if args.task == "demo":
        return task_demo(args)
    if args.task == "extension":
        task_extension(args)
        return 0
    return task_bench(args)


if __name__ == "__main__":
    sys.exit(main())
