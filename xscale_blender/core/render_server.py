"""The render server's client (standard library and numpy, no bpy): start `python -m backend
serve` with the backend interpreter, send camera requests, read frames, notice a dead server.

One server runs at a time (`acquire`): it is reused while the run, device, interpreter and the
run's checkpoint stay the same, replaced when one of them changes, and stopped by `shutdown()`
(the add-on calls it on unregister, when a file is loaded, and at exit). The server itself exits
when its stdin closes, so it never outlives the process that started it.

Requests are serialised per server (a lock): the viewport's thread and a final render share it.
While waiting for a reply the client can give up (`abort()` returns True, e.g. Esc): the reply is
then read and dropped before the next request, so the stream stays in step.
"""
from __future__ import annotations

import atexit
import collections
import os
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..backend_link import serve_protocol as sp

STOP_WAIT_S = 5.0          # for BYE and the exit after STOP, before the process is killed
POLL_S = 0.1               # while waiting for a reply: how often death and abort() are checked


class ServerError(Exception):
    """The server answered a request with an error; it keeps running."""


class ServerDied(ServerError):
    """The server process ended (or its pipes broke) before answering."""


class Cancelled(Exception):
    """The caller gave up waiting (abort() returned True); the server keeps running."""


@dataclass
class Frame:
    """A rendered frame: the requested passes (backend/passes.py) by name, float32 arrays in the
    requested row order (rgba (H, W, 4), depth (H, W))."""
    passes: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)


class RenderServer:
    """One `python -m backend serve` process."""

    def __init__(self, argv: list[str], env: Optional[dict] = None, key=None, cwd: Optional[str] = None):
        self.argv, self.env, self.key, self.cwd = list(argv), env, key, cwd
        self.proc: Optional[subprocess.Popen] = None
        self.info: dict = {}
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._lock = threading.RLock()
        self._next_id = 1
        self._unanswered: list[int] = []     # ids of requests whose replies are still to be read
        self._closed = False
        self._spare: Optional[np.ndarray] = None      # the recycled reply buffer

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, abort: Optional[Callable[[], bool]] = None, timeout: Optional[float] = None) -> "RenderServer":
        """Start the process and wait for READY (the run is loaded). ServerError when the server
        reports an error (no checkpoint, no CUDA), ServerDied when it exits without a word."""
        kw: dict = {}
        if sys.platform == "win32":
            kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kw["start_new_session"] = True      # Ctrl+C meant for Blender does not reach it
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, **kw)
        except OSError as e:
            raise ServerDied(f"cannot start the render server ({self.argv[0]}): {e.strerror or e}") from None
        threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True).start()
        if self._closed:                                     # shut down before it got going
            self.kill()
            raise ServerDied("the render server was stopped while starting")
        with self._lock:
            self._unanswered.append(0)                       # READY (or ERROR) comes unasked
            msg = self._receive(0, abort, timeout)
        if msg.kind != sp.READY:
            self._wait_exit(STOP_WAIT_S)             # it exits by itself after saying why
            self.kill()
            raise ServerDied(f"the render server did not start: {msg.meta.get('message') or msg.kind_name}")
        self.info = msg.meta
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._closed

    def stop(self, wait: float = STOP_WAIT_S) -> None:
        """Ask the server to exit (STOP), then wait for it; kill it if it does not go."""
        if self.proc is None or self._closed:
            return
        got = self._lock.acquire(timeout=wait)      # let a request in flight finish
        try:
            self._closed = True
            if self.proc.poll() is None and got:
                try:
                    sp.write_message(self.proc.stdin, sp.STOP, 0)
                except OSError:
                    pass
            try:
                self.proc.stdin.close()                  # a server that missed STOP sees the end of input
            except OSError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.kill()
            self._close_pipes()
        finally:
            if got:
                self._lock.release()

    def kill(self) -> None:
        self._closed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is None:
            return
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _read_stderr(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)

    def death_reason(self) -> str:
        """Why the process ended, for the UI: exit code or signal, and its last error line."""
        rc = self.proc.poll() if self.proc is not None else None
        if rc is None:
            how = "its pipe broke"
        elif rc < 0:
            how = f"killed by signal {-rc}"
        else:
            how = f"exit code {rc}"
        for _ in range(20):                 # the stderr thread may still be reading the last lines
            if rc is None or not self.stderr_tail or self.proc.stderr.closed:
                break
            time.sleep(0.01)
        lines = [ln for ln in self.stderr_tail if ln.startswith("error") or "Error" in ln]
        return f"{how}: {lines[-1]}" if lines else how

    # --- requests ----------------------------------------------------------------------------
    def request(self, kind: int, meta: Optional[dict] = None, abort: Optional[Callable[[], bool]] = None,
                timeout: Optional[float] = None, recycle: bool = False) -> sp.Message:
        """Send one request and return its reply (never an ERROR: that raises ServerError). With
        `recycle` the reply's data is read into a buffer this server keeps for the next recycling
        request (no fresh memory to fault in for every frame): valid until that request."""
        with self._lock:
            if not self.alive:
                raise ServerDied(f"the render server is not running ({self.death_reason()})")
            while self._unanswered:              # replies a cancelled caller left behind
                self._receive(self._unanswered[0], None, timeout)
            msg_id, self._next_id = self._next_id, self._next_id % 0xFFFFFFFF + 1
            try:
                sp.write_message(self.proc.stdin, kind, msg_id, meta)
            except OSError:
                raise ServerDied(f"the render server died ({self.death_reason()})") from None
            self._unanswered.append(msg_id)
            msg = self._receive(msg_id, abort, timeout, self._recycled if recycle else None)
        if msg.kind == sp.ERROR:
            raise ServerError(msg.meta.get("message") or "the render server reported an error")
        return msg

    def render(self, width: int, height: int, K, world_to_camera, *, abort=None, timeout=None,
               recycle: bool = False, **options) -> Frame:
        """One frame; `options` as serve_protocol.render_request (ss, exposure, passes, alpha,
        background, rows, depth_miss); `recycle` as in request()."""
        meta = sp.render_request(width, height, np.asarray(K).tolist(), np.asarray(world_to_camera).tolist(),
                                 **options)
        msg = self.request(sp.RENDER, meta, abort, timeout, recycle)
        return Frame({name: msg.data[offset:offset + size].view(np.float32).reshape(shape)
                      for name, shape, offset, size in sp.pass_layout(msg.meta)}, msg.meta)

    def _recycled(self, n: int) -> np.ndarray:
        if self._spare is None or self._spare.nbytes < n:
            self._spare = np.empty(n, np.uint8)
        return self._spare[:n]

    def _receive(self, msg_id: int, abort, timeout, alloc=None) -> sp.Message:
        """The reply to `msg_id` (the oldest unanswered request); with the lock held."""
        self._wait_readable(abort, timeout)
        try:
            msg = sp.read_message(self.proc.stdout, alloc=alloc or (lambda n: np.empty(n, np.uint8)))
        except (sp.ConnectionClosed, sp.ProtocolError, OSError):
            self._wait_exit()
            self._closed = True
            raise ServerDied(f"the render server died ({self.death_reason()})") from None
        self._unanswered.pop(0)
        if msg.id != msg_id and msg.kind != sp.ERROR:
            self.kill()
            raise ServerDied(f"the render server answered request {msg.id}, expected {msg_id}")
        return msg

    def _wait_readable(self, abort, timeout) -> None:
        """Until the reply starts to arrive, checking abort() and the deadline; POSIX only (pipes
        are not selectable on Windows: there the read blocks)."""
        if os.name != "posix" or (abort is None and timeout is None):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                # abort first: a fast reply must not beat an Esc pressed before it arrived
                if abort is not None and abort():
                    raise Cancelled()
                if sel.select(POLL_S):
                    return
                if deadline is not None and time.monotonic() > deadline:
                    self.kill()
                    raise ServerDied(f"the render server did not answer within {timeout:.0f} s; stopped it")

    def _wait_exit(self, wait: float = 2.0) -> None:
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


