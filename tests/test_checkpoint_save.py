"""Saving checkpoints: a full disk keeps the last good checkpoint and says how much room is
needed (training goes on after a periodic save, stops cleanly at the last one); an interrupted
save leaves no temporary file; the interval is an option; a resume says where it continues."""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from backend import events
from backend.errors import InputError
from backend.train import train
from conftest import ROOT, TINY, cli, events_of, expect_error


class FillingDisk:
    """A file that takes `room` more bytes, then fails as a full disk does: what fits is written
    and the write raises ENOSPC (or another error number: EIO, a failing disk or share)."""

    def __init__(self, f, room: int, error: int = errno.ENOSPC):
        self.f, self.room, self.error = f, room, error

    def write(self, b):
        b = memoryview(b).cast("B")
        if len(b) > self.room:
            self.f.write(b[:self.room])
            self.room = 0
            raise OSError(self.error, os.strerror(self.error))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def saves_that(monkeypatch, outcomes: list[str]):
    """torch.save whose n-th call goes as outcomes[n] says ("ok", "full": the disk fills up 100 kB
    into the file, "eio": an I/O error there); calls past the list are "ok"."""
    real = torch.save

    def save(obj, f, *a, **k):
        outcome = outcomes.pop(0) if outcomes else "ok"
        if outcome == "ok":
            return real(obj, f, *a, **k)
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else _same(f) as fh:
            return real(obj, FillingDisk(fh, 100_000, errno.EIO if outcome == "eio" else errno.ENOSPC), *a, **k)

    monkeypatch.setattr(torch, "save", save)


class _same:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def _checkpoint(r):
    return torch.load(r / "checkpoints" / "latest.pt", weights_only=True)


def _no_temporaries(r):
    return sorted(p.name for p in r.rglob("*.tmp")) == []


def test_training_goes_on_when_a_checkpoint_does_not_fit(run, tmp_path, monkeypatch):
    """Periodic saves that hit a full disk are reported and training goes on; once there is room
    the next save succeeds and the run ends normally."""
    r = shutil.copytree(run, tmp_path / "r")
    saves_that(monkeypatch, ["full", "full"])
    log = io.StringIO()
    monkeypatch.setattr(events, "_stream", log)
    res = train(str(r), iters=6, device="cpu", preset="small", overrides={**TINY, "checkpoint_every_s": -1.0})
    assert res["step"] == 6 and _checkpoint(r)["step"] == 6 and _no_temporaries(r)
    warnings = [e["message"] for e in events_of(log.getvalue()) if "disk is full" in e.get("message", "")]
    assert len(warnings) == 2, warnings
    assert "no checkpoint was saved yet" in warnings[0] and "Training goes on" in warnings[0]


def test_a_full_disk_at_the_last_save_keeps_the_last_good_checkpoint(run, tmp_path, monkeypatch):
    """Every save after the one of step 1 hits a full disk: the end of training is an error that names the
    disk, the room needed and the checkpoint kept (step 1, intact, no temporary file left);
    `--resume` continues from it once there is room."""
    r = shutil.copytree(run, tmp_path / "r")
    saves_that(monkeypatch, ["ok", "ok"] + ["full"] * 20)
    monkeypatch.setattr(events, "_stream", io.StringIO())
    with pytest.raises(InputError) as e:
        train(str(r), iters=5, device="cpu", preset="small", overrides={**TINY, "checkpoint_every_s": -1.0})
    msg = str(e.value)
    assert msg.startswith(f"{r / 'checkpoints' / 'latest.pt'}: the disk is full: the checkpoint needs ")
    assert "the last good checkpoint (step 1) is kept; free at least" in msg and msg.endswith(
        "then continue with --resume.")
    assert _checkpoint(r)["step"] == 1 and _no_temporaries(r)
    monkeypatch.undo()
    assert train(str(r), iters=5, resume=True, device="cpu")["step"] == 5


# The CLI in a child process whose disk has 500 kB free (less than a checkpoint of the tiny model).
FULL_DISK = ("import shutil, sys\n"
             "real = shutil.disk_usage\n"
             "shutil.disk_usage = lambda p: real(p)._replace(free=500_000)\n"
             "from backend.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")


