"""Operators: import, train (fit), stop, render a camera path, check the backend.

Jobs run as a separate backend process. In the UI a bpy.app.timers callback polls it; in
background mode (blender -b, bpy module) timers never fire, so the operator blocks and
drives the same `Job.poll()` through `Job.wait()`, printing progress lines.
"""

import contextlib
import importlib
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import backend_link, campath_export, importer, jobs, preferences, sequencer
from .backend_link import campath, pythonpath

POLL_INTERVAL_S = 0.25


# --- reporting outside an operator ---------------------------------------------------------

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
    wm = bpy.context.window_manager
    for window in (wm.windows if wm is not None else ()):
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PREFERENCES", "SEQUENCE_EDITOR"}:
                area.tag_redraw()


# --- running jobs ----------------------------------------------------------------------------

def _ui_tick() -> Optional[float]:
    """bpy.app.timers callback: apply new events, redraw, report the end once."""
    job = jobs.active()
    if job is None:
        return None
    job.poll()   # errors are reported once, with the final status
    redraw_ui()
    if not job.finished:
        return POLL_INTERVAL_S
    _report_end(job, report)
    return None


def _report_end(job: jobs.Job, sink: Callable[[str, str], None]) -> None:
    s = job.state
    if s.status == jobs.FAILED:
        sink("ERROR", f"{job.label}: {s.error}")
    elif s.status == jobs.STOPPED:
        sink("WARNING", f"{job.label}: {s.message}")
    else:
        sink("INFO", f"{job.label}: finished ({jobs.describe(s)})")


def _print_event(job: jobs.Job) -> Callable[[dict], None]:
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
    state = job.wait(on_event=_print_event(job))
    _report_end(job, lambda level, msg: op.report({level}, msg))
    return {"CANCELLED"} if state.status == jobs.FAILED else {"FINISHED"}


def _blocking(wait: bool) -> bool:
    return wait or bpy.app.background


def _abspath(path: str) -> str:
    return os.path.normpath(bpy.path.abspath(path)) if path else ""


def _start_backend(op: bpy.types.Operator, command: str, args: list[str], label: str,
                   wait: bool, on_finish: Optional[Callable[[jobs.Job], None]] = None) -> set[str]:
    if jobs.busy():
        op.report({"ERROR"}, "An XScale job is already running; stop it first.")
        return {"CANCELLED"}
    try:
        job = backend_job(command, args, label, on_finish)
    except preferences.BackendNotConfigured as e:
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    return run_job(op, job, _blocking(wait))


def backend_job(command: str, args: list[str], label: str,
                on_finish: Optional[Callable[[jobs.Job], None]] = None, **kw) -> jobs.Job:
    """An unstarted `python -m backend COMMAND ARGS` job with the configured interpreter."""
    python = preferences.backend_python()
    return jobs.Job(jobs.backend_argv(python, command, *args), env=jobs.backend_env(pythonpath()),
                    label=label, on_finish=on_finish, **kw)


# --- import ----------------------------------------------------------------------------------

def _backend_module(name: str):
    """A numpy-only backend module (prepare, events) from the bundled backend package."""
    return importlib.import_module(f"{backend_link.backend.__name__}.{name}")


@contextlib.contextmanager
def _quiet_backend_events():
    """Silence the backend's JSON progress events while its code runs in Blender's Python."""
    events = _backend_module("events")
    saved = (events._stream, events._quiet)
    events.set_stream(sys.stdout, quiet=True)
    try:
        yield
    finally:
        events.set_stream(*saved)


P_REPORT = "xscale_report"       # check report text, stored on the imported collection
CHECK_MAX_SIDE = 128


def check_imported_scene(coll: bpy.types.Collection, scene_dir: str,
                         level: Optional[int], coverage: bool = True) -> tuple[str, str]:
    """Run the scene check, print it, store it on `coll`; returns (report level, one-line summary)."""
    prepare = _backend_module("prepare")
    try:
        with _quiet_backend_events():
            rep = prepare.check_scene(scene_dir, level=level, coverage=coverage, max_side=CHECK_MAX_SIDE)
    except (importer.InputError, ValueError, OSError) as e:
        text = f"Scene check failed: {e}"
        print(f"XScale: {text}", flush=True)
        coll[P_REPORT] = text
        return "WARNING", text
    text = prepare.format_report(rep)
    print(text, flush=True)
    coll[P_REPORT] = text
    n = rep["n_views"]
    parts = [f"check {rep['status']}: {n} views"]
    if rep.get("coverage_mean") is not None:
        parts.append(f"mean mesh coverage {rep['coverage_mean']:.1%}")
    missing = rep["views_not_reached"]
    if missing:
        parts.append(f"{len(missing)} of {n} views do not see the mesh")
    level_name = "WARNING" if missing or rep["errors"] else "INFO"
    return level_name, ", ".join(parts)


