"""Check Backend (in the preferences): run `backend doctor --json` with the chosen interpreter and
show what it finds under the button."""
from __future__ import annotations

import json
from typing import Optional

import bpy

from . import job_runner, jobs, preferences, reporting


def _doctor_lines(job: jobs.Job) -> list[str]:
    """`doctor --json` prints one JSON object (libraries may print other lines around it)."""
    info = None
    for line in reversed(job.text_lines):
        try:
            info = json.loads(line)
            break
        except ValueError:
            continue
    text = "\n".join(job.text_lines).strip()
    lines: list[str] = []
    if isinstance(info, dict):
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{key}: {value}")
    elif text:
        lines = text.splitlines()
    if job.state.returncode not in (0, None) or not lines:
        lines += [job.state.error or f"exit code {job.state.returncode}"] + list(job.stderr_tail)[-5:]
    return lines[:40]


class XSCALE_OT_check_backend(bpy.types.Operator):
    """Run `backend doctor` with the chosen Python and show what it finds"""
    bl_idname = "xscale.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        try:
            preferences.backend_python()
        except preferences.BackendNotConfigured as e:
            preferences.doctor_lines[:] = [str(e)]
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        preferences.doctor_lines[:] = ["Checking ..."]

        def on_finish(job: jobs.Job) -> None:
            preferences.doctor_lines[:] = _doctor_lines(job)

        # Not the active job: a check may run while training does.
        job = job_runner.backend_job("doctor", ["--json"], "doctor", on_finish, expect_events=False).start()
        if bpy.app.background:
            job.wait()
            print("\n".join(preferences.doctor_lines))
            return {"FINISHED"} if job.state.status == jobs.DONE else {"CANCELLED"}

        def tick() -> Optional[float]:
            job.poll()
            reporting.redraw_ui()
            return None if job.finished else job_runner.POLL_INTERVAL_S

        bpy.app.timers.register(tick, first_interval=job_runner.POLL_INTERVAL_S)
        return {"FINISHED"}


CLASSES = (XSCALE_OT_check_backend,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
