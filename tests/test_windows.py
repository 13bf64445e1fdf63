"""Windows conventions, simulated where this Linux machine can: stop signals (CTRL_BREAK / SIGBREAK),
the job's process group, torchrun without libuv, gloo where torch has no NCCL, the venv layout.
What cannot be simulated here is listed in README's Windows section."""
import io
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from backend import distributed, launch, stopflag, train_strategy
from xscale_blender.core import backend_setup as bs
from xscale_blender.core import jobs


class FakeProc:
    def __init__(self):
        self.signals, self.killed, self.pid = [], False, 1

    def poll(self):
        return None

    def send_signal(self, sig):
        self.signals.append(sig)

    def terminate(self):
        self.signals.append("terminate")

    def kill(self):
        self.killed = True


def test_job_stop_and_kill_on_windows(monkeypatch):
    """Stop sends CTRL_BREAK to the job's process group (the backend saves and exits); kill ends the
    process itself (no killpg on Windows)."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", 1, raising=False)
    monkeypatch.setattr(os, "killpg", lambda *a: pytest.fail("killpg on Windows"), raising=False)
    job = jobs.Job(["backend"])
    job.proc = FakeProc()
    job.stop()
    assert job.proc.signals == [signal.CTRL_BREAK_EVENT]
    job.kill()
    assert job.proc.killed


def test_job_starts_in_its_own_process_group_on_windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    seen = {}

    def popen(argv, **kw):
        seen.update(kw)
        raise OSError(2, "stand-in: not started")

    monkeypatch.setattr(subprocess, "Popen", popen)
    job = jobs.Job(["backend"]).start()
    assert seen["creationflags"] == 0x200 and "start_new_session" not in seen
    assert "cannot start the backend" in job.state.error


def test_sigbreak_is_a_stop(monkeypatch):
    """Windows delivers Blender's CTRL_BREAK as SIGBREAK: within a job it sets the stop flag
    (SIGUSR1 stands in for it here)."""
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    with stopflag.StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.stop
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_torchrun_launcher_on_windows(monkeypatch):
    """The launcher runs torchrun without libuv (torch's Windows builds lack it), and a CTRL_BREAK
    meant for the ranks does not end the launcher before it relays their `stopped` event."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR2, raising=False)
    seen = {}

    class Proc:
        def __init__(self, cmd, env, **kw):
            seen["env"] = env
            os.kill(os.getpid(), signal.SIGUSR2)              # the stop reaches the launcher too
            self.stdout = io.StringIO(json.dumps({"event": "stopped", "stage": "train", "step": 3}) + "\n")

        def poll(self):
            return 0

        def wait(self):
            return 1                                          # torchrun exits non-zero after a stop

    monkeypatch.setattr(subprocess, "Popen", Proc)
    monkeypatch.setattr(launch.events, "forward_line", lambda line: None)
    assert launch.relaunch(["train", "--run", "r"], 2) == 0
    assert seen["env"]["USE_LIBUV"] == "0"
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_no_nccl_means_gloo_and_data_parallel(monkeypatch):
    """Where torch has no NCCL (Windows), CUDA processes use gloo, which cannot exchange the grid's
    levels (no all_to_all on CUDA tensors): data parallel, not level parallel."""
    monkeypatch.setattr(distributed.dist, "is_nccl_available", lambda: False)
    cuda = torch.device("cuda", 0)
    assert distributed.collective_backend(cuda) == "gloo"
    assert distributed.collective_backend(torch.device("cpu")) == "gloo"
    model = SimpleNamespace(grid=SimpleNamespace(splits_levels=lambda S, dev: True),
                            cfg=SimpleNamespace(grid=SimpleNamespace(n_levels=16)))
    monkeypatch.setattr(train_strategy.table_parallel, "LevelParallel", lambda *a: pytest.fail("level parallel"))
    ctx = distributed.Context(0, 2, 0, cuda, 2)
    assert isinstance(train_strategy.choose(ctx, model, 4096, 4), train_strategy.DataParallel)


def test_windows_venv_layout(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "win32")
    assert bs.venv_python(tmp_path / "venv") == tmp_path / "venv" / "Scripts" / "python.exe"
    assert bs.torch_index("cuda", "", "win32") == bs.WINDOWS_CUDA_INDEX_URL   # PyPI's Windows torch is CPU-only
