"""Multi-process training and rendering on the CPU with gloo (2 processes under torchrun).

Run as a script under torchrun, this file is also the worker of the gradient-reduction test.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import distributed
from backend.grad_reduce import GradReducer
from backend.loader import batch_part, part_runs, rows_before
from conftest import ROOT, events_of

TINY = {"batch_rays": 999, "log2_table": 12}     # odd batch: uneven shares, batches straddle shards
TRAIN_ARGS = ["--device", "cpu", "--preset", "small", "--batch-rays", "999", "--log2-table", "12"]
STEPS = 4


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(*args, env=None, **kw):
    """2 processes; `--` keeps torchrun from reading our options (`--run`) as its own."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**(env or {})), timeout=180, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_training(trained, r, result=None, evs=None, atomics=False):
    """The checkpoint in r equals the one-process run's (up to float summation order). `atomics`:
    GPU runs, whose gradient sums are in no fixed order even on one GPU: table entries whose
    gradient is near zero may take Adam steps of either sign (eps 1e-15), so a few may differ."""
    a = torch.load(trained / "checkpoints/latest.pt", weights_only=False)
    b = torch.load(r / "checkpoints/latest.pt", weights_only=False)
    assert a["step"] == b["step"] == STEPS and a["loader"] == b["loader"]
    # Gradients: Adam's first moment is a running sum of them; equal up to float summation order.
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        scale = sa["exp_avg"].abs().max()
        assert (sa["exp_avg"] - sb["exp_avg"]).abs().max() <= 1e-5 * scale
    # Parameters: the decoder to float precision. Table entries with near-cancelling gradients
    # move by about lr * sign under Adam (eps 1e-15), so rounding shows there, at a small fraction
    # of one step's size (the grid lr, ~1e-2).
    for k, va in a["model"].items():
        diff = (va.float() - b["model"][k].float()).abs()
        if atomics and k == "grid.table":
            assert (diff > 1e-4).float().mean() <= 1e-3, k
        else:
            assert diff.max() <= (1e-4 if k == "grid.table" else 1e-5 if atomics else 1e-6), k
    if result is not None:
        assert evs[-1]["loss"] == pytest.approx(result["loss"], abs=1e-5)      # reduced over ranks


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory):
    """One process, STEPS steps: the reference for the 2-process run."""
    from backend.train import train
    r = tmp_path_factory.mktemp("done1") / "run"
    shutil.copytree(run, r)
    return r, train(str(r), iters=STEPS, device="cpu", preset="small", overrides=TINY)


# --- the data split (in process) ---------------------------------------------------------------