def _finish_import(op: bpy.types.Operator, coll: bpy.types.Collection, scene_dir: str,
                   level: Optional[int], prefix: str = "") -> set[str]:
    n = sum(1 for ob in coll.all_objects if ob.type == "CAMERA")
    message = f"{prefix}Imported {n} cameras into '{coll.name}'"
    level_name = "INFO"
    if op.check_scene:
        level_name, summary = check_imported_scene(coll, scene_dir, level)
        message += f"; {summary} (full report in the console and on the collection)"
    op.report({level_name}, message)
    return {"FINISHED"}


class _ImportOptions:
    """Options shared by the import operators."""
    import_mesh: BoolProperty(name="Mesh", default=True, description="Import the scene mesh")
    show_photos: BoolProperty(name="Photos as Backgrounds", default=True,
                              description="Show each photo as its camera's background image")
    test_every: IntProperty(name="Hold Out Every", default=8, min=0,
                            description="Mark every n-th photo as held out (as the backend splits them)")
    set_active: BoolProperty(name="Set Active Camera", default=True,
                             description="Make the first training camera the scene camera")
    check_scene: BoolProperty(name="Check Scene", default=True,
                              description="Run the scene check (mesh coverage per view) after importing and "
                                          "store its report on the collection (slow on huge meshes)")


class IMPORT_SCENE_OT_xscale_mvsnet(_ImportOptions, bpy.types.Operator):
    """Import an MVSNet scene folder: the mesh and one camera per photo"""
    bl_idname = "import_scene.xscale_mvsnet"
    bl_label = "Import XScale-NVS Scene"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Scene Folder", subtype="DIR_PATH")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    level: IntProperty(name="Image Level", default=-1, min=-1, max=8,
                       description="Use images_k/ and cams_k/ (-1: the finest level found)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.directory:
            self.report({"ERROR"}, "Choose a scene folder")
            return {"CANCELLED"}
        level = None if self.level < 0 else self.level
        try:
            coll = importer.import_scene(
                context, self.directory, mesh=self.import_mesh, photos=self.show_photos,
                test_every=self.test_every, level=level, set_active=self.set_active)
        except importer.InputError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return _finish_import(self, coll, context.scene.xscale.scene_dir, level)


def default_convert_output(src: str) -> str:
    """SOURCE_mvsnet next to the source folder."""
    p = Path(src)
    return str(p.parent / f"{p.name}_mvsnet")


def _has_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_command(src: str, dst: str, source: str, downsample: int) -> str:
    """The shell command that converts with resizing in the backend environment."""
    argv = ["python", "-m", "backend", "prepare", src, "--out", dst, "--downsample", str(downsample)]
    if source != "auto":
        argv += ["--from", source]
    return " ".join(shlex.quote(a) for a in argv)


