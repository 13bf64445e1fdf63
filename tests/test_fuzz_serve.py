"""Fuzzing the render server's message loop (Hypothesis): streams of valid requests, requests
with any field replaced or removed, metas that are not JSON objects and headers that are not
messages, served by a loaded run in this process. Every complete message gets exactly one reply
carrying its id (ERROR with a one-line message for a bad one, never an internal error), a stream
that stops being messages ends with an ERROR and exit code 2, and memory stays bounded."""
from __future__ import annotations

import json

from hypothesis import example, given, strategies as st

from backend import serve_protocol as sp
from fuzzing import FUZZ
from helpers import odd_camera
from test_fuzz_files import BAD_SIDES, JSON, MATRICES, NUMBERS
from test_serve_hostile import header, local_server, serve_stream  # noqa: F401 (a fixture)

REPLY = {sp.INFO: {sp.INFO_REPLY}, sp.RENDER: {sp.FRAME, sp.ERROR}, sp.STOP: {sp.BYE}}
FIELDS = ["width", "height", "K", "world_to_camera", "ss", "exposure", "passes", "alpha", "background",
          "rows", "depth_miss"]


@st.composite
def render_meta(draw) -> bytes:
    cam = odd_camera(draw(st.integers(1, 12)), draw(st.integers(1, 8)))
    meta = sp.render_request(cam.width, cam.height, cam.K.tolist(), cam.world_to_camera.tolist(),
                             ss=draw(st.sampled_from([None, 1, 2])), passes=draw(st.sampled_from([["rgba", "depth"], ["depth"]])))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            del meta[key]
        elif key in ("width", "height"):
            meta[key] = draw(BAD_SIDES)
        else:
            meta[key] = draw(MATRICES if key in ("K", "world_to_camera") else NUMBERS | JSON)
    return json.dumps(meta).encode()


@st.composite
def streams(draw) -> tuple[bytes, list[tuple[int, set[int]]], str]:
    """Bytes of up to 4 items, the (id, reply kinds) each complete message must be answered with,
    and how the loop ends: "stop", "broken" (a bad frame: ERROR id 0, exit 2) or "end"."""
    out, expected = b"", []
    for _ in range(draw(st.integers(1, 4))):
        msg_id = draw(st.integers(0, 2 ** 32 - 1))
        item = draw(st.sampled_from(["info", "render", "render", "meta", "kind", "stop", "frame"]))
        if item in ("info", "stop", "kind"):
            kind = {"info": sp.INFO, "stop": sp.STOP, "kind": draw(st.integers(0, 2 ** 16 - 1))}[item]
            out += header(kind, msg_id)
            expected.append((msg_id, REPLY.get(kind, {sp.ERROR})))
            if kind == sp.STOP:
                return out, expected, "stop"
        elif item in ("render", "meta"):
            blob = draw(render_meta()) if item == "render" else draw(
                st.binary(max_size=40) | st.sampled_from([b"[" * 5000 + b"]" * 5000, b"[1]", b"null", b'"x"']))
            out += header(sp.RENDER, msg_id, len(blob)) + blob
            expected.append((msg_id, {sp.FRAME, sp.ERROR}))
        else:                                    # not a message: the stream cannot be trusted any more
            how = draw(st.sampled_from(["magic", "version", "meta", "data", "cut", "bytes"]))
            if how == "bytes":
                out += draw(st.binary(min_size=1, max_size=30).filter(lambda b: not sp.MAGIC.startswith(b[:4])))
            elif how == "cut":
                out += header(sp.RENDER, msg_id, 100)[:draw(st.integers(1, 23))]
            else:
                out += header(sp.INFO, msg_id, meta_len=sp.MAX_META + 1 if how == "meta" else 0,
                              data_len=draw(st.sampled_from([1, 10 ** 9, 2 ** 63, 2 ** 64 - 1])) if how == "data" else 0,
                              magic=b"XSNW" if how == "magic" else sp.MAGIC,
                              version=sp.VERSION + 1 if how == "version" else sp.VERSION)
            return out, expected, "broken"
    return out, expected, "end"


@FUZZ
@given(stream=streams())
@example(stream=(header(sp.INFO, 1, 0, 10 ** 9), [], "broken"))
@example(stream=(header(sp.RENDER, 2, 20_000) + b"[" * 10_000 + b"]" * 10_000, [(2, {sp.ERROR})], "end"))
def test_every_message_is_answered(local_server, stream):
    data, expected, ending = stream
    rc, replies, peak = serve_stream(local_server, data)
    assert peak < 64 << 20, f"{peak / 1e6:.0f} MB"
    if ending == "broken":
        assert rc == 2 and replies and replies[-1].kind == sp.ERROR and replies[-1].id == 0
        replies = replies[:-1]
    else:
        assert rc == 0
    assert [m.id for m in replies] == [i for i, _ in expected]
    for m, (_, kinds) in zip(replies, expected):
        assert m.kind in kinds, (m.kind_name, m.meta)
        if m.kind == sp.ERROR:
            text = m.meta["message"]
            assert text and "\n" not in text and "internal error" not in text, text
        if m.kind == sp.FRAME:
            layout = sp.pass_layout(m.meta)
            assert sum(size for *_, size in layout) == len(m.data)
            assert all(shape[:2] == (m.meta["height"], m.meta["width"]) for _, shape, _, _ in layout)