def test_part_arithmetic():
    for batch, w in ((10, 3), (7, 2), (5, 5)):
        parts = [batch_part(batch, r, w) for r in range(w)]
        assert parts[0][0] == 0 and parts[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        for phase in range(batch):
            for lo, hi in parts:
                n = 23
                mine = [i for i in range(n) if lo <= (phase + i) % batch < hi]
                assert [i for a, b in part_runs(n, phase, batch, lo, hi) for i in range(a, b)] == mine
                assert all(rows_before(i, phase, batch, lo, hi) == sum(j < i for j in mine) for i in range(n + 1))


@pytest.mark.parametrize("batch, world", [(999, 2), (999, 3), (4001, 3)])
def test_rank_loaders_partition_the_batch(run, batch, world):
    """With the same seed, the ranks' parts of every step concatenate to the one-process batch,
    across shard ends and epochs (with 4001, some ranks have no row in a ~1300-row shard), also
    when started from a mid-stream position (resume)."""
    from backend.loader import RayLoader
    cpu = torch.device("cpu")
    for state in (None, {"epoch": 0, "pos": 1, "offset": 37}):
        one = RayLoader(run, cpu, batch, 0, state)
        ranks = [RayLoader(run, cpu, batch, 0, state, part=batch_part(batch, r, world)) for r in range(world)]
        for _ in range(12):                          # > 2 epochs of the 5224-ray cache
            ref = one.next()
            got = [ld.next() for ld in ranks]
            for k in ref:
                assert torch.equal(torch.cat([g[k] for g in got]), ref[k]), k
            assert all(ld.state() == one.state() for ld in ranks)


# --- training under torchrun ---------------------------------------------------------------

@pytest.mark.parametrize("split", ["auto", "off"])
def test_two_processes_train_like_one(run, trained, tmp_path, split):
    """Level parallel (the default: the two processes split the grid's levels) and plain data
    parallel reach the one-process parameters; the checkpoint has the one-process layout."""
    trained, result = trained
    r = tmp_path / "run"
    shutil.copytree(run, r)
    res = torchrun("-m", "--", "backend", "train", "--run", str(r), "--iters", str(STEPS), *TRAIN_ARGS,
                   env={"XSCALE_TABLE_PARALLEL": split})
    assert res.returncode == 0, res.stderr[-3000:]
    evs = events_of(res.stdout)
    assert [e["event"] for e in evs].count("done") == 1                  # rank 0 speaks alone
    mode = [e["message"] for e in evs if e["event"] == "log" and "processes (" in e["message"]]
    assert mode == ["training on 2 processes (" + ("level parallel: 1 group(s) of 2 processes)"
                                                     if split == "auto" else "data parallel x2)")]
    _assert_same_training(trained, r, result, evs)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.gpu
@pytest.mark.parametrize("split", ["auto", "off"])
def test_two_gpus_train_like_one(run, tmp_path, split):
    """NCCL and the fused kernels on level sets: 2 GPUs (level parallel, data parallel) reach the
    one-GPU parameters of the same steps."""
    from backend.train import train
    args = ["--device", "cuda", "--preset", "small", "--batch-rays", "999", "--log2-table", "12"]
    one = tmp_path / "one"
    shutil.copytree(run, one)
    result = train(str(one), iters=STEPS, device="cuda", preset="small", overrides=TINY)
    r = tmp_path / "two"
    shutil.copytree(run, r)
    res = torchrun("-m", "--", "backend", "train", "--run", str(r), "--iters", str(STEPS), *args,
                   env={"XSCALE_TABLE_PARALLEL": split})
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_training(one, r, result, events_of(res.stdout), atomics=True)


def test_level_parallel_resumes_a_one_process_run(run, trained, tmp_path):
    """Half the steps on one process, the rest on two (level parallel): the one-process result."""
    from backend.train import train
    trained, _ = trained
    r = tmp_path / "run"
    shutil.copytree(run, r)
    train(str(r), iters=STEPS, device="cpu", preset="small", overrides=TINY, stop_at=STEPS // 2)
    res = torchrun("-m", "--", "backend", "train", "--run", str(r), "--iters", str(STEPS), "--resume",
                   *TRAIN_ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_training(trained, r)


def test_two_nodes_by_c10d_rendezvous_train_like_one(run, trained, tmp_path):
    """Two torchrun launchers acting as two machines of 2 processes each (torchrun's c10d
    rendezvous, as on a cluster): level groups within each "machine", data parallel between
    them; the result is the one-process run's."""
    trained, result = trained
    r = tmp_path / "run"
    shutil.copytree(run, r)
    endpoint = f"localhost:{_free_port()}"
    procs = []
    for k in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(k),
               "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", "xscale-test", "-m", "--", "backend", "train", "--run", str(r),
               "--iters", str(STEPS), *TRAIN_ARGS]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env()))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    evs = events_of(outs[0][0] + outs[1][0])
    assert [e["event"] for e in evs].count("done") == 1
    assert any("level parallel: 2 group(s) of 2 processes" in e.get("message", "") for e in evs)
    _assert_same_training(trained, r, result, [e for e in evs if e["event"] == "done"])


def test_stop_through_nproc_then_resume_on_one_process(scene, tmp_path):
    """`fit --nproc 2`: rank 0 builds the cache while rank 1 waits; SIGTERM to the launcher stops
    both ranks after the same step, rank 0 saves, exit 0; one process resumes from there."""
    from backend.train import train
    r = tmp_path / "run"
    err_file = open(tmp_path / "stderr.txt", "w+")      # a file: a full stderr pipe would block
    p = subprocess.Popen([sys.executable, "-m", "backend", "fit", "--scene", str(scene), "--run", str(r),
                          "--test-every", "3", "--iters", "100000", "--device", "cpu", "--preset", "small",
                          "--batch-rays", "256", "--log2-table", "12", "--nproc", "2"],
                         stdout=subprocess.PIPE, stderr=err_file, text=True, env=_env())
    lines = []
    for line in p.stdout:
        lines.append(line)
        if '"progress"' in line and '"train"' in line and json.loads(line)["step"] >= 2:
            break
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=90)
    err_file.seek(0)
    assert p.returncode == 0, err_file.read()[-3000:]
    evs = events_of("".join(lines) + out)
    assert sum(e["event"] == "done" and e["stage"] == "cache" for e in evs) == 1
    stopped = [e for e in evs if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] >= 2
    ck = torch.load(r / "checkpoints/latest.pt", weights_only=False)
    assert ck["step"] == stopped[0]["step"]
    out = train(str(r), iters=ck["step"] + 2, resume=True, device="cpu")
    assert out["step"] == ck["step"] + 2