class IMPORT_SCENE_OT_xscale_convert(_ImportOptions, bpy.types.Operator):
    """Convert a COLMAP workspace or a Metashape export into an MVSNet scene folder, then import it"""
    bl_idname = "import_scene.xscale_convert"
    bl_label = "Import COLMAP / Metashape"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Source Folder", subtype="DIR_PATH",
                              description="COLMAP workspace (after image_undistorter) or Metashape export")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    output_dir: StringProperty(name="Output Scene Folder", subtype="DIR_PATH",
                               description="Where to write the MVSNet scene (empty: SOURCE_mvsnet next to "
                                           "the source folder)")
    source: EnumProperty(name="Source Type", default="auto", items=[
        ("auto", "Auto", "Detect the source type"),
        ("colmap", "COLMAP", "COLMAP sparse model (text or binary) with undistorted images"),
        ("metashape", "Metashape", "Metashape cameras XML with undistorted images and a mesh"),
    ])
    downsample: IntProperty(name="Downsample", default=1, min=1, max=16,
                            description="Shrink the photos this many times (needs Pillow: above 1, run the "
                                        "conversion from the backend environment)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.directory:
            self.report({"ERROR"}, "Choose a COLMAP or Metashape folder")
            return {"CANCELLED"}
        src = _abspath(self.directory)
        dst = _abspath(self.output_dir) if self.output_dir else default_convert_output(src)
        if self.downsample > 1 and not _has_pillow():
            self.report({"ERROR"}, "Downsampling needs Pillow, which Blender's Python does not have: set "
                                   "Downsample to 1, or run this from the backend environment and import "
                                   f"the result as an MVSNet scene: {prepare_command(src, dst, self.source, self.downsample)}")
            return {"CANCELLED"}
        prepare = _backend_module("prepare")
        try:
            with _quiet_backend_events():
                summary = prepare.convert(src, dst, source=self.source, downsample=self.downsample)
            coll = importer.import_scene(
                context, dst, mesh=self.import_mesh, photos=self.show_photos, test_every=self.test_every,
                level=summary["level"], set_active=self.set_active)
        except importer.InputError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        print(f"XScale: converted {summary['views']} view(s) into {summary['images_dir']} and "
              f"{summary['cams_dir']}; mesh {summary['mesh']}", flush=True)
        for note in summary.get("notes") or ():
            print(f"XScale: note: {note}", flush=True)
        return _finish_import(self, coll, dst, summary["level"], prefix=f"Converted to {dst}. ")


def menu_import(self, context):
    self.layout.operator(IMPORT_SCENE_OT_xscale_mvsnet.bl_idname, text="XScale-NVS scene (MVSNet)")
    self.layout.operator(IMPORT_SCENE_OT_xscale_convert.bl_idname, text="XScale-NVS from COLMAP / Metashape")


# --- train -----------------------------------------------------------------------------------

def fit_arguments(s, resume: bool) -> list[str]:
    """`backend fit` options from the scene settings (docs/protocol.md)."""
    args = ["--scene", _abspath(s.scene_dir), "--run", _abspath(s.run_dir),
            "--ss", str(s.supersample), "--test-every", str(s.test_every),
            "--device", s.device, "--preset", s.preset]
    if s.mesh_path:
        args += ["--mesh", _abspath(s.mesh_path)]
    if s.level >= 0:
        args += ["--level", str(s.level)]
    if s.iterations > 0:
        args += ["--iters", str(s.iterations)]
    if resume:
        args.append("--resume")
    return args + nproc_arguments(s)


def nproc_arguments(s) -> list[str]:
    """`--nproc N` for several GPUs (the backend re-launches itself through torchrun; NCCL needs Linux)."""
    import sys
    return ["--nproc", str(s.gpus)] if s.gpus > 1 and sys.platform.startswith("linux") else []


class XSCALE_OT_train(bpy.types.Operator):
    """Build the ray cache (when needed) and train; runs in the background"""
    bl_idname = "xscale.train"
    bl_label = "Cache + Train"

    resume: BoolProperty(name="Resume", default=False,
                         description="Continue from the run's last checkpoint")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until training ends (always on in background mode)")

    @classmethod
    def description(cls, context, props):
        return ("Continue training from the run folder's last checkpoint" if props.resume
                else cls.__doc__)

    def execute(self, context):
        s = context.scene.xscale
        scene_dir, run_dir = _abspath(s.scene_dir), _abspath(s.run_dir)
        if not scene_dir or not os.path.isdir(scene_dir):
            self.report({"ERROR"}, f"Scene folder not found: '{scene_dir}'. Import a scene or set it in the XScale panel.")
            return {"CANCELLED"}
        if not run_dir:
            self.report({"ERROR"}, "Set a run folder in the XScale panel.")
            return {"CANCELLED"}
        if self.resume and not os.path.isfile(os.path.join(run_dir, "checkpoints", "latest.pt")):
            self.report({"ERROR"}, f"Nothing to resume: no checkpoint in {run_dir}. Use Cache + Train.")
            return {"CANCELLED"}
        os.makedirs(run_dir, exist_ok=True)
        label = "resume" if self.resume else "train"
        return _start_backend(self, "fit", fit_arguments(s, self.resume), label, self.wait)


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


# --- render a camera path --------------------------------------------------------------------

def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "camera"


def render_output_dir(s, camera_name: str) -> str:
    return _abspath(s.render_dir) if s.render_dir else \
        os.path.join(_abspath(s.run_dir), "renders", _safe_name(camera_name))


def add_render_strip(scene: bpy.types.Scene, out_dir: str, numbers: list[int], ext: str, name: str):
    """Sequencer strip for rendered frames (at the path's first frame unless configured)."""
    s = scene.xscale
    files = [campath.frame_filename(n, ext) for n in numbers]
    missing = [f for f in files if not os.path.isfile(os.path.join(out_dir, f))]
    if missing:
        raise FileNotFoundError(f"the backend did not write {len(missing)} frame(s), "
                                f"e.g. {os.path.join(out_dir, missing[0])}")
    start = numbers[0] if s.strip_use_path_start else s.strip_frame_start
    return sequencer.add_image_strip(scene, out_dir, files, name=name, channel=s.strip_channel,
                                     frame_start=start, fmt=ext)


class XSCALE_OT_render_path(bpy.types.Operator):
    """Render the scene camera over the frame range with the trained model and add the frames to the sequencer"""
    bl_idname = "xscale.render_path"
    bl_label = "Render Camera Path"

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until rendering ends (always on in background mode)")

    def execute(self, context):
        scene = context.scene
        s = scene.xscale
        cam = scene.camera
        if cam is None:
            self.report({"ERROR"}, "The scene has no active camera")
            return {"CANCELLED"}
        run_dir = _abspath(s.run_dir)
        if not run_dir or not os.path.isfile(os.path.join(run_dir, "checkpoints", "latest.pt")):
            self.report({"ERROR"}, f"No trained model in run folder '{run_dir}': train first.")
            return {"CANCELLED"}
        out_dir = render_output_dir(s, cam.name)
        os.makedirs(out_dir, exist_ok=True)
        path_file = os.path.join(out_dir, "camera_path.json")
        try:
            numbers = campath_export.export_camera_path(context, path_file)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        ext = s.render_format
        scene_name, strip_name = scene.name, f"XScale {cam.name}"

        def on_finish(job: jobs.Job) -> None:
            if job.state.status != jobs.DONE:
                return
            target = bpy.data.scenes.get(scene_name)
            if target is None:
                return
            try:
                add_render_strip(target, out_dir, numbers, ext, strip_name)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                job.state.status, job.state.error = jobs.FAILED, str(e)
                job.state.message = job.state.error

        args = ["--run", run_dir, "--path", path_file, "--out", out_dir, "--format", ext,
                "--exposure", s.exposure or "mean"]
        if s.render_supersample > 0:
            args += ["--ss", str(s.render_supersample)]
        args += nproc_arguments(s)
        return _start_backend(self, "render", args, "render", self.wait, on_finish)


class XSCALE_OT_export_path(bpy.types.Operator):
    """Write the scene camera's path over the frame range as a backend camera path JSON"""
    bl_idname = "xscale.export_path"
    bl_label = "Export Camera Path"

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = "camera_path.json"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.filepath:
            self.report({"ERROR"}, "Choose a file")
            return {"CANCELLED"}
        try:
            numbers = campath_export.export_camera_path(context, _abspath(self.filepath))
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(numbers)} frames to {self.filepath}")
        return {"FINISHED"}


