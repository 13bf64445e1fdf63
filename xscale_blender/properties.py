"""Per-scene settings (saved in the .blend, so headless runs of that file use them) and the paths
they name.

Settings the backend has too (supersampling, hold-out, device, preset, iterations, output format,
...) are built from backend.config's Options: default, limits, description and choices come from
there, so the panel cannot offer what the command line refuses. A Blender property cannot be
None, so where an option's default is decided later (the finest image level, the preset's steps,
the cache's supersampling) an `unset` value stands for it and is not passed to the backend.

No `from __future__ import annotations` in modules with bpy properties: Blender reads the
annotations as property definitions (here they are built when the classes are created).
"""

import json
import os
import re
from typing import Any, NamedTuple, Optional

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .backend_link import InputError, RunFolder, config, schedule


def _description(opt, unset: Any, note: str) -> str:
    """The option's help as a tooltip; its '(default: X)' becomes '(UNSET: X)'."""
    text = opt.help[:1].upper() + opt.help[1:]
    if unset is not None:
        shown = f"'{unset}'" if isinstance(unset, str) else str(unset)
        text = re.sub(r"\(default: ", f"({shown}: ", text)
    return f"{text}; {note}" if note else text


def option_property(opt, label: str, *, unset: Any = None, soft_max: Optional[float] = None,
                    note: str = ""):
    """A Blender property for a backend.config Option: an EnumProperty for choices, else an Int-,
    Float- or StringProperty with the option's default and limits. With `unset`, that value is the
    default when the option has none and is allowed below the option's minimum."""
    desc = _description(opt, unset, note)
    if opt.choices:
        return EnumProperty(name=label, description=desc, items=list(opt.choices), default=opt.default)
    default = opt.default if opt.default is not None else unset
    if opt.kind is str:
        return StringProperty(name=label, description=desc, default=default or "")
    prop = {int: IntProperty, float: FloatProperty}[opt.kind]
    kw: dict[str, Any] = {}
    lo = opt.min
    if unset is not None:
        lo = unset if lo is None else min(lo, unset)
    if lo is not None:
        kw["min"] = opt.kind(lo)
    if opt.max is not None:
        kw["max"] = opt.kind(opt.max)
    if soft_max is not None:
        kw["soft_max"] = opt.kind(soft_max)
    return prop(name=label, description=desc, default=opt.kind(default), **kw)


class OptionSetting(NamedTuple):
    """A scene setting that is a backend option."""
    option: Any            # backend.config.Option
    label: str
    unset: Any = None      # the property value that leaves the option to the backend's default
    soft_max: Optional[float] = None
    note: str = ""         # added to the option's help in the tooltip

    def property(self):
        return option_property(self.option, self.label, unset=self.unset, soft_max=self.soft_max,
                               note=self.note)

    def value(self, prop_value: Any) -> Any:
        """What the backend gets: None for the unset value."""
        return None if self.unset is not None and prop_value == self.unset else prop_value

    def arguments(self, prop_value: Any) -> list[str]:
        value = self.value(prop_value)
        return [] if value is None else [self.option.flag, str(value)]


SCENE_OPTIONS: dict[str, OptionSetting] = {
    # cache
    "level": OptionSetting(config.LEVEL, "Image Level", unset=-1),
    "supersample": OptionSetting(config.SS, "Supersampling"),
    "test_every": OptionSetting(config.TEST_EVERY, "Hold Out Every"),
    "device": OptionSetting(config.DEVICE, "Device"),
    "gpus": OptionSetting(config.NPROC, "GPUs", soft_max=8, note="Linux only (NCCL)"),
    # train
    "preset": OptionSetting(config.PRESET, "Model"),
    "iterations": OptionSetting(config.ITERS, "Iterations", unset=0, soft_max=200000),
    "checkpoint_every": OptionSetting(config.CHECKPOINT_EVERY, "Checkpoint Every (s)", soft_max=3600),
    # render
    "render_format": OptionSetting(config.FORMAT, "Format"),
    "exposure": OptionSetting(config.EXPOSURE, "Exposure", unset=""),
    "render_supersample": OptionSetting(config.RENDER_SS, "Supersampling", unset=0),
}


def auto_value(s, name: str) -> tuple[Any, str]:
    """What the backend does with an unset setting, for the panels: (a value to start from when
    the user sets it, the words for Auto), e.g. (600, 'preset: 600')."""
    if name == "iterations":
        preset = config.AUTO_PRESET.get(s.device) if s.preset == "auto" else s.preset
        if preset is None:          # device auto: the preset follows the device found (short: the sidebar is narrow)
            (gpu, gpu_n), (_, cpu_n) = (preset_steps(s, config.AUTO_PRESET[d])[::2] for d in ("cuda", "cpu"))
            return gpu, f"GPU {gpu_n}, CPU {cpu_n}"
        n, words, _ = preset_steps(s, preset)
        return n, words
    if name == "level":
        return 0, "finest"
    if name == "render_supersample":
        ss = cached_supersampling(s)
        return (ss, f"as cached: {ss}") if ss else (config.SS.default, "as cached")
    raise KeyError(name)


def preset_steps(s, preset: str) -> tuple[int, str, str]:
    """A preset's training steps: its own, or those the schedule gives the run's ray cache (at
    least the schedule's least before there is a cache): (steps, words, the steps in short)."""
    tc = config.PRESETS[preset].config
    if tc.iters is not None:
        return tc.iters, f"preset: {tc.iters}", str(tc.iters)
    rays = _run_value(s, lambda run: run.cache / "meta.json",
                      lambda run: json.loads((run.cache / "meta.json").read_text(encoding="utf-8"))["n_rays"])
    if not isinstance(rays, int) or rays < 1:
        least = tc.schedule.min_steps
        return least, f"from capture: \u2265{least}", f"\u2265{least}"
    n = schedule.plan(tc, rays, batch_given=False).iters
    return n, f"from capture: {n}", str(n)


