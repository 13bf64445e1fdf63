"""Camera path files from outside: every frame checked before one is rendered, one file per
frame number, bounded size and nesting, and any malformed file refused with one line naming it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from backend.campath import read_camera_path, write_camera_path
from backend.errors import InputError
from conftest import expect_error
from fuzzing import refused_or_read, run_main
from helpers import odd_camera


def _path(tmp_path, name="path", edit=None, numbers=(1, 2, 3)):
    """A valid camera path of len(numbers) frames, then `edit(data)` applied to its JSON."""
    cams = [odd_camera(40, 30, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in np.linspace(0.2, 0.8, len(numbers))]
    path = tmp_path / f"{name}.json"
    write_camera_path(path, list(numbers), cams)
    if edit is not None:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return path


def _frames(**per_index):
    def edit(data):
        for k, v in per_index.items():
            data["frames"][int(k[1:])].update(v)
    return edit


@pytest.mark.parametrize("name, edit, needle", [
    ("duplicate", _frames(f0={"frame": 1}, f1={"frame": 1}), "frame entries 0 and 1 both have frame number 1"),
    ("fractional", _frames(f0={"frame": 1.5}, f1={"frame": 1.9}), "frame number 1.5"),
    ("infinite", _frames(f1={"frame": float("inf")}), "frame number inf"),
    ("text", _frames(f1={"frame": "2"}), "frame number '2'"),
    ("bool", _frames(f1={"frame": True}), "frame number True"),
    ("huge", _frames(f1={"frame": 10 ** 30}), "whole numbers from"),
])
def test_frame_numbers_are_whole_and_unique(tmp_path, name, edit, needle):
    """Two frames with one number (1 and 1, or 1.5 and 1.9 before) were written to one file."""
    with pytest.raises(InputError, match=needle):
        read_camera_path(_path(tmp_path, name, edit))


def test_whole_float_frame_numbers_and_missing_numbers_are_accepted(tmp_path):
    numbers, cams, fps = read_camera_path(_path(tmp_path, edit=_frames(f0={"frame": 7.0})))
    assert numbers == [7, 2, 3] and all(isinstance(n, int) for n in numbers) and fps == 24.0
    numbers, _, _ = read_camera_path(_path(tmp_path, edit=lambda d: [f.pop("frame") for f in d["frames"]]))
    assert numbers == [0, 1, 2]


@pytest.mark.parametrize("name, content, needle", [
    ("frames5", {"frames": 5}, "no list of 'frames'"),
    ("noframes", [1, 2], "no list of 'frames'"),
    ("fps", "fps", "fps 'abc' is not a positive number"),
    ("entry", {"frames": [3]}, "frame entry 0 is not an object"),
    ("missing", "missing", "frame 2 has no K"),
    ("deep", b'{"frames": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested 100001 levels deep"),
    ("latin1", b'{"frames": [], "na\xefve": 1}', "not UTF-8"),
    ("bigint", b'{"frames": [{"frame": ' + b"9" * 5000 + b"}]}", "not valid JSON"),
    ("truncated", b'{"frames": [{"frame": 1, "wid', "not valid JSON"),
    ("sized", "sized", "image size 30000x30000"),
    ("skewed", "skewed", "no skew"),
])
def test_malformed_paths_are_refused_naming_the_file(tmp_path, name, content, needle):
    if content == "fps":
        path = _path(tmp_path, name, lambda d: d.update(fps="abc"))
    elif content == "missing":
        path = _path(tmp_path, name, _frames(f1={"K": None}))
        data = json.loads(path.read_text())
        del data["frames"][1]["K"]
        path.write_text(json.dumps(data))
    elif content == "sized":
        path = _path(tmp_path, name, _frames(f0={"width": 30000, "height": 30000}))
    elif content == "skewed":
        path = _path(tmp_path, name, _frames(f0={"K": [[80, 1, 20], [0, 80, 15], [0, 0, 1]]}))
    else:
        path = tmp_path / f"{name}.json"
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(InputError) as e:
        read_camera_path(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and "\n" not in str(e.value)


def test_path_file_size_is_bounded(tmp_path, monkeypatch):
    """`--path /dev/zero` read until memory ran out: at most MAX_BYTES are read."""
    import backend.campath as campath
    monkeypatch.setattr(campath, "MAX_BYTES", 1 << 16)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (1 << 16) + b"{}")
    with pytest.raises(InputError, match="larger than 0.0625 MiB"):
        read_camera_path(big)
    monkeypatch.undo()
    with pytest.raises(InputError, match="larger than 64 MiB"):
        read_camera_path("/dev/zero")


def test_a_small_path_takes_little_memory(tmp_path):
    """Reading up to the limit in one read() allocated the whole 64 MiB for every path."""
    numbers, _, _ = refused_or_read(read_camera_path, _path(tmp_path), max_bytes=4 << 20)
    assert numbers == [1, 2, 3]


@pytest.mark.parametrize("name, edit, needle", [
    ("duplicate", _frames(f1={"frame": 1}), "both have frame number 1"),
    ("fps", lambda d: d.update(fps="abc"), "fps 'abc'"),
    ("frames5", lambda d: d.update(frames=5), "no list of 'frames'"),
    ("huge_frame", _frames(f2={"width": 30000, "height": 30000}), "image size 30000x30000"),
])
def test_render_refuses_bad_paths_before_writing(trained_run, tmp_path, name, edit, needle):
    """`render` on such a path: exit 2, one line naming the file, no output folder."""
    path = _path(tmp_path, name, edit)
    out = tmp_path / "frames"
    expect_error(run_main("render", "--run", str(trained_run), "--path", str(path), "--out", str(out),
                          "--device", "cpu"), f"{name}.json", needle)
    assert not out.exists()


def test_values_quoted_in_messages_are_cut_short(tmp_path):
    """A megabyte of text where a number belongs is quoted in 40 characters, not all of it."""
    with pytest.raises(InputError) as e:
        read_camera_path(_path(tmp_path, edit=_frames(f0={"frame": "x" * 1_000_000})))
    assert "'xxxxxxxxx" in str(e.value) and len(str(e.value)) < 300
