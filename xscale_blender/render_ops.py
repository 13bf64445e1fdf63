"""Rendering: the scene camera's path over the frame range through `backend render`, the frames as
a sequencer strip, the camera path JSON alone, and looking through an imported photo's camera.

Render farms (Flamenco, Deadline, SLURM arrays) split a shot into frame ranges, one `blender -b`
per chunk: *Render Camera Path* renders only its range (`frame_start`/`frame_end`, else the
scene's, which `blender -s/-e` set), can skip frames already on disk (`skip_existing`: a
re-queued chunk resumes), and leaves the sequencer alone when asked (`add_strip=False`): chunks
share the output folder, each frame file is written atomically and named by its number. Once
every chunk is done, *Assemble Strip* checks that every frame exists and adds the strip.
"""

import os
import re

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import campath_export, importer, job_runner, sequencer
from .backend_link import campath
from .core import jobs
from .properties import abspath, option_arguments, run_folder
from .reporting import refuse

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


def chunk_frames(scene: "bpy.types.Scene", start: int | None = None, end: int | None = None) -> list[int]:
    """Frames from `start` to `end` (default: the scene's range) at the scene's frame step."""
    start = scene.frame_start if start is None else start
    end = scene.frame_end if end is None else end
    return list(range(start, end + 1, max(scene.frame_step, 1)))


def operator_frames(op: "bpy.types.Operator", scene: "bpy.types.Scene") -> list[int]:
    """chunk_frames over the operator's frame_start/frame_end where they were given."""
    props = op.properties
    return chunk_frames(scene, op.frame_start if props.is_property_set("frame_start") else None,
                        op.frame_end if props.is_property_set("frame_end") else None)


def missing_frames(out_dir: str, numbers: list[int], fmt: str) -> list[int]:
    """The frames of `numbers` whose file (format `fmt`) is not in `out_dir`."""
    return [n for n in numbers if not os.path.isfile(os.path.join(out_dir, campath.frame_filename(n, fmt)))]


