"""The training length that follows the capture (backend/schedule.py) and the ETA it is shown with."""
import io
import json
import shutil

import pytest

from backend import events, schedule
from backend.config import PRESETS, apply_overrides
from backend.train import train
from conftest import events_of

REF = PRESETS["reference"].config
M = 1_000_000


@pytest.mark.parametrize("rays, iters, batch", [
    # a real 10-photo 6 MP capture (~40 M training rays): 1500 steps of a quarter of the preset's batch
    (40 * M, 1500, 261 * 1024),
    # a tiny capture: the smallest batch, and the least steps even though that is more passes
    (2 * M, 1500, 65536),
    # a 500-photo 6 MP capture: the preset's batch, as many steps as 10 passes take
    (2400 * M, 15259, 32 * 49152),
    # beyond the longest schedule: capped
    (10000 * M, 30000, 32 * 49152),
])
def test_steps_and_batch_follow_the_rays_in_the_cache(rays, iters, batch):
    p = schedule.plan(REF, rays, batch_given=False)
    assert (p.iters, p.batch_rays) == (iters, batch)
    if iters not in (REF.schedule.min_steps, REF.schedule.max_steps):
        assert p.passes == pytest.approx(REF.schedule.epochs, rel=1e-3)    # neither bound: 10 passes


def test_a_given_batch_is_kept_and_the_cpu_preset_stays_fixed():
    p = schedule.plan(REF, 40 * M, batch_given=True)
    assert (p.iters, p.batch_rays) == (1500, REF.optim.batch_rays)      # the batch given, the least steps
    assert PRESETS["small"].config.iters == 600                          # the CPU preset stays fixed


def _capture_events(monkeypatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(events, "_stream", out)
    monkeypatch.setattr(events, "_quiet", False)
    return out


def test_training_without_steps_follows_the_cache(run, tmp_path, monkeypatch):
    """No --iters on a preset without steps: the run's steps and batch come from its ray cache, are
    said in a log line, stored in train.json and kept by a resume; a batch given keeps its size and
    the passes over the cache decide the steps; --iters is taken as it is."""
    rays = json.loads((run / "cache" / "meta.json").read_text())["n_rays"]
    sched = {"log2_table": 12, "schedule.epochs": 3.0, "schedule.min_steps": 4, "schedule.min_batch": 1024}

    r = tmp_path / "r"
    shutil.copytree(run, r)
    out_stream = _capture_events(monkeypatch)
    out = train(str(r), device="cpu", preset="reference", overrides=sched, stop_at=2)
    assert out["stopped"] and out["step"] == 2
    expected = schedule.plan(apply_overrides(REF, sched), rays, batch_given=False)
    # 3 passes over this tiny cache in the least steps: a batch of the cache's size, not the preset's
    assert (expected.iters, expected.batch_rays) == (4, 4096)
    stored = json.loads((r / "train.json").read_text())
    assert (stored["iters"], stored["optim"]["batch_rays"]) == (4, 4096)
    said = [e["message"] for e in events_of(out_stream.getvalue())
            if e.get("event") == "log" and "training schedule" in e.get("message", "")]
    assert said == [f"training schedule: 4 steps x 4,096 rays = {4 * 4096 / rays:.1f} passes over the "
                    f"{rays / 1e6:.3g} M rays of 4 training photo(s) (--iters sets the steps)"]
    assert train(str(r), resume=True, device="cpu")["step"] == 4

    r2 = tmp_path / "r2"
    shutil.copytree(run, r2)
    train(str(r2), device="cpu", preset="reference", overrides={**sched, "batch_rays": 512}, stop_at=1)
    stored = json.loads((r2 / "train.json").read_text())
    assert (stored["iters"], stored["optim"]["batch_rays"]) == (-(-3 * rays // 512), 512)

    r3 = tmp_path / "r3"
    shutil.copytree(run, r3)
    train(str(r3), iters=2, device="cpu", preset="reference", overrides=sched, stop_at=0)   # no 1.57 M-ray step on a CPU
    stored = json.loads((r3 / "train.json").read_text())
    assert (stored["iters"], stored["optim"]["batch_rays"]) == (2, REF.optim.batch_rays)


def test_eta_leaves_out_the_slow_first_steps(monkeypatch):
    """Kernels compile in the first step: an ETA averaged from the start would be minutes too long
    all through a one-minute run."""
    clock = [100.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])
    out_stream = _capture_events(monkeypatch)
    prog = events.Progress("train", 1000)
    clock[0] += 30.0                     # step 1: 30 s of compilation
    prog.update(1)
    for step in range(101, 1001, 100):
        clock[0] += 10.0                 # then 0.1 s a step
        prog.update(step)
    clock[0] += 9.9
    prog.update(1000)
    seen = events_of(out_stream.getvalue())
    etas = [e["eta_s"] for e in seen if e.get("event") == "progress"]
    assert etas[0] == pytest.approx(30.0 * 999)          # all it knows after one step
    assert etas[1] == pytest.approx(0.1 * 899)           # from the steady steps only
    assert etas[-2] == pytest.approx(0.1 * 99) and etas[-1] == 0.0