_run_values: dict[str, tuple[int, Any]] = {}      # file -> (mtime, what was read from it)


def _run_value(s, file_of, read) -> Any:
    """`read(run)` for the scene's run folder, read again only when its file `file_of(run)` changes
    (panels draw often); None without that file or when it cannot be read."""
    run = run_folder(s)
    if run is None:
        return None
    path = file_of(run)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    key = str(path)
    if key not in _run_values or _run_values[key][0] != mtime:
        try:
            value = read(run)
        except (InputError, OSError, ValueError, KeyError, TypeError):
            value = None
        _run_values[key] = (mtime, value)
    return _run_values[key][1]


def cached_supersampling(s) -> Optional[int]:
    """The supersampling of the run folder's ray cache (what renders use by default), None when
    there is no cache yet."""
    return _run_value(s, lambda run: run.config, lambda run: run.settings(need_cache=False).ss)


def option_arguments(settings, names) -> list[str]:
    """Backend flags for the named scene settings (unset ones left out)."""
    args: list[str] = []
    for name in names:
        args += SCENE_OPTIONS[name].arguments(getattr(settings, name))
    return args


class _BackendOptions:
    """The settings built from backend.config (SCENE_OPTIONS)."""
    __annotations__ = {name: setting.property() for name, setting in SCENE_OPTIONS.items()}


class XScaleSceneSettings(_BackendOptions, bpy.types.PropertyGroup):
    # scene and run
    scene_dir: StringProperty(name="Scene Folder", subtype="DIR_PATH",
                              description="MVSNet scene: images/, cams/ and the mesh")
    run_dir: StringProperty(name="Run Folder", subtype="DIR_PATH",
                            description="Where the backend writes the cache, checkpoints and renders")
    mesh_path: StringProperty(name="Mesh", subtype="FILE_PATH",
                              description="Mesh file to use instead of the one found in the scene folder")
    # render
    render_dir: StringProperty(name="Output Folder", subtype="DIR_PATH",
                               description="Frames go here (empty: RUN/renders/CAMERA)")
    strip_scene: PointerProperty(
        type=bpy.types.Scene, name="Strip Scene",
        description="Scene whose sequencer gets the rendered strip (empty: a scene 'SCENE Edit' made for it). "
                    "In the rendering scene itself, F12 and Ctrl-F12 would render the strip, not the model")
    strip_channel: IntProperty(name="Channel", default=2, min=1, max=128,
                               description="Sequencer channel of the rendered strip")
    strip_use_path_start: BoolProperty(name="Start at First Frame", default=True,
                                       description="Place the strip at the first frame of the path")
    strip_frame_start: IntProperty(name="Strip Start", default=1,
                                   description="Sequencer frame where the strip starts")
    # colour management (view_transform.py): switched to Standard once, and what it was before
    view_transform_set: BoolProperty(options={"HIDDEN"})
    view_transform_before: StringProperty(options={"HIDDEN"})
    look_before: StringProperty(options={"HIDDEN"})
    # the XScale-NVS render engine's viewport (Rendered shading)
    preview_supersample: IntProperty(
        name="Viewport Supersampling", default=1, min=int(config.RENDER_SS.min), max=int(config.RENDER_SS.max),
        description="Sub-samples per pixel side in the viewport's Rendered shading")
    preview_divisor: IntProperty(
        name="Resolution While Moving", default=4, min=1, max=16,
        description="While the view moves, the viewport renders at 1/N of its resolution, then at full "
                    "resolution once it rests (1: always full; skipped when full frames come fast enough)")


def settings(scene: "bpy.types.Scene") -> "XScaleSceneSettings":
    return scene.xscale


def abspath(path: str) -> str:
    """A path setting or operator property ('//' = next to the .blend) as an absolute path."""
    return os.path.normpath(bpy.path.abspath(path)) if path else ""


def run_folder(s: "XScaleSceneSettings") -> Optional[RunFolder]:
    """The run folder the settings name, or None when none is set."""
    root = abspath(s.run_dir)
    return RunFolder(root) if root else None


class XSCALE_OT_option_auto(bpy.types.Operator):
    """Set this setting yourself, or leave it to the backend (Auto)"""
    bl_idname = "xscale.option_auto"
    bl_label = "Auto"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    name: StringProperty(options={"HIDDEN"})
    auto: BoolProperty(options={"HIDDEN"}, description="Back to Auto (else: set it yourself)")

    @classmethod
    def description(cls, context, props):
        setting = SCENE_OPTIONS.get(props.name)
        if setting is None:
            return cls.__doc__
        value, words = auto_value(context.scene.xscale, props.name)
        if props.auto:
            return f"Back to Auto: leave {setting.label} to the backend ({words})"
        return f"Set {setting.label} yourself, starting at {value} (Auto: {words})"

    def execute(self, context):
        setting = SCENE_OPTIONS.get(self.name)
        if setting is None or setting.unset is None:
            return {"CANCELLED"}
        s = context.scene.xscale
        setattr(s, self.name, setting.unset if self.auto else auto_value(s, self.name)[0])
        return {"FINISHED"}


CLASSES = (XScaleSceneSettings, XSCALE_OT_option_auto)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.xscale = PointerProperty(type=XScaleSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.xscale
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
