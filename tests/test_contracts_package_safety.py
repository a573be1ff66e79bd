"""Result packages under hostile but fair use: one writer at a time, no mixed settings, nothing read or written
outside the package, every malformed package refused with PackageError before anything large is allocated."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backend.contracts import result_format as rf
from backend.cli import main as cli_main
from fakes.packages import make_package

REPO = Path(__file__).resolve().parents[1]


def _header(**over):
    h = {"source": {"path": "/clips/a.mp4", "kind": "video", "frame_count": 100}, "fps": 30.0,
         "image_size": [64, 48], "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0, "width": 64,
                                                "height": 48},
         "model": {"name": "builtin"}, "output_mode": "shape_keys", "settings": {"preset": "draft", "max_size": 512}}
    h.update(over)
    return h


def _frames(k, v=4, e=3):
    return {"scale": np.ones(k), "rotation": np.tile(np.eye(3), (k, 1, 1)), "translation": np.zeros((k, 3)),
            "z_exp": np.zeros((k, e)), "vertices": np.zeros((k, v, 3))}


def _records(indices):
    return [rf.FrameRecord(i, i / 30) for i in indices]


def _writer_with_mesh(root, header=None):
    w = rf.ResultWriter(root, header or _header())
    w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2]]), np.zeros((4, 3), np.uint8))
    return w


# --- one writer at a time ----------------------------------------------------------------------------------------

def test_second_writer_is_refused_and_the_lock_is_released(tmp_path):
    first = _writer_with_mesh(tmp_path / "p")
    assert rf.lock_owner(tmp_path / "p")["pid"] == os.getpid()
    with pytest.raises(rf.PackageError, match=f"being written by another tracking run \\(process {os.getpid()}"):
        rf.ResultWriter(tmp_path / "p", _header())
    with pytest.raises(rf.PackageError, match="being written by another tracking run"):
        rf.ResultWriter.check_can_write(tmp_path / "p", _header())  # what a run checks before its landmark pass
    first.write_frames(_records([0, 1]), _frames(2))  # the refused writer changed nothing
    first.finish()
    assert rf.lock_owner(tmp_path / "p") is None and not (tmp_path / "p" / rf.LOCK).exists()
    rf.ResultWriter(tmp_path / "p", _header()).finish()
    with pytest.raises(RuntimeError, match="has finished"):
        first.write_frames(_records([2]), _frames(1))


_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
    from backend.contracts import result_format as rf
    from test_contracts_package_safety import _header, _frames, _records
    start, stop = int(sys.argv[3]), int(sys.argv[4])
    try:
        w = rf.ResultWriter(sys.argv[2], _header())
    except rf.PackageError as exc:
        print("refused:", exc.message, flush=True)
        sys.exit(2)
    print("writing", flush=True)
    if not w.manifest.get("has_canonical_mesh"):
        w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2]]), np.zeros((4, 3), np.uint8))
    for i in range(start, stop):
        w.write_frames(_records([i]), _frames(1))
        time.sleep(float(sys.argv[5]))
    if sys.argv[6:] == ["hold"]:  # keep the lock until told (a line on stdin)
        print("holding", flush=True)
        sys.stdin.readline()
    w.finish()
""")


def _spawn(root, start, stop, delay, *extra):
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(REPO), str(root), str(start), str(stop), str(delay),
                             *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writer_processes_one_is_refused_and_the_package_stays_whole(tmp_path):
    root = tmp_path / "p"
    a = _spawn(root, 0, 16, 0.01, "hold")  # `--frames 0:16`, still writing when the second run starts
    assert a.stdout.readline().strip() == "writing"
    b = _spawn(root, 8, 24, 0.0)  # `--frames 8:24` into the same folder
    out_b, err_b = b.communicate(timeout=120)
    a.communicate("go\n", timeout=120)
    assert a.returncode == 0 and b.returncode == 2, err_b
    assert "being written by another tracking run" in out_b
    pkg = rf.ResultPackage(root)
    assert pkg.frame_indices.tolist() == list(range(16)) and pkg.manifest["state"] == "complete"
    assert pkg.frame_arrays()["vertices"].shape == (16, 4, 3)


def test_lock_of_a_killed_writer_is_stale(tmp_path):
    root = tmp_path / "p"
    a = _spawn(root, 0, 1000, 0.05)
    assert a.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    assert (root / rf.LOCK).exists() and rf.lock_owner(root) is None  # file left behind, held by nobody
    w = rf.ResultWriter(root, _header())
    assert w.done_frames and rf.lock_owner(root)["pid"] == os.getpid()
    w.finish()


