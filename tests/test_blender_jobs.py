"""Job control against a stand-in backend that speaks docs/protocol.md (no torch needed):
event parsing, stop with checkpoint, failures, and the operators' headless (blocking) path."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time

import pytest

from xscale_blender.core import jobs

# Behaves like `python -u -m backend COMMAND ...`; FAKE_MODE picks the scenario.
FAKE_BACKEND = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path
    def emit(event, **kw):
        print(json.dumps({"event": event, **kw}), flush=True)
    args = sys.argv[sys.argv.index("backend") + 1:] if "backend" in sys.argv else sys.argv[1:]
    cmd, opts = args[0], args[1:]
    def opt(name, default=None):
        return opts[opts.index(name) + 1] if name in opts else default
    mode = os.environ.get("FAKE_MODE", "ok")
    Path(os.environ.get("FAKE_ARGV_LOG", os.devnull)).write_text(json.dumps(args))
    print("UserWarning: a library chats on stdout", flush=True)
    if mode == "error":
        emit("error", message="scene/cams/a_cam.txt: malformed camera file; fix it")
        print("error: malformed", file=sys.stderr)
        sys.exit(2)
    if mode == "crash":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("  File x, line 1", file=sys.stderr)
        print("ZeroDivisionError: division by zero", file=sys.stderr)
        sys.exit(1)
    if mode == "slow":
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        step = 0
        while not stop:
            step += 1
            emit("progress", stage="train", step=step, total=10**6, loss=0.5, psnr=20.0, eta_s=99.0)
            time.sleep(0.05)
        emit("stopped", stage="train", step=step, checkpoint="ckpt.pt")
        sys.exit(0)
    if cmd == "fit":
        run = Path(opt("--run"))
        for i in (1, 2):
            emit("progress", stage="cache", step=i, total=2, elapsed_s=0.1, eta_s=0.1, view=i)
        emit("done", stage="cache", rays=1234)
        emit("log", message="training on cpu")
        for i in (5, 10):
            emit("progress", stage="train", step=i, total=10, loss=0.1 / i, psnr=20.0 + i, eta_s=1.0)
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "latest.pt").write_bytes(b"x")
        emit("done", stage="train", checkpoint=str(run / "checkpoints" / "latest.pt"), psnr=30.0)
    elif cmd == "render":
        path, out = json.loads(Path(opt("--path")).read_text()), Path(opt("--out"))
        import zlib, struct
        def png(w, h):
            raw = b"".join(b"\\x00" + b"\\x80\\x40\\x20\\xff" * w for _ in range(h))
            chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
            return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        frames = path["frames"]
        for k, f in enumerate(frames):
            (out / f"frame_{f['frame']:06d}.png").write_bytes(png(f["width"], f["height"]))
            emit("progress", stage="render", step=k + 1, total=len(frames), frame=f["frame"])
        emit("done", stage="render", out_dir=str(out), frames=len(frames))
    elif cmd == "doctor":
        print(json.dumps({"python": "3.11", "torch": "2.13", "cuda": None}))
''')


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """An executable standing in for the backend interpreter (it ignores `-u -m backend`)."""
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\n" + FAKE_BACKEND)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("XSCALE_BACKEND_PYTHON", str(script))
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.json"))
    return script


def run_fake(fake_python, mode, *args, **kw) -> jobs.Job:
    env = dict(os.environ, FAKE_MODE=mode)
    return jobs.Job(jobs.backend_argv(str(fake_python), *args), env=env, **kw).start()


def test_parse_event():
    assert jobs.parse_event('{"event": "log", "message": "x"}\n') == {"event": "log", "message": "x"}
    for junk in ("", "warning: x", "[1, 2]", '{"no": "event"}', "{broken", '{"event": 3}'):
        assert jobs.parse_event(junk) is None


def test_progress_and_done(fake_python, tmp_path):
    seen, finished = [], []
    job = run_fake(fake_python, "ok", "fit", "--scene", "s", "--run", str(tmp_path / "run"),
                   on_finish=finished.append)
    state = job.wait(on_event=seen.append)
    assert state.status == jobs.DONE and state.returncode == 0
    assert [e["event"] for e in seen].count("progress") == 4
    assert state.stage == "train" and (state.step, state.total) == (10, 10)
    assert state.psnr == 30.0 and state.loss == pytest.approx(0.01)
    assert [r["stage"] for r in state.results] == ["cache", "train"]
    assert job.text_lines == ["UserWarning: a library chats on stdout"]
    assert finished == [job]          # on_finish runs once
    job.poll()
    assert finished == [job]


def test_poll_never_blocks(fake_python):
    job = run_fake(fake_python, "slow", "train", "--run", "r")
    t0 = time.monotonic()
    for _ in range(50):
        job.poll()
    assert time.monotonic() - t0 < 0.5
    job.stop()
    job.wait(timeout=30)


def test_stop_saves_checkpoint(fake_python):
    job = run_fake(fake_python, "slow", "train", "--run", "r")
    t_end = time.monotonic() + 20
    while job.state.step < 3 and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.02)
    assert job.state.status == jobs.RUNNING and job.state.step >= 3
    job.stop()
    assert job.stopping
    state = job.wait(timeout=30)
    assert state.status == jobs.STOPPED and state.stopped_event["checkpoint"] == "ckpt.pt"
    assert "stopped at step" in state.message


def test_error_event(fake_python):
    state = run_fake(fake_python, "error", "fit").wait()
    assert state.status == jobs.FAILED and state.returncode == 2
    assert "malformed camera file" in state.error


def test_crash_uses_stderr(fake_python):
    state = run_fake(fake_python, "crash", "fit").wait()
    assert state.status == jobs.FAILED and "ZeroDivisionError" in state.error


def test_missing_interpreter(tmp_path):
    job = jobs.Job([str(tmp_path / "nope"), "-m", "backend", "fit"]).start()
    assert job.finished and job.state.status == jobs.FAILED and "cannot start" in job.state.error


def test_describe():
    s = jobs.JobState(stage="train", step=1200, total=30000, loss=0.031, psnr=27.4, eta_s=410)
    assert jobs.describe(s) == "train 1200/30000 loss 0.0310 PSNR 27.40 ETA 6m 50s"
    assert s.fraction == pytest.approx(0.04)


# --- operators, headless ---------------------------------------------------------------------

def test_train_operator_headless(blank, bpy_module, tiny_scene, fake_python, tmp_path, capsys):
    import json
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    s = blank.xscale
    s.run_dir = str(tmp_path / "run")
    s.iterations, s.device, s.preset = 10, "cpu", "small"
    assert bpy.ops.xscale.train() == {"FINISHED"}
    args = json.loads((tmp_path / "argv.json").read_text())
    assert args[:1] == ["fit"]
    opts = dict(zip(args[1::2], args[2::2]))
    assert opts["--scene"] == str(tiny_scene.resolve()) and opts["--run"] == str(tmp_path / "run")
    assert (opts["--iters"], opts["--device"], opts["--preset"], opts["--ss"], opts["--test-every"]) == \
        ("10", "cpu", "small", "2", "8")
    out = capsys.readouterr().out
    assert "XScale train: train 10/10" in out
    assert not jobs.busy()
    # Resume passes --resume (a checkpoint exists now)
    assert bpy.ops.xscale.train(resume=True) == {"FINISHED"}
    assert "--resume" in json.loads((tmp_path / "argv.json").read_text())


def test_train_operator_failure_is_an_error_report(blank, bpy_module, tiny_scene, fake_python,
                                                   tmp_path, monkeypatch):
    bpy = bpy_module
    blank.xscale.scene_dir, blank.xscale.run_dir = str(tiny_scene), str(tmp_path / "run")
    monkeypatch.setenv("FAKE_MODE", "error")
    with pytest.raises(RuntimeError, match="malformed camera file"):
        bpy.ops.xscale.train()


def test_train_needs_backend_python(blank, bpy_module, tiny_scene, tmp_path, monkeypatch):
    monkeypatch.delenv("XSCALE_BACKEND_PYTHON", raising=False)
    blank.xscale.scene_dir, blank.xscale.run_dir = str(tiny_scene), str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="backend Python"):
        bpy_module.ops.xscale.train()


def test_render_operator_adds_strip(blank, bpy_module, tiny_scene, fake_python, tmp_path):
    from xscale_blender import sequencer
    bpy = bpy_module
    bpy.ops.import_scene.xscale_mvsnet(directory=str(tiny_scene), show_photos=False)
    run = tmp_path / "run"
    blank.xscale.run_dir = str(run)
    with pytest.raises(RuntimeError, match="train first"):
        bpy.ops.xscale.render_path()
    assert bpy.ops.xscale.train() == {"FINISHED"}
    blank.frame_start, blank.frame_end = 4, 6
    blank.xscale.strip_channel = 3
    assert bpy.ops.xscale.render_path() == {"FINISHED"}
    out = run / "renders" / blank.camera.name
    assert (out / "camera_path_000004-000006.json").is_file()
    assert sequencer.all_strips(blank) == []
    strips = sequencer.all_strips(blank.xscale.strip_scene)
    assert len(strips) == 1
    strip = strips[0]
    assert strip.name == f"XScale {blank.camera.name}" and strip.channel == 3
    assert (strip.frame_final_start, strip.frame_final_duration) == (4, 3)
    assert [e.filename for e in strip.elements] == [f"frame_{n:06d}.png" for n in (4, 5, 6)]


def test_check_backend_headless(addon, bpy_module, fake_python):
    from xscale_blender import preferences
    assert bpy_module.ops.xscale.check_backend() == {"FINISHED"}
    assert "torch: 2.13" in preferences.doctor_lines


def test_ui_timer_polls_until_done(addon, fake_python, tmp_path, capsys):
    """The function registered with bpy.app.timers in the UI (timers never fire in bpy)."""
    from xscale_blender import job_runner
    job = run_fake(fake_python, "ok", "fit", "--run", str(tmp_path / "run"), label="train")
    jobs.set_active(job)
    intervals = []
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end:
        nxt = job_runner._ui_tick()
        intervals.append(nxt)
        if nxt is None:
            break
        time.sleep(nxt)
    assert intervals[-1] is None and all(i == job_runner.POLL_INTERVAL_S for i in intervals[:-1])
    assert job.state.status == jobs.DONE
    assert "train: finished (train 10/10" in capsys.readouterr().out
    jobs.set_active(None)


def test_quitting_while_a_job_runs_asks_first(addon, bpy_module, fake_python, tmp_path):
    """While a job runs, Ctrl Q asks first (the question says what stopping keeps and what continues
    it; the dialog itself needs a window: tests/real/artist_checks.py XS_MODE=quit)."""
    from xscale_blender import job_runner
    job = run_fake(fake_python, "slow", "fit", "--run", str(tmp_path / "run"), label="train")
    try:
        t_end = time.monotonic() + 20
        while job.state.step < 3 and time.monotonic() < t_end:
            job.poll()
            time.sleep(0.02)
        question = job_runner.quit_question(job)
        assert question.startswith("Train is running (train ") and "/1000000 loss 0.5000" in question
        assert question.endswith("Quitting stops it: it saves a checkpoint, Resume in the XScale tab continues "
                                 "from it.")
        job.state.stage = "cache"
        assert "the views cached so far are kept" in job_runner.quit_question(job)
    finally:
        job.stop()
        job.wait(timeout=20)


def test_kill_when_stop_is_ignored(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('{}', flush=True); time.sleep(60)"
    job = jobs.Job([sys.executable, "-c", code], label="stubborn").start()
    while not job.text_lines:
        job.poll()
        time.sleep(0.02)
    job.stop()
    time.sleep(0.3)
    job.poll()
    assert job.stopping and not job.finished
    job.kill()
    state = job.wait(timeout=10)
    assert state.status == jobs.STOPPED and state.returncode != 0


def test_train_operator_ui_path(blank, bpy_module, tiny_scene, fake_python, tmp_path, monkeypatch):
    """With a UI the operator returns at once and a bpy.app.timers callback follows the job."""
    import bpy

    from xscale_blender import job_runner
    monkeypatch.setattr(job_runner, "_blocking", lambda wait: False)
    blank.xscale.scene_dir, blank.xscale.run_dir = str(tiny_scene), str(tmp_path / "run")
    t0 = time.monotonic()
    assert bpy.ops.xscale.train() == {"FINISHED"}
    assert time.monotonic() - t0 < 1.0
    assert bpy.app.timers.is_registered(job_runner._ui_tick) and jobs.busy()
    with pytest.raises(RuntimeError, match="already running"):
        bpy.ops.xscale.train()
    t_end = time.monotonic() + 30
    while job_runner._ui_tick() is not None and time.monotonic() < t_end:
        time.sleep(0.05)
    bpy.app.timers.unregister(job_runner._ui_tick)
    assert jobs.active().state.status == jobs.DONE and not jobs.busy()


def test_stopped_events_say_what_was_kept():
    assert jobs.describe_stop({"stage": "train", "step": 1234, "total": 30000, "checkpoint": "c.pt"}) == \
        "stopped at step 1234 of 30000; checkpoint saved, Resume continues it"
    assert jobs.describe_stop({"stage": "cache", "phase": "views", "step": 12, "total": 40}) == \
        "stopped the ray cache after 12 of 40 views (kept); Resume continues it"
    assert "shards (3 of 16 written, kept)" in jobs.describe_stop(
        {"stage": "cache", "phase": "shards", "step": 3, "total": 16})
    assert jobs.describe_stop({"stage": "render", "step": 30, "total": 240}) == \
        "stopped rendering after 30 of 240 frames (those frames are kept)"
    assert jobs.describe_stop({}) == "stopped"


def test_stopped_cache_job_reports_the_cache():
    code = ("import json; print(json.dumps({'event': 'stopped', 'stage': 'cache', 'phase': 'views', "
            "'step': 2, 'total': 5, 'run': 'r'}))")
    state = jobs.Job([sys.executable, "-c", code], label="train").start().wait(timeout=30)
    assert state.status == jobs.STOPPED and state.message.startswith("stopped the ray cache after 2 of 5 views")


def test_train_again_asks_before_starting_over(blank, bpy_module, tiny_scene, fake_python, tmp_path):
    """A trained run folder: Cache + Train is refused headless unless overwrite=True (then the
    backend gets --overwrite); Resume passes --resume."""
    import json
    bpy = bpy_module
    blank.xscale.scene_dir, blank.xscale.run_dir = str(tiny_scene), str(tmp_path / "run")
    assert bpy.ops.xscale.train() == {"FINISHED"}       # a fresh run folder: no question
    assert "--overwrite" not in json.loads((tmp_path / "argv.json").read_text())
    (tmp_path / "argv.json").unlink()
    with pytest.raises(RuntimeError, match=r"already holds a trained model.*overwrite=True"):
        bpy.ops.xscale.train()
    assert not (tmp_path / "argv.json").exists()         # nothing was started
    assert bpy.ops.xscale.train(overwrite=True) == {"FINISHED"}
    args = json.loads((tmp_path / "argv.json").read_text())
    assert "--overwrite" in args and "--resume" not in args
    assert bpy.ops.xscale.train(resume=True, overwrite=True) == {"FINISHED"}
    args = json.loads((tmp_path / "argv.json").read_text())
    assert "--resume" in args and "--overwrite" not in args


def test_train_button_confirms_on_a_trained_run(blank, bpy_module, tmp_path):
    """invoke(): a confirm popup on a trained run folder (overwrite set for when it is confirmed),
    straight to execute otherwise."""
    from types import SimpleNamespace

    from xscale_blender import train_ops
    s = blank.xscale
    s.run_dir = str(tmp_path / "run")
    asked = []
    wm = SimpleNamespace(invoke_confirm=lambda op, event, **kw: asked.append(kw) or {"RUNNING_MODAL"})
    context = SimpleNamespace(scene=blank, window_manager=wm)

    def op(resume=False):
        return SimpleNamespace(resume=resume, overwrite=False, execute=lambda ctx: {"FINISHED"})

    fresh = op()
    assert train_ops.XSCALE_OT_train.invoke(fresh, context, None) == {"FINISHED"} and not asked
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.pt").write_bytes(b"x")
    trained = op()
    assert train_ops.XSCALE_OT_train.invoke(trained, context, None) == {"RUNNING_MODAL"}
    assert trained.overwrite and asked[0]["confirm_text"] == "Start Over"
    assert "already holds a trained model" in asked[0]["message"]
    assert train_ops.XSCALE_OT_train.invoke(op(resume=True), context, None) == {"FINISHED"}
    assert len(asked) == 1


def test_resume_continues_a_stopped_cache(blank, bpy_module, tiny_scene, fake_python, tmp_path):
    import json
    bpy = bpy_module
    run = tmp_path / "run"
    blank.xscale.scene_dir, blank.xscale.run_dir = str(tiny_scene), str(run)
    with pytest.raises(RuntimeError, match="Nothing to resume"):
        bpy.ops.xscale.train(resume=True)
    (run / "cache.tmp").mkdir(parents=True)
    (run / "cache.tmp" / "progress.json").write_text("{}")      # a stopped cache, no checkpoint yet
    assert bpy.ops.xscale.train(resume=True) == {"FINISHED"}
    assert "--resume" in json.loads((tmp_path / "argv.json").read_text())
