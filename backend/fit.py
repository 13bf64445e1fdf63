"""`fit`: the ray cache (unless it is up to date), then training. The CLI's `fit` and the demo
both call `fit()`; under torchrun rank 0 builds the cache while the other ranks wait."""
from __future__ import annotations

from . import distributed, events
from .cache import build_cache, cache_matches
from .config import SS, TEST_EVERY
from .train import train


def fit(scene: str, run: str, *, mesh: str | None = None, level: int | None = None, ss: int = SS.default,
        test_every: int = TEST_EVERY.default, iters: int | None = None, resume: bool = False,
        device: str = "auto", preset: str = "auto", overrides: dict | None = None,
        grid_backend: str = "auto", stop_at: int | None = None) -> dict:
    """Cache SCENE into RUN (skipped when RUN holds a complete cache of the same inputs and
    settings, or when resuming), then train (see backend.train.train)."""
    if not resume:
        if distributed.setup(device).main:
            if cache_matches(run, scene, ss, test_every, level, mesh):
                events.log("ray cache is up to date; skipping the cache step")
            else:
                build_cache(scene, run, mesh, level, ss, test_every, device)
        distributed.barrier()
    return train(run, iters, resume, device, preset, overrides, stop_at, grid_backend)
