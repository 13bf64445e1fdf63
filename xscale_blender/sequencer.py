"""Image strips in the Video Sequence Editor, for every supported Blender version, and the scene
that holds them.

Blender 4.4 renamed `SequenceEditor.sequences` to `strips` (the old name is gone in 5.0);
`new_image()` + `elements.append()` exist under both names.

A strip in a scene's own sequencer is what F12 and Ctrl-F12 of that scene render (Blender's
sequencer post-processing), so the rendered frames go to another scene's sequencer: the Strip
Scene setting, else a scene 'SCENE Edit' made for them, which follows the rendering scene's output
size, frame rate and colour management, so the strip looks as F12's frames do.
"""
from __future__ import annotations

import os
from typing import Sequence

import bpy

from .backend_link import config

P_STRIPS_OF = "xscale_strips_of"     # on a scene made for strips: the scene whose frames it shows
FOLLOWED = {"render": ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
                       "pixel_aspect_y", "fps", "fps_base", "film_transparent"),
            "display_settings": ("display_device",),       # before the view, which it limits
            "view_settings": ("view_transform", "look", "exposure", "gamma")}


def top_level_strips(scene: bpy.types.Scene):
    """The editor's top-level strip collection (creates the editor when missing)."""
    se = scene.sequence_editor or scene.sequence_editor_create()
    return se.strips if hasattr(se, "strips") else se.sequences


def strip_scene(scene: bpy.types.Scene) -> bpy.types.Scene:
    """The scene whose sequencer gets `scene`'s rendered strips: the Strip Scene setting, else
    'SCENE Edit', made for them (and then the setting)."""
    s = scene.xscale
    target = s.strip_scene
    if target is None:
        target = next((sc for sc in bpy.data.scenes if sc.get(P_STRIPS_OF) == scene), None)
        if target is None:
            target = bpy.data.scenes.new(f"{scene.name} Edit")
            target[P_STRIPS_OF] = scene
        s.strip_scene = target
    if target is not scene and target.get(P_STRIPS_OF) == scene:
        follow(target, scene)
    return target


def follow(target: bpy.types.Scene, scene: bpy.types.Scene) -> None:
    """`target` (a scene made for `scene`'s strips) takes `scene`'s output and colour settings."""
    for group, names in FOLLOWED.items():
        src, dst = getattr(scene, group), getattr(target, group)
        for name in names:
            if getattr(dst, name) != getattr(src, name):
                setattr(dst, name, getattr(src, name))


def cover_strips(scene: bpy.types.Scene) -> None:
    """The scene's frame range from its first strip's first frame to its last strip's last one."""
    strips = list(top_level_strips(scene))
    if strips:
        scene.frame_start = min(st.frame_final_start for st in strips)
        scene.frame_end = max(st.frame_final_end for st in strips) - 1


def remove_strip(scene: bpy.types.Scene, name: str) -> bool:
    """Remove the scene's top-level strip `name`; whether there was one."""
    if scene.sequence_editor is None:
        return False
    strips = top_level_strips(scene)
    old = strips.get(name)
    if old is not None:
        strips.remove(old)
    return old is not None


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
        remove_strip(scene, name)
    strip = strips.new_image(name=name, filepath=os.path.join(directory, filenames[0]),
                             channel=channel, frame_start=frame_start)
    for fn in filenames[1:]:
        strip.elements.append(fn)
    # new_image() sizes the strip for the first image; make it span every element.
    strip.frame_final_duration = len(filenames)
    strip.blend_type = "ALPHA_OVER"
    strip.alpha_mode = "STRAIGHT" if out.straight_alpha else "PREMUL"
    return strip
