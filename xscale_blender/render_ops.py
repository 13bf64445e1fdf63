"""Rendering: the scene camera's path over the frame range through `backend render`, the frames as
a sequencer strip, the camera path JSON alone, and looking through an imported photo's camera."""

import os
import re

import bpy
from bpy.props import BoolProperty, StringProperty

from . import campath_export, importer, job_runner, jobs, sequencer
from .backend_link import campath
from .properties import abspath, option_arguments, run_folder

# Scene settings passed to `backend render` as their backend options (properties.SCENE_OPTIONS).
RENDER_SETTINGS = ("render_format", "exposure", "render_supersample")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "camera"


def render_output_dir(s, camera_name: str) -> str:
    """The Output Folder setting, else RUN/renders/CAMERA."""
    if s.render_dir:
        return abspath(s.render_dir)
    run = run_folder(s)
    if run is None:
        raise ValueError("set a run folder or an output folder in the XScale panel")
    return str(run.renders / _safe_name(camera_name))


def add_render_strip(scene: "bpy.types.Scene", out_dir: str, numbers: list[int], fmt: str, name: str):
    """Sequencer strip for the rendered frames of output format `fmt` (a key of config.FORMATS),
    at the path's first frame unless configured."""
    s = scene.xscale
    files = [campath.frame_filename(n, fmt) for n in numbers]
    missing = [f for f in files if not os.path.isfile(os.path.join(out_dir, f))]
    if missing:
        raise FileNotFoundError(f"the backend did not write {len(missing)} frame(s), "
                                f"e.g. {os.path.join(out_dir, missing[0])}")
    start = numbers[0] if s.strip_use_path_start else s.strip_frame_start
    return sequencer.add_image_strip(scene, out_dir, files, name=name, channel=s.strip_channel,
                                     frame_start=start, fmt=fmt)


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
        run = run_folder(s)
        if run is None or not run.latest.is_file():
            self.report({"ERROR"}, f"No trained model in run folder '{run.root if run else ''}': train first.")
            return {"CANCELLED"}
        out_dir = render_output_dir(s, cam.name)
        os.makedirs(out_dir, exist_ok=True)
        path_file = os.path.join(out_dir, "camera_path.json")
        try:
            numbers = campath_export.export_camera_path(context, path_file)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        fmt = s.render_format
        scene_name, strip_name = scene.name, f"XScale {cam.name}"

        def on_finish(job: jobs.Job) -> None:
            if job.state.status != jobs.DONE:
                return
            target = bpy.data.scenes.get(scene_name)
            if target is None:
                return
            try:
                add_render_strip(target, out_dir, numbers, fmt, strip_name)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                job.state.status, job.state.error = jobs.FAILED, str(e)
                job.state.message = job.state.error

        args = ["--run", str(run.root), "--path", path_file, "--out", out_dir]
        args += option_arguments(s, RENDER_SETTINGS) + job_runner.nproc_arguments(s)
        return job_runner.start_backend(self, "render", args, "render", self.wait, on_finish)


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
            numbers = campath_export.export_camera_path(context, abspath(self.filepath))
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(numbers)} frames to {self.filepath}")
        return {"FINISHED"}


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


CLASSES = (XSCALE_OT_render_path, XSCALE_OT_export_path, XSCALE_OT_use_camera)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
