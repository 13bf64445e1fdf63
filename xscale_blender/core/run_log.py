"""What a run folder's log (RUN/log.jsonl, the copy of every command's events) says about how
its last command ended (standard library only). A job stopped when Blender quit leaves its
`stopped` event there: the next session's sidebar says where it stopped and what goes on from it.
"""
from __future__ import annotations

import json
import os
from typing import Optional

TAIL_BYTES = 64 * 1024

_cache: dict[str, tuple[tuple[int, int], Optional[dict]]] = {}    # path -> ((mtime, size), event)


def last_event(path: str) -> Optional[dict]:
    """The log's last event (None without a log); read again only when the file changes, as
    panels ask on every redraw."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    if path not in _cache or _cache[path][0] != stamp:
        _cache[path] = (stamp, _read_last(path, st.st_size))
    return _cache[path][1]


def last_stop(path: str) -> Optional[dict]:
    """The `stopped` event when the log's last command ended stopped, else None."""
    ev = last_event(path)
    return ev if ev is not None and ev.get("event") == "stopped" else None


def _read_last(path: str, size: int) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            ev = json.loads(line)
        except ValueError:
            continue                    # a line cut by the tail, or one being written
        if isinstance(ev, dict) and isinstance(ev.get("event"), str):
            return ev
    return None
