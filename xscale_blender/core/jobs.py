"""Backend processes: launch, non-blocking event reading, polling, stop (no bpy; the events are
worded by the backend's event_text, as in a terminal).

The backend prints one JSON object per line on stdout (docs/protocol.md). A reader thread
turns lines into queue items so the owner never blocks on the pipe: the Blender UI calls
`Job.poll()` from a timer, background mode calls `Job.wait()`, which loops over the same
`poll()` because bpy.app.timers never fire there.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..backend_link import event_text

_EOF = object()

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"

# The label of Set Up Backend's job: the preferences show its progress under the button.
SETUP_LABEL = "set up backend"


@dataclass
class JobState:
    """What the UI shows; updated only by `Job.poll()` (on the owner's thread)."""
    status: str = RUNNING
    stage: str = ""
    step: int = 0
    total: int = 0
    unit: str = ""                    # "%" when step/total is a percentage (Set Up Backend)
    loss: Optional[float] = None
    psnr: Optional[float] = None
    eta_s: Optional[float] = None
    elapsed_s: Optional[float] = None
    message: str = ""                 # last log line or error
    outcome: str = ""                 # what a finished job made and where (set by its on_finish)
    error: str = ""
    returncode: Optional[int] = None
    results: list[dict] = field(default_factory=list)   # every `done` event, in order
    stopped_event: Optional[dict] = None

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total > 0 else 0.0


def parse_event(line: str) -> Optional[dict]:
    """The event in one stdout line, or None for anything that is not a JSON event object."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("event"), str) else None


def describe(state: JobState) -> str:
    """One line for consoles and the panel: 'train 1200/30000 loss 0.0310 PSNR 27.40 ETA 6m 50s'."""
    parts = [state.stage or "starting"]
    if state.total:
        parts.append(progress_text(state))
    if state.loss is not None:
        parts.append(f"loss {state.loss:.4f}")
    if state.psnr is not None:
        parts.append(f"PSNR {state.psnr:.2f}")
    if state.status == RUNNING and state.eta_s is not None:
        parts.append(eta_text(state))
    return " ".join(parts)


def progress_text(state: JobState) -> str:
    """'1200/30000', or '45%' for a percentage."""
    return f"{state.step}%" if state.unit == "%" else f"{state.step}/{state.total}"


def eta_text(state: JobState) -> str:
    """'ETA 6m 50s' ('ETA --' while unknown)."""
    return f"ETA {event_text.duration(state.eta_s, sep=' ')}"


def describe_stop(ev: dict) -> str:
    """What a `stopped` event means, in one line: where the job stopped, what was kept and which
    button continues it."""
    stage = ev.get("stage")
    if stage == "setup":
        return "stopped; Set Up Backend again continues it"
    where = event_text.stopped(ev)
    if ev.get("step") is None:
        return where
    if stage == "cache":
        return where + ("; Resume finishes it" if ev.get("phase") == "shards" else "; Resume continues it")
    if stage == "render":
        return where + " (those frames are kept)"
    return where + ("; checkpoint saved, Resume continues it" if ev.get("checkpoint") else "")


def stop_keeps(label: str, stage: str) -> str:
    """What stopping a running job keeps and what continues it, said before the stop."""
    if label == SETUP_LABEL:
        return "Set Up Backend again continues it"
    return {"cache": "the views cached so far are kept, Resume in the XScale tab continues the cache",
            "train": "it saves a checkpoint, Resume in the XScale tab continues from it",
            "render": "the frames written so far are kept"}.get(stage, "nothing is kept yet")


class Job:
    """One backend process and its event stream."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None,
                 cwd: Optional[str] = None, label: str = "",
                 on_finish: Optional[Callable[["Job"], None]] = None,
                 expect_events: bool = True):
        self.argv, self.env, self.cwd = list(argv), env, cwd
        self.label = label or "job"
        self.on_finish = on_finish
        self.expect_events = expect_events    # False for commands that print plain text (doctor)
        self.state = JobState()
        self.text_lines: list[str] = []       # non-event stdout lines
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stdout_closed = False
        self._finished = False
        self.stop_requested_at: Optional[float] = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> "Job":
        # A process group of its own: Ctrl+C meant for Blender does not reach the trainer
        # (wait() forwards it as a stop), and on Windows Stop can send CTRL_BREAK to it alone.
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as e:
            self._fail(f"cannot start the backend ({self.argv[0]}): {e.strerror or e}")
            return self
        for target, stream in ((self._read_stdout, self.proc.stdout), (self._read_stderr, self.proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def stopping(self) -> bool:
        return self.stop_requested_at is not None and not self._finished

    def stop(self) -> None:
        """Ask the backend to stop; training saves a checkpoint and exits 0 (event 'stopped')."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        if sys.platform == "win32":
            self.proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            self.proc.terminate()

    def kill(self) -> None:
        """Last resort when a stop does not end the process: no checkpoint is written."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sys.platform == "win32":
            self.proc.kill()
        else:
            try:   # the whole session, so helper processes of the backend go too
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()

    # --- reader threads (never touch self.state) ----------------------------------------
    def _read_stdout(self, stream) -> None:
        try:
            for line in stream:
                ev = parse_event(line)
                self._queue.put(ev if ev is not None else line.rstrip("\n"))
        finally:
            self._queue.put(_EOF)

    def _read_stderr(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if line.strip():
                self.stderr_tail.append(line)

    # --- polling -----------------------------------------------------------------------
    def poll(self) -> list[dict]:
        """Apply the events that arrived since the last call; never blocks.

        Returns them so the caller can print or report. Once the process has exited and its
        output is drained, the final status is set and `on_finish` runs (once).
        """
        events = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._stdout_closed = True
            elif isinstance(item, dict):
                self._apply(item)
                events.append(item)
            else:
                self.text_lines.append(item)
        if not self._finished and self.proc is not None and self._stdout_closed \
                and self.proc.poll() is not None:
            for t in self._threads:
                t.join(timeout=2.0)   # stderr may still be flushing
            self._finalize(self.proc.returncode)
        return events

    def wait(self, on_event: Optional[Callable[[dict], None]] = None, interval: float = 0.1,
             timeout: Optional[float] = None) -> JobState:
        """Block until the process ends, polling like the UI timer does (background mode)."""
        t_end = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._finished:
                for ev in self.poll():
                    if on_event:
                        on_event(ev)
                if self._finished:
                    break
                if t_end is not None and time.monotonic() > t_end:
                    self.stop()
                    t_end = None
                time.sleep(interval)
        except KeyboardInterrupt:
            # Ctrl+C in a headless run: let the backend save its checkpoint, then re-raise.
            self.stop()
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    self.kill()
            raise
        return self.state

    def _apply(self, ev: dict) -> None:
        s, kind = self.state, ev.get("event")
        if kind == "progress":
            if ev.get("stage") != s.stage:
                s.loss = s.psnr = s.eta_s = None
            s.stage = str(ev.get("stage", s.stage))
            s.step = _int(ev.get("step"), s.step)
            s.total = _int(ev.get("total"), s.total)
            s.unit = str(ev.get("unit") or "")
            for key in ("loss", "psnr", "eta_s", "elapsed_s"):
                if key in ev:
                    setattr(s, key, _float(ev[key]))
        elif kind == "log":
            s.message = str(ev.get("message", ""))
        elif kind == "done":
            s.results.append(ev)
            if ev.get("stage"):
                s.stage = str(ev["stage"])
            if s.total:
                s.step = s.total
            s.eta_s = 0.0
            if "psnr" in ev:
                s.psnr = _float(ev["psnr"])
        elif kind == "stopped":
            s.stopped_event = ev
        elif kind == "error":
            s.error = str(ev.get("message", "")) or "the backend reported an error"
            s.message = s.error

    def _finalize(self, returncode: Optional[int]) -> None:
        s = self.state
        s.returncode = returncode
        if s.error:
            s.status = FAILED
        elif returncode != 0:
            tail = [ln for ln in self.stderr_tail if not ln.startswith(" ")]
            why = tail[-1] if tail else f"exit code {returncode}"
            if self.stop_requested_at is not None:
                s.status, s.message = STOPPED, f"stopped ({why})"
            else:
                s.status, s.error = FAILED, f"the backend failed: {why}"
        elif s.stopped_event is not None or (self.stop_requested_at is not None and not s.results):
            s.status = STOPPED
            s.message = describe_stop(s.stopped_event or {})
        elif self.expect_events and not s.results:
            s.status, s.error = FAILED, "the backend exited without reporting 'done'"
        else:
            s.status = DONE
        if s.status == FAILED:
            s.message = s.error
        self._finished = True
        if self.on_finish is not None:
            self.on_finish(self)

    def _fail(self, message: str) -> None:
        self.state.error = message
        self._stdout_closed = True
        self._finalize(None)


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _float(v: Any) -> Optional[float]:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


# --- command lines --------------------------------------------------------------------------

def backend_env(pythonpath: str) -> dict[str, str]:
    """Environment for `python -m backend`: our package first on PYTHONPATH, unbuffered output.

    PYTHONHOME may point at Blender's bundled Python, which would break the backend interpreter.
    """
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = pythonpath + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def backend_argv(python: str, command: str, *args: str) -> list[str]:
    return [python, "-u", "-m", "backend", command, *args]


# --- the one job the UI tracks ------------------------------------------------------------

_active: Optional[Job] = None


def active() -> Optional[Job]:
    return _active


def set_active(job: Optional[Job]) -> None:
    global _active
    _active = job


def busy() -> bool:
    return _active is not None and not _active.finished


@atexit.register
def _stop_on_exit() -> None:
    # Nobody reads the backend's output once Blender quits: stop it (it saves a checkpoint) and say
    # so on the console; the next session's sidebar reads the stop from the run's log (run_log).
    if busy():
        _active.stop()
        print(f"XScale: Blender quit while {_active.label} was running ({describe(_active.state)}); "
              f"stopped it: {stop_keeps(_active.label, _active.state.stage)}", file=sys.stderr, flush=True)
