"""Where commands write: --run and --out naming an existing file end in one line naming the path
(exit 2)."""
from __future__ import annotations

import pytest

from backend.campath import write_camera_path
from conftest import expect_error
from fuzzing import run_main
from helpers import odd_camera


@pytest.mark.parametrize("args", [
    ("cache", "--scene", "SCENE", "--run", "FILE", "--device", "cpu"),
    ("fit", "--scene", "SCENE", "--run", "FILE", "--device", "cpu"),
    ("train", "--run", "FILE", "--device", "cpu"),
    ("eval", "--run", "FILE", "--device", "cpu"),
    ("render", "--run", "RUN", "--path", "PATH", "--out", "FILE", "--device", "cpu"),
    ("prepare", "SCENE", "--out", "FILE"),
])
def test_run_and_out_naming_a_file(scene, trained_run, tmp_path, args):
    """`cache --run FILE` and `prepare --out FILE` ended in a FileExistsError traceback."""
    file = tmp_path / "a_file"
    file.write_text("mine")
    write_camera_path(tmp_path / "p.json", [1], [odd_camera(20, 16)])
    names = {"SCENE": str(scene), "FILE": str(file), "RUN": str(trained_run), "PATH": str(tmp_path / "p.json")}
    flag = args[args.index("FILE") - 1]
    expect_error(run_main(*[names.get(a, a) for a in args]), str(file), f"{flag} names a file")
    assert file.read_text() == "mine"
