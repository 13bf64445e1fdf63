"""The ray stream of training: a deterministic, resumable pass over the cache's shuffled shards.

Shards are read ahead (`PREFETCH` shards, default 2) by a background thread into a ring of
reused buffers: on CUDA each slot is a pinned host buffer plus a device buffer, and the host ->
device copy runs on the loader's own CUDA stream, so it overlaps the training kernels instead of
queueing between them on the default stream. Hand-over is by CUDA events, never by a host wait:
the consumer's stream waits for a slot's copy, and a slot is refilled only after the consumer's
stream has passed the point where it released it. Only the fields training uses are read (the
normals stay on disk), straight from the .npy files into the slot (one copy, no temporary array).
"""
from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .cache import FIELDS, ShardReader, damaged_cache, unpack_mask
from .errors import first_line

TRAIN_FIELDS = ("xyz", "mask", "dir", "rgb", "view")   # what a training step reads
PREFETCH_ENV = "XSCALE_PREFETCH"                        # shards read ahead (default PREFETCH)
PREFETCH = 2
READ_PIECE = 32 << 20        # bytes per read call; pieces of one shard are read by READ_THREADS
READ_THREADS = 4


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


def max_part_rows(n: int, batch: int, lo: int, hi: int) -> int:
    """An upper bound of len(rows of part_runs(n, phase, ...)) over every phase."""
    return min(n, (n // batch + 2) * (hi - lo))


# --- reading .npy files straight into a buffer ---------------------------------------------------

class NpyFile:
    """A plain (C-order) .npy file: its header, read once, and row reads into any buffer."""

    def __init__(self, path, rows: int | None = None):
        """`rows`: how many rows the file must hold (the shard's length in meta.json); a file that
        is not a plain .npy of that many rows is a damaged cache (one-line error naming it)."""
        self.path = str(path)
        try:
            with open(self.path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                self.offset = fh.tell()
        except (ValueError, OSError, EOFError) as e:
            raise damaged_cache(path, first_line(e)[:120]) from e
        if fortran or dtype.hasobject or not shape:
            raise damaged_cache(path, "not a plain C-order array")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        if rows is not None and self.shape[0] != rows:
            raise damaged_cache(path, f"{self.shape[0]} rays where meta.json says {rows}")
        if os.path.getsize(self.path) < self.offset + self.shape[0] * self.row_bytes:
            raise damaged_cache(path, "shorter than its header says")

    def read_rows(self, runs: list[tuple[int, int]], out: np.ndarray, pool: ThreadPoolExecutor | None) -> int:
        """Rows [a, b) of every run, one after the other, into `out` (a C-contiguous array whose
        rows have this file's layout); returns the number of rows read. Reads go straight from
        the file into `out` (os.preadv releases the GIL), split into pieces over `pool`."""
        dst = out.reshape(-1).view(np.uint8)
        jobs, pos = [], 0
        for a, b in runs:
            nbytes = (b - a) * self.row_bytes
            src = self.offset + a * self.row_bytes
            for k in range(0, nbytes, READ_PIECE):
                m = min(READ_PIECE, nbytes - k)
                jobs.append((src + k, pos + k, m))
            pos += nbytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if pool is None or len(jobs) < 2:
                for job in jobs:
                    _pread_into(fd, dst, *job)
            else:
                for f in [pool.submit(_pread_into, fd, dst, *job) for job in jobs]:
                    f.result()
        finally:
            os.close(fd)
        return pos // self.row_bytes if self.row_bytes else 0


def _pread_into(fd: int, dst: np.ndarray, src: int, pos: int, n: int) -> None:
    view = memoryview(dst)[pos:pos + n]
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:]], src + done)
        if got <= 0:
            raise OSError(f"unexpected end of a ray cache file (fd {fd}) at byte {src + done}")
        done += got


class _InOrderWorker:
    """One daemon thread running submitted calls in order (a slot fill may wait for the consumer;
    a daemon thread never holds up the interpreter's exit when training ends early)."""

    def __init__(self):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="xscale-ray-reader", daemon=True)
        self.thread.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self.q.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:      # noqa: BLE001 - handed to the consumer
                fut.set_exception(e)

    def shutdown(self, timeout: float = 60.0) -> None:
        """End the thread after the calls already submitted (joined: a daemon thread still inside
        numpy or torch when the interpreter exits would abort the process)."""
        self.q.put(None)
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)


# --- the ring of shard slots --------------------------------------------------------------------

