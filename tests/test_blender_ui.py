"""Panels and preferences draw without errors (bpy has no UI headless, so a recording layout
checks every call against Blender's own UILayout definition: names, keywords, icons,
properties and operators)."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from xscale_blender.core import jobs


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
    assert "xscale.check_backend" in text and "overrides" in text
    assert [kw["text"] for n, _a, kw in log if n == "label" and kw.get("text") in ("torch", "2.13")] == ["torch", "2.13"]
    assert preferences.backend_python() == sys.executable
    preferences.doctor_lines.clear()


def _prefs_context(bpy, width):
    return SimpleNamespace(preferences=bpy.context.preferences, region=SimpleNamespace(width=width),
                           window_manager=bpy.context.window_manager, scene=bpy.context.scene)


def test_preferences_show_the_whole_backend_python_and_the_check_verdict_first(addon, bpy_module, monkeypatch):
    """The path gets a row of its own (no label or button beside it), and Check's report starts with
    its verdict and keeps every line within the window (Blender 4.3's preferences window: 690 px)."""
    from xscale_blender import backend_ops, preferences
    from xscale_blender.core import jobs as jobs_mod, ui_text
    bpy = bpy_module
    monkeypatch.delenv(preferences.ENV_PYTHON, raising=False)
    job = jobs_mod.Job(["python"], label="doctor")
    job.text_lines = ['{"python": "3.11.7", "executable": "/home/artist/.config/blender/4.3/datafiles/xscale_nvs/'
                      'venv/bin/python", "platform": "Linux-6.18.44-fc-v1300-x86_64-with-glibc2.41", '
                      '"torch": "2.13.0+cpu", "cuda_available": false, "disk_free_gb": 73.1, '
                      '"check rasterizer": "passed: cpu (checked before)", "ready": true}']
    job.state.returncode = 0
    lines = backend_ops._doctor_lines(job)
    assert lines[0] == "ready: True" and len(lines) == 8
    preferences.doctor_lines[:] = lines
    try:
        context = _prefs_context(bpy, 530)                   # the preferences' main region at its default size
        log = draw(bpy, preferences.XScalePreferences, context, python="/home/artist/.config/blender/4.3/"
                   "datafiles/xscale_nvs/venv/bin/python3.13")
    finally:
        preferences.doctor_lines.clear()
    props = [(i, kw) for i, (n, args, kw) in enumerate(log) if n == "prop" and args[1] == "python"]
    assert props and props[0][1] == {"text": ""}              # no label eating 40% of the row
    i = props[0][0]
    assert log[i - 1][0] == "label" and log[i - 1][2]["text"] == "Backend Python"
    assert all(n != "operator" for n, _a, _kw in log[i - 2:i + 2])   # no button sharing the row
    texts = [kw.get("text", "") for n, _a, kw in log if n == "label"]
    first = texts.index("Ready: the backend can train and render here")
    assert first < texts.index("python")
    measure, room = ui_text.measure_for(context), ui_text.fit_width(context, preferences.PREFS_MARGIN_PX)
    values = texts[first + 1:]
    assert "Linux-6.18.44-fc-v1300-x86_64-with-glibc2.41" in values and "73.1" in values
    assert all(measure(v) <= room for v in values)


# --- settings left to the backend read "Auto (...)" -----------------------------------------------

def _option_rows(log, label):
    """(the operator button's text, whether the value is drawn as a number field) of the row `label`."""
    for k, (name, args, kw) in enumerate(log):
        if name == "label" and kw.get("text") == label:
            nxt = log[k + 1]
            return nxt[2].get("text") if nxt[0] == "operator" else None
    return None


def test_unset_settings_read_auto_with_the_value_the_backend_will_use(panels, bpy_module, tmp_path):
    from xscale_blender import render_panels
    bpy = bpy_module
    s = bpy.context.scene.xscale
    s.device, s.preset = "cpu", "auto"
    train = draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context)
    assert _option_rows(train, "Iterations") == "Auto (preset: 600)"
    assert _option_rows(train, "Image Level") == "Auto (finest)"
    drawn = [args[1] for n, args, _kw in train if n == "prop"]
    assert "iterations" not in drawn and "level" not in drawn        # no "0" or "-1" that looks real
    s.device = "auto"
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context), "Iterations") == \
        "Auto (GPU \u22651500, CPU 600)"
    s.preset = "reference"
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context), "Iterations") == "Auto (from capture: \u22651500)"

    # render supersampling: the run's cache decides it
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_render, bpy.context), "Supersampling") == "Auto (as cached)"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"mesh": "m.obj", "views": [], "ss": 3}')
    s.run_dir = str(run)
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_render, bpy.context), "Supersampling") == \
        "Auto (as cached: 3)"
    assert _option_rows(draw(bpy, render_panels.RENDER_PT_xscale, bpy.context), "Render") == "Auto (as cached: 3)"
    # iterations: the schedule's for the run's ray cache (12 M rays: 10 passes of 1.57 M-ray batches)
    (run / "cache").mkdir()
    (run / "cache" / "meta.json").write_text('{"n_rays": 12000000}')
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context), "Iterations") == \
        "Auto (from capture: 1500)"
    (run / "cache" / "meta.json").write_text('{"n_rays": 4000000000}')
    os.utime(run / "cache" / "meta.json", ns=(1, 1))        # a change the mtime cache sees on any file system
    assert _option_rows(draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context), "Iterations") == \
        "Auto (from capture: 25432)"

    # the button sets it (to what Auto would use), the X next to the field goes back to Auto
    assert bpy.ops.xscale.option_auto(name="iterations", auto=False) == {"FINISHED"}
    assert s.iterations == 25432
    log = draw(bpy, panels.VIEW3D_PT_xscale_train, bpy.context)
    assert "iterations" in [args[1] for n, args, _kw in log if n == "prop"]
    assert ("operator", ("xscale.option_auto",), {"text": "", "icon": "X"}) in log
    bpy.ops.xscale.option_auto(name="iterations", auto=True)
    assert s.iterations == 0
    bpy.ops.xscale.option_auto(name="render_supersample", auto=False)
    assert s.render_supersample == 3
    s.render_supersample, s.preset, s.run_dir = 0, "auto", ""


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


