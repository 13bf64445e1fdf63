"""End to end against the real backend on CPU: import a tiny scene, train a few steps, render
a 3-frame camera path, find the frames as one strip in the sequencer.

Skipped when the backend interpreter ($XSCALE_BACKEND_PYTHON, else this Python) has no torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from blender_fixtures import ROOT, backend_python, backend_ready

sys.path.insert(0, str(ROOT / "tools"))
import build_extension  # noqa: E402


@pytest.fixture(scope="module")
def real_backend(monkeypatch_module):
    why = backend_ready()
    if why:
        pytest.skip(why)
    monkeypatch_module.setenv("XSCALE_BACKEND_PYTHON", backend_python())


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_import_train_render_strip(blank, bpy_module, real_backend, tiny_scene, tmp_path, capsys):
    from PIL import Image

    from xscale_blender import sequencer
    from xscale_blender.core import jobs
    bpy = bpy_module
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene)) == {"FINISHED"}
    s = blank.xscale
    s.run_dir = str(tmp_path / "run")
    s.iterations, s.device, s.preset = 3, "cpu", "small"

    assert bpy.ops.xscale.train() == {"FINISHED"}
    assert jobs.active().state.status == jobs.DONE
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    assert "XScale train: train 3/3" in capsys.readouterr().out

    # a new camera that starts at the first photo's pose and dollies back over 3 frames
    src = bpy.data.objects["view_000"]
    cam = bpy.data.objects.new("shot", src.data.copy())
    blank.collection.objects.link(cam)
    cam.matrix_world = src.matrix_world
    back = src.matrix_world.to_3x3().col[2]           # Blender cameras look down -Z
    for f in (1, 3):
        cam.location = src.matrix_world.translation + back * 0.2 * (f - 1)
        cam.keyframe_insert("location", frame=f)
    blank.camera = cam
    blank.frame_start, blank.frame_end = 1, 3

    assert bpy.ops.xscale.render_path() == {"FINISHED"}
    assert sequencer.all_strips(blank) == []
    strips = [st for st in sequencer.all_strips(blank.xscale.strip_scene) if st.name == "XScale shot"]
    assert len(strips) == 1
    strip = strips[0]
    assert strip.frame_final_duration == 3 and len(strip.elements) == 3
    out = tmp_path / "run" / "renders" / "shot"
    for e in strip.elements:
        img = np.asarray(Image.open(out / e.filename))
        assert img.shape == (32, 48, 4)                # RGBA at the camera's resolution
        assert img[..., 3].max() == 255                # the mesh covers part of the frame



def test_stop_saves_checkpoint_then_resume(blank, bpy_module, real_backend, tiny_scene, tmp_path):
    """Stop = SIGTERM: the real trainer saves a checkpoint and exits 0; Resume continues it."""
    import time

    from xscale_blender import job_runner, train_ops
    from xscale_blender.core import jobs
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    s = blank.xscale
    s.run_dir = str(tmp_path / "run")
    s.iterations, s.device, s.preset = 10000, "cpu", "small"
    job = job_runner.backend_job("fit", train_ops.fit_arguments(s, resume=False), "train").start()
    t_end = time.monotonic() + 120
    while not (job.state.stage == "train" and job.state.step >= 1) and not job.finished \
            and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.05)
    job.stop()
    state = job.wait(timeout=120)
    assert state.status == jobs.STOPPED, state.error
    assert state.returncode == 0 and state.stopped_event["step"] >= 1
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    s.iterations = state.stopped_event["step"] + 1
    assert bpy.ops.xscale.train(resume=True) == {"FINISHED"}
    done = jobs.active().state
    assert done.status == jobs.DONE and done.results[-1]["step"] == s.iterations


# What `blender -b shot.blend --python-expr "import bpy; bpy.ops.xscale.train()"` does, with the
# bpy module: Blender enables the installed extension from the user preferences at startup (the
# module does not load them, so the script does), loads the file, runs the operator.
HEADLESS = r"""
import sys, bpy
step, blend = sys.argv[1], sys.argv[2]
name = "bl_ext.user_default.xscale_nvs"
if step == "setup":
    zip_path, scene_dir, run_dir = sys.argv[3:6]
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                             enable_on_install=True)
    bpy.ops.import_scene.xscale_mvsnet(directory=scene_dir)
    s = bpy.context.scene.xscale
    s.run_dir, s.iterations, s.device, s.preset = run_dir, 2, "cpu", "small"
    s.strip_channel = 4
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 1, 3
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    sys.exit(0)
bpy.ops.preferences.addon_enable(module=name)
bpy.ops.wm.open_mainfile(filepath=blend)
if step == "train":
    bpy.ops.xscale.train()
elif step == "train_over":
    bpy.ops.xscale.train(overwrite=True)
elif step == "render":
    bpy.ops.xscale.render_path()
    bpy.ops.wm.save_mainfile()