def frame_ranges(numbers: list[int], limit: int = 8) -> str:
    """"1-4, 7, 9-12" (the first `limit` runs of consecutive numbers, then "...")."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")


def add_render_strip(scene: "bpy.types.Scene", out_dir: str, numbers: list[int], fmt: str, name: str) -> str:
    """Sequencer strip for the rendered frames of output format `fmt` (a key of config.FORMATS),
    in the strip scene (sequencer.strip_scene, never by default the rendering scene: its F12 would
    render the strip), at the path's first frame unless configured. Returns where it went, in
    words. FileNotFoundError names the missing frames."""
    s = scene.xscale
    files = [campath.frame_filename(n, fmt) for n in numbers]
    missing = missing_frames(out_dir, numbers, fmt)
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(numbers)} frame(s) missing in {out_dir}: "
                                f"{frame_ranges(missing)}")
    target = sequencer.strip_scene(scene)
    moved = target is not scene and sequencer.remove_strip(scene, name)    # an older render's strip
    start = numbers[0] if s.strip_use_path_start else s.strip_frame_start
    strip = sequencer.add_image_strip(target, out_dir, files, name=name, channel=s.strip_channel,
                                      frame_start=start, fmt=fmt)
    if target.get(sequencer.P_STRIPS_OF) == scene:
        sequencer.cover_strips(target)
    return strip_place(strip, target, scene, moved)


def strip_place(strip, target: "bpy.types.Scene", scene: "bpy.types.Scene", moved: bool = False) -> str:
    """Where a strip went and what that means for F12, in words."""
    what = (f"strip '{strip.name}' (frames {strip.frame_final_start}-{strip.frame_final_end - 1}, "
            f"channel {strip.channel})")
    if target is scene:
        return (f"{what} is in this scene's sequencer: F12 and Ctrl-F12 here render the strip, not the "
                "model (Strip Scene in the XScale tab changes that)")
    text = f"{what} is in scene '{target.name}': switch to it to play the frames; F12 here renders the model"
    return text + (f" (moved out of the sequencer of '{scene.name}')" if moved else "")


class XSCALE_OT_render_path(bpy.types.Operator):
    """Render the scene camera over the frame range with the trained model and add the frames to the sequencer of the Strip Scene"""
    bl_idname = "xscale.render_path"
    bl_label = "Render Camera Path"

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until rendering ends (always on in background mode)")
    frame_start: IntProperty(name="First Frame", options={"SKIP_SAVE"},
                             description="First frame to render (default: the scene's start frame, "
                                         "which blender -s sets)")
    frame_end: IntProperty(name="Last Frame", options={"SKIP_SAVE"},
                           description="Last frame to render (default: the scene's end frame, which "
                                       "blender -e sets)")
    skip_existing: BoolProperty(name="Skip Existing", default=False, options={"SKIP_SAVE"},
                                description="Render only frames whose file is not in the output folder "
                                            "yet (a re-run render farm chunk resumes)")
    add_strip: BoolProperty(name="Add Strip", default=True, options={"SKIP_SAVE"},
                            description="Add the frames to the sequencer when done (off for render farm "
                                        "chunks: run Assemble Strip once all chunks are done)")

    def execute(self, context):
        scene = context.scene
        s = scene.xscale
        cam = scene.camera
        if cam is None:
            return refuse(self, "The scene has no active camera")
        run = run_folder(s)
        if run is None or not run.latest.is_file():
            return refuse(self, f"No trained model in run folder '{run.root if run else ''}': train first.")
        frames = operator_frames(self, scene)
        if not frames:
            return refuse(self, "The frame range is empty")
        fmt = s.render_format
        out_dir = render_output_dir(s, cam.name)
        os.makedirs(out_dir, exist_ok=True)
        todo = missing_frames(out_dir, frames, fmt) if self.skip_existing else frames
        scene_name, strip_name = scene.name, f"XScale {cam.name}"
        add_strip = self.add_strip

        def finish_strip(target) -> str:
            return add_render_strip(target, out_dir, frames, fmt, strip_name) if add_strip else ""

        if not todo:
            try:
                place = finish_strip(scene)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                return refuse(self, str(e))
            self.report({"INFO"}, f"XScale: all {len(frames)} frames exist in {out_dir}" + (f"; {place}" if place else ""))
            return {"FINISHED"}
        # One path file per frame range: chunks of a render farm share the output folder.
        path_file = os.path.join(out_dir, f"camera_path_{frames[0]:06d}-{frames[-1]:06d}.json")
        try:
            campath_export.export_camera_path(context, path_file, todo)
        except ValueError as e:
            return refuse(self, str(e))

        def on_finish(job: jobs.Job) -> None:
            if job.state.status != jobs.DONE:
                return
            target = bpy.data.scenes.get(scene_name)
            if target is None:
                return
            try:
                job.state.outcome = finish_strip(target)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                job.state.status, job.state.error = jobs.FAILED, str(e)
                job.state.message = job.state.error

        args = ["--run", str(run.root), "--path", path_file, "--out", out_dir]
        args += option_arguments(s, RENDER_SETTINGS) + job_runner.nproc_arguments(s)
        return job_runner.start_backend(self, "render", args, "render", self.wait, on_finish)


class XSCALE_OT_assemble_strip(bpy.types.Operator):
    """Add the scene camera's rendered frames to the Strip Scene's sequencer once every frame of the range exists (after render farm chunks)"""
    bl_idname = "xscale.assemble_strip"
    bl_label = "Assemble Strip"

    frame_start: IntProperty(name="First Frame", options={"SKIP_SAVE"},
                             description="First frame of the strip (default: the scene's start frame)")
    frame_end: IntProperty(name="Last Frame", options={"SKIP_SAVE"},
                           description="Last frame of the strip (default: the scene's end frame)")

    def execute(self, context):
        scene = context.scene
        s = scene.xscale
        cam = scene.camera
        if cam is None:
            return refuse(self, "The scene has no active camera")
        frames = operator_frames(self, scene)
        if not frames:
            return refuse(self, "The frame range is empty")
        try:
            out_dir = render_output_dir(s, cam.name)
            place = add_render_strip(scene, out_dir, frames, s.render_format, f"XScale {cam.name}")
        except (FileNotFoundError, ValueError) as e:
            return refuse(self, str(e))
        self.report({"INFO"}, f"XScale: {len(frames)} frames from {out_dir}: {place}")
        return {"FINISHED"}


class XSCALE_OT_export_path(ExportHelper, bpy.types.Operator):
    """Write the scene camera's path over the frame range as a backend camera path JSON"""
    bl_idname = "xscale.export_path"
    bl_label = "Export Camera Path"

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = "camera_path.json"      # ExportHelper would name it after the .blend
        return super().invoke(context, event)

    def execute(self, context):
        if not self.filepath:
            return refuse(self, "Choose a file")
        try:
            numbers = campath_export.export_camera_path(context, abspath(self.filepath))
        except ValueError as e:
            return refuse(self, str(e))
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


CLASSES = (XSCALE_OT_render_path, XSCALE_OT_assemble_strip, XSCALE_OT_export_path, XSCALE_OT_use_camera)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
