"""Training: streams rays from the cache, L1 loss on sRGB, Adam; atomic checkpoints, exact
resume, clean stop on SIGINT/SIGTERM, progress events.

Phases: `resolve_config` (preset, overrides or the checkpoint's settings), `Trainer` (model,
optimiser, ray stream and training strategy, restored from the checkpoint when resuming; `step`
and `save`), and `train`'s loop (stops, progress, periodic checkpoints).

Several processes (torchrun) share every batch (train_strategy.py): level-parallel
(table_parallel.py: processes of a machine split the hash grid's levels; the default) or data
parallel (grad_reduce.py). Nothing in
a step waits for the GPU on the host; stops and checkpoint times are voted on every few steps
(distributed.HostVote). XSCALE_PROFILE_STEPS=N times the parts of the last N steps (stepprof.py).
XSCALE_COMPILE_DECODER=1 (an experiment, off by default) runs the decoder's training forward and
backward through torch.compile: the same operations, fused into fewer kernels."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext

import torch

from . import distributed, events, schedule, stepprof, train_strategy
from .cache import FIELD_FILE, ShardReader, load_cache_array
from .cameras import Camera
from .checkpoint import DiskFull, load_checkpoint, model_config, model_state, save_atomic, size_text
from .config import (CHECKPOINT_EVERY, TrainConfig, apply_overrides, preset as preset_config, to_dict,
                     train_config_from_dict, with_value)
from .errors import InputError
from .footprint import camera_rows, footprints
from .loader import RayLoader, batch_part
from .model import Manifold
from .runfolder import RunFolder, write_json
from .stopflag import StopFlag


COMPILE_ENV = "XSCALE_COMPILE_DECODER"


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def resolve_config(run: RunFolder, ckpt: dict | None, iters: int | None, preset: str,
                   overrides: dict | None, device: torch.device) -> tuple[TrainConfig, schedule.Plan | None]:
    """The checkpoint's settings when resuming (but the checkpoint interval given now), else the
    preset with the overrides; `iters` wins. Without steps from any of them, the steps (and for a
    small capture the batch) follow the ray cache (schedule.py): the plan is returned too."""
    if ckpt is not None:     # the model as it was trained (settings it predates keep their old values)
        tc = dataclasses.replace(train_config_from_dict(ckpt["train_config"]), model=model_config(ckpt))
        every = (overrides or {}).get(CHECKPOINT_EVERY.name)
        if every is not None:
            tc = with_value(tc, CHECKPOINT_EVERY.path, CHECKPOINT_EVERY.check(every))
    else:
        tc = apply_overrides(preset_config(preset, device.type), overrides or {})
    if iters is not None:
        tc = with_value(tc, "iters", iters)
    if tc.iters is not None:
        return tc, None
    plan = schedule.plan(tc, ShardReader(run.root).rays, batch_given=(overrides or {}).get("batch_rays") is not None)
    return schedule.with_plan(tc, plan), plan


class Trainer:
    """Model, optimiser, ray stream and training strategy (train_strategy.py) of one run."""

    def __init__(self, ctx: distributed.Context, run: RunFolder, tc: TrainConfig, ckpt: dict | None,
                 grid_backend: str = "auto"):
        self.ctx, self.run, self.tc = ctx, run, tc
        dev = ctx.device
        cfg_run = run.settings()
        self.aabb, self.n_views = cfg_run.aabb, len(cfg_run.views)
        torch.manual_seed(tc.seed)
        self.model = Manifold(tc.model, *self.aabb, self.n_views, grid_backend).to(dev)
        # Each ray's footprint comes from its photo's camera (footprint.py); the field of the finest
        # footprints seen travels with the model for rendering.
        self.ss = cfg_run.ss
        self.camera_rows = camera_rows([Camera.from_dict(v["camera"]) for v in cfg_run.views]).to(dev)
        if (run.cache / FIELD_FILE).is_file():
            self.model.field.set(load_cache_array(run.cache / FIELD_FILE))
        if self.model.log_gain is not None:       # the photos whose gains average to one
            self.model.gain_train.zero_()[cfg_run.train_views] = True
        batch = tc.optim.batch_rays
        self.strategy = train_strategy.choose(ctx, self.model, batch, self.ss ** 2)
        groups = self.strategy.param_groups(self.model.param_groups(tc.optim))
        self.base_lrs = [g["lr"] for g in groups]
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.99),
                                    fused=dev.type == "cuda")   # one kernel for the 2 GB table update
        self.step_n = 0
        self.saved_step: int | None = None          # the step of the checkpoint on disk
        loader_state = None
        if ckpt is not None:
            self.model.load_state_dict(model_state(ckpt))
            self.strategy.load_optimizer_state(self.opt, ckpt["optimizer"])
            self.step_n = self.saved_step = ckpt["step"]
            loader_state = ckpt["loader"]
            torch.set_rng_state(ckpt["rng_cpu"].cpu())     # map_location moved it to the device
        self.strategy.start()
        self.loader = RayLoader(run.root, dev, batch, tc.seed, loader_state,
                                part=batch_part(batch, ctx.rank, ctx.world))
        self.model.train()
        if os.environ.get(COMPILE_ENV) == "1":      # measurement aid: what fusing the decoder buys
            self.model.decoder.impl = "torch"       # compile the PyTorch decoder, not the Triton one
            self.model.decoder.forward = torch.compile(self.model.decoder.forward, dynamic=False)

    def step(self, prof: stepprof.StepProfile | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, mse) of the whole batch as device scalars (summed
        over ranks), read only when progress is reported (no per-step host synchronisation).
        `prof` marks the end of each part of the step (stepprof.PARTS)."""
        prof = prof or stepprof.NO_PROFILE
        tc = self.tc
        frac = self.step_n / max(1, tc.iters)
        for g, lr0 in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr0 * tc.optim.lr_final_ratio ** frac
        b = self.loader.next()
        prof.mark("load")
        fp = footprints(b["xyz"], self.camera_rows[b["view"]], self.ss)
        feat = self.strategy.features(b["xyz"], b["mask"], fp, prof)
        pred = self.model(b["xyz"], b["mask"], b["dir"], view=b["view"], footprint=fp, feat=feat)
        err = pred - b["rgb"]
        share = len(pred) / tc.optim.batch_rays     # this rank's part of the global mean (1 alone)
        loss = err.abs().mean() * share
        prof.mark("decoder_fwd")
        self.opt.zero_grad(set_to_none=True)
        self.strategy.backward(loss, prof)
        stats = self.strategy.reduce(torch.stack([loss.detach(), (err.detach() ** 2).mean() * share]))
        prof.mark("reduce")
        self.strategy.regularise(tc.optim)
        prof.mark("regularise")
        self.opt.step()
        prof.mark("adam")
        self.step_n += 1
        return stats[0], stats[1]

    def save(self) -> None:
        """Rank 0 writes the checkpoint (one-process layout). Every rank calls this after the same
        step (level parallel: the owners of the levels send them to rank 0 first). InputError
        (DiskFull on a full disk) saying which checkpoint is kept when the file cannot be written."""
        opt_state = self.strategy.optimizer_state(self.opt)
        if not self.ctx.main:     # one writer; every rank holds the same state
            return
        try:
            save_atomic({"model": self.model.state_dict(), "optimizer": opt_state,
                         "step": self.step_n, "loader": self.loader.state(), "train_config": to_dict(self.tc),
                         "model_config": to_dict(self.tc.model), "aabb": self.aabb, "n_views": self.n_views,
                         "rng_cpu": torch.get_rng_state()}, self.run.latest)
        except InputError as e:
            kept = ("no checkpoint was saved yet" if self.saved_step is None else
                    f"the last good checkpoint (step {self.saved_step}) is kept")
            fix = (f"free at least {size_text(e.need - e.free)} there" if isinstance(e, DiskFull) else
                   "check that its folder can be written")
            e.args = (f"{e}; {kept}; {fix}",)
            raise
        self.saved_step = self.step_n


