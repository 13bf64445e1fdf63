"""Per-scene settings (saved in the .blend, so headless runs of that file use them).

No `from __future__ import annotations` in modules with bpy properties: Blender reads the
annotations as property definitions."""

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

DEVICE_ITEMS = [
    ("auto", "Auto", "CUDA when available, else CPU"),
    ("cuda", "CUDA", "NVIDIA GPU"),
    ("cpu", "CPU", "Slow; for small tests"),
]
PRESET_ITEMS = [
    ("auto", "Auto", "Reference on a CUDA GPU, Small on the CPU"),
    ("reference", "Reference", "Settings of the paper (16 levels, 2^22 entries per level)"),
    ("small", "Small", "A smaller model that trains fast; for previews and small GPUs"),
]
FORMAT_ITEMS = [
    ("png", "PNG", "8-bit sRGB with alpha"),
    ("exr", "OpenEXR", "Linear RGB, alpha and depth"),
]


class XScaleSceneSettings(bpy.types.PropertyGroup):
    # scene and run
    scene_dir: StringProperty(name="Scene Folder", subtype="DIR_PATH",
                              description="MVSNet scene: images/, cams/ and the mesh")
    run_dir: StringProperty(name="Run Folder", subtype="DIR_PATH",
                            description="Where the backend writes the cache, checkpoints and renders")
    mesh_path: StringProperty(name="Mesh", subtype="FILE_PATH",
                              description="Mesh file to use instead of the one found in the scene folder")
    # cache
    level: IntProperty(name="Image Level", default=-1, min=-1, max=8,
                       description="Use images_k/ and cams_k/ (-1: the finest level found)")
    supersample: IntProperty(name="Supersampling", default=2, min=1, max=8,
                             description="Sub-samples per pixel side when rasterizing the mesh")
    test_every: IntProperty(name="Hold Out Every", default=8, min=0, max=1000,
                            description="Every n-th photo is held out for evaluation (0: use all)")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    gpus: IntProperty(name="GPUs", default=1, min=1, soft_max=8,
                      description="One backend process per GPU; more than 1 launches through torchrun "
                                  "(Linux, NCCL)")
    # train
    preset: EnumProperty(name="Model", items=PRESET_ITEMS, default="auto")
    iterations: IntProperty(name="Iterations", default=0, min=0, soft_max=200000,
                            description="Training steps (0: the preset's default)")
    # render
    render_format: EnumProperty(name="Format", items=FORMAT_ITEMS, default="png")
    exposure: StringProperty(name="Exposure", default="mean",
                             description="'mean' of the training photos, or a photo name to match its exposure")
    render_supersample: IntProperty(name="Supersampling", default=0, min=0, max=8,
                                    description="Sub-samples per pixel side for anti-aliasing "
                                                "(0: the same as for training)")
    render_dir: StringProperty(name="Output Folder", subtype="DIR_PATH",
                               description="Frames go here (empty: RUN/renders/CAMERA)")
    strip_channel: IntProperty(name="Channel", default=2, min=1, max=128,
                               description="Sequencer channel of the rendered strip")
    strip_use_path_start: BoolProperty(name="Start at First Frame", default=True,
                                       description="Place the strip at the first frame of the path")
    strip_frame_start: IntProperty(name="Strip Start", default=1,
                                   description="Sequencer frame where the strip starts")


def settings(scene: bpy.types.Scene) -> XScaleSceneSettings:
    return scene.xscale


CLASSES = (XScaleSceneSettings,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.xscale = PointerProperty(type=XScaleSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.xscale
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
