"""Progress events: one JSON object per line on stdout (the Blender side parses them).

Event kinds: "progress" (stage, step, total, plus stage-specific numbers),
"log" (message), "done" (stage, plus outputs), "stopped" (stage, step), "error" (message).

A reader that goes away (Blender quit: the pipe is closed) never ends the job: the first write
that fails turns the output off (the file descriptor is pointed at the null device, so Python's
own flush at exit cannot fail either) and requests a stop, so a running job saves and exits 0.
The copy in RUN/log.jsonl is still written. That copy is a convenience: a log that cannot be
written (a read-only folder, a full disk) is reported once and the job goes on without it, and
a line is appended whole or not at all. `set_view` replaces the JSON lines by another
presentation of the same events (the terminal view, backend.terminal).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from . import stopflag

_stream: TextIO = sys.stdout
_quiet = False
_log_file: Path | None = None
_log_when: Callable[[], bool] | None = None      # whether the log's folder takes the copy now
_lost = False                                    # the reader of _stream is gone
_view: Any = None        # shows events instead of writing JSON lines (backend.terminal.TerminalView)


def set_stream(stream: TextIO, quiet: bool = False) -> None:
    global _stream, _quiet, _lost
    _stream, _quiet, _lost = stream, quiet, False


def set_view(view: Any) -> None:
    """Show every event with `view.event(obj)`, and text with `view.text(message)`, instead of
    writing JSON lines (None: JSON lines)."""
    global _view
    _view = view


def output_lost() -> bool:
    return _lost


def lose_output(stream: Any = None) -> None:
    """The reader of `stream` (default: the event stream) is gone: stop writing to it, point its
    file descriptor at the null device (later writes and the interpreter's exit flush then
    succeed silently) and request a stop of the running job."""
    global _lost
    stream = _stream if stream is None else stream
    if stream is _stream or _underlying(stream) is _underlying(_stream):
        _lost = True
    _to_devnull(stream)
    stopflag.request_stop()


def _underlying(stream: Any) -> Any:
    """The stream a wrapper (e.g. distributed._ErrorsOnly) writes to."""
    while hasattr(stream, "stream"):
        stream = stream.stream
    return stream


def _to_devnull(stream: Any) -> None:
    try:
        fd = _underlying(stream).fileno()
    except (AttributeError, OSError, ValueError):
        return                      # not a file (a test's StringIO): nothing outlives us
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def write_safely(text: str, stream: Any = None) -> None:
    """Write `text` to `stream` (default: stdout) and flush; a reader that went away is not an
    error (see lose_output)."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):   # BrokenPipeError, EIO of a closed terminal, a closed file
        lose_output(stream)


def text(message: str) -> None:
    """Plain text for a person (reports, summaries): printed on stdout in every mode (JSON readers
    ignore lines that are not JSON objects)."""
    if _quiet or _lost:
        return
    if _view is None:
        write_safely(message.rstrip("\n") + "\n", _stream)
        return
    try:
        _view.text(message)
    except (OSError, ValueError):
        lose_output()


@contextmanager
def silenced() -> Iterator[None]:
    """No events inside the block, then the previous setting again: for callers that run
    backend code in their own process and report on their own (the Blender add-on's scene check
    and conversion), where nobody reads the JSON lines."""
    global _quiet
    saved = _quiet
    _quiet = True
    try:
        yield
    finally:
        _quiet = saved


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):  # numpy / torch scalars
        return _clean(v.item())
    return v


@contextmanager
def copied_to(path: Path, when: Callable[[], bool] | None = None) -> Iterator[None]:
    """Also append every event to `path` (a run folder's log.jsonl) while inside, once its folder
    exists and `when()` is true (a run folder: nothing is added to a folder the backend does not
    own, and nothing is created for a command that fails before it makes the run folder)."""
    global _log_file, _log_when
    old, _log_file, _log_when = (_log_file, _log_when), Path(path), when
    try:
        yield
    finally:
        _log_file, _log_when = old


def _copy_to_log(line: str) -> None:
    """Append `line` to the log whole: a failed write is cut off again, and a line left unfinished
    by a process that was killed is ended first, so no event is glued onto another. A log that
    cannot be written is reported once (on the event stream) and not tried again."""
    path = _log_file
    if path is None or not path.parent.is_dir() or (_log_when is not None and not _log_when()):
        return
    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        return _log_failed(path, e)
    end = None
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end:
            os.lseek(fd, end - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                data = b"\n" + data
        written = 0
        while written < len(data):                     # O_APPEND: every write goes to the end
            written += os.write(fd, data[written:])
    except OSError as e:
        if end is not None:
            with suppress(OSError):
                os.ftruncate(fd, end)
        _log_failed(path, e)
    finally:
        os.close(fd)


def _log_failed(path: Path, e: OSError) -> None:
    global _log_file
    _log_file = None                                   # one warning, then no more tries
    log(f"warning: cannot write {path} ({e.strerror or e}); this command goes on without its log there")


def emit(event: str, **fields: Any) -> None:
    if _quiet:
        return
    obj = {"event": event, **_clean(fields)}
    line = json.dumps(obj) + "\n"
    if not _lost:
        try:
            if _view is not None:
                _view.event(obj)
            else:
                _stream.write(line)
                _stream.flush()
        except (OSError, ValueError):   # BrokenPipeError, EIO of a closed terminal, a closed file
            lose_output()
    _copy_to_log(line)


def log(message: str) -> None:
    emit("log", message=message)


class Progress:
    """Rate-limited progress emitter with an ETA from the average step time since the first report:
    the first steps (kernel compilation, loaders filling) would inflate it for minutes otherwise."""

    def __init__(self, stage: str, total: int, every_s: float = 1.0, start_step: int = 0):
        self.stage, self.total, self.every_s = stage, total, every_s
        self.t0 = time.monotonic()
        self.start_step = start_step
        self.last = -1e9
        self.base: tuple[float, int] | None = None      # (time, step) of the first report

    def update(self, step: int, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        if self.base is None or step <= self.base[1]:
            done = step - self.start_step
            eta = elapsed / done * (self.total - step) if done > 0 else None
            if done > 0 and self.base is None:
                self.base = (now, step)
        else:
            t_b, s_b = self.base
            eta = (now - t_b) / (step - s_b) * (self.total - step)
        emit("progress", stage=self.stage, step=step, total=self.total,
             elapsed_s=elapsed, eta_s=eta, **fields)


def forward_line(line: str) -> None:
    """A line another backend process printed (the `--nproc` relay): shown like this process's
    own events (an event object goes to the view), anything else as it is."""
    if _view is not None:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            if not _lost:
                try:
                    _view.event(obj)
                except (OSError, ValueError):
                    lose_output()
            return
    if not _quiet and not _lost:
        write_safely(line, _stream)