# --- no mixed settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, what", [
    ({"settings": {"preset": "standard", "max_size": 512}}, "preset"),
    ({"settings": {"preset": "draft", "max_size": 256}}, "--max-size"),
    ({"intrinsics": {"fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0, "width": 64, "height": 48}},
     "camera \\(intrinsics\\)"),
    ({"image_size": [32, 24], "intrinsics": {"fx": 25.0, "fy": 25.0, "cx": 16.0, "cy": 12.0, "width": 32,
                                             "height": 24}}, "image size"),
    ({"model": {"name": "official"}}, "model"),
])
def test_rerun_with_other_settings_is_refused(tmp_path, change, what):
    w = _writer_with_mesh(tmp_path / "p")
    w.write_frames(_records([0]), _frames(1))
    w.finish()
    before = (tmp_path / "p" / rf.MANIFEST).read_bytes()
    with pytest.raises(rf.PackageError, match=f"different {what}") as info:
        rf.ResultWriter(tmp_path / "p", _header(**change))
    assert "another output folder" in info.value.hint
    assert (tmp_path / "p" / rf.MANIFEST).read_bytes() == before
    rf.ResultWriter(tmp_path / "p", _header(settings={"preset": "draft", "max_size": 512, "frames": "0:4:1"})).finish()


# --- nothing outside the package ---------------------------------------------------------------------------------

def test_symlinked_frames_folder_is_refused_and_nothing_outside_is_touched(tmp_path):
    root = make_package(tmp_path / "p", frames=6, vertices=50, chunk=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "chunk_000777.npz").write_bytes(b"precious")
    for chunk in (root / "frames").iterdir():
        chunk.rename(outside / chunk.name)
    (root / "frames").rmdir()
    (root / "frames").symlink_to(outside, target_is_directory=True)
    with pytest.raises(rf.PackageError, match="frames in the result package .* is a symbolic link"):
        rf.ResultPackage(root)
    header = json.loads((root / rf.MANIFEST).read_text())
    with pytest.raises(rf.PackageError, match="symbolic link"):
        rf.ResultWriter(root, {k: header[k] for k in ("source", "fps", "image_size", "intrinsics", "model",
                                                      "output_mode", "settings")})
    assert sorted(p.name for p in outside.iterdir()) == ["chunk_000000.npz", "chunk_000001.npz", "chunk_000777.npz"]
    assert (outside / "chunk_000777.npz").read_bytes() == b"precious"


@pytest.mark.parametrize("entry", [rf.MANIFEST, rf.CANONICAL_MESH, "frames/chunk_000001.npz", "stray"])
def test_symlinked_files_are_refused(tmp_path, entry):
    root = make_package(tmp_path / "p", frames=6, vertices=50, chunk=3)
    target = tmp_path / "elsewhere"
    path = root / entry
    if path.exists():
        path.rename(target)
    else:
        target.write_text("x")
    path.symlink_to(target)
    with pytest.raises(rf.PackageError, match="symbolic link"):
        rf.ResultPackage(root).frame_arrays()


def test_fifo_inside_a_package_is_refused(tmp_path):
    root = make_package(tmp_path / "p", frames=3, vertices=50, chunk=3)
    os.mkfifo(root / "frames" / "chunk_000009.npz")
    with pytest.raises(rf.PackageError, match="not a regular file"):
        rf.ResultPackage(root)


def test_out_that_is_a_file_or_unwritable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rf.PackageError, match="is a file, not a folder"):
        rf.ResultWriter(tmp_path / "file", _header())
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    with pytest.raises(rf.PackageError, match="permission denied"):
        rf.ResultWriter(locked / "p", _header())


# --- a full disk ---------------------------------------------------------------------------------------------------

def test_full_disk_mid_chunk_keeps_earlier_frames(tmp_path, monkeypatch):
    w = _writer_with_mesh(tmp_path / "p")
    w.write_frames(_records([0, 1]), _frames(2))
    real_savez = np.savez

    def half_then_full(handle, **arrays):
        handle.write(b"x" * 1000)  # part of the chunk reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", half_then_full)
    with pytest.raises(rf.DiskFullError, match="the disk is full: chunk_000001.npz") as info:
        w.write_frames(_records([2, 3]), _frames(2))
    assert "frames written before are kept" in info.value.hint and info.value.exit_code == 2
    monkeypatch.setattr(rf, "write_json_atomic", lambda *a: (_ for _ in ()).throw(rf.DiskFullError("full")))
    w.abort("failed")  # the manifest cannot be rewritten either: it keeps its last valid version
    monkeypatch.setattr(np, "savez", real_savez)
    assert rf.lock_owner(tmp_path / "p") is None
    assert sorted(os.listdir(tmp_path / "p" / "frames")) == ["chunk_000000.npz"]
    pkg = rf.ResultPackage(tmp_path / "p")
    assert pkg.frame_indices.tolist() == [0, 1] and pkg.frame_arrays()["vertices"].shape == (2, 4, 3)


