"""Telling the user what a job does: the status bar and Info editor (also from a timer, outside
any operator), console lines in background mode, and redraws of the areas that show progress."""

import json
import sys
from typing import Callable

import bpy
from bpy.props import EnumProperty, StringProperty

from .core import jobs

Sink = Callable[[str, str], None]      # (level "INFO" | "WARNING" | "ERROR", message)


class XSCALE_OT_report(bpy.types.Operator):
    """Show a message in the status bar and the Info editor (used by the job timer)"""
    bl_idname = "xscale.report"
    bl_label = "XScale Report"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[(k, k.title(), "") for k in ("INFO", "WARNING", "ERROR")])
    message: StringProperty()

    def invoke(self, context, event):
        # Reports of an operator that Python called are dropped, those of a modal step are
        # shown; the timer makes that step happen even when no input event comes.
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.01, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        context.window_manager.event_timer_remove(self._timer)
        self.report({self.level}, self.message)
        return {"FINISHED"}

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


def refuse(op: "bpy.types.Operator", message: str) -> set[str]:
    """An operator's error: reported on it, and the operator cancelled (`return refuse(self, ...)`)."""
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


def report(level: str, message: str) -> None:
    """Report from a timer: console always, status bar when there is a window."""
    print(f"XScale: {level.lower()}: {message}", file=sys.stderr if level == "ERROR" else sys.stdout)
    wm = bpy.context.window_manager
    if bpy.app.background or wm is None or not wm.windows:
        return
    try:
        with bpy.context.temp_override(window=wm.windows[0]):
            bpy.ops.xscale.report("INVOKE_DEFAULT", level=level, message=message[:1000])
    except (RuntimeError, AttributeError):
        pass


def redraw_ui() -> None:
    """Redraw the areas that show job progress (sidebar, preferences, sequencer)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm is not None else ()):
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PREFERENCES", "SEQUENCE_EDITOR"}:
                area.tag_redraw()


def report_end(job: jobs.Job, sink: Sink) -> None:
    """The outcome of a finished job, once: an error, a warning (stopped) or the summary."""
    s = job.state
    if s.status == jobs.FAILED:
        sink("ERROR", f"{job.label}: {s.error}")
    elif s.status == jobs.STOPPED:
        sink("WARNING", f"{job.label}: {s.message}")
    else:
        sink("INFO", f"{job.label}: finished ({jobs.describe(s)})" + (f"; {s.outcome}" if s.outcome else ""))


def print_event(job: jobs.Job) -> Callable[[dict], None]:
    """An event handler that prints a console line per event (background mode)."""
    def on_event(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "progress":
            print(f"XScale {job.label}: {jobs.describe(job.state)}", flush=True)
        elif kind == "log":
            print(f"XScale {job.label}: {ev.get('message', '')}", flush=True)
        elif kind == "done":
            outputs = {k: v for k, v in ev.items() if k not in ("event", "stage")}
            print(f"XScale {job.label}: {ev.get('stage', '')} done {json.dumps(outputs)}", flush=True)
        elif kind == "error":
            print(f"XScale {job.label}: error: {ev.get('message', '')}", file=sys.stderr, flush=True)
    return on_event


class XSCALE_OT_copy_text(bpy.types.Operator):
    """Copy this to the clipboard"""
    bl_idname = "xscale.copy_text"
    bl_label = "Copy"
    bl_options = {"INTERNAL"}

    text: StringProperty()

    def execute(self, context):
        context.window_manager.clipboard = self.text
        self.report({"INFO"}, f"Copied: {self.text}")
        return {"FINISHED"}


CLASSES = (XSCALE_OT_report, XSCALE_OT_copy_text)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
