"""backend/contracts/result_format.py: writer ↔ reader round trip, resume/overwrite, and refusal of bad packages."""

import json
import zipfile

import numpy as np
import pytest

from backend.contracts import result_format as rf
from fakes.packages import make_package


def _header(**over):
    h = {"source": {"path": "/clips/a.mp4", "kind": "video"}, "fps": 30.0, "image_size": [64, 48],
         "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0, "width": 64, "height": 48},
         "model": {"name": "builtin"}, "output_mode": "shape_keys"}
    h.update(over)
    return h


def _frame_arrays(k, v=4, e=3):
    return {"scale": np.ones(k), "rotation": np.tile(np.eye(3), (k, 1, 1)), "translation": np.zeros((k, 3)),
            "z_exp": np.zeros((k, e)), "vertices": np.zeros((k, v, 3))}


def _small(root):
    w = rf.ResultWriter(root, _header())
    w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2], [0, 2, 3]]), np.zeros((4, 3), np.uint8))
    w.write_frames([rf.FrameRecord(i, i / 30, "tracked", 1.0 + i) for i in range(3)], _frame_arrays(3))
    w.write_frames([rf.FrameRecord(i, i / 30) for i in range(3, 5)], _frame_arrays(2))
    w.finish()
    return w


def test_round_trip(tmp_path):
    make_package(tmp_path / "p", frames=30, vertices=100, chunk=7)
    pkg = rf.ResultPackage(tmp_path / "p")
    assert pkg.manifest["state"] == "complete" and len(pkg.frames) == 30
    assert pkg.frame_indices.tolist() == list(range(30))
    arrays = pkg.frame_arrays()
    assert set(arrays) >= {"scale", "rotation", "translation", "z_exp", "vertices", "arkit"}
    assert arrays["vertices"].shape == (30, pkg.canonical_mesh().vertices.shape[0], 3)
    assert arrays["arkit"].shape == (30, 52)
    assert pkg.intrinsics().width == 320 and pkg.fps == 25.0
    err = pkg.quality("landmark_error_px")
    assert err[7] == 8.0 and np.isfinite(err).all()
    with pytest.raises(KeyError):
        pkg.quality("nope")
    assert pkg.identity()["sh_coeffs"].shape == (9, 3)


def test_resume_and_overwrite(tmp_path):
    w = _small(tmp_path / "p")
    assert w.done_frames == {0, 1, 2, 3, 4}
    again = rf.ResultWriter(tmp_path / "p", _header())  # resume the same clip + model
    assert again.done_frames == {0, 1, 2, 3, 4}
    again.write_frames([rf.FrameRecord(1, 1 / 30, "tracked", 9.0), rf.FrameRecord(2, 2 / 30, "tracked", 9.0)],
                       _frame_arrays(2))
    pkg = rf.ResultPackage(tmp_path / "p")
    assert pkg.frame_indices.tolist() == [0, 1, 2, 3, 4]
    assert pkg.quality("landmark_error_px")[1] == 9.0
    assert len(pkg.frame_arrays()["scale"]) == 5
    # the first chunk still holds frame 0; the overwritten rows come from the new chunk
    chunks = sorted(p.name for p in (tmp_path / "p" / "frames").glob("*.npz"))
    assert len(chunks) == 3


def test_unused_chunks_are_deleted(tmp_path):
    _small(tmp_path / "p")
    w = rf.ResultWriter(tmp_path / "p", _header())
    w.write_frames([rf.FrameRecord(3, 0.1), rf.FrameRecord(4, 0.13)], _frame_arrays(2))
    names = sorted(p.name for p in (tmp_path / "p" / "frames").glob("*.npz"))
    assert "chunk_000001.npz" not in names  # its frames 3, 4 were all replaced


def test_reopen_for_another_clip_is_refused(tmp_path):
    _small(tmp_path / "p")
    with pytest.raises(rf.PackageError, match="different source"):
        rf.ResultWriter(tmp_path / "p", _header(source={"path": "/clips/other.mp4", "kind": "video"}))