# --- text that fits the sidebar (ui_text) ------------------------------------------------------

def test_wrap_breaks_between_words_and_shortens_long_paths():
    from xscale_blender.core import ui_text
    measure = ui_text.estimate(1.0)                 # 6.5 px per character
    text = ("ray cache is up to date; skipping the cache step; training from "
            "/home/artist/projects/2026_castle_survey/xscale_runs/castle_full_res_ss2/cache now")
    lines = ui_text.wrap(text, 200.0, measure)
    assert all(measure(ln) <= 200.0 for ln in lines)
    words = [w for ln in lines for w in ln.split()]
    path = [w for w in words if ui_text.ELLIPSIS in w]
    assert len(path) == 1 and path[0].startswith("/home/art") and path[0].endswith("ss2/cache")
    assert [w for w in words if w not in path] == [w for w in text.split() if not w.startswith("/")]
    assert len(ui_text.wrap(text, 600.0, measure)) < len(lines)
    assert ui_text.wrap("a\n\nb", 100.0, measure) == ["a", "", "b"]
    assert ui_text.elide_middle("short", 100.0, measure) == "short"
    assert measure(ui_text.elide_middle("x" * 100, 65.0, measure)) <= 65.0


def _sidebar_context(bpy, width, active=None):
    return SimpleNamespace(scene=bpy.context.scene, active_object=active, preferences=bpy.context.preferences,
                           region=SimpleNamespace(width=width), window_manager=bpy.context.window_manager)


def test_sidebar_fits_its_width_with_one_stop_button(panels, bpy_module):
    from xscale_blender.core import ui_text
    bpy = bpy_module
    s = bpy.context.scene.xscale
    s.run_dir = "/home/artist/projects/2026_castle_survey/xscale_runs/castle_full_res_ss2/"
    job = jobs.Job([sys.executable, "-c", "import time; time.sleep(30)"], label="train").start()
    try:
        jobs.set_active(job)
        job.state.stage, job.state.step, job.state.total = "train", 1200, 30000
        job.state.message = ("ray cache is up to date; skipping the cache step; training on cuda:0 with the "
                             "reference preset from /home/artist/projects/2026_castle_survey/xscale_runs/"
                             "castle_full_res_ss2/cache")
        n_lines = {}
        for width in (291, 600):          # the default sidebar (4.3, scale 1) and a wide one
            context = _sidebar_context(bpy, width)
            log = draw(bpy, panels.VIEW3D_PT_xscale, context)
            log += draw(bpy, panels.VIEW3D_PT_xscale_train, context)
            props = {args[1]: kw.get("text") for name, args, kw in log if name == "prop"}
            assert props["scene_dir"] == "Scene" and props["run_dir"] == "Run"
            assert [args for name, args, _kw in log if name == "operator"].count(("xscale.stop",)) == 1
            measure, room = ui_text.measure_for(context), ui_text.fit_width(context)
            message = [kw["text"] for name, _a, kw in log if name == "label" and kw.get("text")
                       and kw["text"].split()[0] in " ".join(job.state.message.split()[:40])]
            assert message and all(measure(t) <= room for t in message), (width, message)
            n_lines[width] = len(message)
        assert n_lines[291] > n_lines[600]
    finally:
        job.kill()
        job.wait(timeout=10)
        jobs.set_active(None)


# --- Blender's Python without numpy (deps) -----------------------------------------------------

