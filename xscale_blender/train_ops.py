"""Training: `backend fit` (the ray cache when needed, then training) from the scene settings, and
Resume (`fit --resume`: a stopped ray cache, then training from the last checkpoint). Cache + Train
on a run folder that holds a trained model asks before starting over (`--overwrite`); from a
script pass `overwrite=True`. Stop is job_runner's (it stops any job)."""

import os

import bpy
from bpy.props import BoolProperty

from . import job_runner
from .backend_link import RunFolder
from .properties import abspath, option_arguments, run_folder
from .reporting import refuse

# Scene settings passed to `backend fit` as their backend options (properties.SCENE_OPTIONS).
FIT_SETTINGS = ("supersample", "test_every", "level", "device", "preset", "iterations", "checkpoint_every")


def fit_arguments(s, resume: bool, overwrite: bool = False) -> list[str]:
    """`backend fit` options from the scene settings (docs/protocol.md)."""
    args = ["--scene", abspath(s.scene_dir), "--run", abspath(s.run_dir)]
    if s.mesh_path:
        args += ["--mesh", abspath(s.mesh_path)]
    args += option_arguments(s, FIT_SETTINGS)
    if resume:
        args.append("--resume")
    elif overwrite:
        args.append("--overwrite")
    return args + job_runner.nproc_arguments(s)


def trained(run: RunFolder) -> bool:
    """The run folder holds a trained model (`fit` without --resume refuses it unless --overwrite)."""
    return run.latest.is_file()


def resumable(run: RunFolder) -> bool:
    """Something for `fit --resume` to continue: a checkpoint, a ray cache, or a stopped one."""
    return (trained(run) or (run.cache / "meta.json").is_file()
            or (run.root / "cache.tmp" / "progress.json").is_file())


class XSCALE_OT_train(bpy.types.Operator):
    """Build the ray cache (when needed) and train; runs in the background"""
    bl_idname = "xscale.train"
    bl_label = "Cache + Train"

    resume: BoolProperty(name="Resume", default=False,
                         description="Continue the run: its stopped ray cache, then training from its "
                                     "last checkpoint")
    overwrite: BoolProperty(name="Start Over", default=False, options={"SKIP_SAVE"},
                            description="Replace the run folder's trained model (backend --overwrite). "
                                        "Without it, Cache + Train on a trained run folder is refused; in "
                                        "the UI the button asks first")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until training ends (always on in background mode)")

    @classmethod
    def description(cls, context, props):
        return ("Continue the run folder's stopped ray cache, then its training from the last checkpoint"
                if props.resume else cls.__doc__)

    def invoke(self, context, event):
        run = run_folder(context.scene.xscale)
        if not self.resume and not self.overwrite and run is not None and trained(run):
            self.overwrite = True      # used only when the user confirms
            return context.window_manager.invoke_confirm(
                self, event, title="Start Training Over?", confirm_text="Start Over", icon="WARNING",
                message=f"{run.root.name} already holds a trained model. Cache + Train replaces it "
                        "(Resume continues it).")
        return self.execute(context)

    def execute(self, context):
        s = context.scene.xscale
        scene_dir, run = abspath(s.scene_dir), run_folder(s)
        if not scene_dir or not os.path.isdir(scene_dir):
            return refuse(self, f"Scene folder not found: '{scene_dir}'. Import a scene or set it in the XScale panel.")
        if run is None:
            return refuse(self, "Set a run folder in the XScale panel.")
        if self.resume and not resumable(run):
            return refuse(self, f"Nothing to resume in {run.root}: no checkpoint and no ray cache yet. "
                                "Use Cache + Train.")
        if not self.resume and not self.overwrite and trained(run):
            return refuse(self, f"{run.root} already holds a trained model: Resume continues it; to start "
                                "over (replacing it) confirm Cache + Train, or from a script call "
                                "bpy.ops.xscale.train(overwrite=True).")
        run.root.mkdir(parents=True, exist_ok=True)
        label = "resume" if self.resume else "train"
        args = fit_arguments(s, self.resume, overwrite=self.overwrite and not self.resume)
        return job_runner.start_backend(self, "fit", args, label, self.wait)


CLASSES = (XSCALE_OT_train,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
