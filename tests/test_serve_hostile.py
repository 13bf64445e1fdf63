"""The render server under hostile or malformed messages: nothing a header declares is allocated
before it is checked, every malformed message gets an ERROR reply, and a camera `render` refuses
is refused here too (one check for both)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from backend import serve_protocol as sp
from conftest import ROOT
from helpers import odd_camera


@pytest.fixture(scope="module")
def local_server(trained_run):
    """The trained run loaded in this process: serve._loop runs on byte streams."""
    from backend.serve import Server
    return Server(str(trained_run), "cpu")


def header(kind, msg_id, meta_len=0, data_len=0, magic=sp.MAGIC, version=sp.VERSION):
    return sp.HEADER.pack(magic, version, kind, msg_id, meta_len, data_len)


def message(kind, msg_id, blob=b""):
    return header(kind, msg_id, len(blob)) + blob


def serve_stream(server, stream: bytes) -> tuple[int, list[sp.Message], int]:
    """Exit code of the serve loop on `stream`, its replies, and the peak of Python memory it took."""
    from backend.serve import _loop
    out = io.BytesIO()
    tracemalloc.start()
    try:
        rc = _loop(server, io.BytesIO(stream), out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out.seek(0)
    replies = []
    while True:
        try:
            replies.append(sp.read_message(out))
        except sp.ConnectionClosed:
            return rc, replies, peak


def request(**change) -> bytes:
    cam = odd_camera(12, 8)
    meta = sp.render_request(cam.width, cam.height, cam.K.tolist(), cam.world_to_camera.tolist())
    meta.update(change)
    return json.dumps(meta).encode()


@pytest.mark.parametrize("data_len", [10 ** 9, 2 ** 63, 1])
def test_request_data_is_refused_before_it_is_allocated(local_server, data_len):
    """A header declaring 10^9 bytes of data took 1 GB at once (2^63: an exit without a reply);
    requests carry no data: ERROR, and the server stops reading a stream it cannot trust."""
    rc, replies, peak = serve_stream(local_server, header(sp.INFO, 5, 0, data_len) + b"x" * 64)
    assert rc == 2 and [m.kind for m in replies] == [sp.ERROR]
    assert "requests carry none" in replies[0].meta["message"] and peak < 1 << 20


@pytest.mark.parametrize("blob, why", [
    (b"[" * 300_000 + b"]" * 300_000, "nested 300000 levels deep"),
    (b'{"width": ' + b"[" * 900 + b"]" * 900 + b"}", "nested 901 levels deep"),
    (b'{"width": 1', "not JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
    (b"[1, 2]", "not a JSON object"),
])
def test_malformed_meta_is_answered_and_serving_goes_on(local_server, blob, why):
    """Deep JSON under the 1 MiB limit ended the server in a RecursionError; a complete message
    whose meta is not a JSON object is answered with ERROR (its id) and the next one is served."""
    rc, replies, _ = serve_stream(local_server, message(sp.RENDER, 7, blob) + message(sp.INFO, 8))
    assert rc == 0 and [(m.kind, m.id) for m in replies] == [(sp.ERROR, 7), (sp.INFO_REPLY, 8)]
    assert why in replies[0].meta["message"] and "\n" not in replies[0].meta["message"]


@pytest.mark.parametrize("change, why", [
    ({"world_to_camera": (np.diag([1.3, 1.3, 1.3, 1.0]) @ odd_camera(12, 8).world_to_camera).tolist()}, "rigid"),
    ({"world_to_camera": (np.diag([-1.0, 1, 1, 1]) @ odd_camera(12, 8).world_to_camera).tolist()}, "rigid"),
    ({"K": [[20, 3, 6], [0, 20, 4], [0, 0, 1]]}, "no skew"),
    ({"width": 12.5}, "image size 12.5x8"),
    ({"width": True}, "image size Truex8"),
    ({"height": 16385}, "from 1 to 16384"),
    ({"K": [[1e400, 0, 6], [0, 20, 4], [0, 0, 1]]}, "finite"),
    ({"ss": "abc"}, "ss 'abc'"),
    ({"ss": 2.5}, "ss 2.5"),
    ({"exposure": [1]}, "exposure [1]"),
    ({"passes": 5}, "passes 5"),
    ({"passes": [["rgba"]]}, "passes"),
    ({"background": [1, 2]}, "background [1, 2]"),
    ({"background": "red"}, "background 'red'"),
    ({"depth_miss": "far"}, "depth_miss 'far'"),
    ({"depth_miss": 1e400}, "depth_miss inf"),
    ({"alpha": None}, "alpha must be one of"),
])
def test_bad_requests_get_the_checks_of_render(local_server, change, why):
    """A scaled or mirrored pose that `render` refuses was rendered by the server; option values
    of the wrong type ended in internal errors: each is a one-line ERROR naming it."""
    rc, replies, _ = serve_stream(local_server, message(sp.RENDER, 3, request(**change)) + message(sp.RENDER, 4, request()))
    assert rc == 0 and [(m.kind, m.id) for m in replies] == [(sp.ERROR, 3), (sp.FRAME, 4)]
    text = replies[0].meta["message"]
    assert text.startswith("render request") and why in text and "internal error" not in text, text


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_the_server_process_answers_a_huge_data_length_and_exits_2(trained_run):
    """The process itself: the reply comes, the exit code is 2, and its memory stays flat."""
    proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--run", str(trained_run), "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert sp.read_message(proc.stdout).kind == sp.READY
        with open(f"/proc/{proc.pid}/status") as fh:
            before = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM"))
        proc.stdin.write(header(sp.RENDER, 9, 0, 10 ** 9))
        proc.stdin.close()             # no data follows (a server waiting for it would now see the end)
        reply = sp.read_message(proc.stdout)
        with open(f"/proc/{proc.pid}/status") as fh:
            after = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM"))
        assert reply.kind == sp.ERROR and "requests carry none" in reply.meta["message"]
        assert proc.wait(timeout=30) == 2 and after - before < 100_000      # kB
        assert proc.stderr.read().decode().strip().splitlines()[-1].startswith("error: render server:")
    finally:
        proc.kill()


def test_missing_c_compiler_is_worded_and_serving_goes_on(local_server, monkeypatch):
    """Triton builds its launcher with a C compiler the first time a kernel runs: a machine without
    one gets the fix in the ERROR reply (not an internal error), and the next request is served."""
    real = local_server.render
    calls = []

    def render(meta):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
        return real(meta)

    monkeypatch.setattr(local_server, "render", render)
    stream = message(sp.RENDER, 1, request()) + message(sp.RENDER, 2, request()) + message(sp.STOP, 3)
    rc, replies, _ = serve_stream(local_server, stream)
    assert rc == 0
    assert [r.kind for r in replies] == [sp.ERROR, sp.FRAME, sp.BYE], replies
    text = replies[0].meta["message"]
    assert "C compiler" in text and "internal error" not in text and "\n" not in text, text
