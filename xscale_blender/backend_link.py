"""The add-on's one door to the backend package.

In the built extension, backend/ sits inside the extension folder next to this file; in a
source checkout it sits at the repository root next to xscale_blender/. Every module of the
add-on that needs backend code gets it from here. Only modules that never import torch are
loaded (standard library and numpy: settings, file formats, scene preparation; those that need
numpy only when first used, so the add-on registers without numpy); training and
rendering run as `python -m backend` in another interpreter with `pythonpath()` on PYTHONPATH.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

try:
    from . import backend  # packaged extension
except ImportError:
    _root = str(Path(__file__).resolve().parent.parent)
    if _root not in sys.path:  # source checkout only; the packaged extension never edits sys.path
        sys.path.insert(0, _root)
    import backend  # type: ignore[no-redef]


def _load(name: str):
    return importlib.import_module(f"{backend.__name__}.{name}")


config = _load("config")        # options (defaults, limits, choices), presets, output formats
errors = _load("errors")
serve_protocol = _load("serve_protocol")   # the render server's message format
event_text = _load("event_text")           # progress events in words: stages, durations, stops
passes = _load("passes")        # render passes: names, channels, what Blender calls them
schedule = _load("schedule")    # training steps from the ray cache (the Iterations' Auto)
_events = _load("events")
_runfolder = _load("runfolder")

InputError = errors.InputError
RunFolder = _runfolder.RunFolder
# Context manager: no JSON progress lines while backend code runs in Blender's own Python.
silenced_events = _events.silenced


# Modules that need numpy load on first use (`from .backend_link import cameras` in a module
# that numpy-less Blenders never import; see core/deps.py).
_NEEDS_NUMPY = {
    "cameras": "cameras",
    "campath": "campath",
    "scene": "scene",
    "prepare": "prepare",      # COLMAP / Metashape conversion and the scene check
}


def __getattr__(name: str):
    if name in _NEEDS_NUMPY:
        module = _load(_NEEDS_NUMPY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pythonpath() -> str:
    """The folder that contains backend/, for PYTHONPATH of the backend process."""
    return str(Path(backend.__file__).resolve().parent.parent)