def refuse_to_replace(run: RunFolder, overwrite: bool) -> None:
    """A trained run folder is only started over on request (--overwrite): InputError otherwise."""
    if run.latest.is_file() and not overwrite:
        raise InputError(f"{run.root}: this run folder already holds a trained model ({run.latest}); "
                         "continue its training with --resume, or start over with --overwrite "
                         "(replaces the checkpoint).")


def train(run_dir: str, iters: int | None = None, resume: bool = False, device: str = "auto",
          preset: str = "auto", overrides: dict | None = None, stop_at: int | None = None,
          grid_backend: str = "auto", overwrite: bool = False) -> dict:
    """Train to `iters` steps (or resume to it). `overrides`: TRAIN_OPTIONS values by name (see
    backend.config). `stop_at` ends the run early at that step exactly as a requested stop does
    (checkpoint, `stopped` event), leaving the schedule of `iters` intact. A run folder that
    already holds a checkpoint is refused unless `resume` or `overwrite` says what to do with it."""
    ctx = distributed.setup(device)     # one process, or this rank's place under torchrun
    run = RunFolder(run_dir)
    run.settings()                      # a complete ray cache, before anything is written
    if not resume:
        refuse_to_replace(run, overwrite)
    with run.exclusive("training") if ctx.main else nullcontext():
        ckpt = None
        if resume:
            if not run.latest.is_file():
                raise InputError(f"{run.latest}: nothing to resume; start without --resume.")
            ckpt = load_checkpoint(run, ctx.device)
        elif ctx.main:
            run.latest.unlink(missing_ok=True)      # --overwrite: no stale model next to new settings
        tc, plan = resolve_config(run, ckpt, iters, preset, overrides, ctx.device)
        if plan is not None and ctx.main:
            events.log(plan.describe(len(run.settings().train_views)))
        if ckpt is not None and ctx.main:           # a kill loses the steps after the last checkpoint
            events.log(f"resuming training at step {ckpt['step']} of {tc.iters} (the last checkpoint)")
        if tc.optim.batch_rays < ctx.world:
            raise InputError(f"--batch-rays {tc.optim.batch_rays}: fewer rays than the {ctx.world} "
                             "processes; raise --batch-rays or use fewer processes.")
        if ctx.main:
            write_json(run.train_config, to_dict(tc))
        return _loop(Trainer(ctx, run, tc, ckpt, grid_backend), stop_at)