class _Slot:
    """One shard's buffers: host (pinned on CUDA) and device (the host buffers on the CPU), with
    the events that hand it between the reader and the consumer."""

    def __init__(self, device: torch.device):
        self.device = device
        self.host: dict[str, torch.Tensor] = {}
        self.dev: dict[str, torch.Tensor] = {}
        self.free = threading.Event()       # host side: the consumer is done with it
        self.free.set()
        cuda = device.type == "cuda"
        self.copied = torch.cuda.Event() if cuda else None     # its host -> device copy is done
        self.released = torch.cuda.Event() if cuda else None   # the consumer's stream passed it

    def ensure(self, shapes: dict[str, tuple], dtypes: dict[str, torch.dtype]) -> None:
        """Buffers at least as long as `shapes` (rows first), allocated once and reused."""
        for k, shape in shapes.items():
            t = self.host.get(k)
            if t is not None and t.shape[0] >= shape[0] and t.shape[1:] == shape[1:]:
                continue
            if self.device.type == "cuda":
                self.host[k] = torch.empty(shape, dtype=dtypes[k], pin_memory=True)
                self.dev[k] = torch.empty(shape, dtype=dtypes[k], device=self.device)
            else:
                self.host[k] = self.dev[k] = torch.empty(shape, dtype=dtypes[k])


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    # uint16 (mask bits) travels as int16: same bits, and torch has no uint16 arithmetic we need.
    return torch.from_numpy(np.zeros(0, np.int16 if dt == np.uint16 else dt)).dtype


