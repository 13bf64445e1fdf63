"""Add-on preferences: which Python runs the backend (Blender's own Python has no torch), Check,
and Set Up Backend (backend_ops) to make that Python's environment."""

import os
from typing import Optional

import bpy
from bpy.props import StringProperty

from . import panels
from .core import deps, jobs, ui_text

ENV_PYTHON = "XSCALE_BACKEND_PYTHON"   # overrides the preference, e.g. for headless farm jobs

PREFS_MARGIN_PX = 110.0     # the add-on's entry in Preferences is indented and boxed
REPORT_KEY_SHARE = 0.3      # Check's report: the keys' column
REPORT_KEY_CHARS = 24       # a longer 'key' is not a key (a message with a colon)

# Result of the last "Check" (not saved): lines to show under the button.
doctor_lines: list[str] = []


class BackendNotConfigured(Exception):
    pass


class XScalePreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter of the environment that has torch (and CUDA), "
                    "e.g. /opt/xscale/venv/bin/python or C:\\xscale\\venv\\Scripts\\python.exe; "
                    "Set Up Backend fills it in")
    setup_python: StringProperty(
        name="Python for Setup", subtype="FILE_PATH",
        description="Python 3.10 or newer that Set Up Backend makes the environment with "
                    "(empty: one found on this machine, else Blender's own)")

    def draw(self, context: "bpy.types.Context") -> None:
        layout = self.layout
        if deps.missing():
            panels.draw_missing(layout, context)
        col = layout.column(align=True)
        col.label(text="Backend Python")
        col.prop(self, "python", text="")          # the whole width: environment paths are long
        if os.environ.get(ENV_PYTHON):
            ui_text.draw_wrapped(col, context, f"{ENV_PYTHON} is set and overrides this: "
                                 f"{os.environ[ENV_PYTHON]}", icon="INFO", margin_px=PREFS_MARGIN_PX)
        row = layout.row(align=True)
        row.operator("xscale.check_backend", text="Check", icon="CHECKMARK")
        sub = row.row(align=True)
        sub.enabled = not jobs.busy()
        sub.operator("xscale.setup_backend", icon="IMPORT")
        panels.property_split(layout.column()).prop(self, "setup_python")
        job = jobs.active()
        if job is not None and job.label == jobs.SETUP_LABEL:
            panels.draw_job(layout, context, margin_px=PREFS_MARGIN_PX)
        elif not self.python and not os.environ.get(ENV_PYTHON):
            ui_text.draw_wrapped(layout, context, "No backend yet: Set Up Backend installs it (a Python "
                                 "environment with torch; downloads about 0.3 GB, 3 GB with CUDA).", icon="INFO",
                                 margin_px=PREFS_MARGIN_PX)
        if doctor_lines:
            draw_report(layout.box().column(align=True), context, doctor_lines)


def draw_report(layout: "bpy.types.UILayout", context, lines: list[str]) -> None:
    """Check's findings as a table: 'key: value' lines with the keys in a narrow column and the
    values wrapped to the rest of the width, so no line runs past the window's edge."""
    for line in lines:
        key, sep, value = line.partition(": ")
        if key == "ready" and sep:
            ready = value == "True"
            layout.label(text="Ready: the backend can train and render here" if ready else
                         "Not ready: see the checks below", icon="CHECKMARK" if ready else "ERROR")
            continue
        if not sep or len(key) > REPORT_KEY_CHARS:
            ui_text.draw_wrapped(layout, context, line, margin_px=PREFS_MARGIN_PX)
            continue
        split = layout.split(factor=REPORT_KEY_SHARE, align=True)
        split.label(text=key)
        ui_text.draw_wrapped(split, context, value, margin_px=PREFS_MARGIN_PX, share=1 - REPORT_KEY_SHARE)


def addon_preferences() -> "Optional[XScalePreferences]":
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def backend_python() -> str:
    """The backend interpreter: $XSCALE_BACKEND_PYTHON, else the preference."""
    path = os.environ.get(ENV_PYTHON, "")
    if path:
        if not os.path.isfile(path):
            raise BackendNotConfigured(
                f"Backend Python not found: {path}, named by the environment variable {ENV_PYTHON}. "
                f"Set {ENV_PYTHON} to the Python of the environment with torch, or unset it to use "
                "the add-on preferences.")
        return path
    prefs = addon_preferences()
    path = bpy.path.abspath(prefs.python) if prefs is not None and prefs.python else ""
    if not path:
        raise BackendNotConfigured(
            "No backend Python set: in Preferences > Add-ons > XScale-NVS, set the Python of the "
            f"environment with torch (or set {ENV_PYTHON}).")
    if not os.path.isfile(path):
        raise BackendNotConfigured(f"Backend Python not found: {path}. Fix it in Preferences > Add-ons > "
                                   "XScale-NVS (Backend Python).")
    return path


CLASSES = (XScalePreferences,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
