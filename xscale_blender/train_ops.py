"""Training: `backend fit` (the ray cache when needed, then training) from the scene settings, and
Resume from the run folder's last checkpoint. Stop is job_runner's (it stops any job)."""

import os

import bpy
from bpy.props import BoolProperty

from . import job_runner
from .properties import abspath, option_arguments, run_folder

# Scene settings passed to `backend fit` as their backend options (properties.SCENE_OPTIONS).
FIT_SETTINGS = ("supersample", "test_every", "level", "device", "preset", "iterations")


def fit_arguments(s, resume: bool) -> list[str]:
    """`backend fit` options from the scene settings (docs/protocol.md)."""
    args = ["--scene", abspath(s.scene_dir), "--run", abspath(s.run_dir)]
    if s.mesh_path:
        args += ["--mesh", abspath(s.mesh_path)]
    args += option_arguments(s, FIT_SETTINGS)
    if resume:
        args.append("--resume")
    return args + job_runner.nproc_arguments(s)


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
        scene_dir, run = abspath(s.scene_dir), run_folder(s)
        if not scene_dir or not os.path.isdir(scene_dir):
            self.report({"ERROR"}, f"Scene folder not found: '{scene_dir}'. Import a scene or set it in the XScale panel.")
            return {"CANCELLED"}
        if run is None:
            self.report({"ERROR"}, "Set a run folder in the XScale panel.")
            return {"CANCELLED"}
        if self.resume and not run.latest.is_file():
            self.report({"ERROR"}, f"Nothing to resume: no checkpoint in {run.root}. Use Cache + Train.")
            return {"CANCELLED"}
        run.root.mkdir(parents=True, exist_ok=True)
        label = "resume" if self.resume else "train"
        return job_runner.start_backend(self, "fit", fit_arguments(s, self.resume), label, self.wait)


CLASSES = (XSCALE_OT_train,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
