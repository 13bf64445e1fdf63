"""Several processes, one per GPU (NCCL) or per CPU worker (gloo), with torch.distributed.

Launch with the `--nproc N` option of train / fit / render, which re-runs the same command under
torchrun with the same interpreter, or with torchrun directly:
    python -m torch.distributed.run --standalone --nproc-per-node N -m -- backend train --run R
(the `--` stops torchrun from reading `--run` as its own `--run-path`). torchrun sets WORLD_SIZE,
RANK and LOCAL_RANK; without them everything here is a no-op and the backend runs as one process.
Other commands under torchrun run on rank 0 only.

Training is data parallel. Every rank holds the whole model and walks the same deterministic ray
stream; of each global batch of B rays rank r takes the contiguous slice `batch_part(B, r, W)` and
reads only those rows from disk. Each rank's loss is its share of the global mean, so the sum of the
ranks' gradients is the one-process gradient of the same batch (up to float summation order).

Gradient reduction (`GradReducer`) is explicit rather than DistributedDataParallel: DDP would
all-reduce the whole hash table (up to 2^22 x 16 rows x 8 floats = 2 GB) every step, while only the
rows the step's rays touch are non-zero. Below a density threshold only those rows travel (one
all_gather of (row, values) records); above it a dense all_reduce moves fewer bytes. Decoder and
exposure codes (small) go in one flat all_reduce that also carries the loss numbers for the logs.
See benchmarks/bench_distributed.py for the measurements behind the threshold.

Only rank 0 writes checkpoints and progress events; other ranks print `error` events only.
A stop (SIGTERM/SIGINT, forwarded to every rank by torchrun) is voted on each step, so all ranks
stop after the same step and rank 0 saves.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from . import events
from .errors import DeviceError, InputError
from .raster import resolve_device

# Gradient reduction of the hash table: auto (default), dense or sparse (benchmarks, tests).
REDUCE_ENV = "XSCALE_GRAD_REDUCE"
# Auto goes sparse (touched rows only) when the table has at least SPARSE_MIN_ROWS rows and all
# ranks' gathered records, W x max rows x (F + 1) words, are at most SPARSE_MAX_RATIO of its
# rows x F floats. Measured with bench_distributed.py, 2 processes: gloo on the CPU, sparse wins
# only below ~1 % touched rows. NCCL on 2 H100s (NVLink): dense won every case up to 2^22 rows x 8
# (0.63 ms, even at 0.1 % touched rows, where sparse took 1.4 ms: its scan, host sync and gather
# cost ~1 ms whatever the size) and on the reference table (44 M rows, 48 % touched in a real
# step: dense 4.4 ms, sparse 29 ms). So on NCCL sparse is only tried for huge, nearly untouched tables.
SPARSE_MAX_RATIO = {"nccl": 0.01, "gloo": 0.05}
SPARSE_MIN_ROWS = {"nccl": 1 << 24, "gloo": 1 << 16}   # below: one dense all_reduce wins
RECHECK_EVERY = 100            # after picking dense, steps before the next density check
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


# --- the data split --------------------------------------------------------------------------

def batch_part(batch: int, r: int, w: int) -> tuple[int, int]:
    """Rank r's rows [lo, hi) of a global batch of `batch` rays (sizes differ by at most one)."""
    return r * batch // w, (r + 1) * batch // w