# --- rendering under torchrun --------------------------------------------------------------

def test_render_two_processes_identical(trained, tmp_path):
    trained, _ = trained
    from helpers import odd_camera
    from backend.campath import write_camera_path
    from backend.render import render_path
    cams = [odd_camera(40, 30, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in np.linspace(0.1, 1.0, 5)]
    path = tmp_path / "path.json"
    write_camera_path(path, [3, 4, 5, 6, 7], cams)
    render_path(str(trained), str(path), str(tmp_path / "one"), device="cpu")
    res = subprocess.run([sys.executable, "-m", "backend", "render", "--run", str(trained), "--path", str(path),
                          "--out", str(tmp_path / "two"), "--device", "cpu", "--nproc", "2"],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    done = [e for e in events_of(res.stdout) if e["event"] == "done"]
    assert len(done) == 1 and done[0]["frames"] == 5 and len(done[0]["files"]) == 5
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir()) == done[0]["files"]
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


# --- gradient reduction (this file as the torchrun worker) ---------------------------------

def test_grad_reducer_dense_sparse_auto():
    res = torchrun(str(Path(__file__).resolve()))
    assert res.returncode == 0, res.stderr[-3000:]
    oks = [e for e in events_of(res.stdout) if e["event"] == "reducer-ok"]
    assert len(oks) == 2 and {e["auto"] for e in oks} == {"sparse"}


def _reducer_worker() -> None:
    """Each rank: its own sparse random table gradient; after reduction every mode must give the
    exact sum in rank order, bit-identical on all ranks; decoder and stats summed too."""
    import torch.distributed as dist
    from torch import nn
    ctx = distributed.setup("cpu")
    rows, F, W = 1 << 16, 8, ctx.world
    grads = []
    for r in range(W):
        gen = torch.Generator().manual_seed(r)
        g = torch.zeros(rows, F)
        idx = torch.randint(0, rows, (300,), generator=gen)      # overlapping rows across ranks
        g[idx] = torch.randn(300, F, generator=gen)
        grads.append(g)
    expect = torch.zeros(rows, F)
    for g in grads:
        expect += g
    picked = {}
    for mode in ("dense", "sparse", "auto"):
        table, dec = nn.Parameter(torch.zeros(rows, F)), nn.Parameter(torch.zeros(5))
        table.grad, dec.grad = grads[ctx.rank].clone(), torch.full((5,), float(ctx.rank + 1))
        red = GradReducer(table, [dec], mode)
        stats = red(torch.tensor([float(ctx.rank), 1.0]))
        picked[mode] = red.last
        assert torch.equal(table.grad, expect), mode
        assert torch.equal(dec.grad, torch.full((5,), float(W * (W + 1) // 2))), mode
        assert stats.tolist() == [float(W * (W - 1) // 2), float(W)], mode
        everyone = [torch.empty_like(table.grad) for _ in range(W)]
        dist.all_gather(everyone, table.grad)
        assert all(torch.equal(e, table.grad) for e in everyone), mode
    assert distributed.any_rank(ctx.rank == 1) and not distributed.any_rank(False)
    # The training votes: sent every 2nd step without waiting, read one vote later, alike everywhere.
    vote = distributed.HostVote(every=2)
    seen = [vote(s, ctx.rank == 1 and s >= 2, ctx.rank == 0 and s == 4) for s in range(10)]
    vote.close()
    assert [a for a, _ in seen] == [False] * 4 + [True, False, True, False, True, False], seen
    assert [b for _, b in seen] == [False] * 6 + [True] + [False] * 3, seen
    # one write per line: both ranks share the pipe
    sys.stdout.write(json.dumps({"event": "reducer-ok", "rank": ctx.rank, "auto": picked["auto"]}) + "\n")
    sys.stdout.flush()
    distributed.shutdown()


if __name__ == "__main__":
    _reducer_worker()
