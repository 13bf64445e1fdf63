"""XScale-NVS for Blender: import photogrammetry scenes, train the neural renderer in a
background process, render camera paths into the Video Sequence Editor.

Metadata lives in blender_manifest.toml (Blender 4.2+ extension). This side never imports
torch: the backend runs as `python -m backend` in the interpreter set in the preferences.
Submodules that need bpy are imported in register(), so the pure ones (camera_convert, jobs)
can be used and tested without Blender.
"""
from __future__ import annotations

import importlib

_MODULE_NAMES = ("preferences", "properties", "operators", "panels", "importer")


def _modules() -> list:
    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULE_NAMES]


def register() -> None:
    for mod in _modules():
        mod.register()


def unregister() -> None:
    for mod in reversed(_modules()):
        mod.unregister()
