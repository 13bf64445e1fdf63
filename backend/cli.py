"""`python -m backend COMMAND`: the backend's command line (see docs/protocol.md)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import events
from .errors import DeviceError, InputError


def _add_device(p):
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    p.add_argument("--grid-backend", default="auto",
                   help="hash encoding: auto (Triton on CUDA), torch, triton or tcnn (tiny-cuda-nn, self-checked)")


def _add_nproc(p):
    p.add_argument("--nproc", type=int, default=1,
                   help="processes, one per GPU: runs this command under torchrun (ignored under torchrun)")


def _add_cache_opts(p):
    p.add_argument("--scene", required=True, help="MVSNet scene folder")
    p.add_argument("--mesh", help="mesh file (default: SCENE/1.obj or the only mesh in SCENE)")
    p.add_argument("--level", type=int, help="use images_{k}/ and cams_{k}/")
    p.add_argument("--ss", type=int, default=2, help="supersampling factor per axis (default 2)")
    p.add_argument("--test-every", type=int, default=8, help="hold out every k-th view (0: none)")


def _add_train_opts(p):
    p.add_argument("--iters", type=int, help="training steps (default: preset's)")
    p.add_argument("--preset", default="auto", help="reference (GPU), small (CPU) or auto")
    p.add_argument("--batch-rays", type=int, help="rays per step (reference: 32 x 49152)")
    p.add_argument("--log2-table", type=int, help="hash table size per level, log2 (reference 22)")
    p.add_argument("--lr", type=float, help="decoder learning rate")
    p.add_argument("--grid-lr", type=float, help="hash table learning rate")


def _overrides(a) -> dict:
    return {"batch_rays": a.batch_rays, "log2_table": a.log2_table, "lr": a.lr, "grid_lr": a.grid_lr}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xscale-nvs", description="XScale-NVS backend")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="report torch, CUDA, nvdiffrast, tinycudann, disk")
    p.add_argument("--json", action="store_true")
    p.add_argument("--path", default=".", help="folder whose free disk space to report (the run folder)")

    p = sub.add_parser("cache", help="rasterize the mesh into the photos, write the ray cache")
    _add_cache_opts(p)
    p.add_argument("--run", required=True)
    _add_device(p)

    p = sub.add_parser("train", help="train the hash featurized manifold")
    p.add_argument("--run", required=True)
    p.add_argument("--resume", action="store_true")
    _add_train_opts(p)
    _add_device(p)
    _add_nproc(p)

    p = sub.add_parser("fit", help="cache (unless up to date) then train")
    _add_cache_opts(p)
    p.add_argument("--run", required=True)
    p.add_argument("--resume", action="store_true")
    _add_train_opts(p)
    _add_device(p)
    _add_nproc(p)

    p = sub.add_parser("render", help="render a camera path JSON")
    p.add_argument("--run", required=True)
    p.add_argument("--path", required=True, help="camera path JSON (docs/protocol.md)")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="png", choices=["png", "exr"])
    p.add_argument("--exposure", default="mean", help="mean, or a training view's name or index")
    p.add_argument("--ss", type=int, help="supersampling (default: the cache's)")
    _add_device(p)
    _add_nproc(p)

    p = sub.add_parser("eval", help="metrics on the held-out views")
    p.add_argument("--run", required=True)
    _add_device(p)

    p = sub.add_parser("demo", help="procedural scene end to end")
    p.add_argument("--out", default="xscale_demo")
    p.add_argument("--iters", type=int)
    _add_device(p)

    from .prepare_cli import add_parsers
    add_parsers(sub)
    return ap


def run_command(a) -> int:
    if getattr(a, "grid_backend", "auto") != "auto":
        from .hashgrid import select_backend
        select_backend(a.grid_backend)
    if a.command == "doctor":
        from .doctor import main
        return main(a.json, a.path)
    if a.command == "cache":
        from .cache import build_cache
        build_cache(a.scene, a.run, a.mesh, a.level, a.ss, a.test_every, a.device)
    elif a.command in ("train", "fit"):
        from .train import train
        if a.command == "fit" and not a.resume:
            from . import distributed
            from .cache import build_cache, cache_matches
            if distributed.setup(a.device).main:    # under torchrun: rank 0 caches, the others wait
                if cache_matches(a.run, a.scene, a.ss, a.test_every, a.level, a.mesh):
                    events.log("ray cache is up to date; skipping the cache step")
                else:
                    build_cache(a.scene, a.run, a.mesh, a.level, a.ss, a.test_every, a.device)
            distributed.barrier()
        train(a.run, a.iters, a.resume, a.device, a.preset, _overrides(a))
    elif a.command == "render":
        from .render import render_path
        render_path(a.run, a.path, a.out, a.format, a.exposure, a.ss, a.device)
    elif a.command == "eval":
        from .evaluate import evaluate
        evaluate(a.run, a.device)
    elif a.command == "demo":
        from .demo import run_demo
        run_demo(a.out, a.device, a.iters)
    elif hasattr(a, "func"):
        return a.func(a) or 0
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    multi = getattr(a, "nproc", 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi:
        from . import distributed
        if not distributed.launched():
            return distributed.relaunch(argv, a.nproc)
        if a.command not in ("train", "fit", "render") and distributed.env_rank() != 0:
            return 0    # one-process commands run once, on rank 0
    try:
        rc = run_command(a)
        if multi:
            distributed.shutdown()
        return rc
    except (InputError, DeviceError) as e:
        events.emit("error", message=str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        events.emit("error", message="interrupted")
        return 130
    except Exception as e:  # unexpected: keep the traceback for bug reports, still emit an event
        traceback.print_exc()
        events.emit("error", message=f"internal error: {type(e).__name__}: {e}")
        return 1
