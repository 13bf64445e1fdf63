"""Mesh files from outside: indices that do not fit are refused (never wrapped around to a valid
vertex), unknown PLY types and formats are one-line errors naming the file, and a valid mesh
still loads exactly."""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from backend.errors import InputError
from backend.meshio import Mesh, load_mesh, write_obj, write_ply
from conftest import expect_error
from fuzzing import run_main

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\n"
PLY_HEAD = ("ply\nformat {fmt} 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 2\nproperty list uchar {index} vertex_indices\nend_header\n")
VERTS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]


def ascii_ply(last_index: int, index: str = "int", fmt: str = "ascii") -> bytes:
    body = "".join(f"{x} {y} {z}\n" for x, y, z in VERTS) + f"3 0 1 2\n3 1 3 {last_index}\n"
    return (PLY_HEAD.format(fmt=fmt, index=index) + body).encode()


def binary_ply(last_index: int) -> bytes:
    body = struct.pack("<12f", *np.ravel(VERTS)) + struct.pack("<BIII", 3, 0, 1, 2) + struct.pack("<BIII", 3, 1, 3, last_index)
    return PLY_HEAD.format(fmt="binary_little_endian", index="uint").encode() + body


@pytest.mark.parametrize("name, content, needle", [
    ("wrap.obj", TRI + "f 1 2 3\nf 2 4 %d\n" % (2 ** 32 + 3), "vertices that do not exist"),   # wrapped to 3
    ("int64.obj", TRI + "f 1 2 3\nf 2 4 %d\n" % (2 ** 70), "could not parse"),
    ("relative.obj", TRI + "f 1 2 -5\n", "vertices that do not exist"),
    ("wrap_ascii.ply", ascii_ply(2 ** 32 + 2), "vertices that do not exist"),                 # wrapped to 2
    ("wrap_binary.ply", binary_ply(2 ** 32 - 2), "vertices that do not exist"),               # -2 as int32
    ("type.ply", ascii_ply(2, index="quad"), "unknown PLY property type 'quad'"),
    ("format.ply", ascii_ply(2, fmt="binary_middle_endian"), "unknown PLY format 'binary_middle_endian'"),
    ("count.ply", ascii_ply(2).replace(b"element face 2", b"element face -1"), "negative count"),
    ("nolist.ply", ascii_ply(2).replace(b"property list uchar int vertex_indices", b"property int a"),
     "no list of vertex indices"),
])
def test_malformed_meshes_are_refused(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(InputError) as e:
        load_mesh(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and "\n" not in str(e.value)


def test_valid_meshes_load_exactly(tmp_path):
    mesh = Mesh(np.array(VERTS, np.float32), np.array([[0, 1, 2], [1, 3, 2]], np.int32))
    for name, content in (("a.ply", ascii_ply(2)), ("b.ply", binary_ply(2)), ("c.obj", (TRI + "f 1 2 3\nf 2 4 -2\n").encode())):
        (tmp_path / name).write_bytes(content)
        m = load_mesh(tmp_path / name)
        assert m.faces.dtype == np.int32 and np.array_equal(m.faces, mesh.faces) and np.array_equal(m.vertices, mesh.vertices)
    write_obj(tmp_path / "d.obj", mesh)
    write_ply(tmp_path / "e.ply", mesh)
    for name in ("d.obj", "e.ply"):
        assert np.array_equal(load_mesh(tmp_path / name).faces, mesh.faces)


@pytest.mark.parametrize("name, content", [("1.obj", TRI + "f 1 2 3\nf 2 4 %d\n" % (2 ** 32 + 3)),
                                           ("1.obj", TRI + "f 1 2 3\nf 2 4 %d\n" % (2 ** 70)),
                                           ("mesh.ply", ascii_ply(2, index="quad"))])
def test_check_refuses_such_a_mesh_in_one_line(scene, tmp_path, name, content):
    s = shutil.copytree(scene, tmp_path / "s")
    (s / "1.obj").unlink()
    (s / name).write_bytes(content.encode() if isinstance(content, str) else content)
    expect_error(run_main("check", str(s)), name)


def test_overflowing_coordinates_print_no_warning(scene, tmp_path):
    """A vertex at 1e300 (infinite in float32): numpy's overflow warning came before the error on
    stderr; the error is the one line there."""
    from conftest import cli
    s = shutil.copytree(scene, tmp_path / "s")
    (s / "1.obj").write_text(TRI.replace("v 1 1 0", "v 1e300 1 0") + "f 1 2 3\nf 2 4 3\n")
    expect_error(cli("check", str(s), "--no-coverage", "--json"), "1.obj", "infinite")
