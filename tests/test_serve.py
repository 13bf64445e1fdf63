"""The render server (`backend serve`) and its client (xscale_blender.core.render_server, no bpy):
framing, pixels equal to `backend render`'s, errors as messages, and a process that never
outlives its parent."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from backend import serve_protocol as sp
from conftest import ROOT, cli
from helpers import odd_camera
from xscale_blender.core import render_server as rs
from xscale_blender.core.preview import Preview, View


def server_argv(run, *extra):
    return [sys.executable, "-m", "backend", "serve", "--run", str(run), "--device", "cpu", *extra]


def server_env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def server(trained_run):
    srv = rs.RenderServer(server_argv(trained_run), server_env()).start()
    yield srv
    srv.stop()


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once no process `pid` exists (a zombie of ours counts as gone)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# --- framing ---------------------------------------------------------------------------------

def test_message_round_trip():
    buf = io.BytesIO()
    pixels = np.arange(12, dtype=np.float32)
    sp.write_message(buf, sp.FRAME, 7, {"width": 3, "passes": []}, [memoryview(pixels)])
    sp.write_message(buf, sp.STOP, 8)
    buf.seek(0)
    m = sp.read_message(buf, alloc=lambda n: np.empty(n, np.uint8))
    assert (m.kind, m.id, m.meta) == (sp.FRAME, 7, {"width": 3, "passes": []})
    assert np.array_equal(m.data.view(np.float32), pixels)
    m = sp.read_message(buf)
    assert (m.kind, m.id, m.meta, bytes(m.data)) == (sp.STOP, 8, {}, b"")
    with pytest.raises(sp.ConnectionClosed):
        sp.read_message(buf)


@pytest.mark.parametrize("blob, why", [
    (b"GARBAGE_GARBAGE_GARBAGE!", "magic"),
    (sp.HEADER.pack(sp.MAGIC, 99, sp.INFO, 1, 0, 0), "version"),
    (sp.HEADER.pack(sp.MAGIC, sp.VERSION, sp.INFO, 1, 0, 10) + b"abc", "inside a message"),
    (sp.HEADER.pack(sp.MAGIC, sp.VERSION, sp.INFO, 1, 3, 0) + b"[1]", "not a JSON object"),
    (b"XSN", "header"),
])
def test_malformed_messages(blob, why):
    with pytest.raises(sp.ProtocolError, match=why):
        sp.read_message(io.BytesIO(blob))


# --- the server --------------------------------------------------------------------------------

def test_pixels_equal_backend_render(server, trained_run, tmp_path):
    """Every pass of a frame (premultiplied RGB, alpha, depth, normal, position) is bit-equal to
    what `backend render` writes into its EXR files for the same camera (the same function
    renders both)."""
    from backend.campath import write_camera_path
    from backend.imageio import read_exr
    cams = [odd_camera(40, 30, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in (0.2, 0.9)]
    cams[1].K[0, 0] *= 1.3
    write_camera_path(tmp_path / "path.json", [1, 2], cams)
    res = cli("render", "--run", str(trained_run), "--path", str(tmp_path / "path.json"), "--out",
              str(tmp_path / "exr"), "--format", "exr", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    for n, cam in zip((1, 2), cams):
        f = server.render(cam.width, cam.height, cam.K, cam.world_to_camera, alpha="premultiplied",
                          passes=["rgba", "depth", "normal", "position"])
        rgba, depth = f.passes["rgba"], f.passes["depth"]
        exr = read_exr(tmp_path / "exr" / f"frame_{n:06d}.exr")
        assert rgba.shape == (30, 40, 4) and depth.shape == (30, 40) and rgba.dtype == np.float32
        assert np.array_equal(rgba[..., :3], np.stack([exr["R"], exr["G"], exr["B"]], -1))
        assert np.array_equal(rgba[..., 3], exr["A"]) and np.array_equal(depth, exr["Z"])
        for name in ("Normal", "Position"):
            assert f.passes[name.lower()].shape == (30, 40, 3)
            assert np.array_equal(f.passes[name.lower()], np.stack([exr[f"{name}.{c}"] for c in "XYZ"], -1))
        assert 0 < rgba[..., 3].mean() < 1 and f.meta["ss"] == 2      # the run's supersampling


def test_frame_options(server):
    cam = odd_camera(24, 16)
    args = (cam.width, cam.height, cam.K, cam.world_to_camera)
    ref = server.render(*args).passes
    a = ref["rgba"][..., 3:]
    f = server.render(*args, alpha="premultiplied", rows="bottom_up", depth_miss=1e10, ss=1)
    assert f.meta["ss"] == 1
    f = server.render(*args, alpha="premultiplied", rows="bottom_up", depth_miss=1e10).passes
    assert np.array_equal(f["rgba"][::-1, :, :3], ref["rgba"][..., :3] * a)
    assert np.array_equal(f["depth"][::-1], np.where(np.isinf(ref["depth"]), np.float32(1e10), ref["depth"]))
    bg = (0.25, 0.5, 1.0)
    f = server.render(*args, background=bg, passes=["rgba"]).passes
    assert "depth" not in f and (f["rgba"][..., 3] == 1).all()
    assert np.allclose(f["rgba"][..., :3], ref["rgba"][..., :3] * a + np.float32(bg) * (1 - a), atol=1e-6)
    f = server.render(*args, passes=["depth"]).passes
    assert "rgba" not in f and np.array_equal(f["depth"], ref["depth"])


@pytest.mark.parametrize("change, message", [
    ({"width": 0}, "image size 0x16"),
    ({"exposure": "no_such_photo"}, "no_such_photo"),
    ({"passes": ["normals"]}, "unknown pass 'normals'"),
    ({"ss": 9}, "--ss 9"),
    ({"K": [[1, 0], [0, 1]]}, "K must be 3x3"),
    ({"rows": "sideways"}, "rows must be one of"),
])
def test_bad_requests_answer_errors_and_keep_serving(server, change, message):
    cam = odd_camera(24, 16)
    meta = sp.render_request(cam.width, cam.height, cam.K.tolist(), cam.world_to_camera.tolist())
    meta.update(change)
    with pytest.raises(rs.ServerError, match=message):
        server.request(sp.RENDER, meta)
    assert server.alive
    assert server.request(sp.INFO).meta["pid"] == server.pid


def test_info(server, trained_run):
    info = server.request(sp.INFO).meta
    assert info["protocol"] == sp.VERSION and info["device"] == "cpu" and info["ss"] == 2
    assert info["run"] == str(trained_run) and len(info["views"]) == 6 and info["triangles"] == 162


def test_recycled_reply_buffer(server):
    cam = odd_camera(24, 16)
    args = (cam.width, cam.height, cam.K, cam.world_to_camera)
    ref = server.render(*args).passes["rgba"]
    a = server.render(*args, recycle=True).passes["rgba"]
    rgba_a = a.copy()
    b = server.render(*args, recycle=True, passes=["rgba"], background=(1, 0, 0)).passes["rgba"]
    assert np.shares_memory(a, b) and not np.shares_memory(ref, b)
    assert np.array_equal(rgba_a, ref) and (b[..., 3] == 1).all()


def test_abandoned_reply_is_drained(server):
    """A caller that stops waiting (Esc) leaves its reply in the pipe; the next request reads and
    drops it first and gets its own answer."""
    cam = odd_camera(64, 48)
    with pytest.raises(rs.Cancelled):
        server.render(cam.width, cam.height, cam.K, cam.world_to_camera, abort=lambda: True)
    f = server.render(12, 8, cam.K * [[12 / 64], [8 / 48], [1]], cam.world_to_camera)
    assert f.passes["rgba"].shape == (8, 12, 4)


def test_start_error_is_a_message(run, tmp_path):
    """A run without a checkpoint: the server says why before it exits (no dead pipe)."""
    import shutil
    r = tmp_path / "untrained"
    shutil.copytree(run, r)
    srv = rs.RenderServer(server_argv(r), server_env())
    with pytest.raises(rs.ServerDied, match="no checkpoint"):
        srv.start()
    assert srv.proc.wait(timeout=30) == 2


def test_stop_and_end_of_input(trained_run):
    srv = rs.RenderServer(server_argv(trained_run), server_env()).start()
    srv.stop()
    assert srv.proc.returncode == 0 and not srv.alive
    srv = rs.RenderServer(server_argv(trained_run), server_env()).start()
    srv.proc.stdin.close()                          # what Blender's exit does to the pipe
    assert srv.proc.wait(timeout=30) == 0


def test_garbage_is_answered_then_the_server_exits(trained_run):
    srv = rs.RenderServer(server_argv(trained_run), server_env()).start()
    srv.proc.stdin.write(b"not a message, just bytes....")
    srv.proc.stdin.flush()
    msg = sp.read_message(srv.proc.stdout)
    assert msg.kind == sp.ERROR and "magic" in msg.meta["message"]
    assert srv.proc.wait(timeout=30) == 2
    srv.kill()


CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from xscale_blender.core import render_server as rs
argv = [sys.executable, "-m", "backend", "serve", "--run", sys.argv[1], "--device", "cpu"]
srv = rs.RenderServer(argv, dict(os.environ, PYTHONPATH=sys.argv[2])).start()
print(srv.pid, flush=True)
if sys.argv[3] == "hang":
    import time
    time.sleep(600)
"""


