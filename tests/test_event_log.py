"""RUN/log.jsonl is a convenience: a run folder that cannot take it (a full disk, a read-only
folder) costs one warning, never the command, and the log never holds a line glued onto another."""
import errno
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

from backend import events
from conftest import ROOT, cli, events_of
from helpers import odd_camera

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (an always full disk)")


def _emit_three(log_path, monkeypatch) -> list[dict]:
    stream = io.StringIO()
    monkeypatch.setattr(events, "_stream", stream)
    with events.copied_to(log_path):
        events.log("one")
        events.emit("progress", stage="train", step=1, total=2)
        events.log("three")
    return events_of(stream.getvalue())


@needs_dev_full
def test_a_full_log_disk_warns_once_and_events_go_on(tmp_path, monkeypatch):
    (tmp_path / "log.jsonl").symlink_to("/dev/full")
    evs = _emit_three(tmp_path / "log.jsonl", monkeypatch)
    shown = [e.get("message", e["event"]) for e in evs]
    assert shown[0] == "one" and shown[2:] == ["progress", "three"]
    assert shown[1].startswith(f"warning: cannot write {tmp_path / 'log.jsonl'} (No space left on device)")


def test_a_log_write_cut_short_leaves_no_half_line(tmp_path, monkeypatch):
    """The disk fills up in the middle of a line: the half written is taken back. A line that a
    killed process left unfinished is ended before the next event, so every event stays readable."""
    log = tmp_path / "log.jsonl"
    log.write_text('{"event": "log", "message": "before"}\n{"event": "progress", "st')   # killed mid-line
    real_write, calls = os.write, []

    def write_half_then_fill(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stream = io.StringIO()
    monkeypatch.setattr(events, "_stream", stream)
    monkeypatch.setattr(os, "write", write_half_then_fill)
    with events.copied_to(log):
        events.log("lost")
    monkeypatch.setattr(os, "write", real_write)
    assert log.read_text().endswith('"st') and "No space left on device" in stream.getvalue()
    with events.copied_to(log):                    # the next command, with room again
        events.log("after")
    lines = log.read_text().splitlines()
    assert lines[-2] == '{"event": "progress", "st' and json.loads(lines[-1])["message"] == "after"


@needs_dev_full
def test_render_eval_and_serve_go_on_when_the_log_cannot_be_written(trained_run, tmp_path):
    """The run folder's disk is full (log.jsonl on /dev/full) or its log is not a file: render,
    eval and the render server still do their work, with one warning each."""
    from backend.campath import write_camera_path
    from xscale_blender.core import render_server as rs
    r = shutil.copytree(trained_run, tmp_path / "r")
    (r / "log.jsonl").unlink(missing_ok=True)
    (r / "log.jsonl").symlink_to("/dev/full")
    write_camera_path(tmp_path / "p.json", [1, 2], [odd_camera(40, 30), odd_camera(40, 30, eye=(1.0, -2.4, 1.6))])
    res = cli("render", "--run", str(r), "--path", str(tmp_path / "p.json"), "--out", str(tmp_path / "out"),
              "--device", "cpu")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frame_000001.png", "frame_000002.png"]
    warnings = [e for e in events_of(res.stdout) if "cannot write" in e.get("message", "")]
    assert len(warnings) == 1 and events_of(res.stdout)[-1]["event"] == "done"
    (r / "log.jsonl").unlink()
    (r / "log.jsonl").mkdir()                      # a log that cannot be opened for writing at all
    res = cli("eval", "--run", str(r), "--device", "cpu")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert json.loads((r / "eval.json").read_text())["mean"]["psnr"] > 0
    assert sum("cannot write" in e.get("message", "") for e in events_of(res.stdout)) == 1
    srv = rs.RenderServer([sys.executable, "-m", "backend", "serve", "--run", str(r), "--device", "cpu"],
                          dict(os.environ, PYTHONPATH=str(ROOT))).start()
    try:
        cam = odd_camera(40, 30)
        frame = srv.render(width=40, height=30, K=cam.K.tolist(), world_to_camera=cam.world_to_camera.tolist())
        assert frame.passes["rgba"].shape == (30, 40, 4) and np.isfinite(frame.passes["rgba"]).all()
    finally:
        srv.stop()
