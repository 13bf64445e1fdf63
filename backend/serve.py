"""The render server (`python -m backend serve --run R`): one process that loads a trained run
once (model, mesh, rasterizer on the device) and answers camera requests with linear RGBA and
depth until it is told to stop, its stdin closes, or its parent process goes away.

Messages (backend/serve_protocol.py) are read from stdin and written to stdout, both binary; the
process's own fd 1 is pointed at stderr first, so library prints, JIT build logs and progress
events can never land inside the binary stream. Every request is answered, an error included
(a bad camera, out of GPU memory): the server keeps serving. It is single-threaded; pixels are
rendered by backend.render.render_tensors, exactly as `backend render` renders them, packed on
the device and copied to host memory in one copy per frame (into a reused pinned buffer on CUDA).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import torch

from . import events
from . import serve_protocol as sp
from .boundedjson import shown
from .cameras import camera_from_json, whole_number
from .config import RENDER_SS
from .errors import DeviceError, InputError
from .passes import PASSES, shape as pass_shape
from .runfolder import RunFolder

PARENT_CHECK_S = 1.0     # how often the watchdog thread looks for a dead parent


# --- what a request's options do to a pass (a pass not named here is sent as rendered) ---------

def _rgba_as_asked(rgba: torch.Tensor, options: dict) -> torch.Tensor:
    """Straight or premultiplied alpha, or the covered pixels over a background colour, alpha 1."""
    rgb, a = rgba[..., :3], rgba[..., 3:]
    bg = options["background"]
    if bg is not None:
        rgb = rgb * a + torch.as_tensor(bg, dtype=rgb.dtype, device=rgb.device) * (1 - a)
        a = torch.ones_like(a)
    elif options["alpha"] == "premultiplied":
        rgb = rgb * a
    return torch.cat([rgb, a], -1)


def _depth_as_asked(depth: torch.Tensor, options: dict) -> torch.Tensor:
    """Uncovered pixels at infinity, or at the requested depth_miss."""
    miss = options["depth_miss"]
    return depth if miss is None else torch.where(torch.isinf(depth), float(miss), depth)


def _as_rendered(img: torch.Tensor, options: dict) -> torch.Tensor:
    return img


AS_ASKED = {"rgba": _rgba_as_asked, "depth": _depth_as_asked}


class Server:
    """A loaded run and its render requests (no I/O: `serve` does the framing)."""

    def __init__(self, run_dir: str, device: str = "auto", grid_backend: str = "auto"):
        from .checkpoint import load_model
        from .meshio import load_mesh
        from .raster import Rasterizer, resolve_device
        t0 = time.monotonic()
        self.run = RunFolder(run_dir)
        settings = self.run.settings(need_cache=False)
        self.device = resolve_device(device)
        self.model, ckpt = load_model(self.run, self.device, grid_backend)
        self.views = settings.view_names
        self.default_ss = settings.ss
        self.mesh = load_mesh(settings.mesh)
        self.rast = Rasterizer(self.mesh, self.device)
        self.step = ckpt.get("step")
        self.load_s = time.monotonic() - t0
        self._host: torch.Tensor | None = None     # pinned staging buffer, grown as needed

    def info(self) -> dict:
        dev = str(self.device)
        if self.device.type == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        return {"protocol": sp.VERSION, "pid": os.getpid(), "run": str(self.run.root), "device": dev,
                "views": self.views, "ss": self.default_ss, "triangles": int(len(self.mesh.faces)),
                "step": self.step, "load_s": self.load_s, "passes": sorted(PASSES)}

    # --- requests --------------------------------------------------------------------------
    def render(self, req: dict) -> tuple[dict, list]:
        """FRAME meta and its data buffers for a RENDER request."""
        from .render import parse_exposure, render_tensors
        check_request(req)
        cam = camera_from_json(req, "render request")
        ss = int(req.get("ss") or self.default_ss)
        expo = parse_exposure(str(req.get("exposure") or "mean"), len(self.views), self.views)
        names = list(req.get("passes") or sp.DEFAULT_PASSES)
        for name in names:
            if name not in PASSES:
                raise InputError(f"render request: unknown pass {name!r} (choose {', '.join(PASSES)}).")
        rows, alpha = req.get("rows", "top_down"), req.get("alpha", "straight")
        options = {"alpha": alpha, "background": req.get("background"), "depth_miss": req.get("depth_miss")}

        t0 = time.perf_counter()
        passes = render_tensors(self.model, self.rast, cam, ss, expo, passes=names)
        self._sync()
        t1 = time.perf_counter()
        flat = []
        for name in names:
            img = AS_ASKED.get(name, _as_rendered)(passes[name], options)
            if rows == "bottom_up":
                img = img.flip(0)
            flat.append(img.reshape(-1).float())
        host = self._to_host(torch.cat(flat) if len(flat) > 1 else flat[0])
        t2 = time.perf_counter()
        meta = {"width": cam.width, "height": cam.height, "ss": ss, "rows": rows,
                "passes": [{"name": n, "dtype": "float32", "shape": pass_shape(n, cam.height, cam.width)}
                           for n in names],
                "seconds": {"render": t1 - t0, "pack_copy": t2 - t1}}
        return meta, [host]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_host(self, flat: torch.Tensor) -> memoryview:
        """The frame's bytes in host memory: one device-to-host copy (into a pinned buffer kept
        between requests on CUDA); on the CPU the tensor's own memory."""
        if flat.device.type != "cuda":
            return memoryview(flat.contiguous().numpy()).cast("B")
        n = flat.numel()
        if self._host is None or self._host.numel() < n:
            self._host = torch.empty(int(n * 1.25), dtype=torch.float32, pin_memory=True)
        dst = self._host[:n]
        dst.copy_(flat)
        return memoryview(dst.numpy()).cast("B")


