"""Panels and preferences draw without errors (bpy has no UI headless, so a recording layout
checks every call against Blender's own UILayout definition: names, keywords, icons,
properties and operators)."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from xscale_blender import jobs


class RecordingLayout:
    """Stands in for bpy.types.UILayout and validates what a draw function asks of it."""

    def __init__(self, bpy, log):
        object.__setattr__(self, "_bpy", bpy)
        object.__setattr__(self, "_log", log)

    def __setattr__(self, name, value):
        assert name in self._bpy.types.UILayout.bl_rna.properties, f"UILayout has no property {name}"

    def __getattr__(self, name):
        funcs = self._bpy.types.UILayout.bl_rna.functions
        assert name in funcs, f"UILayout has no function {name}"
        params = {p.identifier: p for p in funcs[name].parameters}

        def call(*args, **kwargs):
            for k, v in kwargs.items():
                assert k in params, f"UILayout.{name}() has no parameter {k}"
                if k == "icon":
                    assert v in params[k].enum_items, f"unknown icon {v}"
            if name == "prop":
                data, prop = args[:2]
                assert prop in data.bl_rna.properties, f"{data} has no property {prop}"
            if name == "operator":
                mod, op = args[0].split(".")
                assert hasattr(getattr(self._bpy.ops, mod), op), f"no operator {args[0]}"
                self._log.append((name, args, kwargs))
                return _Props()
            self._log.append((name, args, kwargs))
            return RecordingLayout(self._bpy, self._log)
        return call


class _Props:
    """Operator properties set by a button (e.g. `.resume = True`)."""


def draw(bpy, cls, context, **attrs):
    """Run `cls.draw` on a stand-in `self` (bpy types cannot be instantiated from Python)."""
    log = []
    cls.draw(SimpleNamespace(layout=RecordingLayout(bpy, log), bl_rna=cls.bl_rna, **attrs), context)
    return log


@pytest.fixture
def panels(blank, bpy_module):
    from xscale_blender import panels
    return panels


def labels(log):
    return [" ".join(str(a) for a in args) + " " + str(kw.get("text", "")) for _n, args, kw in log]


def test_panels_draw_idle(panels, bpy_module, tiny_scene):
    bpy = bpy_module
    jobs.set_active(None)
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    bpy.context.view_layer.objects.active = bpy.data.objects["view_001"]
    for cls in panels.CLASSES:
        assert draw(bpy, cls, bpy.context)
    text = " ".join(labels(draw(bpy, panels.VIEW3D_PT_xscale, bpy.context)))
    assert "view_001: training photo" in text


def test_panel_shows_running_job(panels, bpy_module, tmp_path):
    bpy = bpy_module
    job = jobs.Job([sys.executable, "-c", "import time; time.sleep(30)"], label="train").start()
    try:
        jobs.set_active(job)
        job.state.stage, job.state.step, job.state.total = "train", 1200, 30000
        job.state.loss, job.state.psnr, job.state.eta_s = 0.031, 27.4, 410.0
        log = draw(bpy, panels.VIEW3D_PT_xscale, bpy.context)
        bars = [kw for n, _a, kw in log if n == "progress"]
        assert bars and bars[0]["text"] == "train 1200/30000" and bars[0]["factor"] == pytest.approx(0.04)
        text = " ".join(labels(log))
        assert "Loss 0.0310" in text and "PSNR 27.40 dB" in text and "ETA 6m 50s" in text
        assert ("operator", ("xscale.stop",), {"text": "Stop", "icon": "CANCEL"}) in log
        draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context)
    finally:
        job.kill()
        job.wait(timeout=10)
    job.state.error = "scene/cams/x_cam.txt: malformed camera file; fix it"
    job.state.status, job.state.message = jobs.FAILED, job.state.error
    text = " ".join(labels(draw(bpy, panels.VIEW3D_PT_xscale, bpy.context)))
    assert "Train failed" in text and "malformed camera" in text
    jobs.set_active(None)


def test_preferences_draw(addon, bpy_module, monkeypatch):
    from xscale_blender import preferences
    bpy = bpy_module
    monkeypatch.setenv(preferences.ENV_PYTHON, sys.executable)
    preferences.doctor_lines[:] = ["torch: 2.13", "cuda_available: False"]
    log = draw(bpy, preferences.XScalePreferences, bpy.context, python="")
    text = " ".join(labels(log))
    assert "xscale.check_backend" in text and "torch: 2.13" in text and "overrides" in text
    assert preferences.backend_python() == sys.executable
    preferences.doctor_lines.clear()


def test_missing_backend_python_names_where_it_was_set(addon, bpy_module, monkeypatch, tmp_path):
    from xscale_blender import preferences
    missing = str(tmp_path / "no" / "python")
    monkeypatch.setenv(preferences.ENV_PYTHON, missing)
    with pytest.raises(preferences.BackendNotConfigured) as e:
        preferences.backend_python()
    assert f"{missing}, named by the environment variable {preferences.ENV_PYTHON}" in str(e.value)
    assert "Fix it in the add-on preferences" not in str(e.value)
    monkeypatch.delenv(preferences.ENV_PYTHON)
    # (registered from the source tree the add-on has no preferences entry: stand one in)
    monkeypatch.setattr(preferences, "addon_preferences", lambda: SimpleNamespace(python=missing))
    with pytest.raises(preferences.BackendNotConfigured, match="Preferences > Add-ons > XScale-NVS") as e:
        preferences.backend_python()
    assert preferences.ENV_PYTHON not in str(e.value)


def test_gpus_setting_launches_through_torchrun(blank, bpy_module, tmp_path):
    from xscale_blender import train_ops
    s = bpy_module.context.scene.xscale
    s.scene_dir, s.run_dir = str(tmp_path / "scene"), str(tmp_path / "run")
    assert "--nproc" not in train_ops.fit_arguments(s, resume=False)
    s.gpus = 4
    args = train_ops.fit_arguments(s, resume=False)
    if sys.platform.startswith("linux"):
        assert args[args.index("--nproc") + 1] == "4"
    s.gpus = 1