# --- cameras ---------------------------------------------------------------------------------

class XSCALE_OT_use_camera(bpy.types.Operator):
    """Make the active camera the scene camera and use its photo's resolution"""
    bl_idname = "xscale.use_camera"
    bl_label = "Look Through Photo Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        ob = context.active_object
        return ob is not None and ob.type == "CAMERA"

    def execute(self, context):
        context.scene.camera = context.active_object
        importer.apply_camera_settings(context.scene, context.active_object)
        space = context.space_data
        if space is not None and space.type == "VIEW_3D":
            space.region_3d.view_perspective = "CAMERA"
        return {"FINISHED"}


# --- backend check ---------------------------------------------------------------------------

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

        job = backend_job("doctor", ["--json"], "doctor", on_finish, expect_events=False).start()
        if bpy.app.background:
            job.wait()
            print("\n".join(preferences.doctor_lines))
            return {"FINISHED"} if job.state.status == jobs.DONE else {"CANCELLED"}

        def tick() -> Optional[float]:
            job.poll()
            redraw_ui()
            return None if job.finished else POLL_INTERVAL_S

        bpy.app.timers.register(tick, first_interval=POLL_INTERVAL_S)
        return {"FINISHED"}


CLASSES = (
    XSCALE_OT_report,
    IMPORT_SCENE_OT_xscale_mvsnet,
    IMPORT_SCENE_OT_xscale_convert,
    XSCALE_OT_train,
    XSCALE_OT_stop,
    XSCALE_OT_render_path,
    XSCALE_OT_export_path,
    XSCALE_OT_use_camera,
    XSCALE_OT_check_backend,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    if bpy.app.timers.is_registered(_ui_tick):
        bpy.app.timers.unregister(_ui_tick)
    job = jobs.active()
    if job is not None and not job.finished:
        job.stop()   # do not leave an orphan trainer behind when the add-on goes away
    jobs.set_active(None)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
