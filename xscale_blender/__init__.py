"""XScale-NVS for Blender: import photogrammetry scenes, train the neural renderer in a
background process, render camera paths into the Video Sequence Editor.

Metadata lives in blender_manifest.toml (Blender 4.2+ extension). This side never imports
torch: the backend runs as `python -m backend` in the interpreter set in the preferences, and
the backend code the add-on uses in-process comes through backend_link.
Submodules that need bpy are imported in register(), so the pure ones (camera_convert, jobs)
can be used and tested without Blender.

Layout, by feature: import_ops (File > Import, conversion, scene check), train_ops (Cache +
Train, Resume), render_ops (camera path render, its sequencer strip, path export, photo cameras),
backend_ops (Check Backend), engine (the XScale-NVS render engine: F12, animation, viewport; on
the render server client render_server and the viewport thread preview); job_runner runs their
backend processes (timer in the UI, blocking in background mode, Stop) and reporting tells the
user; properties holds the scene settings, built from backend.config's options; panels and
preferences draw them.
"""
from __future__ import annotations

import importlib

# Registration order: settings and helpers first, the panels that use them last.
_MODULE_NAMES = ("preferences", "properties", "reporting", "job_runner", "import_ops", "train_ops",
                 "render_ops", "backend_ops", "engine", "panels", "importer")


def _modules() -> list:
    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULE_NAMES]


def register() -> None:
    for mod in _modules():
        mod.register()


def unregister() -> None:
    for mod in reversed(_modules()):
        mod.unregister()