elif step == "check":
    strips = [[sc.name, s.name, s.channel, len(s.elements)] for sc in bpy.data.scenes if sc.sequence_editor
              for s in (sc.sequence_editor.strips_all if hasattr(sc.sequence_editor, "strips_all")
                        else sc.sequence_editor.sequences_all)]
    print("STRIPS " + __import__("json").dumps(strips))
"""


def test_headless_recipe_with_installed_extension(bpy_module, real_backend, tiny_scene, tmp_path):
    """The packaged extension launches the backend packaged inside it (PYTHONPATH = the
    extension folder), in background mode, from a saved .blend, and fails with a non-zero exit."""
    zip_path = build_extension.build(tmp_path / "dist")
    script, blend, run = tmp_path / "headless.py", tmp_path / "shot.blend", tmp_path / "run"
    script.write_text(HEADLESS)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    env.pop("PYTHONPATH", None)

    def blender(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    res = blender("setup", blend, zip_path, tiny_scene, run)
    assert res.returncode == 0, res.stderr[-3000:]
    res = blender("train", blend)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "XScale train: train 2/2" in res.stdout
    assert (run / "checkpoints" / "latest.pt").is_file()
    res = blender("render", blend)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = blender("check", blend)
    strips = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("STRIPS ")][0][7:])
    assert strips == [["Scene Edit", "XScale view_000", 4, 3]]      # saved in the .blend, not in the shot
    # training a trained run folder again is refused, naming the headless way to start over
    res = blender("train", blend)
    assert res.returncode != 0 and "overwrite=True" in res.stderr
    assert (run / "checkpoints" / "latest.pt").is_file()
    # a failing job makes the script fail (in Blender: with --python-exit-code 1)
    (tiny_scene / "cams" / "view_001_cam.txt").write_text("garbage")
    (run / "cache").rename(run / "cache_old")
    res = blender("train_over", blend)
    assert res.returncode != 0 and "view_001_cam.txt" in res.stderr


# Blender quitting while training runs, with the bpy module: the add-on starts the job as the UI does,
# then the interpreter exits (what Blender's quit does to Python) without a Stop.
QUIT_WHILE_TRAINING = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import bpy, xscale_blender
xscale_blender.register()
from xscale_blender import job_runner, train_ops
from xscale_blender.core import jobs
bpy.ops.import_scene.xscale_mvsnet(directory=sys.argv[2], show_photos=False, check_scene=False)
s = bpy.context.scene.xscale
s.run_dir, s.iterations, s.device, s.preset = sys.argv[3], 100000, "cpu", "small"
job = job_runner.backend_job("fit", train_ops.fit_arguments(s, resume=False), "train").start()
jobs.set_active(job)
t_end = time.monotonic() + 300
while not (job.state.stage == "train" and job.state.step >= 2) and not job.finished and time.monotonic() < t_end:
    job.poll()
    time.sleep(0.05)
print("TRAINER", job.proc.pid, flush=True)
"""


def test_quitting_while_training_keeps_the_checkpoint_and_says_how_to_resume(
        blank, bpy_module, real_backend, tiny_scene, tmp_path):
    """The trainer stops with a checkpoint when Blender quits (it outlives Blender by a few seconds
    to save it); the console says so, and the next session's XScale tab says where the run stopped
    and offers Resume."""
    from test_blender_ui import draw, labels
    from test_serve import gone
    from xscale_blender import panels
    from xscale_blender.core import jobs
    bpy = bpy_module
    script, run = tmp_path / "quit.py", tmp_path / "run"
    script.write_text(QUIT_WHILE_TRAINING)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    res = subprocess.run([sys.executable, str(script), str(ROOT), str(tiny_scene), str(run)], env=env,
                         capture_output=True, text=True, timeout=600)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("TRAINER ")]
    assert line, res.stdout[-2000:] + res.stderr[-2000:]
    assert "XScale: Blender quit while train was running (train " in res.stderr
    assert "stopped it: it saves a checkpoint, Resume in the XScale tab continues from it" in res.stderr
    pid = int(line[0].split()[1])
    t_end = time.monotonic() + 120
    while not gone(pid) and time.monotonic() < t_end:
        time.sleep(0.2)
    assert gone(pid) and (run / "checkpoints" / "latest.pt").is_file()
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stopped" and last["step"] >= 2 and last["checkpoint"]

    # the next session: the same run folder, no job of its own
    jobs.set_active(None)
    blank.xscale.run_dir = str(run)
    log = draw(bpy, panels.VIEW3D_PT_xscale, bpy.context)
    text = " ".join(kw.get("text", "") for n, _a, kw in log if n == "label")
    assert f"Last train: stopped at step {last['step']} of 100000; checkpoint saved, Resume continues it" in text
    assert ("operator", ("xscale.train",), {"text": "Resume", "icon": "FILE_REFRESH"}) in log
    assert "Resume" in " ".join(labels(log))
