"""Running backend jobs from operators: the command line, start, follow, stop.

A job is a separate `python -m backend COMMAND` process (jobs.Job). In the UI a bpy.app.timers
callback polls it and the operator returns at once; in background mode (blender -b, the bpy
module) timers never fire, so the operator blocks and drives the same `Job.poll()` through
`Job.wait()`, printing progress lines. One job at a time: `jobs.active()`.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import bpy

from . import preferences, reporting
from .backend_link import config, pythonpath
from .core import jobs
from .reporting import refuse

POLL_INTERVAL_S = 0.25


def backend_job(command: str, args: list[str], label: str,
                on_finish: Optional[Callable[[jobs.Job], None]] = None, **kw) -> jobs.Job:
    """An unstarted `python -m backend COMMAND ARGS` job with the configured interpreter
    (raises preferences.BackendNotConfigured)."""
    python = preferences.backend_python()
    return jobs.Job(jobs.backend_argv(python, command, *args), env=jobs.backend_env(pythonpath()),
                    label=label, on_finish=on_finish, **kw)


def nproc_arguments(s) -> list[str]:
    """`--nproc N` for several GPUs (the backend re-launches itself through torchrun; NCCL needs Linux)."""
    return [config.NPROC.flag, str(s.gpus)] if s.gpus > 1 and sys.platform.startswith("linux") else []


def start_backend(op: bpy.types.Operator, command: str, args: list[str], label: str,
                  wait: bool, on_finish: Optional[Callable[[jobs.Job], None]] = None) -> set[str]:
    """An operator's backend job: refused while another runs, else started (and, when blocking,
    waited for); returns the operator's result."""
    if jobs.busy():
        return refuse(op, "An XScale job is already running; stop it first.")
    try:
        job = backend_job(command, args, label, on_finish)
    except preferences.BackendNotConfigured as e:
        return refuse(op, str(e))
    return run_job(op, job, _blocking(wait))


def _blocking(wait: bool) -> bool:
    return wait or bpy.app.background


def run_job(op: bpy.types.Operator, job: jobs.Job, blocking: bool) -> set[str]:
    """Start `job`; in blocking mode wait for it and turn its outcome into the operator's."""
    jobs.set_active(job)
    job.start()
    if not blocking:
        if not bpy.app.timers.is_registered(_ui_tick):
            bpy.app.timers.register(_ui_tick, first_interval=POLL_INTERVAL_S, persistent=True)
        op.report({"INFO"}, f"XScale: {job.label} started")
        return {"FINISHED"}
    print(f"XScale {job.label}: {' '.join(job.argv)}", flush=True)
    state = job.wait(on_event=reporting.print_event(job))
    reporting.report_end(job, lambda level, msg: op.report({level}, msg))
    return {"CANCELLED"} if state.status == jobs.FAILED else {"FINISHED"}


def _ui_tick() -> Optional[float]:
    """bpy.app.timers callback: apply new events, redraw, report the end once."""
    job = jobs.active()
    if job is None:
        return None
    job.poll()   # errors are reported once, with the final status
    reporting.redraw_ui()
    if not job.finished:
        return POLL_INTERVAL_S
    reporting.report_end(job, reporting.report)
    return None


class XSCALE_OT_stop(bpy.types.Operator):
    """Stop the running job; training saves a checkpoint first (press again to kill it)"""
    bl_idname = "xscale.stop"
    bl_label = "Stop"

    @classmethod
    def poll(cls, context):
        return jobs.busy()

    def execute(self, context):
        job = jobs.active()
        if job is None or job.finished:
            return {"CANCELLED"}
        if job.stopping:
            job.kill()
            self.report({"WARNING"}, "XScale: job killed (no checkpoint written)")
        else:
            job.stop()
            self.report({"INFO"}, "XScale: stopping (saving a checkpoint)")
        return {"FINISHED"}


def quit_question(job: jobs.Job) -> str:
    """What quitting now does to the running job, for the question before quitting."""
    return (f"{job.label.title()} is running ({jobs.describe(job.state)}). Quitting stops it: "
            f"{jobs.stop_keeps(job.label, job.state.stage)}.")


class XSCALE_OT_quit_blender(bpy.types.Operator):
    """Quit Blender; while an XScale job runs, ask first (Ctrl Q)"""
    bl_idname = "xscale.quit_blender"
    bl_label = "Quit Blender"
    bl_options = {"INTERNAL"}

    def invoke(self, context, event):
        job = jobs.active()
        if job is None or job.finished:
            return {"PASS_THROUGH"}          # Blender's own Ctrl Q
        return context.window_manager.invoke_confirm(
            self, event, title="Quit While a Job Runs?", message=quit_question(job),
            confirm_text="Stop It and Quit", icon="WARNING")

    def execute(self, context):
        job = jobs.active()
        if job is not None and not job.finished:
            job.stop()
        bpy.ops.wm.quit_blender("INVOKE_DEFAULT")      # Blender's own quit: it may ask to save
        return {"FINISHED"}


CLASSES = (XSCALE_OT_stop, XSCALE_OT_quit_blender)

# Ctrl Q (and Cmd Q on macOS) ask first while a job runs; the window's close button and File >
# Quit cannot be caught: then the job stops at exit (jobs._stop_on_exit) and the next session's
# sidebar says where it stopped (core/run_log.py).
_keymap_items: list = []


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    kc = bpy.context.window_manager.keyconfigs.addon if bpy.context.window_manager else None
    if kc is None:              # background mode: no keymaps
        return
    km = kc.keymaps.new(name="Window", space_type="EMPTY")
    keys = [{"ctrl": True}] + ([{"oskey": True}] if sys.platform == "darwin" else [])
    for mods in keys:
        _keymap_items.append((km, km.keymap_items.new(XSCALE_OT_quit_blender.bl_idname, "Q", "PRESS", **mods)))


def unregister() -> None:
    while _keymap_items:
        km, kmi = _keymap_items.pop()
        km.keymap_items.remove(kmi)
    if bpy.app.timers.is_registered(_ui_tick):
        bpy.app.timers.unregister(_ui_tick)
    job = jobs.active()
    if job is not None and not job.finished:
        job.stop()   # do not leave an orphan trainer behind when the add-on goes away
    jobs.set_active(None)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