def part_runs(n: int, phase: int, batch: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Runs of shard rows [0, n) that lie in [lo, hi) of their batch, when row 0 is at position
    `phase` of its batch (batches are consecutive in the ray stream)."""
    runs, start = [], -phase
    while start < n:
        a, b = max(start + lo, 0), min(start + hi, n)
        if b > a:
            runs.append((a, b))
        start += batch
    return runs


def rows_before(i: int, phase: int, batch: int, lo: int, hi: int) -> int:
    """How many of a shard's rows [0, i) are this rank's (see part_runs): its index into the
    rank's compacted copy of the shard."""
    def upto(t: int) -> int:    # rows at batch positions [lo, hi) among stream positions [0, t)
        return (t // batch) * (hi - lo) + min(max(t % batch - lo, 0), hi - lo)
    return upto(phase + i) - upto(phase)


# --- gradient reduction ----------------------------------------------------------------------

class GradReducer:
    """Sums gradients over ranks in place after backward; every rank ends bit-identical.

    `table` is the hash grid (rows x F). Dense mode: one all_reduce. Sparse mode: each rank sends
    its non-zero rows as records (F values and the row index, one all_gather), then every rank adds
    all records in rank order. Auto picks from the gathered row counts (every rank sees the same
    counts, so all pick alike; see SPARSE_MAX_RATIO). `others` (decoder, exposure codes) and
    `stats` (loss numbers for the logs) share one flat all_reduce."""

    def __init__(self, table: nn.Parameter, others: list[nn.Parameter], mode: str | None = None):
        self.table, self.others = table, others
        self.mode = mode or os.environ.get(REDUCE_ENV, "auto")
        if self.mode not in ("auto", "dense", "sparse"):
            raise InputError(f"{REDUCE_ENV}={self.mode}: choose auto, dense or sparse.")
        self.last = ""        # mode used by the last step (benchmarks, tests)
        self._dense_left = 0  # steps to stay dense without scanning the table (auto)
        backend = dist.get_backend() if active() else ""
        self.max_ratio = SPARSE_MAX_RATIO.get(backend, 0.0)
        self.min_rows = SPARSE_MIN_ROWS.get(backend, 1 << 16)

    def __call__(self, stats: torch.Tensor) -> torch.Tensor:
        self._reduce_table()
        return self._reduce_others(stats)

    def _reduce_others(self, stats: torch.Tensor) -> torch.Tensor:
        grads = []
        for p in self.others:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad.reshape(-1))
        flat = torch.cat(grads + [stats.reshape(-1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        o = 0
        for p in self.others:
            p.grad.copy_(flat[o:o + p.numel()].view_as(p))
            o += p.numel()
        return flat[o:]

    def _reduce_table(self) -> None:
        t = self.table
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        g = t.grad
        rows_n, F = g.shape
        if (self.mode == "dense" or g.element_size() != 4 or self._dense_left > 0
                or (self.mode == "auto" and rows_n < self.min_rows)):
            self._dense_left = max(0, self._dense_left - 1)
            self._dense(g)
            return
        # Non-zero rows, testing the bits as integers (a -0.0 counts as touched, which is harmless).
        bits = g.view(torch.int64 if F % 2 == 0 else torch.int32)
        rows = torch.nonzero(bits.ne(0).any(1)).squeeze(1)
        counts = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=g.device)
        counts[dist.get_rank()] = len(rows)
        dist.all_reduce(counts)                     # tiny; every rank now knows every count
        counts_l = counts.tolist()
        m, W = max(counts_l), len(counts_l)
        if self.mode == "auto" and W * m * (F + 1) > self.max_ratio * rows_n * F:
            self._dense_left = RECHECK_EVERY     # the touched fraction drifts slowly: skip the scans
            self._dense(g)
            return
        self.last = "sparse"
        # Records of int32 words: the F values' bits and the row, padded to the longest rank's.
        # Integer copies move the bits exactly on any device, and one all_gather carries both.
        rec = torch.cat([g.index_select(0, rows).view(torch.int32), rows.to(torch.int32)[:, None]], 1)
        rec = torch.cat([rec, rec.new_zeros(m - len(rows), F + 1)]) if m > len(rows) else rec
        recs = [torch.empty_like(rec) for _ in range(W)]
        dist.all_gather(recs, rec)
        # Clearing this rank's rows zeroes the whole gradient; then every rank adds the records in
        # rank order (unique rows per call: deterministic sums, equal on every rank).
        g.index_fill_(0, rows, 0.0)
        for r, c in enumerate(counts_l):
            if c:
                part = recs[r][:c]
                g.index_add_(0, part[:, F].long(), part[:, :F].contiguous().view(g.dtype))

    def _dense(self, g: torch.Tensor) -> None:
        self.last = "dense"
        dist.all_reduce(g)


# --- `--nproc N`: re-launch under torchrun ----------------------------------------------------

def relaunch(argv: list[str], nproc: int) -> int:
    """Run `python -m backend ARGV` as `nproc` processes under torchrun with this interpreter.

    Relays the ranks' stdout (identical error events once) and maps the exit status to the
    protocol's: torchrun itself exits non-zero after passing on a stop, so a `stopped` event means 0,
    an `error` event for bad input means 2."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # torchrun would set 1 thread per process; share the cores instead (matters on CPU only).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Time between a stop and SIGKILL: rank 0 must be able to write a multi-GB checkpoint.
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    # `--` ends torchrun's options: it would take e.g. `--run` for its own `--run-path`.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "--", "backend", *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)

    def forward(signum, frame):
        # SIGTERM (e.g. from the Blender job) reaches only this process: pass it on. A terminal's
        # Ctrl+C already reaches the whole process group, so SIGINT is not sent a second time.
        if signum == signal.SIGTERM and proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    seen_errors: set[str] = set()
    stopped = bad_input = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, message = _event_of(line)
            if kind == "error":
                if line in seen_errors:
                    continue
                seen_errors.add(line)
                bad_input = bad_input or not message.startswith(("internal error", "interrupted"))
            stopped = stopped or kind == "stopped"
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (BrokenPipeError, OSError):     # nobody reads us any more: stop the job cleanly
                forward(signal.SIGTERM, None)
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc == 0 or stopped:
        return 0
    return 2 if bad_input else rc


def _event_of(line: str) -> tuple[str, str]:
    if not line.startswith("{"):
        return "", ""
    try:
        obj = json.loads(line)
    except ValueError:
        return "", ""
    if not isinstance(obj, dict):
        return "", ""
    return str(obj.get("event", "")), str(obj.get("message", ""))
