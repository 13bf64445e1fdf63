"""The add-on's settings are backend.config's options: same defaults, limits and choices (so the
panel cannot drift from the command line again), and they reach the backend as its flags."""
from __future__ import annotations

import pytest

from backend import config

INT_MAX = 2**31 - 1     # an IntProperty without a max


@pytest.fixture
def props(addon, bpy_module):
    from xscale_blender import properties
    return properties


def test_scene_settings_match_config(props, bpy_module):
    rna = bpy_module.types.Scene.bl_rna.properties["xscale"].fixed_type.properties
    assert set(props.SCENE_OPTIONS) >= {"supersample", "test_every", "level", "device", "gpus", "preset",
                                        "iterations", "render_format", "exposure", "render_supersample"}
    for name, setting in props.SCENE_OPTIONS.items():
        opt, unset, p = setting.option, setting.unset, rna[name]
        if opt.choices:
            assert [e.identifier for e in p.enum_items] == [c[0] for c in opt.choices], name
            assert [e.description for e in p.enum_items] == [c[2] for c in opt.choices], name
            assert p.default == opt.default, name
        elif opt.kind is str:
            assert p.default == opt.default, name
        else:
            assert p.default == (opt.default if opt.default is not None else unset), name
            lo = opt.min if unset is None else min(opt.min, unset)
            assert p.hard_min == lo, name
            assert p.hard_max == (opt.max if opt.max is not None else INT_MAX), name
        assert p.description.lower().startswith(opt.help.split(" (")[0].lower()), name
    assert "(-1: the finest level found)" in rna["level"].description
    assert "(0: the preset's, or on a GPU as many as the capture needs" in rna["iterations"].description
    assert {e.identifier for e in rna["preset"].enum_items} == {"auto", *config.PRESETS}
    assert {e.identifier for e in rna["render_format"].enum_items} == set(config.FORMATS)


def test_limits_clamp_to_config(props, blank):
    s = blank.xscale
    s.supersample = 8
    assert s.supersample == config.SS.max == 4
    s.render_supersample = 8
    assert s.render_supersample == config.RENDER_SS.max
    s.supersample = 0
    assert s.supersample == config.SS.min
    s.supersample = config.SS.default


def test_import_options_match_config(addon, bpy_module):
    for op in (bpy_module.ops.import_scene.xscale_mvsnet, bpy_module.ops.import_scene.xscale_convert):
        p = op.get_rna_type().properties
        assert p["test_every"].default == config.TEST_EVERY.default
        assert p["test_every"].hard_min == config.TEST_EVERY.min
    assert bpy_module.ops.import_scene.xscale_mvsnet.get_rna_type().properties["level"].default == -1


def test_settings_become_backend_flags(props, blank, tmp_path):
    from xscale_blender import render_ops, train_ops
    s = blank.xscale
    s.scene_dir, s.run_dir = str(tmp_path / "scene"), str(tmp_path / "run")
    args = train_ops.fit_arguments(s, resume=False)
    opts = dict(zip(args[::2], args[1::2]))
    assert opts[config.SS.flag] == str(config.SS.default)
    assert opts[config.TEST_EVERY.flag] == str(config.TEST_EVERY.default)
    assert opts[config.DEVICE.flag] == config.DEVICE.default and opts[config.PRESET.flag] == config.PRESET.default
    assert config.LEVEL.flag not in opts and config.ITERS.flag not in opts      # unset: the backend decides
    s.level, s.iterations = 1, 50
    args = train_ops.fit_arguments(s, resume=True)
    assert args[args.index("--level") + 1] == "1" and args[args.index("--iters") + 1] == "50"
    assert args.count("--resume") == 1
    s.level, s.iterations = -1, 0
    assert props.option_arguments(s, render_ops.RENDER_SETTINGS) == ["--format", "png", "--exposure", "mean"]
    s.render_format, s.render_supersample, s.exposure = "exr", 3, ""
    assert props.option_arguments(s, render_ops.RENDER_SETTINGS) == ["--format", "exr", "--ss", "3"]
    s.render_format, s.render_supersample, s.exposure = "png", 0, "mean"


def test_strip_alpha_follows_format(blank, bpy_module, tmp_path):
    """EXR frames are premultiplied, PNG frames straight (config.FORMATS)."""
    from xscale_blender import sequencer
    bpy = bpy_module
    img = bpy.data.images.new("frame", 8, 6, alpha=True, float_buffer=True)
    img.pixels[:] = [0.25, 0.5, 0.1, 0.5] * 48
    img.filepath_raw, img.file_format = str(tmp_path / "frame_000001.exr"), "OPEN_EXR"
    img.save()
    strip = sequencer.add_image_strip(blank, str(tmp_path), ["frame_000001.exr"], name="XScale exr",
                                      channel=2, frame_start=1, fmt="exr")
    assert not config.FORMATS["exr"].straight_alpha and strip.alpha_mode == "PREMUL"
