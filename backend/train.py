"""Training: streams rays from the cache, L1 loss on sRGB, Adam; atomic checkpoints, exact
resume, clean stop on SIGINT/SIGTERM, progress events.

Phases: `resolve_config` (preset, overrides or the checkpoint's settings), `Trainer` (model,
optimiser, ray stream and reducer, restored from the checkpoint when resuming; `step` and
`save`), and `train`'s loop (stops, progress, periodic checkpoints)."""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext

import numpy as np
import torch

from . import distributed, events
from .cache import FIELD_FILE
from .cameras import Camera
from .checkpoint import load_checkpoint, model_config, model_state, save_atomic
from .config import TrainConfig, apply_overrides, preset as preset_config, to_dict, train_config_from_dict, with_value
from .errors import InputError
from .footprint import camera_rows, footprints
from .grad_reduce import GradReducer
from .loader import RayLoader, batch_part
from .model import Manifold
from .runfolder import RunFolder, write_json
from .stopflag import StopFlag


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def resolve_config(run: RunFolder, ckpt: dict | None, iters: int | None, preset: str,
                   overrides: dict | None, device: torch.device) -> TrainConfig:
    """The checkpoint's settings when resuming, else the preset with the overrides; `iters` wins."""
    if ckpt is not None:     # the model as it was trained (settings it predates keep their old values)
        tc = dataclasses.replace(train_config_from_dict(ckpt["train_config"]), model=model_config(ckpt))
    else:
        tc = apply_overrides(preset_config(preset, device.type), overrides or {})
    return with_value(tc, "iters", iters) if iters is not None else tc


class Trainer:
    """Model, optimiser, ray stream and (several processes) gradient reducer of one run."""

    def __init__(self, ctx: distributed.Context, run: RunFolder, tc: TrainConfig, ckpt: dict | None,
                 grid_backend: str = "auto"):
        self.ctx, self.run, self.tc = ctx, run, tc
        dev = ctx.device
        cfg_run = run.read_config()
        self.aabb, self.n_views = cfg_run["aabb"], len(cfg_run["views"])
        torch.manual_seed(tc.seed)
        self.model = Manifold(tc.model, *self.aabb, self.n_views, grid_backend).to(dev)
        # Each ray's footprint comes from its photo's camera (footprint.py); the field of the finest
        # footprints seen travels with the model for rendering.
        self.ss = cfg_run["ss"]
        self.camera_rows = camera_rows([Camera.from_dict(v["camera"]) for v in cfg_run["views"]]).to(dev)
        if (run.cache / FIELD_FILE).is_file():
            self.model.field.set(np.load(run.cache / FIELD_FILE))
        if self.model.log_gain is not None:       # the photos whose gains average to one
            self.model.gain_train.zero_()[cfg_run["train_views"]] = True
        groups = self.model.param_groups(tc.optim)
        self.base_lrs = [g["lr"] for g in groups]
        self.opt = torch.optim.Adam(groups, betas=(0.9, 0.99),
                                    fused=dev.type == "cuda")   # one kernel for the 2 GB table update
        self.step_n = 0
        loader_state = None
        if ckpt is not None:
            self.model.load_state_dict(model_state(ckpt))
            self.opt.load_state_dict(ckpt["optimizer"])
            self.step_n = ckpt["step"]
            loader_state = ckpt["loader"]
            torch.set_rng_state(ckpt["rng_cpu"].cpu())     # map_location moved it to the device
        self.reducer = None
        if ctx.world > 1:
            distributed.broadcast_module(self.model)
            self.reducer = GradReducer(groups[0]["params"][0], [p for g in groups[1:] for p in g["params"]])
        batch = tc.optim.batch_rays
        self.loader = RayLoader(run.root, dev, batch, tc.seed, loader_state,
                                part=batch_part(batch, ctx.rank, ctx.world))
        self.model.train()

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, mse) of the whole batch as device scalars (summed
        over ranks), read only when progress is reported (no per-step host synchronisation)."""
        tc = self.tc
        frac = self.step_n / max(1, tc.iters)
        for g, lr0 in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = lr0 * tc.optim.lr_final_ratio ** frac
        b = self.loader.next()
        fp = footprints(b["xyz"], self.camera_rows[b["view"]], self.ss)
        pred = self.model(b["xyz"], b["mask"], b["dir"], view=b["view"], footprint=fp)
        err = pred - b["rgb"]
        share = len(pred) / tc.optim.batch_rays     # this rank's part of the global mean (1 alone)
        loss = err.abs().mean() * share
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        stats = torch.stack([loss.detach(), (err.detach() ** 2).mean() * share])
        if self.reducer is not None:      # sum of the ranks' gradients = the whole batch's gradient
            stats = self.reducer(stats)
        self.model.add_regulariser_grads(tc.optim)
        self.opt.step()
        self.step_n += 1
        return stats[0], stats[1]

    def save(self) -> None:
        if not self.ctx.main:     # one writer; every rank holds the same state
            return
        save_atomic({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "step": self.step_n, "loader": self.loader.state(), "train_config": to_dict(self.tc),
                     "model_config": to_dict(self.tc.model), "aabb": self.aabb, "n_views": self.n_views,
                     "rng_cpu": torch.get_rng_state()}, self.run.latest)


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
    run.read_config()                   # a complete ray cache, before anything is written
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
        tc = resolve_config(run, ckpt, iters, preset, overrides, ctx.device)
        if tc.optim.batch_rays < ctx.world:
            raise InputError(f"--batch-rays {tc.optim.batch_rays}: fewer rays than the {ctx.world} "
                             "processes; raise --batch-rays or use fewer processes.")
        if ctx.main:
            write_json(run.train_config, to_dict(tc))
        return _loop(Trainer(ctx, run, tc, ckpt, grid_backend), stop_at)


def _loop(t: Trainer, stop_at: int | None) -> dict:
    tc = t.tc
    prog = events.Progress("train", tc.iters, start_step=t.step_n)
    last_save = time.monotonic()
    n_rays, t_mark, wait_mark = 0, time.monotonic(), 0.0
    loss_v = psnr_v = float("nan")
    with StopFlag() as flag:
        while t.step_n < tc.iters:
            if distributed.any_rank(flag.stop) or (stop_at is not None and t.step_n >= stop_at):
                t.save()
                events.emit("stopped", stage="train", step=t.step_n, total=tc.iters,
                            checkpoint=str(t.run.latest))
                return {"step": t.step_n, "stopped": True}
            loss, mse = t.step()
            n_rays += tc.optim.batch_rays
            now = time.monotonic()
            if now - prog.last >= prog.every_s or t.step_n == tc.iters:
                loss_v, psnr_v = float(loss), psnr_from_mse(float(mse))
                rate = n_rays / max(now - t_mark, 1e-9)
                wait = (t.loader.wait_s - wait_mark) / max(now - t_mark, 1e-9)
                n_rays, t_mark, wait_mark = 0, now, t.loader.wait_s
                prog.update(t.step_n, loss=loss_v, psnr=psnr_v, rays_per_s=rate, load_wait=wait)
            if now - last_save > tc.checkpoint_every_s:
                t.save()
                last_save = now
    t.save()
    events.emit("done", stage="train", step=t.step_n, loss=loss_v, psnr=psnr_v, checkpoint=str(t.run.latest))
    return {"step": t.step_n, "loss": loss_v, "psnr": psnr_v}
