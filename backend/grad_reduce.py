"""Gradient reduction over ranks for data-parallel training (see distributed.py).

Training is data parallel. Every rank holds the whole model and walks the same deterministic ray
stream; of each global batch of B rays rank r takes the contiguous slice `batch_part(B, r, W)`
(loader.py) and reads only those rows from disk. Each rank's loss is its share of the global mean,
so the sum of the ranks' gradients is the one-process gradient of the same batch (up to float
summation order).

The reduction is explicit rather than DistributedDataParallel: DDP would all-reduce the whole
hash table (up to 2^22 x 16 rows x 8 floats = 2 GB) every step, while only the rows the step's
rays touch are non-zero. Below a density threshold only those rows travel (one all_gather of
(row, values) records); above it a dense all_reduce moves fewer bytes. Decoder and exposure codes
(small) go in one flat all_reduce that also carries the loss numbers for the logs. See
benchmarks/bench_distributed.py for the measurements behind the threshold.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .distributed import active
from .errors import InputError

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


def others(groups: list[dict]) -> list[nn.Parameter]:
    """The parameters of the optimiser's groups besides the hash table ("grid"): decoder, codes, gains."""
    return [p for g in groups if g.get("name") != "grid" for p in g["params"]]


def reduce_flat(params: list[nn.Parameter], stats: torch.Tensor, group=None) -> torch.Tensor:
    """Sum the gradients of `params` (small: decoder, codes, gains) and `stats` over the ranks of
    `group` (default: all) in one flat all_reduce; the gradients in place, the summed stats returned."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad.reshape(-1))
    flat = torch.cat(grads + [stats.reshape(-1).to(grads[0].dtype)])
    dist.all_reduce(flat, group=group)
    o = 0
    for p in params:
        p.grad.copy_(flat[o:o + p.numel()].view_as(p))
        o += p.numel()
    return flat[o:]


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
        return reduce_flat(self.others, stats)

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
