"""Progress events in words, for a person: what the stages are called, durations, where a stop
stopped. The terminal view (backend.terminal) and the Blender add-on (through its backend_link)
both say them this way; standard library only, so Blender's own Python can load it.
"""
from __future__ import annotations

# The events' stages (the "stage" of progress, done and stopped events; "stage:phase" names a
# stage's part) and what a person calls them.
STAGE_NAMES = {"cache": "ray cache", "train": "training", "render": "rendering", "eval": "evaluation",
               "check": "check", "check:photos": "photos", "prepare": "prepare",
               "sfm": "structure from motion"}


def duration(seconds: float | None, sep: str = "") -> str:
    """'1h05m', '2m03s', '7s', and '--' when unknown; `sep` goes between the units ('2m 03s')."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{sep}{s % 3600 // 60:02d}m"
    return f"{s // 60}m{sep}{s % 60:02d}s" if s >= 60 else f"{s}s"


def stopped(ev: dict) -> str:
    """Where a `stopped` event stopped and what it kept: 'stopped at step 1200 of 30000',
    'stopped the ray cache after 12 of 40 views (kept)', 'stopped rendering after 30 of 240
    frames'; 'stopped' when it names no step."""
    stage, step, total = ev.get("stage"), ev.get("step"), ev.get("total")
    if step is None:
        return "stopped"
    of = f" of {total}" if total else ""
    if stage == "cache":
        if ev.get("phase") == "shards":
            return f"stopped the ray cache while writing its shards ({step}{of} written, kept)"
        return f"stopped the ray cache after {step}{of} views (kept)"
    if stage == "render":
        return f"stopped rendering after {step}{of} frames"
    return f"stopped at step {step}{of}"
