"""Rendering: rasterize the mesh for a camera, query the manifold at covered pixels, decode.
Pixels the mesh does not cover are transparent (alpha 0); alpha is the covered fraction of the
ss x ss sub-samples. A frame is a dict of the passes of backend/passes.py (only those asked
for), each computed by its function in PASS_FUNCTIONS from the rasterized surface. Frames are
packed for their file format on the GPU, copied to host memory on a side stream and written in
background threads, all overlapped with the next frames' GPU work."""
from __future__ import annotations

import os
import queue
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.profiler import record_function

from . import distributed, events
from .cameras import Camera
from .campath import frame_filename, read_camera_path
from .checkpoint import load_model
from .colour import linear_to_srgb
from .config import FORMAT
from .errors import InputError
from .footprint import camera_rows, footprints
from .frame_files import frame_buffers, write_buffers
from .meshio import load_mesh
from .model import Manifold
from .passes import PASSES, for_format
from .raster import Rasterizer, Surface, pixel_directions
from .runfolder import RunFolder, make_dir
from .stopflag import StopFlag


@dataclass(frozen=True)
class Shot:
    """One frame as the pass functions see it: the model, the camera and its rasterized surface."""
    model: Manifold
    cam: Camera
    ss: int
    exposure: str | int
    chunk: int
    surface: Surface
    device: torch.device


def _rgba(shot: Shot) -> torch.Tensor:
    """Linear RGB (straight, 0 where alpha = 0) and alpha = the covered fraction of the sub-samples."""
    s, cam, dev, n = shot.surface, shot.cam, shot.device, shot.chunk
    covered = s.mask.any(-1)
    jj, ii = torch.nonzero(covered, as_tuple=True)
    rgba = torch.zeros(cam.height, cam.width, 4, device=dev)
    if len(jj):
        dirs = pixel_directions(cam, ii, jj).to(dev)
        xyz, m = s.xyz[covered].to(dev), s.mask[covered].to(dev)
        row = camera_rows([cam])[0]
        with record_function("render.model"):
            out = torch.cat([shot.model.render(xyz[k:k + n], m[k:k + n], dirs[k:k + n], shot.exposure,
                                               footprints(xyz[k:k + n], row, shot.ss))
                             for k in range(0, len(jj), n)])
        rgba[jj.to(dev), ii.to(dev), :3] = out
    rgba[..., 3] = s.mask.float().mean(-1).to(dev)
    return rgba


def _depth(shot: Shot) -> torch.Tensor:
    """Camera z, infinity where the mesh is not seen."""
    return shot.surface.depth.to(shot.device)


def _position(shot: Shot) -> torch.Tensor:
    """World-space mean of the covered sub-samples' points, 0 where the mesh is not seen."""
    s = shot.surface
    hits = s.mask.sum(-1, keepdim=True)
    return (torch.einsum("hwsc,hws->hwc", s.xyz, s.mask.to(s.xyz.dtype)) / hits.clamp_min(1)).to(shot.device)


def _normal(shot: Shot) -> torch.Tensor:
    """World-space unit normal turned towards the camera (Cycles turns back faces round too), times
    the covered fraction: Blender's Normal pass is a filtered pass, premultiplied like Combined."""
    s, dev = shot.surface, shot.device
    n = s.normal.to(dev)
    view = _position(shot) - torch.as_tensor(shot.cam.center, dtype=n.dtype, device=dev)
    n = torch.where(((n * view).sum(-1, keepdim=True) > 0), -n, n)
    return n * s.mask.float().mean(-1, keepdim=True).to(dev)


# How each pass of backend/passes.py is computed.
PASS_FUNCTIONS: dict[str, Callable[[Shot], torch.Tensor]] = {
    "rgba": _rgba, "depth": _depth, "normal": _normal, "position": _position}
assert PASS_FUNCTIONS.keys() == PASSES.keys(), "every render pass needs a function that computes it"


@torch.no_grad()
def render_tensors(model: Manifold, rast: Rasterizer, cam: Camera, ss: int, exposure="mean",
                   chunk: int = 1 << 20, passes: Iterable[str] = tuple(PASSES)) -> dict[str, torch.Tensor]:
    """The passes named in `passes` (backend/passes.py) of one frame, on the model's device."""
    dev = next(model.parameters()).device
    names = tuple(dict.fromkeys(passes))
    with record_function("render.surface"):
        s = rast.surface(cam, ss, normals="normal" in names)
    shot = Shot(model, cam, ss, exposure, chunk, s, dev)
    return {name: PASS_FUNCTIONS[name](shot) for name in names}


def render_camera(model: Manifold, rast: Rasterizer, cam: Camera, ss: int, exposure="mean",
                  chunk: int = 1 << 20, passes: Iterable[str] = tuple(PASSES)) -> dict[str, np.ndarray]:
    """render_tensors' passes as numpy arrays."""
    return {k: v.cpu().numpy() for k, v in render_tensors(model, rast, cam, ss, exposure, chunk, passes).items()}


def render_srgb(model: Manifold, rast: Rasterizer, cam: Camera, ss: int,
                exposure="mean") -> tuple[np.ndarray, np.ndarray]:
    """A frame as photos hold it, to score it against them: sRGB (H, W, 3) and coverage (H, W)."""
    rgba = render_camera(model, rast, cam, ss, exposure, passes=("rgba",))["rgba"]
    return linear_to_srgb(rgba[..., :3]), rgba[..., 3]


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

    def submit(self, path: Path, passes: dict[str, torch.Tensor]) -> None:
        """Write the file of a frame's passes (those of the writer's format are needed)."""
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        bufs = frame_buffers(passes, self.fmt)
        copy = HostCopy(bufs, self._host_for(bufs))

        def write():
            try:
                write_buffers(path, copy.result(), self.fmt)
            except OSError as e:      # nothing of the frame is left behind (files are renamed when complete)
                n = sum(b.numel() * b.element_size() for b in bufs.values())
                size = f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
                raise InputError(f"{path}: cannot write the frame ({e.strerror or e}; a frame takes up to "
                                 f"{size}): free space on that disk or choose another --out folder.") from None
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
    passes = for_format(fmt)
    if len(todo) >= WARMUP_MIN_FRAMES:   # kernels compiled or loaded before the clock starts
        render_tensors(model, rast, todo[0][1], ss, expo, passes=passes)
    distributed.barrier()     # every rank is ready: `seconds` times the frame loop alone
    t0 = time.monotonic()
    written = 0
    with StopFlag() as flag:   # a stop (or the reader gone) ends it between frames
        try:
            for k, (n, cam) in enumerate(todo):
                if flag.stop:
                    break
                writer.submit(out / frame_filename(n, fmt), render_tensors(model, rast, cam, ss, expo, passes=passes))
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