def check_request(req: dict) -> None:
    """The types and ranges of a RENDER request's options (InputError naming the option); the
    camera is checked by cameras.camera_from_json, names (passes, exposure) by the render."""
    def fail(what: str) -> None:
        raise InputError(f"render request: {what} (docs/protocol.md, Render server).")

    ss, expo, names = req.get("ss"), req.get("exposure"), req.get("passes")
    if ss is not None:
        if not whole_number(ss):
            fail(f"ss {shown(ss)} is not a whole number")
        RENDER_SS.check(int(ss))
    if expo is not None and not isinstance(expo, str) and not whole_number(expo):
        fail(f"exposure {shown(expo)} is not a photo's name or index")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        fail(f"passes {shown(names)} is not a list of pass names")
    for key, choices in (("rows", sp.ROWS), ("alpha", sp.ALPHA)):
        if req.get(key, choices[0]) not in choices:
            fail(f"{key} must be one of {', '.join(choices)}, not {shown(req[key])}")
    bg, miss = req.get("background"), req.get("depth_miss")
    if bg is not None and not (isinstance(bg, list) and len(bg) == 3 and all(_finite(c) for c in bg)):
        fail(f"background {shown(bg)} is not a linear RGB colour [r, g, b]")
    if miss is not None and not _finite(miss):
        fail(f"depth_miss {shown(miss)} is not a finite number")


def _finite(x) -> bool:
    """A JSON number that float32 pixels can hold (not NaN, infinity or 1e400)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 3e38


# --- the process -----------------------------------------------------------------------------

def _protocol_streams():
    """(binary stdin, binary stdout) for the messages; fd 1 itself then points at stderr, so that
    anything else printed by this process goes to the log stream, never into the pixels."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    sys.stdout.flush()
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)                       # nothing else may read the requests
    os.close(devnull)
    events.set_stream(sys.stderr)
    _grow_pipe(out.fileno())
    return inp, out


def _grow_pipe(fd: int) -> None:
    """Larger pipe buffer (Linux): fewer context switches per frame. Best effort."""
    try:
        import fcntl
        size = int(open("/proc/sys/fs/pipe-max-size", encoding="ascii").read())
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), min(size, 1 << 20))
    except (ImportError, OSError, ValueError):
        pass