def test_a_full_disk_ends_training_with_one_line_and_resume_says_where_it_continues(trained_run, tmp_path):
    r = shutil.copytree(trained_run, tmp_path / "r")
    before = (r / "checkpoints" / "latest.pt").read_bytes()
    step = _checkpoint(r)["step"]
    args = ["train", "--run", str(r), "--resume", "--iters", str(step + 2), "--device", "cpu"]
    res = subprocess.run([sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    expect_error(res, "latest.pt: the disk is full", "0.5 MB are free", f"checkpoint (step {step}) is kept",
                 "free at least", "--resume")
    assert (r / "checkpoints" / "latest.pt").read_bytes() == before and _no_temporaries(r)
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    evs = events_of(res.stdout)
    assert f"resuming training at step {step} of {step + 2} (the last checkpoint)" in [e.get("message") for e in evs]
    assert evs[-1]["event"] == "done" and (evs[-1]["start_step"], evs[-1]["step"]) == (step, step + 2)
    from backend.terminal import summary
    assert summary(evs[-1]).startswith(f"Trained steps {step}-{step + 2}, training PSNR")


def test_a_failed_save_leaves_no_temporary_and_a_killed_one_is_cleaned_up(trained_run, tmp_path, monkeypatch):
    """A save that fails half-way (an I/O error): one line naming the file and the checkpoint kept,
    and no temporary file. A save killed outright (kill -9) leaves one: the next training
    deletes it when it starts, before its first save."""
    from backend.train import Trainer
    r = shutil.copytree(trained_run, tmp_path / "r")
    step = _checkpoint(r)["step"]
    saves_that(monkeypatch, ["eio"])
    monkeypatch.setattr(events, "_stream", io.StringIO())
    with pytest.raises(InputError, match=rf"latest.pt: cannot write the checkpoint \(Input/output error\); "
                                         rf"the last good checkpoint \(step {step}\) is kept"):
        train(str(r), iters=step + 1, resume=True, device="cpu")
    assert _checkpoint(r)["step"] == step and _no_temporaries(r)
    tmp = r / "checkpoints" / "latest.pt.tmp"
    tmp.write_bytes(os.urandom(1 << 20))                       # what kill -9 during a save leaves
    seen, real_step = [], Trainer.step

    def step_and_look(self, *a, **k):
        seen.append(tmp.exists())
        return real_step(self, *a, **k)

    monkeypatch.setattr(Trainer, "step", step_and_look)
    train(str(r), iters=step + 1, resume=True, device="cpu")
    assert seen == [False] and _no_temporaries(r)


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGKILL"])
def test_a_closed_terminal_saves_and_a_kill_loses_at_most_the_checkpoint_interval(run, tmp_path, sig):
    """SIGHUP (the terminal closed) stops training like SIGTERM: a checkpoint and a `stopped`
    event. kill -9 cannot be caught: with --checkpoint-every 1 the run still has a checkpoint
    of at most about a second before the kill."""
    r = shutil.copytree(run, tmp_path / "r")
    p = subprocess.Popen([sys.executable, "-m", "backend", "train", "--run", str(r), "--iters", "100000",
                          "--device", "cpu", "--preset", "small", "--batch-rays", "256", "--log2-table", "12",
                          "--checkpoint-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    last = None
    for line in p.stdout:
        if '"progress"' in line:
            last = json.loads(line)
            if last["elapsed_s"] > 2.5:
                break
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    ck = _checkpoint(r)
    if sig == "SIGHUP":
        assert p.returncode == 0, err
        assert events_of(out)[-1]["event"] == "stopped" and ck["step"] == events_of(out)[-1]["step"] >= last["step"]
    else:
        assert 0 < ck["step"] <= last["step"]


def test_the_checkpoint_interval_is_an_option_with_limits(run):
    res = cli("train", "--run", str(run), "--checkpoint-every", "0.5", "--device", "cpu")
    expect_error(res, "--checkpoint-every 0.5", "from 1 to 86400")
    assert "--checkpoint-every" in cli("fit", "--help").stdout
