"""Training: exact resume, a stop saves, one writer per run folder."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from backend.train import train
from conftest import ROOT, TINY, cli, expect_error, gpu


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
def test_resume_is_exact(run, tmp_path, device):
    import shutil
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(run, d)
    train(str(a), iters=6, device=device, preset="small", overrides=TINY)
    train(str(b), iters=6, device=device, preset="small", overrides=TINY, stop_at=3)
    train(str(b), iters=6, resume=True, device=device)
    pa = torch.load(a / "checkpoints/latest.pt", weights_only=False, map_location="cpu")
    pb = torch.load(b / "checkpoints/latest.pt", weights_only=False, map_location="cpu")
    assert pa["step"] == pb["step"] == 6
    assert pa["loader"] == pb["loader"]
    for k in pa["model"]:
        if device == "cpu" or not pa["model"][k].is_floating_point():   # masks and counts: exact everywhere
            assert torch.equal(pa["model"][k], pb["model"][k]), k
        else:   # CUDA gradients are summed with atomics (order varies): equal but for rare rows
            off = (pa["model"][k] - pb["model"][k]).abs() > 1e-3
            assert off.float().mean().item() < 1e-3, k


def test_sigterm_saves_and_resume_continues(run, tmp_path):
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "backend", "train", "--run", str(r), "--iters", "100000",
                          "--device", "cpu", "--preset", "small", "--batch-rays", "256", "--log2-table", "12"],
                         stdout=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if '"progress"' in line and json.loads(line)["step"] >= 2:
            break
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    stopped = [json.loads(x) for x in out.splitlines() if '"stopped"' in x]
    assert stopped and stopped[0]["step"] >= 2
    ck = torch.load(r / "checkpoints/latest.pt", weights_only=False)
    assert ck["step"] == stopped[0]["step"]
    res = cli("train", "--run", str(r), "--resume", "--iters", str(ck["step"] + 2), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    done = [json.loads(x) for x in res.stdout.splitlines() if '"done"' in x]
    assert done[-1]["step"] == ck["step"] + 2


def test_second_writer_of_a_run_folder_is_refused(scene, run, tmp_path):
    """While one process trains or caches into a run folder, another gets a one-line error instead
    of interleaving files; the lock goes away with its holder."""
    import shutil
    from backend.runfolder import RunFolder
    r = tmp_path / "r"
    shutil.copytree(run, r)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from backend.runfolder import RunFolder\n"
                               f"with RunFolder({str(r)!r}).exclusive('test'):\n"
                               "    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        expect_error(cli("train", "--run", str(r), "--iters", "2", "--device", "cpu"),
                      str(r), "another process is already writing")
        expect_error(cli("cache", "--scene", str(scene), "--run", str(r), "--device", "cpu"),
                      "another process is already writing")
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(r).exclusive("test"):      # released when its holder died
        pass
    train(str(r), iters=2, device="cpu", preset="small", overrides=TINY)
    assert (r / "checkpoints/latest.pt").is_file()


def test_commands_keep_a_log_of_their_events_in_the_run_folder(run, tmp_path):
    import shutil
    r = shutil.copytree(run, tmp_path / "r")
    (r / "log.jsonl").unlink(missing_ok=True)      # other tests' commands on the shared cache
    res = cli("train", "--run", str(r), "--iters", "2", "--device", "cpu", "--batch-rays", "256",
              "--log2-table", "12")
    assert res.returncode == 0, res.stderr
    logged = [json.loads(x) for x in (r / "log.jsonl").read_text().splitlines()]
    printed = [json.loads(x) for x in res.stdout.splitlines() if x.startswith('{"event"')]
    assert logged == printed and logged[-1]["event"] == "done" and logged[-1]["stage"] == "train"
    res = cli("train", "--run", str(tmp_path / "missing"), "--device", "cpu")
    assert res.returncode == 2 and not (tmp_path / "missing" / "log.jsonl").exists()


def _start_training(r, *extra, stderr=subprocess.PIPE):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "backend", "train", "--run", str(r), "--iters", "100000",
                             "--device", "cpu", "--preset", "small", "--batch-rays", "256", "--log2-table", "12",
                             *extra], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def _wait_for_step(p, step):
    for line in p.stdout:
        if '"progress"' in line and json.loads(line)["step"] >= step:
            return


@pytest.mark.parametrize("how", ["pipe closed", "pipes closed and SIGTERM"])
def test_closed_stdout_stops_training_with_a_checkpoint(run, tmp_path, how):
    """Blender quits during training: its end of the pipes goes away (and it may send SIGTERM).
    The job must not die on the broken pipe: it stops, saves, logs `stopped` and exits 0."""
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    (r / "log.jsonl").unlink(missing_ok=True)
    p = _start_training(r)
    _wait_for_step(p, 2)
    p.stdout.close()                           # the reader is gone; the backend writes on
    if how == "pipe closed":
        err = p.stderr.read()
    else:
        p.stderr.close()
        p.send_signal(signal.SIGTERM)
        err = ""
    assert p.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    logged = [json.loads(x) for x in (r / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["event"] == "stopped" and logged[-1]["stage"] == "train"
    ck = torch.load(r / "checkpoints/latest.pt", weights_only=False)
    assert ck["step"] == logged[-1]["step"] >= 2


def test_a_trained_run_is_not_replaced_without_overwrite(scene, run, tmp_path):
    """`fit`/`train` without --resume on a trained run folder: a one-line error naming --resume
    and --overwrite, nothing touched; --overwrite starts over."""
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    train(str(r), iters=4, device="cpu", preset="small", overrides=TINY)
    before = (r / "checkpoints/latest.pt").read_bytes()
    cache_before = sorted((p.name, p.stat().st_mtime_ns) for p in (r / "cache").rglob("*"))
    tiny = ["--device", "cpu", "--batch-rays", "256", "--log2-table", "12"]
    expect_error(cli("train", "--run", str(r), "--iters", "2", *tiny), str(r), "--resume", "--overwrite")
    expect_error(cli("fit", "--scene", str(scene), "--run", str(r), "--iters", "2", "--ss", "2",
                     "--test-every", "3", *tiny), "--resume", "--overwrite")
    other = shutil.copytree(scene, tmp_path / "other_scene")        # a new cache would be built
    expect_error(cli("fit", "--scene", str(other), "--run", str(r), "--iters", "2", *tiny), "--overwrite")
    expect_error(cli("train", "--run", str(r), "--resume", "--overwrite", *tiny), "--resume", "--overwrite")
    assert (r / "checkpoints/latest.pt").read_bytes() == before
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (r / "cache").rglob("*")) == cache_before
    res = cli("train", "--run", str(r), "--iters", "2", "--overwrite", *tiny)
    assert res.returncode == 0, res.stderr
    assert torch.load(r / "checkpoints/latest.pt", weights_only=False)["step"] == 2


class _RunsCode:
    """Unpickling this calls exec: what a tampered checkpoint could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(run, tmp_path):
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    train(str(r), iters=2, device="cpu", preset="small", overrides=TINY)
    ck = torch.load(r / "checkpoints/latest.pt", weights_only=True)      # what we write loads safely
    marker = tmp_path / "marker"
    ck["loader"]["payload"] = _RunsCode(marker)
    torch.save(ck, r / "checkpoints/latest.pt")
    for res in (cli("eval", "--run", str(r), "--device", "cpu"),
                cli("train", "--run", str(r), "--resume", "--iters", "3", "--device", "cpu")):
        expect_error(res, str(r / "checkpoints" / "latest.pt"), "contains code", "refused")
    assert not marker.exists()