def test_non_empty_foreign_folder_is_refused(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("x")
    with pytest.raises(rf.PackageError, match="not empty"):
        rf.ResultWriter(tmp_path / "p", _header())


def test_writer_checks_shapes_and_header(tmp_path):
    w = rf.ResultWriter(tmp_path / "p", _header())
    w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2]]), np.zeros((4, 3), np.uint8))
    with pytest.raises(rf.PackageError, match="vertices"):
        w.write_frames([rf.FrameRecord(0, 0.0)], _frame_arrays(1, v=5))
    with pytest.raises(ValueError):
        rf.ResultWriter(tmp_path / "q", {"fps": 1})
    with pytest.raises(ValueError):
        rf.FrameRecord(0, 0.0, status="weird").to_json("frames/chunk_000000.npz")


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(TypeError):
        rf.save_npz_atomic(tmp_path / "x.npz", {"a": np.array([object()], dtype=object)})


# --- bad packages -----------------------------------------------------------------------------------------------

@pytest.fixture
def pkg(tmp_path):
    return make_package(tmp_path / "p", frames=6, vertices=50, chunk=3)


def _manifest(root):
    return json.loads((root / rf.MANIFEST).read_text())


def _write_manifest(root, data):
    (root / rf.MANIFEST).write_text(json.dumps(data))


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(rf.PackageError, match="not a folder"):
        rf.ResultPackage(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(rf.PackageError, match="no manifest.json"):
        rf.ResultPackage(tmp_path / "empty")


def test_missing_file(pkg):
    (pkg / rf.CANONICAL_MESH).unlink()
    with pytest.raises(rf.PackageError, match="canonical_mesh.npz is missing") as info:
        rf.ResultPackage(pkg).canonical_mesh()
    assert info.value.hint


def test_missing_chunk(pkg):
    (pkg / "frames" / "chunk_000001.npz").unlink()
    with pytest.raises(rf.PackageError, match="chunk_000001.npz is missing"):
        rf.ResultPackage(pkg).frame_arrays()


def test_wrong_version(pkg):
    data = _manifest(pkg)
    data["version"] = 99
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="version 99 is not supported"):
        rf.ResultPackage(pkg)


def test_wrong_format_and_bad_json(pkg):
    data = _manifest(pkg)
    data["format"] = "something-else"
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="not a MonoNPHM result manifest"):
        rf.ResultPackage(pkg)
    (pkg / rf.MANIFEST).write_text("{not json")
    with pytest.raises(rf.PackageError, match="not valid JSON"):
        rf.ResultPackage(pkg)


def test_missing_manifest_key(pkg):
    data = _manifest(pkg)
    del data["intrinsics"]
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="lacks 'intrinsics'"):
        rf.ResultPackage(pkg)


def test_chunk_path_escaping_the_package(pkg):
    data = _manifest(pkg)
    data["frames"][0]["chunk"] = "../../etc/passwd"
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="invalid chunk"):
        rf.ResultPackage(pkg)


def test_unsorted_frames(pkg):
    data = _manifest(pkg)
    data["frames"] = data["frames"][::-1]
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="unique and sorted"):
        rf.ResultPackage(pkg)