# --- validation that matches the format --------------------------------------------------------------------------

@pytest.fixture
def pkg(tmp_path):
    return make_package(tmp_path / "p", frames=6, vertices=50, chunk=3)


def _edit_manifest(root, edit):
    data = json.loads((root / rf.MANIFEST).read_text())
    edit(data)
    (root / rf.MANIFEST).write_text(json.dumps(data))


def _set(path, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


MANIFEST_CASES = {
    "fps string": (_set(["fps"], "25"), "'fps' must be a positive number"),
    "fps zero": (_set(["fps"], 0), "'fps' must be a positive number"),
    "fps NaN": (lambda d: d.update(fps=float("nan")), "not valid JSON"),
    "image size string": (_set(["image_size"], ["320", 240]), "'image_size' must be"),
    "image size negative": (_set(["image_size"], [-320, 240]), "'image_size' must be"),
    "intrinsics string": (_set(["intrinsics", "fx"], "300"), "'intrinsics' must hold"),
    "intrinsics size mismatch": (_set(["intrinsics", "width"], 640), "'intrinsics' must hold"),
    "float frame index": (_set(["frames", 0, "index"], 0.5), "frame index 0.5 is not an integer"),
    "bool frame index": (_set(["frames", 0, "index"], True), "frame index True is not an integer"),
    "negative frame index": (_set(["frames", 0, "index"], -1), "frame index -1 is not an integer"),
    "frame index past frame_count": (_set(["frames", 5, "index"], 6), "frame index 6 is not an integer in 0..5"),
    "huge frame_count": (_set(["source", "frame_count"], 10**9), "source.frame_count must be"),
    "unknown status": (_set(["frames", 0, "status"], "great"), "unknown status"),
    "string time": (_set(["frames", 0, "time_s"], "0"), "time_s must be a finite number"),
    "string quality": (_set(["frames", 0, "mask_iou"], "0.9"), "mask_iou must be a finite number"),
    "unknown state": (_set(["state"], "done"), "'state' must be one of"),
    "string vertex_count": (_set(["vertex_count"], "2000"), "'vertex_count' must be an integer"),
    "huge expression_dim": (_set(["expression_dim"], 5000), "'expression_dim' must be an integer in 1..4096"),
    "bool has_identity": (_set(["has_identity"], "yes"), "'has_identity' must be true or false"),
    "usd elsewhere": (_set(["usd"], "../x.usdc"), "'usd' must be null"),
    "source not an object": (_set(["source"], "/clip.mp4"), "'source' must hold"),
    "deep nesting": (_set(["settings"], json.loads("[" * 70 + "]" * 70)), "nested deeper than 64"),
    "very deep nesting": (_set(["settings"], None), "not valid JSON"),  # replaced below by raw text
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_field_types_and_ranges(pkg, case):
    edit, message = MANIFEST_CASES[case]
    _edit_manifest(pkg, edit)
    if case == "very deep nesting":  # deeper than Python's own recursion limit
        text = (pkg / rf.MANIFEST).read_text()
        (pkg / rf.MANIFEST).write_text(text.replace('"settings": null', '"settings": ' + "[" * 100000
                                                    + "]" * 100000))
    with pytest.raises(rf.PackageError, match=message):
        rf.ResultPackage(pkg)


def test_vertex_count_must_match_the_manifest(pkg):
    _edit_manifest(pkg, _set(["vertex_count"], 51))
    with pytest.raises(rf.PackageError, match="axis 0 is .*expected V=51"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_expression_dim_must_match_the_manifest(pkg):
    _edit_manifest(pkg, _set(["expression_dim"], 7))
    with pytest.raises(rf.PackageError, match="expected E=7"):
        rf.ResultPackage(pkg).frame_arrays()


@pytest.mark.parametrize("key, value", [("translation", np.inf), ("rotation", np.nan), ("scale", -np.inf),
                                        ("vertices", np.nan), ("z_exp", np.inf), ("arkit", np.nan)])
def test_non_finite_frame_values(pkg, key, value):
    chunk = pkg / "frames" / "chunk_000001.npz"
    arrays = dict(np.load(chunk))
    arrays[key] = arrays[key].copy()
    arrays[key].reshape(-1)[0] = value
    np.savez(chunk, **arrays)
    with pytest.raises(rf.PackageError, match=f"chunk_000001.npz:{key} contains NaN or infinity"):
        rf.ResultPackage(pkg).frame_arrays()


def _npy_member(dtype, shape, payload_bytes):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return header.getvalue() + b"\0" * payload_bytes


def test_huge_declared_array_is_refused_before_allocation(pkg, monkeypatch):
    chunk = pkg / "frames" / "chunk_000001.npz"
    arrays = dict(np.load(chunk))
    with zipfile.ZipFile(chunk, "w", zipfile.ZIP_STORED) as z:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value)
            z.writestr(key + ".npy", buf.getvalue() if key != "vertices" else
                       _npy_member(np.float32, (3, 140_000_000, 3), 4 * 1024 * 1024))  # 5 GB declared, 4 MB held
    real_load = np.load

    def load(path, *args, **kwargs):
        assert "chunk_000001" not in str(path), "the huge chunk reached np.load"
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    with pytest.raises(rf.PackageError, match="declares a float32 array of shape \\(3, 140000000, 3\\)"):
        rf.ResultPackage(pkg).frame_arrays()


def test_size_limits_of_the_format():
    header = {"vertices": rf.ArrayHeader(np.dtype(np.float32), (2, 5_000_001, 3))}
    with pytest.raises(rf.PackageError, match="over the format's limit V <= 5000000"):
        rf.check_arrays("chunk", header, {"vertices": ("float32", ("K", "V", 3))}, {})
    header = {"z_exp": rf.ArrayHeader(np.dtype(np.float32), (2, 4097))}
    with pytest.raises(rf.PackageError, match="over the format's limit E <= 4096"):
        rf.check_arrays("chunk", header, {"z_exp": ("float32", ("K", "E"))}, {})


def test_declared_size_must_match_the_bytes_present(pkg):
    chunk = pkg / "frames" / "chunk_000001.npz"
    arrays = dict(np.load(chunk))
    with zipfile.ZipFile(chunk, "w", zipfile.ZIP_STORED) as z:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value)
            z.writestr(key + ".npy", buf.getvalue() if key != "z_exp" else _npy_member(np.float32, (3, 4000), 48))
    with pytest.raises(rf.PackageError, match="declares a float32 array of shape \\(3, 4000\\)"):
        rf.ResultPackage(pkg).frame_arrays()


def test_compressed_members_are_refused(pkg):
    chunk = pkg / "frames" / "chunk_000001.npz"
    arrays = dict(np.load(chunk))
    np.savez_compressed(chunk, **arrays)
    with pytest.raises(rf.PackageError, match="is compressed"):
        rf.ResultPackage(pkg).frame_arrays()


# --- the fuzz test -------------------------------------------------------------------------------------------------

def _mutations(rng):
    """Random malformed packages: wrong types, shapes, dtypes, non-finite values, links, huge declared sizes."""
    values = ["x", -1, 0, 1.5, 10**12, None, True, [], {}, [1, 2, 3], float("inf")]
    keys = ["fps", "image_size", "intrinsics", "source", "state", "vertex_count", "expression_dim", "usd",
            "has_canonical_mesh", "frames", "output_mode"]
    frame_keys = ["index", "time_s", "status", "chunk", "landmark_error_px"]
    for _ in range(40):
        kind = rng.choice(["manifest", "record", "array", "dtype", "shape", "nonfinite", "link", "huge"])
        if kind == "manifest":
            key, value = keys[rng.integers(len(keys))], values[rng.integers(len(values))]
            yield f"manifest {key}={value!r}", ("manifest", lambda d, k=key, v=value: d.update({k: v}))
        elif kind == "record":
            key, value = frame_keys[rng.integers(len(frame_keys))], values[rng.integers(len(values))]
            row = int(rng.integers(6))
            yield f"frame {row} {key}={value!r}", ("manifest",
                                                   lambda d, k=key, v=value, r=row: d["frames"][r].update({k: v}))
        else:
            name = ["frames/chunk_000000.npz", "frames/chunk_000001.npz", rf.CANONICAL_MESH][rng.integers(3)]
            yield f"{kind} {name}", (kind, name, int(rng.integers(1 << 30)))


def _apply(root, mutation, tmp_path):
    kind = mutation[0]
    if kind == "manifest":
        _edit_manifest(root, lambda d: mutation[1](d))
        return
    _, name, seed = mutation
    rng = np.random.default_rng(seed)
    path = root / name
    if kind == "link":
        target = tmp_path / f"target-{seed}"
        path.rename(target)
        path.symlink_to(target)
        return
    arrays = dict(np.load(path))
    key = sorted(arrays)[rng.integers(len(arrays))]
    value = arrays[key]
    if kind == "array":
        del arrays[key]
    elif kind == "dtype":
        arrays[key] = value.astype(np.float64 if value.dtype != np.float64 else np.int64)
    elif kind == "shape":
        arrays[key] = np.concatenate([value, value[:1]]) if value.ndim else value[None]
    elif kind == "nonfinite":
        if value.dtype.kind != "f":
            arrays[key] = value.astype(np.float32)
        arrays[key] = arrays[key].astype(np.float32)
        arrays[key].reshape(-1)[0] = [np.nan, np.inf, -np.inf][seed % 3]
    elif kind == "huge":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for k, v in arrays.items():
                buf = io.BytesIO()
                np.save(buf, v)
                z.writestr(k + ".npy", buf.getvalue() if k != key else
                           _npy_member(v.dtype, (1 << 40,) + v.shape[1:], 64))
        return
    np.savez(path, **arrays)


def test_fuzzed_packages_are_refused_cleanly(tmp_path):
    """Every mutation is either refused with PackageError by validate (exit 2, one JSON error line) or, where it
    stays within the format (e.g. a null quality value), read in full; nothing else ever escapes."""
    rng = np.random.default_rng(17)
    template = make_package(tmp_path / "template", frames=6, vertices=50, chunk=3)
    refused = 0
    for n, (label, mutation) in enumerate(_mutations(rng)):
        root = tmp_path / f"case{n}"
        subprocess.run(["cp", "-r", str(template), str(root)], check=True)
        _apply(root, mutation, tmp_path)
        out = io.StringIO()
        sys_stdout, sys.stdout = sys.stdout, out
        try:
            code = cli_main(["validate", str(root)])
        finally:
            sys.stdout = sys_stdout
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert code in (0, 2), (label, lines)
        if code == 2:
            refused += 1
            errors = [e for e in lines if e["type"] == "error"]
            assert len(errors) == 1 and errors[0]["code"] == "bad_package" and errors[0]["hint"], (label, lines)
        else:
            assert lines[-1]["type"] == "result", label
    assert refused >= 30


# --- USD layers stay inside the package ----------------------------------------------------------------------------

_ADD_DEPENDENCY = textwrap.dedent("""
    import sys
    from pxr import Sdf
    layer = Sdf.Layer.FindOrOpen(sys.argv[1])
    if sys.argv[2] == "sublayer":
        layer.subLayerPaths.append("/etc/outside.usda")
    else:
        prim = layer.GetPrimAtPath("/MonoNPHM/head") or Sdf.CreatePrimInLayer(layer, "/MonoNPHM/head")
        prim.referenceList.Prepend(Sdf.Reference("../../outside/model.usdc"))
    layer.Save()
""")


def _validate_in_subprocess(root):
    """`python -m backend validate` (pxr is loaded in a process of its own, never beside bpy's USD)."""
    from fakes.packages import usd_python

    proc = subprocess.run([usd_python(), "-m", "backend", "validate", str(root)], capture_output=True, text=True,
                          cwd=REPO)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("kind", ["sublayer", "reference"])
def test_usd_pulling_files_from_outside_is_refused(tmp_path, kind):
    from fakes.packages import usd_python

    root = make_package(tmp_path / "p", frames=3, vertices=50, chunk=3, output_mode="both", usd=True)
    code, events = _validate_in_subprocess(root)
    assert code == 0 and events[-1]["type"] == "result", events
    subprocess.run([usd_python(), "-c", _ADD_DEPENDENCY, str(root / rf.USD_SEQUENCE), kind], check=True)
    code, events = _validate_in_subprocess(root)
    assert code == 2 and events[-1]["type"] == "error" and events[-1]["code"] == "bad_package"
    assert "meshes.usdc pulls in files from outside the package" in events[-1]["message"]
    assert ("/etc/outside.usda" if kind == "sublayer" else "outside/model.usdc") in events[-1]["message"]


def test_frame_count_never_drops_below_a_listed_frame(tmp_path):
    """A re-run of a shorter range whose container does not count its frames keeps every listed index valid."""
    w = _writer_with_mesh(tmp_path / "p", _header(source={"path": "/clips/a.mp4", "kind": "video", "frame_count": 6}))
    w.write_frames(_records([4, 5]), _frames(2))
    w.finish()
    shorter = _header(source={"path": "/clips/a.mp4", "kind": "video", "frame_count": 3})
    rf.ResultWriter(tmp_path / "p", shorter).finish()
    assert rf.ResultPackage(tmp_path / "p").manifest["source"]["frame_count"] == 6
