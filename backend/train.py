"""Training loop: streams rays from the cache, L1 loss on sRGB, Adam; atomic checkpoints,
exact resume, clean stop on SIGINT/SIGTERM, progress events."""
from __future__ import annotations

import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, asdict

import numpy as np
import torch

from . import distributed, events
from .checkpoint import load_checkpoint, save_atomic
from .errors import InputError
from .hashgrid import HashGridConfig
from .model import Manifold, ModelConfig, unpack_mask
from .cache import ShardReader
from .runfolder import RunFolder, write_json


@dataclass
class TrainConfig:
    iters: int = 30000
    batch_rays: int = 32 * 49152        # reference: 32 views x 49,152 rays
    lr: float = 2e-4                    # decoder and codes (reference)
    grid_lr: float = 1e-2               # hash table (Instant-NGP's rate; 2e-4 barely moves 1e-4-sized entries)
    lr_final_ratio: float = 0.1         # exponential decay to this fraction at the last step
    seed: int = 0
    checkpoint_every_s: float = 120.0
    log2_table: int = 22
    n_levels: int = 16
    n_features: int = 8
    base_res: int = 16
    per_level_scale: float = 2.0 ** (9 / 16)

    @classmethod
    def preset(cls, name: str, device: torch.device) -> "TrainConfig":
        if name == "auto":
            name = "reference" if device.type == "cuda" else "small"
        if name == "reference":
            return cls()
        if name == "small":        # CPU-sized: fits in seconds-to-minutes on two cores
            return cls(iters=600, batch_rays=4096, log2_table=17, lr=1e-3, grid_lr=1e-2)
        raise InputError(f"--preset {name}: unknown preset (choose reference, small or auto).")

    def model_config(self) -> ModelConfig:
        return ModelConfig(grid=HashGridConfig(self.n_levels, self.n_features, self.log2_table,
                                               self.base_res, self.per_level_scale))


class RayLoader:
    """Deterministic pass over the shuffled shards; position (epoch, shard, offset) is resumable.
    The next shard is read from disk in a background thread while the current one is consumed.

    `part` = (lo, hi): return only rows [lo, hi) of every batch (one rank's share, see
    distributed.batch_part). The position stays that of the whole stream, so a checkpoint resumes
    with any number of ranks; only the rank's rows of a shard are read (memory map)."""

    def __init__(self, run_dir, device: torch.device, batch: int, seed: int, state: dict | None = None,
                 part: tuple[int, int] | None = None):
        self.reader = ShardReader(run_dir)
        self.S = self.reader.meta["ss"] ** 2
        self.device, self.batch, self.seed = device, batch, seed
        self.part = part or (0, batch)
        st = state or {"epoch": 0, "pos": 0, "offset": 0}
        self.epoch, self.pos, self.offset = st["epoch"], st["pos"], st["offset"]
        self.phase = -self.offset % batch      # batch position of the current shard's row 0
        self._order_memo: tuple[int, list[int]] = (-1, [])
        self.pool = ThreadPoolExecutor(1)
        self._cur = self._next = None
        self._cur_key = None
        self.wait_s = 0.0     # host time spent waiting for shards (loading-bound if near the wall time)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "offset": self.offset}

    def _order(self, epoch: int) -> list[int]:
        if self._order_memo[0] != epoch:
            self._order_memo = (epoch, list(np.random.default_rng([self.seed, epoch]).permutation(len(self.reader.shards))))
        return self._order_memo[1]

    def _n(self, epoch: int, pos: int) -> int:
        return self.reader.shards[self._order(epoch)[pos]]["n"]

    def _read(self, epoch: int, pos: int, phase: int) -> dict:
        i = self._order(epoch)[pos]
        if self.part == (0, self.batch):
            data = self.reader.load(i, mmap=False)
        else:   # this rank's runs of rows only: the rest of the shard never leaves the disk
            runs = distributed.part_runs(self._n(epoch, pos), phase, self.batch, *self.part)
            data = {k: np.concatenate([v[a:b] for a, b in runs] or [v[:0]])
                    for k, v in self.reader.load(i).items()}
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
        if self.device.type == "cuda":
            out = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    def _advance_key(self, epoch, pos):
        pos += 1
        if pos >= len(self.reader.shards):
            return epoch + 1, 0
        return epoch, pos

    def _shard(self) -> dict:
        key = (self.epoch, self.pos, self.phase)
        if self._cur_key != key:
            t0 = time.monotonic()
            if self._next is not None and self._next[0] == key:
                self._cur = self._next[1].result()
            else:
                self._cur = self._read(*key)
            self.wait_s += time.monotonic() - t0
            self._cur_key = key
            nk = (*self._advance_key(self.epoch, self.pos), (self.phase + self._n(self.epoch, self.pos)) % self.batch)
            self._next = (nk, self.pool.submit(self._read, *nk))
        return self._cur

    def _local(self, i: int) -> int:
        """Index of shard row i in the loaded (possibly this rank's compacted) shard."""
        return distributed.rows_before(i, self.phase, self.batch, *self.part)

    def next(self) -> dict[str, torch.Tensor]:
        parts, need = [], self.batch
        while need > 0:
            sh = self._shard()
            n = self._n(self.epoch, self.pos)
            take = min(need, n - self.offset)
            a, b = self._local(self.offset), self._local(self.offset + take)
            if b > a:
                parts.append({k: v[a:b] for k, v in sh.items()})
            self.offset += take
            need -= take
            if self.offset >= n:
                self.epoch, self.pos = self._advance_key(self.epoch, self.pos)
                self.offset = 0
                self.phase = (self.phase + n) % self.batch
        b = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        return {"xyz": b["xyz"].float(), "mask": unpack_mask(b["mask"], self.S),
                "dir": b["dir"].float(), "rgb": b["rgb"].float() / 255.0, "view": b["view"].long()}


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so the run saves before exiting."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            # SIGBREAK: what a Windows console parent (Blender's Stop) can send.
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


