"""Render passes: what a rendered frame holds, one entry per pass. Everywhere a frame travels its
passes are a dict keyed by these names: backend/render.py computes them, frame_files.py stores
those of a file format, serve.py sends them, and the add-on's render engine hands them to Blender.

Standard library only: the add-on loads this module through backend_link.

Adding a pass: an entry here and the function that computes it in backend/render.py
(PASS_FUNCTIONS). The passes follow Blender's conventions, so the compositor treats them as
Cycles' own: filtered passes (Combined, Normal) average every sub-sample, those that miss the
mesh counting as 0, so their values are premultiplied by alpha; unfiltered ones (Depth,
Position) describe the covered sub-samples alone.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderPass:
    name: str                       # the key in every dict of passes, and on the wire
    channels: int                   # float32 values per pixel: an (H, W) image for 1, else (H, W, channels)
    description: str
    formats: tuple[str, ...]        # the output file formats (config.FORMATS) that store it
    exr_channels: tuple[str, ...]   # its channels' names in an EXR file
    blender_pass: str               # Blender's name of the pass (RenderEngine.register_pass)
    blender_channels: str           # Blender's channel ids, one letter a channel
    blender_type: str               # "COLOR", "VALUE" or "VECTOR"
    blender_toggle: str | None      # the view layer property that asks for it; None: always there


PASSES: dict[str, RenderPass] = {p.name: p for p in (
    RenderPass("rgba", 4, "linear RGB (straight, 0 off the mesh) and alpha = the covered fraction of the "
               "sub-samples (files and Blender: RGB premultiplied)", formats=("png", "exr"), exr_channels=("R", "G", "B", "A"),
               blender_pass="Combined", blender_channels="RGBA", blender_type="COLOR", blender_toggle=None),
    RenderPass("depth", 1, "camera z (distance along the view axis), infinity where the mesh is not seen",
               formats=("exr",), exr_channels=("Z",),
               blender_pass="Depth", blender_channels="Z", blender_type="VALUE", blender_toggle="use_pass_z"),
    RenderPass("normal", 3, "world-space unit normal of the mesh (interpolated vertex normals, turned to face the "
               "camera) times alpha, 0 off the mesh", formats=("exr",),
               exr_channels=("Normal.X", "Normal.Y", "Normal.Z"), blender_pass="Normal", blender_channels="XYZ",
               blender_type="VECTOR", blender_toggle="use_pass_normal"),
    RenderPass("position", 3, "world-space surface point (the mean of the covered sub-samples), 0 off the mesh",
               formats=("exr",), exr_channels=("Position.X", "Position.Y", "Position.Z"),
               blender_pass="Position", blender_channels="XYZ", blender_type="VECTOR",
               blender_toggle="use_pass_position"),
)}
assert all(p.channels == len(p.exr_channels) == len(p.blender_channels) for p in PASSES.values())


def for_format(fmt: str) -> tuple[str, ...]:
    """The passes a file of output format `fmt` stores."""
    return tuple(name for name, p in PASSES.items() if fmt in p.formats)


def shape(name: str, height: int, width: int) -> list[int]:
    """The array shape of pass `name` for an image of height x width."""
    c = PASSES[name].channels
    return [height, width] if c == 1 else [height, width, c]
