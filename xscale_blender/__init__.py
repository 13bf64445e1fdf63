"""XScale-NVS for Blender: import photogrammetry scenes, train the neural renderer in a
background process, render camera paths into the Video Sequence Editor.

Metadata lives in blender_manifest.toml (Blender 4.2+ extension). This side never imports
torch: the backend runs as `python -m backend` in the interpreter set in the preferences, and
the backend code the add-on uses in-process comes through backend_link.
The bpy-free logic is in core/ (jobs, camera conversion, the render server's client, Set Up
Backend's script, ...); the modules here are the Blender glue on top of it, imported in
register(), so core/ can be used and tested without Blender.

Layout, by feature: import_ops (File > Import, conversion, scene check), train_ops (Cache +
Train, Resume), render_ops (camera path render, its sequencer strip, path export, photo cameras),
backend_ops (Check Backend, Set Up Backend), engine (the XScale-NVS render engine: F12,
animation, viewport; its Properties panels in render_panels), compositing (CG objects rendered by
Cycles or EEVEE and composited over the capture; compositor_nodes: the node API of 4.2 and 5.0); job_runner runs their backend processes (timer in the UI, blocking in
background mode, Stop) and reporting tells the user; properties holds the scene settings, built
from backend.config's options; panels and preferences draw them; view_transform gives scenes that
show the capture the Standard view transform. Without numpy in Blender's
Python (core.deps) the modules that need it are left out and the panels say how to install it.
"""
from __future__ import annotations

import importlib
import sys

# Registration order: settings and helpers first, the panels that use them last.
_MODULE_NAMES = ("preferences", "properties", "reporting", "job_runner", "import_ops", "train_ops",
                 "render_ops", "backend_ops", "engine", "view_transform", "render_panels", "panels", "importer",
                 "compositing")
# Left out when Blender's Python has no numpy (deps.py): the panels then say how to install it.
NEEDS_NUMPY = frozenset({"import_ops", "render_ops", "engine", "view_transform", "render_panels", "importer",
                         "compositing"})

_registered: list = []


def _module_names() -> list[str]:
    from .core import deps
    if not deps.refresh():
        return list(_MODULE_NAMES)
    print(f"XScale: {deps.message()}", file=sys.stderr, flush=True)
    return [name for name in _MODULE_NAMES if name not in NEEDS_NUMPY]


def register() -> None:
    """Register every module, or on failure none: a module that fails is undone with the ones
    before it, so the add-on is never left half registered."""
    for name in _module_names():
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
            mod.register()
        except Exception:
            unregister()
            raise
        _registered.append(mod)


def unregister() -> None:
    while _registered:
        _registered.pop().unregister()
