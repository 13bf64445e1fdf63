"""Where commands write: --run and --out naming an existing file, and an --out disk that fills up
while frames are written, end in one line naming the path (exit 2), with nothing half-written."""
from __future__ import annotations

import errno
import io

import numpy as np
import pytest

from backend.campath import write_camera_path
from conftest import expect_error
from fuzzing import files_under, run_main
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


class FullDisk:
    """open() for the frame writer on a disk with `free` bytes left: writes beyond fail with
    ENOSPC, as on a full disk (the bytes written so far stay in the file)."""

    def __init__(self, free: int):
        self.free = free

    def __call__(self, path, mode="r", *args, **kw):
        fh = open(path, mode, *args, **kw)
        if "w" not in mode:
            return fh
        disk = self

        class File(io.BufferedWriter):
            def write(self, data):
                n = memoryview(data).nbytes
                if n > disk.free:
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.free -= n
                return fh.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

        return File(io.BytesIO())


def test_render_onto_a_full_disk(trained_run, tmp_path, monkeypatch):
    """A full --out disk ended in an OSError traceback (exit 1); now: exit 2, one line naming the
    frame and the full disk, the frames before it complete, no temporary file left."""
    from backend import imageio
    cams = [odd_camera(48, 32, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in np.linspace(0.2, 0.8, 4)]
    write_camera_path(tmp_path / "p.json", [1, 2, 3, 4], cams)
    out = tmp_path / "frames"
    res = run_main("render", "--run", str(trained_run), "--path", str(tmp_path / "p.json"), "--out", str(out),
                   "--device", "cpu")
    assert res.returncode == 0
    full = files_under(out)
    free = full["frame_000001.png"] + full["frame_000002.png"] + full["frame_000003.png"] // 2
    monkeypatch.setattr(imageio, "open", FullDisk(free), raising=False)
    monkeypatch.setattr("backend.render.WRITER_THREADS", 1)     # frames written in order
    out2 = tmp_path / "frames2"
    expect_error(run_main("render", "--run", str(trained_run), "--path", str(tmp_path / "p.json"), "--out", str(out2),
                          "--device", "cpu"), "frame_000003.png", "No space left on device", "up to 6 kB", "free space")
    assert files_under(out2) == {k: full[k] for k in ("frame_000001.png", "frame_000002.png")}


def test_exr_writes_that_fail_name_the_full_disk(tmp_path, monkeypatch):
    """OpenEXR reports a full disk as RuntimeError: it becomes the OSError (ENOSPC) a full disk is,
    and no temporary file stays behind."""
    import OpenEXR
    from backend.imageio import write_exr

    def full(self, path):
        open(path, "wb").write(b"\0" * 10)
        raise RuntimeError(f'Failed to write pixel data to image file "{path}". No space left on device.')
    monkeypatch.setattr(OpenEXR.File, "write", full)
    with pytest.raises(OSError) as e:
        write_exr(tmp_path / "f.exr", {"R": np.zeros((2, 2), np.float32)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "f.exr")
    assert list(tmp_path.iterdir()) == []