def _exit_with_parent(ppid: int) -> None:
    """Watchdog thread: end the process when its parent (Blender) is gone, even in the middle of
    a long render. A closed stdin already ends the serve loop; this also covers a server still
    loading or rendering when the parent dies."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != ppid:
            os._exit(0)


def _error_meta(e: BaseException) -> dict:
    return {"message": str(e) or type(e).__name__, "type": type(e).__name__}


def _unexpected_meta(e: Exception) -> dict:
    """ERROR meta for an exception nobody expected; a missing build tool (the GPU kernels' first
    build needs a C compiler) is the user's to fix, and worded so."""
    from .toolchain import explain
    if (why := explain(e)) is not None:
        return {"message": why, "type": "ToolchainError"}
    return {"message": f"internal error: {type(e).__name__}: {e}", "type": type(e).__name__}


def serve(run_dir: str, device: str = "auto", grid_backend: str = "auto", inp=None, out=None) -> int:
    """Serve requests until STOP or the end of the input stream (exit code 0). With `inp`/`out`
    None: the process's stdin/stdout."""
    if inp is None or out is None:
        inp, out = _protocol_streams()
    if os.name == "posix":
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        server = Server(run_dir, device, grid_backend)
    except (InputError, DeviceError) as e:
        _send(out, sp.ERROR, 0, _error_meta(e))
        raise
    except Exception as e:
        _send(out, sp.ERROR, 0, _unexpected_meta(e))
        raise
    info = server.info()
    events.log(f"render server ready: {info['device']}, {info['triangles']} triangles, "
               f"{len(info['views'])} views, loaded in {info['load_s']:.1f} s")
    if not _send(out, sp.READY, 0, info):
        return 0
    return _loop(server, inp, out)


def _send(out, kind: int, msg_id: int, meta: dict | None = None, data=()) -> bool:
    """False when the client has gone (broken pipe)."""
    try:
        sp.write_message(out, kind, msg_id, meta, data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _loop(server: Server, inp, out) -> int:
    while True:
        try:
            msg = sp.read_message(inp, max_data=0)
        except sp.ConnectionClosed:
            return 0                          # the client (Blender) closed our stdin or died
        except sp.BadMessage as e:            # still in step with the stream: answer, go on
            if not _send(out, sp.ERROR, e.id, _error_meta(e)):
                return 0
            continue
        except sp.ProtocolError as e:
            _send(out, sp.ERROR, 0, _error_meta(e))
            print(f"error: render server: {e}", file=sys.stderr)
            return 2                          # the stream cannot be trusted any more
        if msg.kind == sp.STOP:
            _send(out, sp.BYE, msg.id)
            return 0
        try:
            if msg.kind == sp.INFO:
                reply = (sp.INFO_REPLY, server.info(), [])
            elif msg.kind == sp.RENDER:
                meta, data = server.render(msg.meta)
                reply = (sp.FRAME, meta, data)
            else:
                raise InputError(f"unknown request kind {msg.kind}")
        except (InputError, DeviceError) as e:
            reply = (sp.ERROR, _error_meta(e), [])
        except torch.cuda.OutOfMemoryError as e:
            if server.device.type == "cuda":
                torch.cuda.empty_cache()
            reply = (sp.ERROR, {"message": f"out of memory rendering {msg.meta.get('width')}x"
                                f"{msg.meta.get('height')}: lower the resolution or the supersampling "
                                f"({str(e).splitlines()[0]})", "type": "OutOfMemoryError"}, [])
        except Exception as e:  # unexpected: keep the traceback in the log (not for a missing tool), keep serving
            meta = _unexpected_meta(e)
            if meta["type"] != "ToolchainError":
                traceback.print_exc()
            reply = (sp.ERROR, meta, [])
        if not _send(out, reply[0], msg.id, reply[1], reply[2]):
            return 0