# --- the one server of this Blender session ---------------------------------------------------
# The UI thread only ever takes _state_lock (held for a few statements), never _start_lock (held
# while a server starts, which may take minutes): drawing never waits for a server.

_state_lock = threading.Lock()     # _current, _starting, _notices, starts
_start_lock = threading.Lock()     # one start (or replacement) at a time
_current: Optional[RenderServer] = None
_starting: Optional[RenderServer] = None
starts = 0                         # servers started in this session (tests, the panel)
_notices: list[str] = []           # what the UI should tell the user (a dead server, a restart)


def current() -> Optional[RenderServer]:
    return _current


def starting() -> bool:
    return _starting is not None


def notice(message: str) -> None:
    with _state_lock:
        _notices.append(message)


def take_notices() -> list[str]:
    """Messages for the user since the last call (each is reported once)."""
    with _state_lock:
        out, _notices[:] = list(_notices), []
        return out


def acquire(key, argv: Callable[[], tuple[list[str], dict]], abort=None, timeout=None) -> RenderServer:
    """The running server for `key`, else a new one (the old one, for another key, is stopped).
    `argv()` gives the command line and environment, only called when a process starts. A server
    of the same key that died is reported (take_notices) and replaced."""
    global _current, _starting, starts
    with _start_lock:
        with _state_lock:
            old = _current
            if old is not None and old.key == key and old.alive:
                return old
            _current = None
        if old is not None:
            if old.key == key:
                notice(f"the render server had stopped ({old.death_reason()}); started a new one")
            old.stop()
        cmd, env = argv()
        srv = RenderServer(cmd, env, key)
        with _state_lock:
            _starting, starts = srv, starts + 1
        try:
            srv.start(abort, timeout)
        finally:
            with _state_lock:
                _starting = None
        with _state_lock:
            if srv._closed:                       # shut down while it was starting
                raise ServerDied("the render server was stopped while starting")
            _current = srv
        return srv


def call(key, argv, fn: Callable[[RenderServer], object], abort=None, timeout=None):
    """fn(server) with the server for `key`; when the server dies on the way, that is reported
    and the call is tried once more with a new server."""
    global _current
    srv = acquire(key, argv, abort, timeout)
    try:
        return fn(srv)
    except ServerDied as e:
        notice(f"{e}; restarting it")
        with _state_lock:
            if _current is srv:
                _current = None
        srv.kill()
    return fn(acquire(key, argv, abort, timeout))


def shutdown() -> None:
    """Stop the server (run changed, file closed, add-on disabled, Blender quitting); one that is
    still starting is killed."""
    global _current
    with _state_lock:
        srv, _current, pending = _current, None, _starting
    if pending is not None:
        pending.kill()
    if srv is not None:
        srv.stop()


atexit.register(shutdown)
