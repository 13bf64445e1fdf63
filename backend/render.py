"""Rendering: rasterize the mesh for a camera, query the manifold at covered pixels, decode.
Pixels the mesh does not cover are transparent (alpha 0); alpha is the covered fraction of the
ss x ss sub-samples. Frames are packed for their file format on the GPU, copied to host memory on
a side stream and written in background threads, all overlapped with the next frames' GPU work."""
from __future__ import annotations

import os
import queue
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from . import distributed, events
from .cameras import Camera
from .campath import frame_filename, read_camera_path
from .checkpoint import load_model
from .config import FORMAT
from .errors import InputError
from .footprint import camera_rows, footprints
from .frame_files import frame_buffers, write_buffers
from .meshio import load_mesh
from .model import Manifold
from .raster import Rasterizer, pixel_directions
from .runfolder import RunFolder, make_dir
from .stopflag import StopFlag


@dataclass
class Frame:
    rgb_linear: np.ndarray   # (H, W, 3) float32, straight (not premultiplied), 0 where alpha = 0
    alpha: np.ndarray        # (H, W) float32 covered fraction
    depth: np.ndarray        # (H, W) float32 camera z, inf where uncovered


@torch.no_grad()
def render_tensors(model: Manifold, rast: Rasterizer, cam: Camera, ss: int, exposure="mean",
                   chunk: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame on the model's device: linear RGB (H, W, 3), alpha (H, W), depth (H, W)."""
    dev = next(model.parameters()).device
    with record_function("render.surface"):
        s = rast.surface(cam, ss, normals=False)
    covered = s.mask.any(-1)
    jj, ii = torch.nonzero(covered, as_tuple=True)
    rgb = torch.zeros(cam.height, cam.width, 3, device=dev)
    if len(jj):
        dirs = pixel_directions(cam, ii, jj).to(dev)
        xyz, m = s.xyz[covered].to(dev), s.mask[covered].to(dev)
        row = camera_rows([cam])[0]
        with record_function("render.model"):
            out = torch.cat([model.render(xyz[k:k + chunk], m[k:k + chunk], dirs[k:k + chunk], exposure,
                                          footprints(xyz[k:k + chunk], row, ss))
                             for k in range(0, len(jj), chunk)])
        rgb[jj.to(dev), ii.to(dev)] = out
    return rgb, s.mask.float().mean(-1).to(dev), s.depth.to(dev)


def render_camera(model: Manifold, rast: Rasterizer, cam: Camera, ss: int, exposure="mean",
                  chunk: int = 1 << 20) -> Frame:
    rgb, alpha, depth = render_tensors(model, rast, cam, ss, exposure, chunk)
    return Frame(rgb.cpu().numpy(), alpha.cpu().numpy(), depth.cpu().numpy())


class HostCopy:
    """Tensors on their way to pinned host memory (`host`, or newly allocated) on a side CUDA
    stream, so the copy overlaps the next frame's GPU work; `result()` waits for them. On the
    CPU: the tensors themselves."""
    _streams: dict = {}

    def __init__(self, bufs: dict[str, torch.Tensor], host: dict[str, torch.Tensor] | None = None):
        self.done = None
        dev = next(iter(bufs.values())).device
        if dev.type != "cuda":
            self.host = bufs
            return
        self.host = host or {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in bufs.items()}
        stream = HostCopy._streams.setdefault(dev, torch.cuda.Stream(dev))
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for k, t in bufs.items():
                self.host[k].copy_(t, non_blocking=True)
                t.record_stream(stream)      # not reused by the allocator before the copy is done
            self.done = torch.cuda.Event()
            self.done.record(stream)

    def result(self) -> dict[str, np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        return {k: v.numpy() for k, v in self.host.items()}


WRITER_THREADS = min(8, os.cpu_count() or 1)     # PNG/EXR encoding threads (zlib releases the GIL)
WARMUP_MIN_FRAMES = 8     # longer paths render their first frame once untimed (kernel compilation)


class FrameWriter:
    """Writes frames in background threads while the GPU renders the next ones; at most
    `max_pending` frames wait in host memory (a slow disk holds rendering back, not memory).
    Pinned host buffers are reused from frame to frame (allocating them is slow)."""

    def __init__(self, fmt: str, threads: int = WRITER_THREADS, max_pending: int = 8):
        self.fmt, self.max_pending = fmt, max_pending
        self.pool = ThreadPoolExecutor(threads)
        self.pending: deque = deque()
        self.free: queue.SimpleQueue = queue.SimpleQueue()

    def _host_for(self, bufs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        try:
            host = self.free.get_nowait()
        except queue.Empty:
            return None
        same = host.keys() == bufs.keys() and all(host[k].shape == t.shape and host[k].dtype == t.dtype
                                                  for k, t in bufs.items())
        return host if same else None

    def submit(self, path: Path, rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor) -> None:
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        bufs = frame_buffers(rgb, alpha, depth, self.fmt)
        copy = HostCopy(bufs, self._host_for(bufs))

        def write():
            try:
                write_buffers(path, copy.result(), self.fmt)
            finally:
                if copy.done is not None:
                    self.free.put(copy.host)
        self.pending.append(self.pool.submit(write))

    def close(self) -> None:
        """Wait for every frame (re-raises a writer's error)."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown()


def parse_exposure(value: str, n_views: int, view_names: list[str]):
    if value == "mean":
        return "mean"
    if value in view_names:
        return view_names.index(value)
    try:
        k = int(value)
    except ValueError:
        k = -1
    if not 0 <= k < n_views:
        raise InputError(f"--exposure {value}: use 'mean', a view name or a view index 0..{n_views - 1}.")
    return k


def render_path(run_dir: str, path_json: str, out_dir: str, fmt: str = FORMAT.default, exposure: str = "mean",
                ss: int | None = None, device: str = "auto", grid_backend: str = "auto") -> dict:
    FORMAT.check(fmt)
    ctx = distributed.setup(device)     # under torchrun: this rank's GPU
    dev = ctx.device
    run = RunFolder(run_dir)
    settings = run.settings()
    numbers, cams, _fps = read_camera_path(path_json)
    model, _ = load_model(run, dev, grid_backend)
    names = settings.view_names
    expo = parse_exposure(exposure, len(names), names)
    rast = Rasterizer(load_mesh(settings.mesh), dev)
    ss = ss or settings.ss
    out = make_dir(out_dir, "--out")
    todo = list(zip(numbers, cams))[ctx.rank::ctx.world]    # under torchrun: every W-th frame
    prog = events.Progress("render", len(todo))
    writer = FrameWriter(fmt)
    if len(todo) >= WARMUP_MIN_FRAMES:   # kernels compiled or loaded before the clock starts
        render_tensors(model, rast, todo[0][1], ss, expo)
    distributed.barrier()     # every rank is ready: `seconds` times the frame loop alone
    t0 = time.monotonic()
    written = 0
    with StopFlag() as flag:   # a stop (or the reader gone) ends it between frames
        try:
            for k, (n, cam) in enumerate(todo):
                if flag.stop:
                    break
                writer.submit(out / frame_filename(n, fmt), *render_tensors(model, rast, cam, ss, expo))
                written = k + 1
                prog.update(k + 1, frame=n)
        finally:
            writer.close()
        distributed.barrier()     # every rank's frames are on disk before rank 0 reports them all
        if written < len(todo):
            events.emit("stopped", stage="render", step=written, total=len(todo), out_dir=str(out),
                        files=[frame_filename(n, fmt) for n, _ in todo[:written]])
            return {"frames": written, "out_dir": str(out), "stopped": True}
    dt = time.monotonic() - t0
    events.emit("done", stage="render", frames=len(cams), out_dir=str(out), seconds=dt,
                files=[frame_filename(n, fmt) for n in numbers])
    return {"frames": len(cams), "out_dir": str(out), "seconds": dt}
