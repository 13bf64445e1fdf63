"""How the processes of a run share a training step: one object per strategy, chosen once.

    OneProcess                    one process (one GPU, or the CPU)
    DataParallel                  every process holds the whole model and takes a part of the
                                  batch; their gradients are summed (grad_reduce.py)
    table_parallel.LevelParallel  the processes of a machine split the hash grid's levels

Each gives train.Trainer what a step needs besides the model itself (`Strategy`): the optimiser's
parameters, the rays' features, the backward and the sum over processes, the regularisers, and
the optimiser state of a checkpoint, which always has the one-process layout (gathered for a
save, sliced for a resume), so a run resumes under any strategy.
"""
from __future__ import annotations

from typing import Protocol

import torch

from . import distributed, table_parallel
from .config import OptimConfig
from .grad_reduce import GradReducer, others
from .stepprof import StepProfile


class Strategy(Protocol):
    mode: str           # for the log: "one process", "data parallel x2", ...

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """The optimiser's groups, from Manifold.param_groups'."""

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        """Resume the optimiser from a checkpoint's state (the one-process layout)."""

    def start(self) -> None:
        """After the model is made or loaded: every process starts from rank 0's."""

    def features(self, xyz: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor | None,
                 prof: StepProfile) -> torch.Tensor:
        """This process's rays' features (Manifold.features), the step's parts marked in `prof`."""

    def backward(self, loss: torch.Tensor, prof: StepProfile) -> None:
        """The gradients of this process's loss."""

    def reduce(self, stats: torch.Tensor) -> torch.Tensor:
        """After the backward: the whole batch's gradients for the optimiser; `stats` (the loss
        numbers) summed over the processes."""

    def regularise(self, optim: OptimConfig) -> None:
        """Add the regularisers' gradients (Manifold.add_regulariser_grads)."""

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict | None:
        """The optimiser state in the one-process layout on rank 0 (every process calls this)."""


class OneProcess:
    """The model's own features, gradients and regularisers; nothing to share."""
    mode = "one process"

    def __init__(self, model):
        self.model = model

    def param_groups(self, groups: list[dict]) -> list[dict]:
        return groups

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        opt.load_state_dict(state)

    def start(self) -> None:
        pass

    def features(self, xyz: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor | None,
                 prof: StepProfile) -> torch.Tensor:
        prof.mark("points")
        feat = self.model.features(xyz, mask, footprint)
        prof.mark("grid_fwd")
        if prof.on:
            feat.register_hook(lambda g: prof.mark("decoder_bwd"))
        return feat

    def backward(self, loss: torch.Tensor, prof: StepProfile) -> None:
        loss.backward()
        prof.mark("grid_bwd")

    def reduce(self, stats: torch.Tensor) -> torch.Tensor:
        return stats

    def regularise(self, optim: OptimConfig) -> None:
        self.model.add_regulariser_grads(optim)

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict | None:
        return opt.state_dict()


class DataParallel(OneProcess):
    """The sum of the processes' gradients is the whole batch's gradient (grad_reduce.py)."""

    def __init__(self, model, world: int):
        super().__init__(model)
        self.mode = f"data parallel x{world}"
        self.reducer: GradReducer | None = None

    def param_groups(self, groups: list[dict]) -> list[dict]:
        self.reducer = GradReducer(self.model.grid.table, others(groups))
        return groups

    def start(self) -> None:
        distributed.broadcast_module(self.model)

    def reduce(self, stats: torch.Tensor) -> torch.Tensor:
        return self.reducer(stats)


def choose(ctx: distributed.Context, model, batch: int, S: int) -> Strategy:
    """The run's strategy. Several processes: level parallel where the grid splits its levels on
    this device (S sub-samples per ray), the processes can exchange them (all_to_all: not gloo on
    CUDA, as on Windows) and XSCALE_TABLE_PARALLEL forms groups of several processes
    (table_parallel.group_size), else data parallel."""
    if ctx.world == 1:
        return OneProcess(model)
    G = 1
    exchange = ctx.device.type == "cpu" or distributed.collective_backend(ctx.device) == "nccl"   # all_to_all
    if exchange and model.grid.splits_levels(S, ctx.device):
        G = table_parallel.group_size(table_parallel.setting(), ctx.world, ctx.local_world,
                                      model.cfg.grid.n_levels)
    if G > 1:
        return table_parallel.LevelParallel(model, ctx.rank, ctx.world, G, batch, ctx.device)
    return DataParallel(model, ctx.world)
