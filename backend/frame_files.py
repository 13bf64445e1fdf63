"""Rendered frame files, one codec per output format of backend.config.FORMATS: how a frame is
packed where it was rendered (the GPU: fewer bytes to copy, no per-pixel work for the writer) and
how the packed buffers are written. Adding a format: an entry in config.FORMATS (name, extension,
what Blender loads) and a codec here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .colour import linear_to_srgb, to_u8
from .config import FORMATS


@dataclass(frozen=True)
class Codec:
    pack: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
    write: Callable[[Path, dict[str, np.ndarray]], None]


def _pack_png(rgb, alpha, depth):
    """8-bit sRGB RGBA, straight alpha (a quarter of the bytes of float32 RGB)."""
    return {"rgba": torch.cat([to_u8(linear_to_srgb(rgb)), to_u8(alpha)[..., None]], -1)}


def _write_png(path, bufs):
    from .imageio import write_png
    write_png(path, bufs["rgba"])


def _pack_exr(rgb, alpha, depth):
    """Linear RGB, alpha (coverage) and Z (camera depth), float32."""
    return {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2], "A": alpha, "Z": depth}


def _write_exr(path, bufs):
    from .imageio import write_exr
    write_exr(path, bufs)


CODECS: dict[str, Codec] = {"png": Codec(_pack_png, _write_png), "exr": Codec(_pack_exr, _write_exr)}
assert CODECS.keys() == FORMATS.keys(), "every output format needs a codec"


def frame_buffers(rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """What a file of `fmt` stores, computed where the frame is."""
    return CODECS[fmt].pack(rgb, alpha, depth)


def write_buffers(path: Path, bufs: dict[str, np.ndarray], fmt: str) -> None:
    CODECS[fmt].write(path, bufs)
