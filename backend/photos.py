"""Photos: decoding one to 8-bit RGB for the ray cache, and checking that a set of them decodes
(truncated or corrupt files) at the size their cameras expect, in parallel threads (the
decoders release the GIL). Pillow, numpy and the standard library only."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .cameras import Camera
from .errors import InputError
from .imageio import pillow_errors


def load_rgb8(path: Path, cam: Camera) -> np.ndarray:
    """The photo as (H, W, 3) uint8 sRGB; InputError naming the file when it cannot be decoded
    or its size is not the camera's."""
    from PIL import Image
    with pillow_errors(path), Image.open(path) as im:
        if im.size != (cam.width, cam.height):          # checked before the pixels are decoded
            raise InputError(f"{path}: image is {im.width}x{im.height} but its camera expects "
                             f"{cam.width}x{cam.height}.")
        if im.mode == "I;16" or im.mode.startswith("I;16"):
            a = (np.asarray(im, dtype=np.float32) / 257.0).round().astype(np.uint8)
            return np.repeat(a[..., None], 3, -1)
        return np.array(im.convert("RGB"))      # writable: handed to torch


def decode_problem(path: Path, cam: Camera) -> str | None:
    """None when the photo decodes completely at the camera's size, else the InputError text."""
    try:
        load_rgb8(path, cam)
    except InputError as e:
        return str(e)
    return None


def decode_problems(views: Iterable, on_done: Callable[[int], None] | None = None,
                    workers: int | None = None) -> dict[str, str]:
    """{view name: problem} for the views (with .name, .image_path, .camera) whose photo does not
    decode at its camera's size; every photo is decoded, `workers` at a time. `on_done(k)` is
    called (on this thread) after the k-th photo."""
    views = list(views)
    problems: dict[str, str] = {}
    if not views:
        return problems
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(decode_problem, v.image_path, v.camera) for v in views]
        for k, (v, f) in enumerate(zip(views, futures)):
            msg = f.result()
            if msg is not None:
                problems[v.name] = msg
            if on_done is not None:
                on_done(k + 1)
    return problems


def check_photos(views: Iterable, what: str) -> None:
    """InputError naming the first photo among `views` that does not decode (`what`: which ones,
    for the message, e.g. "held-out")."""
    problems = decode_problems(views)
    if problems:
        first = next(iter(problems.values()))
        more = f" ({len(problems) - 1} more {what} photo(s) too)" if len(problems) > 1 else ""
        raise InputError(first + more)


def size_disagreements(views: Iterable, tolerance: float = 0.05, absolute: float = 0.2) -> dict[str, str]:
    """{view name: reason} for photos whose size does not match what their intrinsics imply: the
    principal point sits near the image centre, so (W / 2cx, H / 2cy) is about (1, 1) and about
    the same for every photo of a capture. A photo is flagged when its ratios differ from the
    capture's median by more than `tolerance`, or from 1 by more than `absolute` (a photo scaled
    without scaling its camera file, e.g. 1.3x)."""
    views = list(views)
    ratios = np.array([[v.camera.width / (2 * v.camera.cx), v.camera.height / (2 * v.camera.cy)]
                       for v in views], float)
    if not len(ratios):
        return {}
    median = np.median(ratios, 0)
    out = {}
    for v, r in zip(views, ratios):
        off_rest = np.abs(r / median - 1).max()
        off_k = np.abs(r - 1).max()
        if off_rest > tolerance or off_k > absolute:
            k_w, k_h = 2 * v.camera.cx, 2 * v.camera.cy
            out[v.name] = (f"{v.image_path}: the photo is {v.camera.width}x{v.camera.height} but its "
                           f"intrinsics (cx, cy) suggest about {k_w:.0f}x{k_h:.0f}"
                           + (f" (x{r.mean() / median.mean():.2f} against the rest of the capture)"
                              if off_rest > tolerance else "")
                           + "; a photo resized without its camera file?")
    return out
