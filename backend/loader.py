"""The ray stream of training: a deterministic, resumable pass over the cache's shuffled shards."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .cache import ShardReader, unpack_mask


# --- the data split between ranks -------------------------------------------------------------

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


class RayLoader:
    """Deterministic pass over the shuffled shards; position (epoch, shard, offset) is resumable.
    The next shard is read from disk in a background thread while the current one is consumed.

    `part` = (lo, hi): return only rows [lo, hi) of every batch (one rank's share, see
    batch_part). The position stays that of the whole stream, so a checkpoint resumes
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
            runs = part_runs(self._n(epoch, pos), phase, self.batch, *self.part)
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
        return rows_before(i, self.phase, self.batch, *self.part)

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
