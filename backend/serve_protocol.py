"""The render server's wire format (docs/protocol.md, "Render server"), shared by the server
(backend/serve.py) and the Blender add-on's client (xscale_blender/core/render_server.py).

Standard library only: the add-on loads this module in Blender's Python (no torch, no numpy).

A message is a fixed 24-byte header, then `meta` bytes of UTF-8 JSON (small: a camera, sizes,
an error message), then `data` bytes of raw binary (pixels; never JSON):

    magic b"XSNV" | version u16 | kind u16 | id u32 | meta length u32 | data length u64

all little-endian. The client sends requests (INFO, RENDER, STOP) and reads exactly one reply
per request, carrying the request's id; the server sends one READY (or ERROR) with id 0 first.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import boundedjson

MAGIC = b"XSNV"
VERSION = 1
HEADER = struct.Struct("<4sHHIIQ")

# requests (client -> server)
INFO, RENDER, STOP = 1, 2, 3
# replies (server -> client)
READY, INFO_REPLY, FRAME, ERROR, BYE = 16, 17, 18, 19, 20
KIND_NAMES = {INFO: "info", RENDER: "render", STOP: "stop", READY: "ready", INFO_REPLY: "info-reply",
              FRAME: "frame", ERROR: "error", BYE: "bye"}

MAX_META = 1 << 20            # bytes of JSON in one message
MAX_NESTING = 16              # JSON levels in one meta (a FRAME's nests 4 deep)
DEFAULT_PASSES = ("rgba", "depth")   # what a RENDER request that names none gets (backend/passes.py)
ROWS = ("top_down", "bottom_up")     # image row order of the returned passes
ALPHA = ("straight", "premultiplied")


class ConnectionClosed(Exception):
    """The other side closed the stream between two messages (a clean end)."""


class ProtocolError(Exception):
    """Bytes that are not a message of this protocol (or a stream cut inside a message)."""


class BadMessage(ProtocolError):
    """A complete message whose meta is not a JSON object: the stream is still in step, so the
    message can be answered (ERROR, with its id) and the next one read."""

    def __init__(self, msg_id: int, reason: str):
        super().__init__(reason)
        self.id = msg_id


@dataclass
class Message:
    kind: int
    id: int
    meta: dict = field(default_factory=dict)
    data: Any = b""           # bytes-like of the header's data length

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


def encode_header(kind: int, msg_id: int, meta: dict | None, data_len: int) -> bytes:
    """Header and JSON meta of a message whose `data_len` data bytes follow."""
    blob = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode() if meta else b""
    if len(blob) > MAX_META:
        raise ValueError(f"message meta too large ({len(blob)} bytes)")
    return HEADER.pack(MAGIC, VERSION, kind, msg_id, len(blob), data_len) + blob


def write_message(out, kind: int, msg_id: int, meta: dict | None = None, data: Iterable = ()) -> None:
    """Write one message to the binary stream `out`: `data` is a sequence of bytes-like objects
    (e.g. memoryviews of pixel buffers), written one after the other without copying."""
    parts = [memoryview(d).cast("B") for d in data]
    _write_all(out, encode_header(kind, msg_id, meta, sum(p.nbytes for p in parts)))
    for p in parts:
        _write_all(out, p)
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()


def _write_all(out, buf) -> None:
    view = memoryview(buf).cast("B")
    while view.nbytes:
        n = out.write(view)
        if n is None:         # a non-blocking stream that is full: not used here
            raise ProtocolError("the stream would block")
        view = view[n:]


def readinto_exact(inp, view: memoryview) -> int:
    """Fill `view` from `inp`; returns the bytes read (less than its size only at end of stream)."""
    view = view.cast("B")
    got = 0
    while got < view.nbytes:
        n = inp.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def read_message(inp, alloc: Callable[[int], Any] = bytearray, max_data: int | None = None) -> Message:
    """The next message of the binary stream `inp`. `alloc(n)` gives the writable buffer the
    data is read into (a bytearray by default; the client passes a numpy array). `max_data`:
    the most data bytes a message may declare (the server: 0, requests carry none), checked
    before anything is allocated. ConnectionClosed at a clean end of stream, BadMessage for a
    complete message whose meta is malformed, ProtocolError for anything else malformed."""
    head = bytearray(HEADER.size)
    got = readinto_exact(inp, memoryview(head))
    if got == 0:
        raise ConnectionClosed()
    if got < HEADER.size:
        raise ProtocolError(f"stream ended inside a message header ({got} of {HEADER.size} bytes)")
    magic, version, kind, msg_id, meta_len, data_len = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"not a render server message (magic {bytes(magic)!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, expected {VERSION}: the add-on and the backend "
                            "come from different releases")
    if meta_len > MAX_META:
        raise ProtocolError(f"message meta of {meta_len} bytes (at most {MAX_META})")
    if max_data is not None and data_len > max_data:
        raise ProtocolError(f"message of kind {kind} with {data_len} bytes of data (at most {max_data}; "
                            "requests carry none)")
    blob = bytearray(meta_len)
    if readinto_exact(inp, memoryview(blob)) < meta_len:
        raise ProtocolError("stream ended inside a message")
    data = alloc(data_len)
    if data_len and readinto_exact(inp, memoryview(data)) < data_len:
        raise ProtocolError("stream ended inside a message")
    meta: dict = {}
    if meta_len:
        try:
            meta = boundedjson.loads(blob, MAX_NESTING)
        except ValueError as e:
            raise BadMessage(msg_id, f"message meta is not JSON ({e})") from None
        if not isinstance(meta, dict):
            raise BadMessage(msg_id, "message meta is not a JSON object")
    return Message(kind, msg_id, meta, data)


# --- what a render request and its frame reply carry (both ends agree on these) ---------------

def render_request(width: int, height: int, K, world_to_camera, *, ss: int | None = None,
                   exposure: str = "mean", passes: Iterable[str] = DEFAULT_PASSES,
                   alpha: str = "straight", background=None, rows: str = "top_down",
                   depth_miss: float | None = None) -> dict:
    """The meta of a RENDER request. Camera: OpenCV convention (backend/cameras.py), K 3x3 and
    world_to_camera 4x4 as nested lists. ss None: the run's supersampling. background None:
    alpha is coverage; else covered pixels are composited over this linear RGB and alpha is 1.
    depth_miss None: uncovered pixels have depth infinity, else this value."""
    return {"width": int(width), "height": int(height),
            "K": [[float(v) for v in row] for row in K],
            "world_to_camera": [[float(v) for v in row] for row in world_to_camera],
            "ss": ss, "exposure": str(exposure), "passes": list(passes), "alpha": alpha,
            "background": None if background is None else [float(c) for c in background],
            "rows": rows, "depth_miss": depth_miss}


def pass_layout(meta: dict) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, byte offset, byte size) of each pass in a FRAME reply's data."""
    out, offset = [], 0
    for p in meta.get("passes", []):
        shape = tuple(int(s) for s in p["shape"])
        if p.get("dtype", "float32") != "float32":
            raise ProtocolError(f"pass {p.get('name')}: unsupported dtype {p.get('dtype')}")
        size = 4
        for s in shape:
            size *= s
        out.append((str(p["name"]), shape, offset, size))
        offset += size
    return out
