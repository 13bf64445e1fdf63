"""Progress events: one JSON object per line on stdout (the Blender side parses them).

Event kinds: "progress" (stage, step, total, plus stage-specific numbers),
"log" (message), "done" (stage, plus outputs), "error" (message).
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

_stream: TextIO = sys.stdout
_quiet = False
_log_file: Path | None = None


def set_stream(stream: TextIO, quiet: bool = False) -> None:
    global _stream, _quiet
    _stream, _quiet = stream, quiet


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
def copied_to(path: Path) -> Iterator[None]:
    """Also append every event to `path` (a run folder's log.jsonl) while inside, once its folder
    exists: nothing is created for a command that fails before it makes the run folder."""
    global _log_file
    old, _log_file = _log_file, Path(path)
    try:
        yield
    finally:
        _log_file = old


def emit(event: str, **fields: Any) -> None:
    if _quiet:
        return
    line = json.dumps({"event": event, **_clean(fields)}) + "\n"
    _stream.write(line)
    _stream.flush()
    if _log_file is not None and _log_file.parent.is_dir():
        with open(_log_file, "a", encoding="utf-8") as fh:
            fh.write(line)


def log(message: str) -> None:
    emit("log", message=message)


class Progress:
    """Rate-limited progress emitter with an ETA from the average step time."""

    def __init__(self, stage: str, total: int, every_s: float = 1.0, start_step: int = 0):
        self.stage, self.total, self.every_s = stage, total, every_s
        self.t0 = time.monotonic()
        self.start_step = start_step
        self.last = -1e9

    def update(self, step: int, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every_s and step < self.total:
            return
        self.last = now
        done = step - self.start_step
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else None
        emit("progress", stage=self.stage, step=step, total=self.total,
             elapsed_s=elapsed, eta_s=eta, **fields)
