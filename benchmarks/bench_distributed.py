"""Gradient reduction for data-parallel training: dense all_reduce vs touched-rows all_gather.

    python benchmarks/bench_distributed.py [--nproc 2] [--out benchmarks/results/distributed.json]
                                           [--max-log2-rows 22] [--steps 5]

Starts --nproc processes (NCCL when that many CUDA GPUs are present, else gloo on the CPU) and times:
  1. synthetic: a hash-table gradient of 2^k rows x 8 floats with a given fraction of non-zero rows
     (each rank its own random rows), reduced by GradReducer in dense and in sparse mode, and
     which mode `auto` picks;
  2. real steps: the model at the training preset (reference on CUDA, small on the CPU) on
     surface-like points, one rank's share of the batch: forward + backward time, the touched-row
     fraction of the table, and the time of each reduction of that very gradient.
Prints a table last and writes all numbers as JSON. Times are medians over --steps repetitions.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.grad_reduce import GradReducer  # noqa: E402
from backend.config import preset, with_value  # noqa: E402
from backend.model import Manifold  # noqa: E402
from common import device_name, print_table, write_json  # noqa: E402

F = 8


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_reduce(table: torch.nn.Parameter, grad: torch.Tensor, others: list[torch.nn.Parameter],
                 other_grads: list[torch.Tensor], mode: str, steps: int, dev: torch.device) -> tuple[float, str]:
    """This rank's median seconds for one GradReducer call on the given gradients (after a warm-up
    call), and the mode the reducer used."""
    red = GradReducer(table, others, mode)
    times = []
    for _ in range(steps + 1):                  # the first is a warm-up
        table.grad = grad.clone()
        for p, g in zip(others, other_grads):
            p.grad = g.clone()
        dist.barrier()
        _sync(dev)
        t0 = time.perf_counter()
        red(torch.zeros(2, device=dev))
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), red.last


def _slowest(values: list[float], dev: torch.device) -> list[float]:
    """Each value's maximum over the ranks: the slowest rank sets the pace."""
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _surface_points(n: int, S: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """Points on a wavy sheet across the unit box, S jittered sub-samples per pixel (like a scene
    surface seen at one pixel footprint)."""
    uv = torch.rand(n, 2, generator=gen)
    z = 0.5 + 0.15 * torch.sin(6.0 * uv[:, :1]) * torch.cos(5.0 * uv[:, 1:])
    p = torch.cat([uv, z], 1)[:, None, :] + 2e-4 * torch.randn(n, S, 3, generator=gen)
    return p.clamp(0, 1).to(dev)


def _worker(rank: int, world: int, port: int, args, queue) -> None:
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    dev = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(1234 + rank)
    rows_out = []

    # 1. synthetic gradients
    for k in range(args.min_log2_rows, args.max_log2_rows + 1, 2):
        n = 1 << k
        for density in (0.001, 0.01, 0.1, 0.3, 1.0):
            grad = torch.zeros(n, F)
            idx = torch.randperm(n, generator=gen)[:max(1, int(density * n))]
            grad[idx] = torch.randn(len(idx), F, generator=gen)
            grad = grad.to(dev)
            table = torch.nn.Parameter(torch.zeros(n, F, device=dev))
            dec = [torch.nn.Parameter(torch.zeros(40_000, device=dev))]   # decoder-sized bucket
            dec_grad = [torch.zeros_like(dec[0])]
            td, ts = _slowest([_time_reduce(table, grad, dec, dec_grad, mode, args.steps, dev)[0]
                               for mode in ("dense", "sparse")], dev)
            _, pick = _time_reduce(table, grad, dec, dec_grad, "auto", 1, dev)
            rows_out.append({"case": "synthetic", "log2_rows": k, "density": density, "dense_ms": td * 1e3,
                             "sparse_ms": ts * 1e3, "auto_picks": pick,
                             "best": "dense" if td <= ts else "sparse"})
            del grad, table

    # 2. real training steps at the preset
    tc = preset("auto", dev.type)
    if args.log2_table:
        tc = with_value(tc, "model.grid.log2_table", args.log2_table)
    batch = args.batch_rays or tc.optim.batch_rays
    share = batch // world
    torch.manual_seed(0)
    model = Manifold(tc.model, [0, 0, 0], [1, 1, 1], 32).to(dev)
    groups = model.param_groups(tc.optim)
    table, others = groups[0]["params"][0], groups[1]["params"]
    step_t = []
    grad = None
    for _ in range(args.steps + 1):
        xyz = _surface_points(share, 4, gen, dev)
        mask = torch.ones(share, 4, dtype=torch.bool, device=dev)
        dirs = torch.nn.functional.normalize(torch.randn(share, 3, generator=gen), dim=1).to(dev)
        view = torch.randint(0, 32, (share,), generator=gen).to(dev)
        target = torch.rand(share, 3, generator=gen).to(dev)
        model.zero_grad(set_to_none=True)
        _sync(dev)
        t0 = time.perf_counter()
        loss = (model(xyz, mask, dirs, view=view) - target).abs().mean()
        loss.backward()
        _sync(dev)
        step_t.append(time.perf_counter() - t0)
        grad = table.grad.detach().clone()
    touched = float(grad.ne(0).any(1).float().mean())
    dec_grads = [p.grad.detach().clone() for p in others]
    res = {mode: _time_reduce(table, grad, others, dec_grads, mode, args.steps, dev)
           for mode in ("dense", "sparse", "auto")}
    t = _slowest([statistics.median(step_t[1:]), res["dense"][0], res["sparse"][0], res["auto"][0], touched], dev)
    rows_out.append({"case": "train_step", "preset_log2_table": tc.log2_table, "table_rows": table.shape[0],
                     "batch_rays": batch, "rays_per_rank": share, "fwd_bwd_ms": float(t[0]) * 1e3,
                     "dense_ms": float(t[1]) * 1e3, "sparse_ms": float(t[2]) * 1e3,
                     "auto_ms": float(t[3]) * 1e3, "auto_picks": res["auto"][1],
                     "touched_rows_max_rank": float(t[4])})
    if rank == 0:
        queue.put({"backend": dist.get_backend(), "world": world, "rows": rows_out})
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--min-log2-rows", type=int, default=16)
    ap.add_argument("--max-log2-rows", type=int, default=22)
    ap.add_argument("--log2-table", type=int, help="override the preset's table size (real steps)")
    ap.add_argument("--batch-rays", type=int, help="override the preset's global batch (real steps)")
    ap.add_argument("--out", default="benchmarks/results/distributed.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(args.nproc, _free_port(), args, queue), nprocs=args.nproc,
                       start_method="spawn")
    out = queue.get()
    print(f"\nbackend {out['backend']}, {out['world']} processes -- {device_name()}")
    print(f"{'log2 rows':>9s} {'density':>8s} {'dense ms':>9s} {'sparse ms':>10s} {'best':>7s} {'auto':>7s}")
    for r in out["rows"]:
        if r["case"] == "synthetic":
            print(f"{r['log2_rows']:9d} {r['density']:8.3f} {r['dense_ms']:9.2f} {r['sparse_ms']:10.2f} "
                  f"{r['best']:>7s} {r['auto_picks']:>7s}")
    step = out["rows"][-1]
    print(f"\nreal step: table {step['table_rows']} rows (log2 {step['preset_log2_table']}), "
          f"{step['rays_per_rank']} rays per rank, touched rows {100 * step['touched_rows_max_rank']:.1f}%")
    rows = [{"metric": "fwd+bwd per rank", "value": step["fwd_bwd_ms"], "unit": "ms", "higher_is_better": False},
            {"metric": "reduce dense", "value": step["dense_ms"], "unit": "ms", "higher_is_better": False},
            {"metric": "reduce sparse (touched rows)", "value": step["sparse_ms"], "unit": "ms",
             "higher_is_better": False},
            {"metric": f"reduce auto (picks {step['auto_picks']})", "value": step["auto_ms"], "unit": "ms",
             "higher_is_better": False},
            {"metric": "auto reduce / fwd+bwd", "value": step["auto_ms"] / step["fwd_bwd_ms"], "unit": "ratio",
             "higher_is_better": False}]
    print_table(rows, f"data-parallel step ({out['backend']}, {out['world']} processes)")
    write_json(args.out, rows, backend=out["backend"], world=out["world"], details=out["rows"])
    print(f"\nwrote {args.out}; {math.fsum(1 for r in out['rows'] if r['case'] == 'synthetic' and r['best'] != r['auto_picks'])} "
          "synthetic cases where auto did not pick the faster mode")


if __name__ == "__main__":
    main()
