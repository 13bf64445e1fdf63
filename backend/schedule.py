"""How long to train: the number of steps (and, for a small capture, the batch) from the ray cache.

A fixed number of steps fits one capture size: the reference preset's 30000 steps of 1.57 M rays
take half an hour on a 10-photo capture and over-fit it, and a 500-photo capture may need them
all. The schedule counts passes over the cache's training rays instead (ScheduleConfig.epochs),
in at least `min_steps` Adam steps: the hash table moves by about its learning rate per step, so
fewer steps leave it unconverged however many rays they carry. A capture whose passes do not fill
those steps with the preset's batch trains on smaller batches (down to `min_batch`) rather than
on more passes. The learning rates decay over the steps chosen (train.Trainer.step), so a short
schedule ends as settled as a long one.
"""
from __future__ import annotations

import dataclasses
import math

from .config import TrainConfig, with_value

BATCH_STEP = 1024       # batches are whole multiples of this (even shares for up to 1024 processes)


@dataclasses.dataclass(frozen=True)
class Plan:
    iters: int
    batch_rays: int
    rays: int           # training rays in the cache
    passes: float       # iters * batch_rays / rays

    def describe(self, photos: int) -> str:
        return (f"training schedule: {self.iters} steps x {self.batch_rays:,} rays = {self.passes:.1f} passes over "
                f"the {self.rays / 1e6:.3g} M rays of {photos} training photo(s) (--iters sets the steps)")


def plan(tc: TrainConfig, rays: int, batch_given: bool) -> Plan:
    """Steps (and batch, unless `batch_given`) for `rays` training rays under tc.schedule."""
    s = tc.schedule
    rays = max(int(rays), 1)
    budget = s.epochs * rays
    batch = tc.optim.batch_rays
    if not batch_given:     # smaller batches for a small capture, never larger than the preset's
        fit = max(s.min_batch, budget / s.min_steps)
        batch = min(batch, max(BATCH_STEP, int(math.ceil(fit / BATCH_STEP)) * BATCH_STEP))
    iters = int(min(s.max_steps, max(s.min_steps, math.ceil(budget / batch))))
    return Plan(iters, batch, rays, iters * batch / rays)


def with_plan(tc: TrainConfig, p: Plan) -> TrainConfig:
    """`tc` training for the plan's steps with its batch."""
    return with_value(with_value(tc, "iters", p.iters), "optim.batch_rays", p.batch_rays)
