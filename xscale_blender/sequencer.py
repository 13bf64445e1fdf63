"""Image strips in the Video Sequence Editor, for every supported Blender version.

Blender 4.4 renamed `SequenceEditor.sequences` to `strips` (the old name is gone in 5.0);
`new_image()` + `elements.append()` exist under both names.
"""
from __future__ import annotations

import os
from typing import Sequence

import bpy

from .backend_link import config


def top_level_strips(scene: bpy.types.Scene):
    """The editor's top-level strip collection (creates the editor when missing)."""
    se = scene.sequence_editor or scene.sequence_editor_create()
    return se.strips if hasattr(se, "strips") else se.sequences


def all_strips(scene: bpy.types.Scene) -> list:
    se = scene.sequence_editor
    if se is None:
        return []
    return list(se.strips_all if hasattr(se, "strips_all") else se.sequences_all)


def add_image_strip(scene: bpy.types.Scene, directory: str, filenames: Sequence[str], *,
                    name: str, channel: int, frame_start: int, replace: bool = True,
                    fmt: str = "png"):
    """One image strip showing `filenames` (inside `directory`) on consecutive frames, files of
    output format `fmt` (a key of config.FORMATS).

    A strip of the same name (an earlier render of the same path) is replaced, so rendering
    again updates the edit instead of stacking strips. Alpha is kept: the strip is composited
    over lower channels, with the format's alpha (straight or premultiplied). The colour space is
    left to Blender: it reads 8-bit files as sRGB and float files (EXR) as the linear values they
    hold; naming a linear space on an EXR strip would convert them a second time.
    """
    out = config.FORMATS[fmt]
    if not filenames:
        raise ValueError("no frames to add")
    strips = top_level_strips(scene)
    if replace:
        old = strips.get(name)
        if old is not None:
            strips.remove(old)
    strip = strips.new_image(name=name, filepath=os.path.join(directory, filenames[0]),
                             channel=channel, frame_start=frame_start)
    for fn in filenames[1:]:
        strip.elements.append(fn)
    # new_image() sizes the strip for the first image; make it span every element.
    strip.frame_final_duration = len(filenames)
    strip.blend_type = "ALPHA_OVER"
    strip.alpha_mode = "STRAIGHT" if out.straight_alpha else "PREMUL"
    return strip
