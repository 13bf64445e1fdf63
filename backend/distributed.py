"""Several processes, one per GPU (NCCL) or per CPU worker (gloo), with torch.distributed: the
process group, the stop vote and barriers. The data split is in loader.py, the gradient
reduction in grad_reduce.py, the `--nproc` re-launch under torchrun in launch.py.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them everything here is a no-op and the
backend runs as one process. Other commands than train/fit/render run on rank 0 only.

Only rank 0 writes checkpoints and progress events; other ranks print `error` events only.
A stop (SIGTERM/SIGINT, forwarded to every rank by torchrun) and rank 0's checkpoint timer are
voted on every VOTE_EVERY steps without waiting (HostVote), so all ranks stop or save after the
same step.

Several machines: torchrun's own rendezvous (`--nnodes N --node-rank K --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`, see the README); ranks of one machine are consecutive, LOCAL_RANK
picks the GPU and LOCAL_WORLD_SIZE is the number of processes on this machine.
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
VOTE_EVERY = 8      # steps between the host votes of training (stop, save)

_control: dist.ProcessGroup | None = None   # gloo group for host-side votes and long waits


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    local_world: int = 1      # processes on this machine

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
        dist.init_process_group(collective_backend(dev),
                                device_id=dev if dev.type == "cuda" else None)
        # Stop votes and long waits run on the host, off the GPU stream, with a long timeout.
        _control = dist.new_group(backend="gloo", timeout=LONG_WAIT)
        if dist.get_rank() != 0:
            events.set_stream(_ErrorsOnly(sys.stdout))
    world = dist.get_world_size()
    return Context(dist.get_rank(), world, local, dev, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def collective_backend(dev: torch.device) -> str:
    """NCCL for CUDA tensors where torch has it (Linux); gloo otherwise: the CPU, and Windows, whose
    torch builds have no NCCL (gloo on CUDA tensors has no all_to_all: no level parallel there)."""
    return "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"


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


class HostVote:
    """Flags that every rank acts on after the same step, without a per-step host round trip:
    every `every` steps each rank sends its flags (an all_reduce MAX over the gloo group, not
    waited for) and reads the result of the previous vote, sent `every` steps earlier and long
    done. A flag raised on one rank is seen by all within 2 x `every` steps. One process: the
    flags themselves, every step."""

    def __init__(self, every: int = VOTE_EVERY):
        self.every = max(1, every)
        self._t: torch.Tensor | None = None
        self._work = None

    def __call__(self, step: int, *flags: bool) -> tuple[bool, ...]:
        if not active():
            return tuple(bool(f) for f in flags)
        if step % self.every:
            return (False,) * len(flags)
        out = (False,) * len(flags)
        if self._work is not None:
            self._work.wait()
            out = tuple(bool(v) for v in self._t.tolist())
        self._t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        self._work = dist.all_reduce(self._t, op=dist.ReduceOp.MAX, group=_control, async_op=True)
        return out

    def close(self) -> None:
        """Wait for the vote in flight (before other collectives on the group, or shutdown)."""
        if self._work is not None:
            self._work.wait()
            self._work = None


def gather_objects(obj) -> list:
    """`obj` of every rank, in rank order, on every rank (host side); [obj] alone."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


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