class RayLoader:
    """Deterministic pass over the shuffled shards; position (epoch, shard, offset) is resumable.
    Shards are read ahead in a background thread (see the module docstring).

    `part` = (lo, hi): return only rows [lo, hi) of every batch (one rank's share, see
    batch_part). The position stays that of the whole stream, so a checkpoint resumes
    with any number of ranks; only the rank's rows of a shard are read.

    A returned batch never aliases the loader's buffers (it stays valid after later calls)."""

    def __init__(self, run_dir, device: torch.device, batch: int, seed: int, state: dict | None = None,
                 part: tuple[int, int] | None = None, prefetch: int | None = None):
        self.reader = ShardReader(run_dir)
        self.S = self.reader.meta["ss"] ** 2
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:     # "cuda": the reader thread needs the index
            device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.batch, self.seed = device, batch, seed
        self.part = part or (0, batch)
        st = state or {"epoch": 0, "pos": 0, "offset": 0}
        self.epoch, self.pos, self.offset = st["epoch"], st["pos"], st["offset"]
        self.phase = -self.offset % batch      # batch position of the current shard's row 0
        self._orders: dict[int, list[int]] = {}
        self.depth = max(1, int(prefetch if prefetch is not None else os.environ.get(PREFETCH_ENV, PREFETCH)))
        self.slots = [_Slot(self.device) for _ in range(self.depth + 1)]
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool = _InOrderWorker()                      # fills slots in stream order
        self._closed = False
        self.read_pool = ThreadPoolExecutor(READ_THREADS)  # pieces of one shard's reads
        self._files: dict[tuple[int, str], NpyFile] = {}
        self._ahead: deque = deque()       # (key, slot index, future) of shards being read
        self._next_slot = 0
        self._cur = None                   # (key, slot index, rows) of the shard being consumed
        self.wait_s = 0.0     # host time spent waiting for shards (loading-bound if near the wall time)
        self.read_s = 0.0     # reader thread time spent reading + queueing copies
        self.read_bytes = 0
        self.shards_read = 0
        self._copy_events: deque = deque(maxlen=64)    # (start, end) timing events of recent copies
        _OPEN.add(self)

    # --- position ----------------------------------------------------------------------------

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "offset": self.offset}

    def _order(self, epoch: int) -> list[int]:
        """The shard order of `epoch` (asked for by both threads: the reader runs ahead)."""
        order = self._orders.get(epoch)
        if order is None:
            order = list(np.random.default_rng([self.seed, epoch]).permutation(len(self.reader.shards)))
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1} | {epoch: order}
        return order

    def _n(self, epoch: int, pos: int) -> int:
        return self.reader.shards[self._order(epoch)[pos]]["n"]

    def _advance_key(self, epoch, pos):
        pos += 1
        if pos >= len(self.reader.shards):
            return epoch + 1, 0
        return epoch, pos

    def _key_after(self, key):
        epoch, pos, phase = key
        return (*self._advance_key(epoch, pos), (phase + self._n(epoch, pos)) % self.batch)

    # --- reading (background thread) ---------------------------------------------------------

    def _file(self, shard: int, field: str) -> NpyFile:
        k = (shard, field)
        if k not in self._files:
            self._files[k] = NpyFile(self.reader.run.cache / self.reader.shards[shard]["name"] / f"{field}.npy",
                                     self.reader.shards[shard]["n"])
        return self._files[k]

    def _fill(self, si: int, key) -> int:
        """Read shard `key`'s rows of this rank into slot si and queue its copy to the device."""
        slot = self.slots[si]
        while not slot.free.wait(0.5):      # the consumer releases it (its stream event recorded)
            if self._closed:
                return 0
        slot.free.clear()
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.set_device(self.device)
            slot.copied.synchronize()        # the host buffer's previous copy has left
        epoch, pos, phase = key
        shard = self._order(epoch)[pos]
        n = self._n(epoch, pos)
        runs = [(0, n)] if self.part == (0, self.batch) else part_runs(n, phase, self.batch, *self.part)
        cap = max_part_rows(n, self.batch, *self.part)
        files = {k: self._file(shard, k) for k in TRAIN_FIELDS}
        slot.ensure({k: (max(cap, 1), *f.shape[1:]) for k, f in files.items()},
                    {k: _torch_dtype(f.dtype) for k, f in files.items()})
        rows = 0
        for k, f in files.items():
            if f.dtype != np.dtype(FIELDS[k]):
                raise ValueError(f"{f.path}: dtype {f.dtype}, expected {np.dtype(FIELDS[k])}")
            rows = f.read_rows(runs, slot.host[k].numpy(), self.read_pool)
            self.read_bytes += rows * f.row_bytes
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(slot.released)     # no-op before the first release
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(self.copy_stream)
                for k in files:
                    slot.dev[k][:rows].copy_(slot.host[k][:rows], non_blocking=True)
                end.record(self.copy_stream)
                slot.copied.record(self.copy_stream)
            self._copy_events.append((start, end))
        self.read_s += time.perf_counter() - t0
        self.shards_read += 1
        return rows

    def stats(self) -> dict:
        """Reading so far: shards, bytes, host seconds (reads), seconds waited for by training, and
        the mean host -> device copy time of the recent shards (ms; synchronises with them)."""
        out = {"shards": self.shards_read, "read_bytes": self.read_bytes, "read_s": self.read_s,
               "wait_s": self.wait_s}
        events = list(self._copy_events)
        if events:
            events[-1][1].synchronize()
            out["h2d_ms_per_shard"] = sum(a.elapsed_time(b) for a, b in events) / len(events)
        return out

    def _schedule(self, after) -> None:
        """Keep `depth` shards in flight, the next ones after `after` in stream order."""
        last = self._ahead[-1][0] if self._ahead else after
        while len(self._ahead) < self.depth:
            last = self._key_after(last)
            si = self._next_slot
            self._next_slot = (si + 1) % len(self.slots)
            self._ahead.append((last, si, self.pool.submit(self._fill, si, last)))

    # --- consuming (training thread) ---------------------------------------------------------

    def _release(self) -> None:
        if self._cur is None:
            return
        slot = self.slots[self._cur[1]]
        if self.cuda:
            slot.released.record(torch.cuda.current_stream(self.device))
        slot.free.set()
        self._cur = None

    def _shard(self) -> tuple[dict[str, torch.Tensor], int]:
        """The current shard's buffers (this rank's rows, on the device) and their row count."""
        key = (self.epoch, self.pos, self.phase)
        if self._cur is None or self._cur[0] != key:
            self._release()
            t0 = time.monotonic()
            if not self._ahead or self._ahead[0][0] != key:     # first call, or a jump (resume)
                for _, _, fut in self._ahead:
                    fut.result()
                for _, si, _ in self._ahead:
                    self.slots[si].free.set()
                self._ahead.clear()
                si = self._next_slot
                self._next_slot = (si + 1) % len(self.slots)
                fut = self.pool.submit(self._fill, si, key)
            else:
                _, si, fut = self._ahead.popleft()
            rows = fut.result()
            self.wait_s += time.monotonic() - t0
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self.slots[si].copied)
            self._cur = (key, si, rows)
            self._schedule(key)
        slot = self.slots[self._cur[1]]
        return slot.dev, self._cur[2]

    def _local(self, i: int) -> int:
        """Index of shard row i in the loaded (possibly this rank's compacted) shard."""
        return rows_before(i, self.phase, self.batch, *self.part)

    def next(self) -> dict[str, torch.Tensor]:
        parts, need = [], self.batch
        while need > 0:
            sh, _ = self._shard()
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
                if need > 0:        # the batch goes on in the next shard: own these rows first
                    parts = [{k: v.clone() for k, v in p.items()} for p in parts]
        if not parts:       # this rank has no row in this batch (tiny batches, many ranks)
            parts = [{k: v[:0] for k, v in sh.items()}]
        b = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        out = {"xyz": b["xyz"].to(torch.float32, copy=True), "mask": unpack_mask(b["mask"], self.S),
               "dir": b["dir"].float(), "rgb": b["rgb"].float() / 255.0, "view": b["view"].long()}
        return out

    def close(self) -> None:
        """Stop reading ahead; returns once the reader thread has ended (reads in flight finish;
        a read waiting for a slot gives up)."""
        if self._closed:
            return
        self._closed = True
        self._ahead.clear()
        self.pool.shutdown()
        self.read_pool.shutdown()
        _OPEN.discard(self)


_OPEN: "weakref.WeakSet[RayLoader]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ld in list(_OPEN):
        ld.close()
