"""The built extension zip validates, installs headlessly, registers and runs its bundled backend."""

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backend.contracts.protocol import PROTOCOL_VERSION
from fakes.packages import make_package

pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[1]

INSTALL_SCRIPT = r'''
import json, sys
import bpy
zip_path, package = sys.argv[1], sys.argv[2]
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                enable_on_install=True) == {"FINISHED"}
name = "bl_ext.user_default.mononphm_blender"
assert name in sys.modules, sorted(k for k in sys.modules if k.startswith("bl_ext"))
assert getattr(bpy.types, "MONONPHM_PT_main", None) is not None
addon = sys.modules[name]
from importlib import import_module
contracts = import_module(name + ".contracts")
assert contracts.is_bundled(), contracts.ADDON_DIR
assert contracts.result_format.__name__ == name + ".backend.contracts.result_format"
assert contracts.requirements_file().parent == contracts.requirements_file(batch=True).parent == contracts.ADDON_DIR
prefs = bpy.context.preferences.addons[name].preferences
assert prefs.device == "auto"
jobs = import_module(name + ".core.jobs")
command = import_module(name + ".core.command")
root = contracts.backend_root()
info = jobs.run_handshake(command.version_argv(sys.executable), cwd=str(root), env=command.backend_env(root))
importer = import_module(name + ".importer")
res = importer.import_package(bpy.context, package)
keys = len(res.head.data.shape_keys.key_blocks)
bpy.ops.preferences.addon_disable(module=name)
assert getattr(bpy.types, "MONONPHM_PT_main", None) is None
print("RESULT " + json.dumps({"protocol": info["protocol"], "keys": keys, "root": str(root)}))
'''


def _load_build_module():
    spec = importlib.util.spec_from_file_location("mononphm_build", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extension_builds_installs_and_registers(tmp_path):
    build = _load_build_module()
    args = type("Args", (), {"python": sys.executable, "out": str(tmp_path / "dist")})()
    zip_path = build.task_extension(args)
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names  # the add-on sits at the zip root
    assert "backend/contracts/result_format.py" in names and "backend/__main__.py" in names and "requirements.txt" in names
    assert "requirements-batch.txt" in names   # Set Up Backend's "Batches on Ray"
    with zipfile.ZipFile(zip_path) as z:  # the add-on is GPL-3.0-or-later, the bundled backend MIT
        assert "GNU GENERAL PUBLIC LICENSE" in z.read("LICENSE").decode()[:200]
        assert "MIT License" in z.read("backend/LICENSE").decode()
        assert 'license = ["SPDX:GPL-3.0-or-later", "SPDX:MIT"]' in z.read("blender_manifest.toml").decode()
    assert zip_path.stat().st_size < 8e6  # the built-in model included
    assert "backend/models/builtin/model.pt" in names and not [n for n in names if n.endswith(".png")]
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.startswith("backend/models/") and not n.startswith("backend/models/builtin/")
                and n != "backend/models/__init__.py"]
    package = make_package(tmp_path / "pkg", frames=5, vertices=100)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    env.pop("MONONPHM_BACKEND_PATH", None)
    out = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(zip_path), str(package)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    import json

    result = json.loads(line[len("RESULT "):])
    assert result["protocol"] == PROTOCOL_VERSION and result["keys"] == 6
    assert "extensions" in result["root"]
