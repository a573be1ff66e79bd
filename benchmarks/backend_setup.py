"""One-click backend set-up from a fresh machine, timed: the add-on's installer against a local package index.

    .venv/bin/python -m pip download -r requirements.txt --only-binary=:all: -d WHEELS   # once, with network
    .venv/bin/python benchmarks/backend_setup.py --wheels WHEELS --env /tmp/mononphm-env [--keep]

WHEELS is served over HTTP on 127.0.0.1 as a PEP 503 package index with PEP 658 metadata files (what PyPI and
PyTorch's index serve), and the installer runs exactly as *Set Up Backend* does inside Blender — base interpreter
resolved from Blender's Python (here the bpy wheel's interpreter), resolve, download, install, verify and the smoke
test — with an empty pip cache and no pip configuration (a fresh machine). The torch variant's index is the same
local index, so the CPU torch wheel in WHEELS stands in for PyTorch's CPU index.

The LAST stdout line is one JSON object: seconds per step and in all, packages and bytes downloaded, the smoke
test's device and seconds, and the host (CPU model, flags, fp32 matmul peak). The download runs at loopback speed:
add the download time for your connection (bytes / bandwidth). ``--again`` times a second Set Up on the finished
environment (nothing to fetch). ``--baseline`` also times the trivial way, by hand:
``python -m venv`` + one ``pip install -r requirements.txt`` from the same index with an empty cache (no size
report, no resumable download, no check).

Last run (2026-12-06 23:00, 2-core Xeon with AVX-512 BF16/AMX shared with other jobs, load ~10, fp32 matmul
61 GFLOP/s on 1 thread; Python 3.11, CPU torch): 43 packages, 558.2 MB; 106.3 s in all (environment 7.8,
resolve 10.4, download 17.4, install 34.1, verify 8.9, smoke test 27.1 of which the backend's own 23.3);
baseline 134.9 s. Before ``--no-compile`` the install step alone took 153-156 s (223-249 s in all).
23:14, beside a test run (load ~14): 173.7 s in all; ``--again`` 54.1 s (0 packages: resolve 18.4, verify 6.2,
smoke test 29.3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from fakes.package_index import build_index, serve  # noqa: E402


def host_info() -> dict:
    import torch
    from host import describe_host

    torch.set_num_threads(1)
    return describe_host()


def run_installer(job):
    """Start a set-up and print its progress lines until it ends; returns (job, seconds)."""
    job.start()
    t0, last = time.monotonic(), ""
    while not job.poll().finished:
        line = f"{job.status.label}: {job.status.message} [{job.status.fraction:.0%}]"
        if line != last:
            print(f"{time.monotonic() - t0:7.1f} s  {line}", file=sys.stderr)
            last = line
        time.sleep(0.5)
    return job, time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", required=True, type=Path, help="folder of the pinned wheels (pip download)")
    ap.add_argument("--env", required=True, type=Path, help="environment folder to create (must not exist)")
    ap.add_argument("--keep", action="store_true", help="keep the environment afterwards")
    ap.add_argument("--baseline", action="store_true", help="also time venv + one plain pip install")
    ap.add_argument("--again", action="store_true", help="then Set Up again on the finished environment")
    ap.add_argument("--base-python", default="", help="the Advanced field's custom base interpreter (default: "
                    "the running one, as Blender's own); e.g. a Python 3.13 for the Tasks-API environment")
    args = ap.parse_args(argv)
    if args.env.exists():
        sys.exit(f"{args.env} exists: give a new folder")

    from mononphm_blender import contracts
    from mononphm_blender.core import command, installer

    scratch = Path(tempfile.mkdtemp(prefix="mononphm-setup-bench-"))
    build_index(args.wheels, scratch / "index")
    index = serve(scratch / "index")
    url = index.url
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        del os.environ[key]
    os.environ.update(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=str(scratch / "pip-cache"))  # a fresh machine
    base = installer.resolve_base_python(args.base_python)
    torch = installer.choose_torch_variant()
    options = installer.InstallOptions(base.python, args.env, contracts.requirements_file(),
                                       contracts.backend_root(), torch_variant=torch.variant, index_url=url,
                                       python_version=base.python_version,
                                       torch_index_url=url if installer.torch_index(torch.variant) else None)
    print(f"base Python: {base.python} ({base.version}, {base.source}); torch: {torch.variant} ({torch.reason})",
          file=sys.stderr)
    job, seconds = run_installer(installer.Installer(options, log_path=scratch / "setup.log"))
    st = job.status
    result = {"state": st.state, "error": st.error, "seconds": round(seconds, 1), "step_seconds": job.step_seconds,
              "packages": st.packages_total, "download_bytes": st.bytes_total,
              "download_mb": round(st.bytes_total / 1e6, 1), "env_mb": None, "base_python": base.version,
              "torch_variant": torch.variant, "smoke_device": st.device, "smoke_seconds": st.seconds,
              "largest": sorted(((f.filename, round(f.size / 1e6, 1)) for f in job.fetched_files()),
                                key=lambda x: -x[1])[:5],
              "model_wheels": [w.filename for _m, w in job.model_wheels]}
    if args.env.exists():
        result["env_mb"] = round(sum(p.stat().st_size for p in args.env.rglob("*") if p.is_file()
                                     and not p.is_symlink()) / 1e6, 1)
    if st.state != "FINISHED":
        print((scratch / "setup.log").read_text()[-4000:], file=sys.stderr)
    elif args.again:  # a second click: everything is installed, only resolve, verify and the smoke test run
        again, again_seconds = run_installer(installer.Installer(options, log_path=scratch / "setup.log"))
        result.update(again_state=again.status.state, again_seconds=round(again_seconds, 1),
                      again_step_seconds=again.step_seconds, again_packages=again.status.packages_total)
    if not args.keep:
        shutil.rmtree(args.env, ignore_errors=True)
    if args.baseline:
        plain = scratch / "plain-env"
        os.environ["PIP_CACHE_DIR"] = str(scratch / "plain-pip-cache")
        t1 = time.monotonic()
        subprocess.run([base.python, "-m", "venv", str(plain)], check=True, env=installer.clean_env())
        code = subprocess.call([str(command.venv_python(plain)), "-m", "pip", "install", "-q", "--only-binary=:all:",
                                "--index-url", url, "-r", str(contracts.requirements_file())],
                               env=installer.clean_env())
        result["baseline_plain_pip_seconds"] = round(time.monotonic() - t1, 1) if code == 0 else None
    index.close()
    shutil.rmtree(scratch, ignore_errors=True)
    result["host"] = host_info()
    print(json.dumps(result))
    return 0 if st.state == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