def train(run_dir: str, iters: int | None = None, resume: bool = False, device: str = "auto",
          preset: str = "auto", overrides: dict | None = None, stop_at: int | None = None) -> dict:
    """Train to `iters` steps (or resume to it). `stop_at` ends the run early at that step exactly as
    a requested stop does (checkpoint, `stopped` event), leaving the schedule of `iters` intact."""
    ctx = distributed.setup(device)     # one process, or this rank's place under torchrun
    with RunFolder(run_dir).exclusive("training") if ctx.main else nullcontext():
        return _train(ctx, run_dir, iters, resume, preset, overrides, stop_at)


def _train(ctx, run_dir, iters, resume, preset, overrides, stop_at) -> dict:
    dev = ctx.device
    run = RunFolder(run_dir)
    cfg_run = run.read_config()
    ckpt = None
    if resume:
        if not run.latest.is_file():
            raise InputError(f"{run.latest}: nothing to resume; start without --resume.")
        ckpt = load_checkpoint(run, dev)
        tc = TrainConfig(**ckpt["train_config"])
        if iters is not None:
            tc.iters = iters
    else:
        tc = TrainConfig.preset(preset, dev)
        for k, v in (overrides or {}).items():
            if v is not None:
                setattr(tc, k, v)
        if iters is not None:
            tc.iters = iters
    if tc.batch_rays < ctx.world:
        raise InputError(f"--batch-rays {tc.batch_rays}: fewer rays than the {ctx.world} processes; "
                         "raise --batch-rays or use fewer processes.")
    if ctx.main:
        write_json(run.train_config, asdict(tc))

    torch.manual_seed(tc.seed)
    n_views = len(cfg_run["views"])
    mcfg = tc.model_config()
    model = Manifold(mcfg, *cfg_run["aabb"], n_views).to(dev)
    grid_params = [model.grid.table]
    other = [p for n, p in model.named_parameters() if not n.startswith("grid.")]
    opt = torch.optim.Adam([{"params": grid_params, "lr": tc.grid_lr, "eps": 1e-15},
                            {"params": other, "lr": tc.lr}], betas=(0.9, 0.99),
                           fused=dev.type == "cuda")   # one kernel for the 2 GB table update
    base_lrs = [tc.grid_lr, tc.lr]
    step = 0
    loader_state = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        loader_state = ckpt["loader"]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())     # map_location moved it to the device
    reducer = None
    if ctx.world > 1:
        distributed.broadcast_module(model)
        reducer = distributed.GradReducer(model.grid.table, other)
    loader = RayLoader(run.root, dev, tc.batch_rays, tc.seed, loader_state,
                       part=distributed.batch_part(tc.batch_rays, ctx.rank, ctx.world))

    def save():
        if not ctx.main:     # one writer; every rank holds the same state
            return
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "loader": loader.state(), "train_config": asdict(tc),
                     "model_config": mcfg.to_dict(), "aabb": cfg_run["aabb"], "n_views": n_views,
                     "rng_cpu": torch.get_rng_state()}, run.latest)

    prog = events.Progress("train", tc.iters, start_step=step)
    last_save = time.monotonic()
    n_rays, t_mark, wait_mark = 0, time.monotonic(), 0.0
    loss_v = psnr_v = float("nan")
    model.train()
    with StopFlag() as flag:
        while step < tc.iters:
            if distributed.any_rank(flag.stop) or (stop_at is not None and step >= stop_at):
                save()
                events.emit("stopped", stage="train", step=step, checkpoint=str(run.latest))
                return {"step": step, "stopped": True}
            frac = step / max(1, tc.iters)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * tc.lr_final_ratio ** frac
            b = loader.next()
            pred = model(b["xyz"], b["mask"], b["dir"], view=b["view"])
            err = pred - b["rgb"]
            share = len(pred) / tc.batch_rays    # this rank's part of the global mean (1 alone)
            loss = err.abs().mean() * share
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if reducer is not None:      # sum of the ranks' gradients = the whole batch's gradient
                stats = reducer(torch.stack([loss.detach(), (err.detach() ** 2).mean() * share]))
            opt.step()
            step += 1
            n_rays += tc.batch_rays
            now = time.monotonic()
            if now - prog.last >= prog.every_s or step == tc.iters:
                if reducer is not None:
                    loss_v, mse_v = stats.tolist()
                else:
                    loss_v, mse_v = float(loss.detach()), float((err.detach() ** 2).mean())
                psnr_v = psnr_from_mse(mse_v)
                rate = n_rays / max(now - t_mark, 1e-9)
                wait = (loader.wait_s - wait_mark) / max(now - t_mark, 1e-9)
                n_rays, t_mark, wait_mark = 0, now, loader.wait_s
                prog.update(step, loss=loss_v, psnr=psnr_v, rays_per_s=rate, load_wait=wait)
            if now - last_save > tc.checkpoint_every_s:
                save()
                last_save = now
    save()
    events.emit("done", stage="train", step=step, loss=loss_v, psnr=psnr_v, checkpoint=str(run.latest))
    return {"step": step, "loss": loss_v, "psnr": psnr_v}
