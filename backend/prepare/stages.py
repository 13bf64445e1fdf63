"""Resumable stages of a long preparation (photos -> cameras -> mesh), one record each.

A stage makes one product (a file or a folder) under a work folder. It is made under a `.part`
name (NAME.part.EXT), renamed into place when complete, and then its record NAME.json is written (atomically): a
stage whose record and product are there, with the same key, is skipped on the next run. The key
of a stage holds its settings and the key of the stage before it, so redoing one stage redoes
the ones after it.

A stage runs in a worker thread while this thread reports its progress (an ETA from the stage's
estimate) and watches for a stop (Ctrl+C, SIGTERM: backend.stopflag). A stop cancels the stage
when its work takes a cancellation token, or else waits for it to end; either way the finished
stages are kept and Stopped is raised before the next one starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import events
from ..stopflag import stop_requested
from .writer import atomic_write_text


class Stopped(Exception):
    """A stop was requested; the stages finished so far are kept."""

    def __init__(self, phase: str, done: int, total: int):
        super().__init__(phase)
        self.phase, self.done, self.total = phase, done, total


@dataclass
class Stages:
    """The stages of one work folder, run in order; `estimates` are seconds per stage name
    (rough, for the ETA)."""
    root: Path
    stage: str                                   # the events' stage name
    names: list[str]
    estimates: dict[str, float] = field(default_factory=dict)
    cancel: Callable[[], Any] | None = None      # makes a cancellation token for a stage's work
    _key: str = ""
    _done: int = 0

    def run(self, name: str, product: str, settings: dict, work: Callable[..., dict],
            count: Callable[[], tuple[int, int, str]] | None = None) -> dict:
        """Run (or skip) stage `name`: work(part_path, token) makes the product at part_path and
        returns what the record keeps; returns that record. A product of "" is a record only.
        `count` says how far a stage of many items is: (done, total, unit); its progress events then
        carry items/items_total/item_unit, and the ETA follows the rate at which items get done."""
        if stop_requested():
            raise Stopped(name, self._done, len(self.names))
        key = _digest({"after": self._key, **settings})
        rec_path, out = self.root / f"{name}.json", self.root / product if product else None
        rec = _read(rec_path)
        index = self.names.index(name)
        if rec.get("key") == key and (out is None or out.exists()):
            events.emit("progress", stage=self.stage, phase=name, step=index + 1, total=len(self.names),
                        skipped=True, eta_s=self._later(name))
            events.log(f"{name}: kept from an earlier run ({rec_path})")
        else:
            rec = {"key": key, "result": self._make(name, out, work, count)}
            atomic_write_text(rec_path, json.dumps(rec, indent=1) + "\n")
        self._key, self._done = key, index + 1
        return rec["result"]

    def _make(self, name: str, out: Path | None, work: Callable[..., dict],
              count: Callable[[], tuple[int, int, str]] | None) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{name}.json").unlink(missing_ok=True)    # not done until the new record is written
        part = out.with_name(f"{out.stem}.part{out.suffix}") if out else None   # tools read the suffix
        if part is not None:
            _remove(part)
        token = self.cancel() if self.cancel else None
        box: dict[str, Any] = {}

        def target():
            try:
                box["result"] = work(part, token)
            except BaseException as e:        # handed to the main thread
                box["error"] = e

        index, total = self.names.index(name), len(self.names)
        estimate = self.estimates.get(name)
        t0 = time.monotonic()
        first = count()[0] if count else 0          # items an interrupted run left done
        thread = threading.Thread(target=target, name=f"stage-{name}", daemon=True)
        thread.start()
        last = -1e9
        while thread.is_alive():
            thread.join(0.2)
            if stop_requested() and token is not None and not token.is_cancelled:
                token.cancel()
            now = time.monotonic()
            if now - last >= 2.0:           # the stage's own estimate counts down, then the later ones
                own = None if estimate is None else max(estimate - (now - t0), 0.0)
                items = {}
                if count:
                    done, of, unit = count()
                    items = {"items": done, "items_total": of, "item_unit": unit}
                    if done > first:        # from the rate of this run's items
                        own = (now - t0) / (done - first) * max(of - done, 0)
                later = self._later(name)
                eta = None if own is None or later is None else own + later
                events.emit("progress", stage=self.stage, phase=name, step=index, total=total,
                            elapsed_s=now - t0, eta_s=eta, **items)
                last = now
        if "error" in box:
            raise box["error"]
        if stop_requested() and token is not None and token.is_cancelled:
            _remove(part)
            raise Stopped(name, index, total)
        if part is not None:
            _remove(out)
            os.replace(part, out)
        events.emit("progress", stage=self.stage, phase=name, step=index + 1, total=total,
                    elapsed_s=time.monotonic() - t0, eta_s=self._later(name))
        return box["result"]

    def _later(self, name: str) -> float | None:
        """Estimated seconds of the stages after `name`."""
        rest = self.names[self.names.index(name) + 1:]
        if any(n not in self.estimates for n in rest):
            return None
        return float(sum(self.estimates[n] for n in rest))


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
