"""Rendering: rasterize the mesh for a camera, query the manifold at covered pixels, decode.
Pixels the mesh does not cover are transparent (alpha 0); alpha is the covered fraction of the
ss x ss sub-samples. Image files are written in a background thread, overlapped with GPU work."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed, events
from .cameras import Camera
from .campath import frame_filename, read_camera_path
from .checkpoint import load_model
from .colour import linear_to_srgb
from .errors import InputError
from .meshio import load_mesh
from .model import Manifold
from .raster import Rasterizer, pixel_directions
from .runfolder import RunFolder


@dataclass
class Frame:
    rgb_linear: np.ndarray   # (H, W, 3) float32, straight (not premultiplied), 0 where alpha = 0
    alpha: np.ndarray        # (H, W) float32 covered fraction
    depth: np.ndarray        # (H, W) float32 camera z, inf where uncovered


@torch.no_grad()
def render_camera(model: Manifold, rast: Rasterizer, cam: Camera, ss: int, exposure="mean",
                  chunk: int = 1 << 20) -> Frame:
    dev = next(model.parameters()).device
    s = rast.surface(cam, ss)
    covered = s.mask.any(-1)
    jj, ii = torch.nonzero(covered, as_tuple=True)
    rgb = torch.zeros(cam.height, cam.width, 3, device=dev)
    if len(jj):
        dirs = pixel_directions(cam, ii, jj).to(dev)
        xyz, m = s.xyz[covered].to(dev), s.mask[covered].to(dev)
        out = torch.cat([model(xyz[k:k + chunk], m[k:k + chunk], dirs[k:k + chunk],
                               exposure=exposure, linear=True) for k in range(0, len(jj), chunk)])
        rgb[jj.to(dev), ii.to(dev)] = out
    alpha = s.mask.float().mean(-1)
    return Frame(rgb.cpu().numpy(), alpha.cpu().numpy(), s.depth.cpu().numpy())


def write_frame(path: Path, frame: Frame, fmt: str) -> None:
    from .imageio import write_exr, write_png
    if fmt == "png":
        write_png(path, linear_to_srgb(frame.rgb_linear), frame.alpha)
    else:
        write_exr(path, {"R": frame.rgb_linear[..., 0], "G": frame.rgb_linear[..., 1],
                         "B": frame.rgb_linear[..., 2], "A": frame.alpha, "Z": frame.depth})


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


def render_path(run_dir: str, path_json: str, out_dir: str, fmt: str = "png", exposure: str = "mean",
                ss: int | None = None, device: str = "auto") -> dict:
    if fmt not in ("png", "exr"):
        raise InputError(f"--format {fmt}: choose png or exr.")
    ctx = distributed.setup(device)     # under torchrun: this rank's GPU
    dev = ctx.device
    run = RunFolder(run_dir)
    cfg = run.read_config()
    numbers, cams, _fps = read_camera_path(path_json)
    model, _ = load_model(run, dev)
    names = [v["name"] for v in cfg["views"]]
    expo = parse_exposure(exposure, len(names), names)
    rast = Rasterizer(load_mesh(cfg["mesh"]), dev)
    ss = ss or cfg["ss"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = list(zip(numbers, cams))[ctx.rank::ctx.world]    # under torchrun: every W-th frame
    prog = events.Progress("render", len(todo))
    writer = ThreadPoolExecutor(2)
    pending = []
    t0 = time.monotonic()
    for k, (n, cam) in enumerate(todo):
        frame = render_camera(model, rast, cam, ss, expo)
        pending.append(writer.submit(write_frame, out / frame_filename(n, fmt), frame, fmt))
        prog.update(k + 1, frame=n)
    for p in pending:
        p.result()
    writer.shutdown()
    distributed.barrier()     # every rank's frames are on disk before rank 0 reports them all
    dt = time.monotonic() - t0
    events.emit("done", stage="render", frames=len(cams), out_dir=str(out), seconds=dt,
                files=[frame_filename(n, fmt) for n in numbers])
    return {"frames": len(cams), "out_dir": str(out), "seconds": dt}