def test_install_command_for_this_blenders_python(tmp_path):
    from xscale_blender.core import deps
    stdlib = tmp_path / "lib" / "python3.13"
    stdlib.mkdir(parents=True)
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    debian = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\n'
    ubuntu = 'ID=ubuntu\nID_LIKE=debian\n'
    kw = dict(python="/usr/bin/python3.13", prefix="/usr", stdlib=str(stdlib), platform="linux")
    assert deps.install_command(os_release=debian, **kw) == "sudo apt install python3-numpy"
    assert deps.install_command(os_release=ubuntu, **kw) == "sudo apt install python3-numpy"
    assert deps.install_command(os_release='ID="fedora"\n', **kw) == "sudo dnf install python3-numpy"
    assert deps.install_command(os_release="ID=arch\n", **kw) == "sudo pacman -S python-numpy"
    assert "python3-numpy" in deps.install_command(os_release="ID=other\n", **kw)
    # Blender's own Python (official builds): pip in that Python
    bundled = "/opt/blender 4.2/4.2/python/bin/python3.11"
    cmd = deps.install_command(python=bundled, prefix="/opt/blender 4.2/4.2/python", stdlib=str(tmp_path),
                               platform="linux")
    assert cmd == "'/opt/blender 4.2/4.2/python/bin/python3.11' -m ensurepip && " \
                  "'/opt/blender 4.2/4.2/python/bin/python3.11' -m pip install numpy"
    assert "-m pip install numpy" in deps.install_command(python="C:/Blender/python.exe", prefix="C:/Blender",
                                                           stdlib=str(tmp_path), platform="win32")
    msg = deps.message({"numpy": "No module named 'numpy'"}, python="/usr/bin/python3.13")
    assert "needs numpy" in msg and "No module named 'numpy'" in msg and "restart Blender" in msg


NO_NUMPY_SCRIPT = r'''
import json, sys
import bpy
sys.modules["numpy"] = None          # as in a Blender whose Python has no numpy
zip_path = sys.argv[1]
out = {}
res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                               enable_on_install=True)
name = "bl_ext.user_default.xscale_nvs"
out["install"] = sorted(res)
out["enabled"] = name in bpy.context.preferences.addons
out["types"] = {t: hasattr(bpy.types, t) for t in (
    "VIEW3D_PT_xscale", "XSCALE_OT_check_backend", "XSCALE_OT_train",
    "IMPORT_SCENE_OT_xscale_mvsnet", "XSCALE_OT_render_path")}
out["prefs"] = bpy.context.preferences.addons[name].preferences is not None
labels = []

class Layout:
    def __getattr__(self, attr):
        def call(*args, **kw):
            if "text" in kw:
                labels.append(kw["text"])
            return self
        return call

    def __setattr__(self, attr, value):
        pass

class Region:
    width = 291

class Context:
    region = Region()
    preferences = bpy.context.preferences
    scene = bpy.context.scene
    active_object = None

panel = getattr(bpy.types, "VIEW3D_PT_xscale")
panel.draw(type("Self", (), {"layout": Layout()})(), Context())
out["labels"] = labels
out["subpanels_poll"] = bpy.types.VIEW3D_PT_xscale_train.poll(Context())
bpy.ops.preferences.addon_disable(module=name)
out["after_disable"] = hasattr(bpy.types, "VIEW3D_PT_xscale") or hasattr(bpy.types, "XSCALE_OT_train")
bpy.ops.preferences.addon_enable(module=name)
out["re_enabled"] = hasattr(bpy.types, "VIEW3D_PT_xscale")
bpy.ops.preferences.addon_disable(module=name)
print("RESULT " + json.dumps(out))
'''


def test_registers_without_numpy_and_says_how_to_install_it(bpy_module, tmp_path):
    import json
    import os
    import subprocess

    from blender_fixtures import ROOT
    sys.path.insert(0, str(ROOT / "tools"))
    import build_extension
    zip_path = build_extension.build(tmp_path / "dist")
    script = tmp_path / "no_numpy.py"
    script.write_text(NO_NUMPY_SCRIPT)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, str(script), str(zip_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["install"] == ["FINISHED"] and out["enabled"]
    assert out["types"] == {"VIEW3D_PT_xscale": True, "XSCALE_OT_check_backend": True, "XSCALE_OT_train": True,
                            "IMPORT_SCENE_OT_xscale_mvsnet": False, "XSCALE_OT_render_path": False}
    assert out["prefs"]
    text = " ".join(out["labels"])
    assert "needs numpy" in text and "-m pip install numpy" in text and "Copy Command" in text
    assert out["subpanels_poll"] is False
    assert out["after_disable"] is False and out["re_enabled"]
    assert "Traceback" not in res.stderr and "needs numpy" in res.stderr, res.stderr[-3000:]
