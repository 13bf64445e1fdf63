"""Several processes, one per GPU (NCCL) or per CPU worker (gloo), with torch.distributed: the
process group, the stop vote and barriers. The data split is in loader.py, the gradient
reduction in grad_reduce.py, the `--nproc` re-launch under torchrun in launch.py.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything here is a no-op and the
backend runs as one process. Other commands than train/fit/render run on rank 0 only.

Only rank 0 writes checkpoints and progress events; other ranks print `error` events only.
A stop (SIGTERM/SIGINT, forwarded to every rank by torchrun) is voted on each step, so all ranks
stop after the same step and rank 0 saves.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from . import events
from .errors import DeviceError
from .raster import resolve_device

# Waits that can be long by design (rank 0 building the ray cache, uneven render frames).
LONG_WAIT = timedelta(hours=24)

_control: dist.ProcessGroup | None = None   # gloo group for host-side votes and long waits


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torchrun with more than one process in the job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device: str = "auto") -> Context:
    """This process's place in the job and its device; joins the torchrun job on the first call.
    Under torchrun each rank uses cuda:LOCAL_RANK (or the CPU with gloo for --device cpu)."""
    global _control
    dev = resolve_device(device)
    if not launched():
        return Context(0, 1, 0, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(local + 1))
            raise DeviceError(f"{per_node} processes on this machine but only {n} CUDA GPU(s); "
                              f"use --nproc {n} (or --nproc-per-node {n}) or fewer.")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not active():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
        # Stop votes and long waits run on the host, off the GPU stream, with a long timeout.
        _control = dist.new_group(backend="gloo", timeout=LONG_WAIT)
        if dist.get_rank() != 0:
            events.set_stream(_ErrorsOnly(sys.stdout))
    return Context(dist.get_rank(), dist.get_world_size(), local, dev)


def shutdown() -> None:
    global _control
    if active():
        dist.destroy_process_group()
    _control = None


class _ErrorsOnly:
    """Event stream of ranks other than 0: progress and done come from rank 0, errors from anyone."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> int:
        if s.startswith('{"event": "error"'):
            self.stream.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (the per-step stop vote)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (host side, long timeout)."""
    if active():
        dist.barrier(group=_control)


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank, so replicas start bit-identical."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