def _loop(t: Trainer, stop_at: int | None) -> dict:
    tc = t.tc
    main = t.ctx.main
    start = t.step_n
    prog = events.Progress("train", tc.iters, start_step=start)
    if main and t.ctx.world > 1:
        events.log(f"training on {t.ctx.world} processes ({t.strategy.mode})")
    end = tc.iters if stop_at is None else min(tc.iters, max(stop_at, t.step_n))
    prof = stepprof.StepProfile(t.ctx.device, stepprof.requested(), t.step_n, end)
    vote = distributed.HostVote()
    last_save = time.monotonic()
    n_rays, t_mark, wait_mark = 0, time.monotonic(), 0.0
    loss_v = psnr_v = float("nan")
    try:
        with StopFlag() as flag:
            while t.step_n < tc.iters:
                prof.begin(t.step_n)
                # Rank 0's clock decides checkpoint times; all ranks save after the same step.
                save_due = main and time.monotonic() - last_save > tc.checkpoint_every_s
                stop, save = vote(t.step_n, flag.stop, save_due)
                prof.mark("vote")
                if stop or (stop_at is not None and t.step_n >= stop_at):
                    vote.close()
                    _save_last(t)
                    events.emit("stopped", stage="train", step=t.step_n, total=tc.iters,
                                checkpoint=str(t.run.latest), **_profile_fields(t, prof))
                    return {"step": t.step_n, "stopped": True}
                if save:
                    try:
                        t.save()
                    except InputError as e:     # a full disk, say: the last good checkpoint stays
                        events.log(f"warning: {e}. Training goes on and saves again in "
                                   f"{tc.checkpoint_every_s:g} s.")
                    last_save = time.monotonic()
                loss, mse = t.step(prof)
                n_rays += tc.optim.batch_rays
                now = time.monotonic()
                if main and (now - prog.last >= prog.every_s or t.step_n == tc.iters):
                    loss_v, psnr_v = float(loss), psnr_from_mse(float(mse))
                    rate = n_rays / max(now - t_mark, 1e-9)
                    wait = (t.loader.wait_s - wait_mark) / max(now - t_mark, 1e-9)
                    n_rays, t_mark, wait_mark = 0, now, t.loader.wait_s
                    prog.update(t.step_n, loss=loss_v, psnr=psnr_v, rays_per_s=rate, load_wait=wait)
                prof.mark("events")
                prof.end_step()
        vote.close()
        _save_last(t)
        events.emit("done", stage="train", step=t.step_n, start_step=start, loss=loss_v, psnr=psnr_v,
                    checkpoint=str(t.run.latest), **_profile_fields(t, prof))
        return {"step": t.step_n, "loss": loss_v, "psnr": psnr_v}
    finally:
        t.loader.close()


def _save_last(t: Trainer) -> None:
    """The checkpoint at the end or at a stop: an error that ends the command when it fails."""
    try:
        t.save()
    except InputError as e:
        e.args = (f"{e}, then " + ("continue with --resume." if t.saved_step is not None else "train again."),)
        raise


def _profile_fields(t: Trainer, prof: stepprof.StepProfile) -> dict:
    """With XSCALE_PROFILE_STEPS: every rank's step profile to rank 0 (a collective), written to
    RUN/profile.json; the done event's `profile` field (mean ms per step and part)."""
    if not prof.enabled:
        return {}
    mine = dict(prof.summary(), rank=t.ctx.rank, mode=t.strategy.mode, loader=t.loader.stats())
    combined = stepprof.combine(distributed.gather_objects(mine))
    if not t.ctx.main:
        return {}
    combined.update(mode=t.strategy.mode, batch_rays=t.tc.optim.batch_rays, ss=t.ss)
    write_json(t.run.root / "profile.json", combined)
    return {"profile": {k: round(v, 4) for k, v in combined["mean_ms"].items()},
            "profile_step_ms": combined["step_ms_mean"]}