@pytest.mark.parametrize("how", ["exit", "killed"])
def test_server_never_outlives_its_parent(trained_run, tmp_path, how):
    """The process that started the server exits normally, or is killed (SIGKILL: no atexit, no
    cleanup): either way the server ends (its stdin closes; a watchdog checks the parent)."""
    script = tmp_path / "parent.py"
    script.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, str(script), str(trained_run), str(ROOT),
                               "hang" if how == "killed" else "exit"], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert not gone(pid, timeout=0.2)
    if how == "killed":
        parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    assert gone(pid), f"render server {pid} outlived its parent"


def test_watchdog_ends_the_server_when_its_parent_is_gone(monkeypatch):
    """A server busy in a long request does not read its stdin: a watchdog thread notices the
    parent's death (the process is re-parented) and ends the process."""
    from backend import serve
    exits, ppids = [], iter([100, 100, 1])
    monkeypatch.setattr(serve, "PARENT_CHECK_S", 0.01)
    monkeypatch.setattr(serve.os, "getppid", lambda: next(ppids))

    class Exited(Exception):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Exited

    def watchdog():
        try:
            serve._exit_with_parent(100)
        except Exited:
            pass
    monkeypatch.setattr(serve.os, "_exit", fake_exit)
    t = threading.Thread(target=watchdog)
    t.start()
    t.join(5)
    assert exits == [0]


