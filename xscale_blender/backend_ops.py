"""The backend environment, from the preferences: Check Backend runs `backend doctor --json` with
the chosen interpreter and shows what it finds under the button; Set Up Backend makes a Python
environment in Blender's user data folder and installs the backend there (backend_setup.py, a
background job), then sets Backend Python and runs Check.

No `from __future__ import annotations` in modules with bpy properties (Blender reads those
annotations); the other annotations here name no bpy class (tests/test_blender_modules.py)."""

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import job_runner, preferences, reporting
from .backend_link import pythonpath
from .core import jobs
from .reporting import refuse

SETUP_SCRIPT = Path(__file__).resolve().parent / "core" / "backend_setup.py"


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
        if "ready" in info:      # the verdict first: a small preferences window shows the top lines
            info = {"ready": info["ready"], **info}
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            lines.append(f"{key}: {value}")
    elif text:
        lines = text.splitlines()
    if job.state.returncode not in (0, None) or not lines:
        lines += [job.state.error or f"exit code {job.state.returncode}"] + list(job.stderr_tail)[-5:]
    return lines[:40]


def start_check(blocking: bool, report: Callable[[str, str], None]) -> Optional[jobs.Job]:
    """Run `backend doctor --json`; its findings go to preferences.doctor_lines. Not the active
    job: a check may run while training does. None when no backend Python is set."""
    try:
        preferences.backend_python()
    except preferences.BackendNotConfigured as e:
        preferences.doctor_lines[:] = [str(e)]
        report("ERROR", str(e))
        return None
    preferences.doctor_lines[:] = ["Checking ..."]

    def on_finish(job: jobs.Job) -> None:
        preferences.doctor_lines[:] = _doctor_lines(job)

    job = job_runner.backend_job("doctor", ["--json"], "doctor", on_finish, expect_events=False).start()
    if blocking:
        job.wait()
        print("\n".join(preferences.doctor_lines))
        return job

    def tick() -> Optional[float]:
        job.poll()
        reporting.redraw_ui()
        return None if job.finished else job_runner.POLL_INTERVAL_S

    bpy.app.timers.register(tick, first_interval=job_runner.POLL_INTERVAL_S)
    _check_timers.append(tick)
    return job


# Check timers still registered when the add-on goes away are removed with it (a Python timer
# left behind crashes Blender 4.2's exit).
_check_timers: list[Callable[[], Optional[float]]] = []


def _remove_check_timers() -> None:
    while _check_timers:
        tick = _check_timers.pop()
        if bpy.app.timers.is_registered(tick):
            bpy.app.timers.unregister(tick)


class XSCALE_OT_check_backend(bpy.types.Operator):
    """Run `backend doctor` with the chosen Python and show what it finds"""
    bl_idname = "xscale.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        job = start_check(bpy.app.background, lambda level, msg: self.report({level}, msg))
        if job is None:
            return {"CANCELLED"}
        return {"CANCELLED"} if job.finished and job.state.status != jobs.DONE else {"FINISHED"}


# --- Set Up Backend ---------------------------------------------------------------------------------

def default_venv() -> str:
    """<Blender's user data folder>/xscale_nvs/venv."""
    return os.path.join(bpy.utils.user_resource("DATAFILES", path="xscale_nvs", create=True), "venv")


def setup_argv(venv: str, python: str = "", hardware: str = "auto", torch_index_url: str = "",
               torch: str = "torch") -> list[str]:
    """backend_setup.py, run by Blender's own Python (which is also the last resort to make the
    environment with, when no other Python is found)."""
    argv = [sys.executable, str(SETUP_SCRIPT), "--venv", venv, "--source", pythonpath(),
            "--fallback-python", sys.executable, "--hardware", hardware, "--torch", torch or "torch"]
    if python:
        argv += ["--python", python]
    if torch_index_url:
        argv += ["--torch-index-url", torch_index_url]
    return argv


def _setup_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PYTHONHOME", "PYTHONPATH"):     # Blender's, not for another interpreter
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def setup_finished(job: jobs.Job, check: bool) -> None:
    """After a successful setup: the new environment becomes Backend Python; then Check."""
    if job.state.status != jobs.DONE or not job.state.results:
        return
    result = job.state.results[-1]
    python = str(result.get("python", ""))
    prefs = preferences.addon_preferences()
    if prefs is not None:
        prefs.python = python
    note = ""
    if os.environ.get(preferences.ENV_PYTHON):
        note = f"; {preferences.ENV_PYTHON} is set and overrides it"
    job.state.message = (f"Backend Python is now {python} (torch {result.get('torch', '?')}, "
                         f"{result.get('hardware', '?')}){note}")
    if check:
        start_check(False, reporting.report)


class XSCALE_OT_setup_backend(bpy.types.Operator):
    """Make a Python environment for the backend in Blender's user data folder and install the backend
    there (torch with CUDA when an NVIDIA GPU is found, else the CPU build; downloads about 0.3 GB and takes 1.1 GB, with CUDA about 3 GB and 5 GB), then set
    Backend Python and check it"""
    bl_idname = "xscale.setup_backend"
    bl_label = "Set Up Backend"

    python: StringProperty(
        name="Python", subtype="FILE_PATH", options={"SKIP_SAVE"},
        description="Python 3.10 or newer to make the environment with (empty: the Python for Setup "
                    "preference, else one found on this machine)")
    hardware: EnumProperty(
        name="Hardware", default="auto", options={"SKIP_SAVE"},
        items=[("auto", "Automatic", "CUDA when nvidia-smi lists an NVIDIA GPU, else CPU"),
               ("cuda", "CUDA", "torch with CUDA and the CUDA rasterizer (nvdiffrast)"),
               ("cpu", "CPU", "the CPU build of torch (smaller; slow training)")])
    torch_index_url: StringProperty(
        name="Torch Index URL", options={"SKIP_SAVE"},
        description="Package index for torch (empty: PyTorch's CPU index for CPU, PyPI for CUDA on Linux; "
                    "'none': pip's own configuration)")
    torch_requirement: StringProperty(name="Torch", default="torch", options={"SKIP_SAVE"},
                                      description="The torch requirement, e.g. torch==2.13.0")
    venv_dir: StringProperty(name="Environment", subtype="DIR_PATH", options={"SKIP_SAVE"},
                             description="Where to make the environment (empty: Blender's user data folder, "
                                         "xscale_nvs/venv)")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the setup ends (always on in background mode)")

    def execute(self, context):
        if jobs.busy():
            return refuse(self, "An XScale job is running; stop it or wait for it first.")
        prefs = preferences.addon_preferences()
        python = self.python or (getattr(prefs, "setup_python", "") if prefs is not None else "")
        python = bpy.path.abspath(python) if python else ""
        venv = bpy.path.abspath(self.venv_dir) if self.venv_dir else default_venv()
        blocking = job_runner._blocking(self.wait)
        argv = setup_argv(os.path.normpath(venv), python, self.hardware, self.torch_index_url,
                          self.torch_requirement)
        job = jobs.Job(argv, env=_setup_env(), label=jobs.SETUP_LABEL,
                       on_finish=lambda j: setup_finished(j, check=not blocking))
        result = job_runner.run_job(self, job, blocking)
        if blocking and job.state.status == jobs.DONE:
            print(f"XScale: {job.state.message}", flush=True)
            start_check(True, lambda level, msg: self.report({level}, msg))
        return result


CLASSES = (XSCALE_OT_check_backend, XSCALE_OT_setup_backend)


register, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def unregister() -> None:
    _remove_check_timers()
    _unregister_classes()
