"""`fit`: the ray cache (unless it is up to date), then training. The CLI's `fit` and the demo
both call `fit()`; under torchrun rank 0 builds the cache while the other ranks wait.

A stop (SIGTERM/SIGINT, or the reader of the events gone) during the cache ends the command
with a `stopped` event of stage cache; `fit` or `fit --resume` then continues the cache after
its last complete view and goes on to training."""
from __future__ import annotations

from . import distributed, events
from .cache import CacheBuild, cache_matches
from .config import SS, TEST_EVERY
from .errors import InputError
from .runfolder import RunFolder, same_path
from .stopflag import StopFlag
from .train import refuse_to_replace, train


def fit(scene: str, run: str, *, mesh: str | None = None, level: int | None = None, ss: int = SS.default,
        test_every: int = TEST_EVERY.default, iters: int | None = None, resume: bool = False,
        overwrite: bool = False, device: str = "auto", preset: str = "auto", overrides: dict | None = None,
        grid_backend: str = "auto", stop_at: int | None = None) -> dict:
    """Cache SCENE into RUN, then train (see backend.train.train).

    Without `resume`: the cache is skipped when RUN holds a complete cache of the same inputs and
    settings (an interrupted one is continued), and a run that already holds a trained model, or
    belongs to another scene, is refused unless `overwrite`. With `resume`: RUN's complete cache
    (of SCENE) is used as it is (an interrupted or missing one is built, continuing where it
    stopped), then training continues from the checkpoint, or starts when there is none yet."""
    ctx = distributed.setup(device)
    folder = RunFolder(run)
    with StopFlag():                    # a stop between the cache and training is seen by training
        stopped = False
        if ctx.main:
            stopped = _cache_step(folder, scene, mesh, level, ss, test_every, device, resume, overwrite)
        distributed.barrier()
        if distributed.any_rank(stopped):
            return {"stopped": True, "stage": "cache"}
        resume_training = resume and folder.latest.is_file()
        if resume and not resume_training:
            events.log("no checkpoint in the run folder yet: training starts")
        return train(run, iters, resume_training, device, preset, overrides, stop_at, grid_backend,
                     overwrite=overwrite)


def _cache_step(folder: RunFolder, scene, mesh, level, ss, test_every, device, resume, overwrite) -> bool:
    """Build (or continue) the ray cache when it is needed; True when a stop ended it early."""
    if resume and _complete_cache(folder):
        owner = folder.owner()
        if owner and not same_path(owner, scene):
            raise folder.other_scene(owner, scene, f"or continue this one with --scene {owner}")
        events.log("using the run folder's ray cache")
        return False
    if not resume and cache_matches(str(folder.root), scene, ss, test_every, level, mesh):
        events.log("ray cache is up to date; skipping the cache step")
        return False
    build = CacheBuild(scene, str(folder.root), mesh, level, ss, test_every, device)   # checks the inputs
    build.check_run_folder(overwrite)       # not a run folder, another scene's, a trained one's cache changed
    if not resume:
        refuse_to_replace(folder, overwrite)            # before the cache of a trained run is replaced
    return bool(build.build(overwrite).get("stopped"))


def _complete_cache(folder: RunFolder) -> bool:
    try:
        folder.settings()
    except InputError:
        return False
    return True
