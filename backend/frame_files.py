"""Rendered frame files, one codec per output format of backend.config.FORMATS: how a frame's
passes (backend/passes.py: those the format stores) are packed where they were rendered (the GPU:
fewer bytes to copy, no per-pixel work for the writer) and how the packed buffers are written.
Adding a format: an entry in config.FORMATS (name, extension, what Blender loads), the format in
the `formats` of the passes it stores, and a codec here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .colour import linear_to_srgb, to_u8
from .config import FORMATS
from .passes import PASSES, for_format


@dataclass(frozen=True)
class Codec:
    pack: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    write: Callable[[Path, dict[str, np.ndarray]], None]


def _pack_png(passes):
    """8-bit sRGB RGBA, straight alpha (a quarter of the bytes of float32 RGB)."""
    rgba = passes["rgba"]
    return {"rgba": torch.cat([to_u8(linear_to_srgb(rgba[..., :3])), to_u8(rgba[..., 3:])], -1)}


def _write_png(path, bufs):
    from .imageio import write_png
    write_png(path, bufs["rgba"])


def _pack_exr(passes):
    """Every pass as float32 channels named by its exr_channels: linear RGB premultiplied by A =
    coverage (OpenEXR's convention, and how Blender reads and writes EXR), Z = camera depth,
    Normal.XYZ and Position.XYZ as Blender names them in its own EXR files."""
    out = {}
    for name, t in passes.items():
        if name == "rgba":
            t = torch.cat([t[..., :3] * t[..., 3:], t[..., 3:]], -1)
        names = PASSES[name].exr_channels
        out.update({names[0]: t} if t.dim() == 2 else {c: t[..., k] for k, c in enumerate(names)})
    return out


def _write_exr(path, bufs):
    from .imageio import write_exr
    write_exr(path, bufs)


CODECS: dict[str, Codec] = {"png": Codec(_pack_png, _write_png), "exr": Codec(_pack_exr, _write_exr)}
assert CODECS.keys() == FORMATS.keys(), "every output format needs a codec"
assert all(set(p.formats) <= FORMATS.keys() for p in PASSES.values()), "a pass names an unknown format"


def frame_buffers(passes: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """What a file of `fmt` stores of a frame's passes, computed where the frame is."""
    return CODECS[fmt].pack({name: passes[name] for name in for_format(fmt)})


def write_buffers(path: Path, bufs: dict[str, np.ndarray], fmt: str) -> None:
    CODECS[fmt].write(path, bufs)