# --- the session's server: reuse, replacement, restart ---------------------------------------

def test_acquire_reuses_replaces_and_restarts(trained_run, run, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    argv = {k: (lambda r=r: (server_argv(r), server_env())) for k, r in (("a", trained_run), ("b", other))}
    starts = rs.starts
    try:
        a = rs.acquire("a", argv["a"])
        assert rs.acquire("a", argv["a"]) is a and rs.starts == starts + 1
        b = rs.acquire("b", argv["b"])                    # another run: the first server goes
        assert b is not a and gone(a.pid) and rs.starts == starts + 2
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(timeout=10)
        cam = odd_camera(12, 8)
        f = rs.call("b", argv["b"], lambda s: s.render(12, 8, cam.K, cam.world_to_camera))
        assert f.passes["rgba"].shape == (8, 12, 4) and rs.starts == starts + 3
        assert any("signal 9" in n for n in rs.take_notices())
        c = rs.current()
        # dies in the middle of the call: reported, restarted, the call answered
        def die_once(s):
            if s is c:
                os.kill(s.pid, signal.SIGKILL)
            return s.render(12, 8, cam.K, cam.world_to_camera)
        f = rs.call("b", argv["b"], die_once)
        assert f.passes["rgba"].shape == (8, 12, 4) and rs.current() is not c and rs.starts == starts + 4
        assert any("died" in n and "restarting" in n for n in rs.take_notices())
    finally:
        last = rs.current()
        rs.shutdown()
    assert rs.current() is None and gone(last.pid)


def test_ui_calls_never_wait_for_a_starting_server():
    """While a server starts (seconds; minutes for a first nvdiffrast build) the UI thread's calls
    return at once, and shutting down kills the starting process."""
    slow = lambda: ([sys.executable, "-c", "import time; time.sleep(60)"], None)  # noqa: E731
    errors = []

    def start():
        try:
            rs.acquire("slow", slow)
        except rs.ServerDied as e:
            errors.append(str(e))
    t = threading.Thread(target=start)
    t.start()
    t_end = time.monotonic() + 10
    while not rs.starting() and time.monotonic() < t_end:
        time.sleep(0.01)
    assert rs.starting()
    t0 = time.perf_counter()
    rs.notice("hello")
    assert rs.take_notices() == ["hello"] and rs.current() is None
    rs.shutdown()
    assert time.perf_counter() - t0 < 2.0
    t.join(10)
    assert not t.is_alive() and errors and not rs.starting()


# --- the viewport's thread -------------------------------------------------------------------

def test_preview_renders_reduced_while_moving_then_full():
    calls, lock = [], threading.Lock()
    frames = []

    def render(view, divisor, abort):
        w, h, K = view.scaled(divisor)
        with lock:
            calls.append((view.K[0][2], divisor, w, h))
        time.sleep(0.05)
        return np.zeros((h, w, 4), np.float32)

    p = Preview(render, lambda: frames.append(1), divisor=4, idle_s=0.3, budget_s=0.0)
    try:
        for k in range(5):                          # moving: a new view every 30 ms
            p.post(View(160, 120, ((100.0, 0, 80.0 + k), (0, 100.0, 60.0), (0, 0, 1)), ((1.0,),)))
            time.sleep(0.03)
        assert p.wait_idle(10)
        shown = p.latest()
        assert shown.divisor == 1 and shown.rgba.shape == (120, 160, 4) and shown.view.K[0][2] == 84.0
        assert calls[-1] == (84.0, 1, 160, 120)
        assert all(d == 4 and (w, h) == (40, 30) for _cx, d, w, h in calls[:-1])
        assert [c for c in calls if c[1] == 1] == [calls[-1]]    # no full frame while moving
        assert len(frames) == len(calls)
        # a full frame that comes fast enough: no reduced ones any more
        p.budget_s = 10.0
        calls.clear()
        p.post(View(160, 120, ((100.0, 0, 90.0), (0, 100.0, 60.0), (0, 0, 1)), ((1.0,),)))
        assert p.wait_idle(10) and [c[1] for c in calls] == [1]
    finally:
        p.close()


def test_preview_shows_errors_and_tries_again_on_the_next_view():
    def render(view, divisor, abort):
        if view.width == 10:
            raise rs.ServerError("no such run")
        return np.zeros((view.height // divisor, view.width // divisor, 4), np.float32)

    p = Preview(render, lambda: None, divisor=2, idle_s=0.05, budget_s=0.0)
    try:
        p.post(View(10, 10, ((1.0,),), ((1.0,),)))
        assert p.wait_idle(10) and p.status == "no such run" and p.latest() is None
        p.post(View(20, 10, ((1.0,),), ((1.0,),)))
        assert p.wait_idle(10) and p.status == "" and p.latest().rgba.shape == (10, 20, 4)
    finally:
        p.close()