def test_wrong_shapes(pkg):
    arrays = dict(np.load(pkg / rf.CANONICAL_MESH))
    arrays["vertices"] = arrays["vertices"][:, :2].copy()
    np.savez(pkg / rf.CANONICAL_MESH, **arrays)
    with pytest.raises(rf.PackageError, match=r"canonical_mesh.npz:vertices has shape"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_wrong_vertex_count_in_chunk(pkg):
    path = pkg / "frames" / "chunk_000001.npz"
    arrays = dict(np.load(path))
    arrays["vertices"] = arrays["vertices"][:, :-1].copy()
    np.savez(path, **arrays)
    with pytest.raises(rf.PackageError, match="axis 1"):
        rf.ResultPackage(pkg).frame_arrays()


def test_wrong_dtype(pkg):
    arrays = dict(np.load(pkg / rf.CANONICAL_MESH))
    arrays["triangles"] = arrays["triangles"].astype(np.int64)
    np.savez(pkg / rf.CANONICAL_MESH, **arrays)
    with pytest.raises(rf.PackageError, match="dtype int64, expected int32"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_triangle_index_out_of_range(pkg):
    arrays = dict(np.load(pkg / rf.CANONICAL_MESH))
    arrays["triangles"][0, 0] = 10**6
    np.savez(pkg / rf.CANONICAL_MESH, **arrays)
    with pytest.raises(rf.PackageError, match="out of range"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_nan_vertices(pkg):
    arrays = dict(np.load(pkg / rf.CANONICAL_MESH))
    arrays["vertices"][0, 0] = np.nan
    np.savez(pkg / rf.CANONICAL_MESH, **arrays)
    with pytest.raises(rf.PackageError, match="NaN"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_truncated_npz(pkg):
    path = pkg / "frames" / "chunk_000000.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(rf.PackageError, match="truncated or corrupt"):
        rf.ResultPackage(pkg).frame_arrays()


def test_pickle_inside_is_refused(pkg):
    path = pkg / rf.CANONICAL_MESH
    arrays = dict(np.load(path))
    arrays["evil"] = np.array([{"x": 1}], dtype=object)
    np.savez(path, **arrays)  # numpy pickles object arrays
    with pytest.raises(rf.PackageError, match="pickled Python objects"):
        rf.ResultPackage(pkg).canonical_mesh()


def test_not_a_zip(pkg):
    (pkg / rf.IDENTITY).write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(rf.PackageError):
        rf.ResultPackage(pkg).identity()
    assert zipfile.is_zipfile(pkg / rf.CANONICAL_MESH)


def test_frame_missing_from_its_chunk(pkg):
    data = _manifest(pkg)
    data["frames"][0]["chunk"] = data["frames"][-1]["chunk"]
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="has no row for frame 0"):
        rf.ResultPackage(pkg).frame_arrays()


def test_usd_listed_but_missing(pkg):
    data = _manifest(pkg)
    data["usd"] = "meshes.usdc"
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="meshes.usdc is listed"):
        rf.ResultPackage(pkg).usd_path


def test_invalid_intrinsics(pkg):
    data = _manifest(pkg)
    data["intrinsics"] = {"fx": -1}
    _write_manifest(pkg, data)
    with pytest.raises(rf.PackageError, match="'intrinsics' must hold positive"):
        rf.ResultPackage(pkg).intrinsics()


def test_canonical_hair_round_trip_and_kept_by_the_bake(tmp_path):
    w = rf.ResultWriter(tmp_path / "p", _header())
    hair = np.array([0, 1, 1, 0], np.uint8)
    w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2], [0, 2, 3]]), np.zeros((4, 3), np.uint8), hair=hair)
    mesh = rf.ResultPackage(tmp_path / "p").canonical_mesh()
    assert mesh.hair.dtype == np.uint8 and mesh.hair.tolist() == [0, 1, 1, 0]
    w.write_bake(mesh, np.zeros((4, 3), np.uint8), np.ones(4, np.float32), {"frames": 1})
    assert rf.ResultPackage(tmp_path / "p").canonical_mesh().hair.tolist() == [0, 1, 1, 0]
    with pytest.raises(rf.PackageError, match="hair"):  # one entry per vertex
        w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2]]), np.zeros((4, 3), np.uint8), hair=hair[:3])
    # a model without hair writes none
    w.write_canonical_mesh(np.zeros((4, 3)), np.array([[0, 1, 2]]), np.zeros((4, 3), np.uint8))
    assert rf.ResultPackage(tmp_path / "p").canonical_mesh().hair is None
