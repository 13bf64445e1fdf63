"""`python -m backend COMMAND`: the backend's command line (see docs/protocol.md).

The options, their defaults and limits come from backend.config (the Blender add-on builds its
properties from the same table); this module only wires them to the commands."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from contextlib import nullcontext

from . import config, events
from .config import Option
from .errors import DeviceError, InputError
from .runfolder import RunFolder
from .stopflag import StopFlag

STOPPABLE = ("cache", "train", "fit", "render", "demo")
# The commands that read a run folder made by `fit` (serve answers in its own binary framing).
READS_RUN = ("train", "render", "eval")
TRAINED_RUN = "run folder of a trained model (from fit or train)"


def _add(p: argparse.ArgumentParser, opt: Option, **kw) -> None:
    """The option as a flag. Choices and limits are checked by `_check_limits` (an `error` event
    naming the flag), not by argparse (a usage message the add-on cannot show)."""
    if opt.choices:
        help_ = f"{opt.help}: " + ", ".join(c[0] for c in opt.choices) + f" (default {opt.default})"
    elif opt.kind is bool:
        p.add_argument(opt.flag, action="store_true", help=opt.help, **kw)
        return
    else:
        help_ = opt.help + (f" (default {opt.default})" if opt.default is not None else "")
    p.add_argument(opt.flag, type=opt.kind, default=opt.default, help=help_, **kw)


def _add_device(p, grid_backend: bool = True) -> None:
    _add(p, config.DEVICE)
    if grid_backend:
        _add(p, config.GRID_BACKEND)


def _add_cache_opts(p) -> None:
    p.add_argument("--scene", required=True, help="MVSNet scene folder")
    p.add_argument("--mesh", help="mesh file (default: SCENE/1.obj or the only mesh in SCENE)")
    for opt in config.CACHE_OPTIONS:
        _add(p, opt)


def _add_train_opts(p) -> None:
    for opt in config.START_OPTIONS:
        _add(p, opt)
    _add(p, config.PRESET)
    for opt in config.TRAIN_OPTIONS:
        _add(p, opt)
    _add_device(p)
    _add(p, config.NPROC)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xscale-nvs", description="XScale-NVS backend")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="report torch, CUDA, the rasterizer, disk; ready = the default "
                                      "components ran here")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--recheck", action="store_true", help="run the component checks again (a pass is "
                   "remembered per Python, torch, Triton, GPU and backend version)")
    p.add_argument("--path", default=".", help="folder whose free disk space to report (the run folder)")

    p = sub.add_parser("cache", help="rasterize the mesh into the photos, write the ray cache")
    _add_cache_opts(p)
    p.add_argument("--run", required=True, help="run folder to write the ray cache to (made if missing)")
    _add(p, config.OVERWRITE)
    _add_device(p, grid_backend=False)

    p = sub.add_parser("train", help="train the hash featurized manifold")
    p.add_argument("--run", required=True, help="run folder holding the ray cache (from cache or fit); "
                   "checkpoints go there")
    _add_train_opts(p)

    p = sub.add_parser("fit", help="cache (unless up to date) then train")
    _add_cache_opts(p)
    p.add_argument("--run", required=True, help="run folder for the ray cache, checkpoints and log (made if "
                   "missing)")
    _add_train_opts(p)

    p = sub.add_parser("render", help="render a camera path JSON")
    p.add_argument("--run", required=True, help=TRAINED_RUN)
    p.add_argument("--path", required=True, help="camera path JSON (docs/protocol.md)")
    p.add_argument("--out", required=True, help="folder for the frames, frame_NNNNNN.png or .exr (made if "
                   "missing)")
    for opt in (config.FORMAT, config.EXPOSURE, config.RENDER_SS):
        _add(p, opt)
    _add_device(p)
    _add(p, config.NPROC)

    p = sub.add_parser("serve", help="render server: answer camera requests on stdin/stdout (binary)")
    p.add_argument("--run", required=True, help=TRAINED_RUN)
    _add_device(p)

    p = sub.add_parser("eval", help="metrics on the held-out views")
    p.add_argument("--run", required=True, help=TRAINED_RUN + "; writes RUN/eval.json and RUN/eval/")
    _add_device(p)

    p = sub.add_parser("demo", help="procedural scene end to end")
    p.add_argument("--out", default="xscale_demo", help="folder for the demo's scene, run and flythrough "
                   "(default xscale_demo)")
    _add(p, config.ITERS)
    _add_device(p, grid_backend=False)

    from .prepare_cli import add_parsers
    add_parsers(sub)
    for p in sub.choices.values():
        if not any("--json" in a.option_strings for a in p._actions):
            p.add_argument("--json", action="store_true",
                           help="print the JSON-line events (docs/protocol.md) also in a terminal")
    return ap


def _check_limits(a: argparse.Namespace) -> None:
    """Every option within its limits (InputError naming the flag), before any work starts."""
    opts = (config.DEVICE, config.GRID_BACKEND, config.NPROC, config.PRESET, *config.CACHE_OPTIONS,
            *config.TRAIN_OPTIONS)
    for opt in opts:
        if hasattr(a, opt.name):
            opt.check(getattr(a, opt.name))
    if a.command == "render":
        config.RENDER_SS.check(a.ss)
    if a.command in READS_RUN and not os.path.isdir(a.run):      # must exist: say how to make one
        what = "--run names a file, not a run folder" if os.path.exists(a.run) else "the run folder does not exist"
        raise InputError(f"{a.run}: {what}; make one with: {_prog()} fit --scene SCENE --run "
                         f"{shlex.quote(a.run)} (or pass --run the folder that fit made).")
    for flag in ("run", "out"):          # folders (made if missing), never an existing file
        folder = getattr(a, flag, None)
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise InputError(f"{folder}: --{flag} names a file, not a folder; choose a folder.")
    if getattr(a, "resume", False) and getattr(a, "overwrite", False):
        raise InputError("--resume and --overwrite: choose one (continue the run's training, or start it over).")


def _train_overrides(a: argparse.Namespace) -> dict:
    return {opt.name: getattr(a, opt.name) for opt in config.TRAIN_OPTIONS}


def run_command(a: argparse.Namespace) -> int:
    _check_limits(a)
    grid_backend = getattr(a, "grid_backend", "auto")
    if grid_backend != "auto":
        from .encoding import check_backend
        check_backend(grid_backend)
    if a.command == "doctor":
        from .doctor import main
        return main(a.json, a.path, a.recheck)
    if a.command == "cache":
        from .cache import build_cache
        build_cache(a.scene, a.run, a.mesh, a.level, a.ss, a.test_every, a.device, overwrite=a.overwrite)
    elif a.command == "train":
        from .train import train
        train(a.run, a.iters, a.resume, a.device, a.preset, _train_overrides(a), grid_backend=grid_backend,
              overwrite=a.overwrite)
    elif a.command == "fit":
        from .fit import fit
        fit(a.scene, a.run, mesh=a.mesh, level=a.level, ss=a.ss, test_every=a.test_every, iters=a.iters,
            resume=a.resume, overwrite=a.overwrite, device=a.device, preset=a.preset,
            overrides=_train_overrides(a), grid_backend=grid_backend)
    elif a.command == "render":
        from .render import render_path
        render_path(a.run, a.path, a.out, a.format, a.exposure, a.ss, a.device, grid_backend)
    elif a.command == "serve":
        from .serve import serve
        return serve(a.run, a.device, grid_backend)
    elif a.command == "eval":
        from .evaluate import evaluate
        evaluate(a.run, a.device, grid_backend=grid_backend)
    elif a.command == "demo":
        from .demo import run_demo
        run_demo(a.out, a.device, a.iters)
    elif hasattr(a, "func"):
        return a.func(a) or 0
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # OpenMP threads that wait for work by sleeping, not spinning (read when torch loads, below).
    # Spinning threads burn the cores other programs need and lose theirs: on a 2-core machine
    # kept busy by other programs the CPU demo trained 2.5x faster with PASSIVE (400 steps in
    # ~6 min instead of ~15), at the same CPU time per step as one thread. Set it to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    a = build_parser().parse_args(argv)
    multi = getattr(a, "nproc", 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    view = _terminal_view(a, argv)
    try:
        if multi:
            from . import distributed
            if not distributed.launched():
                from .launch import relaunch
                return relaunch(argv, a.nproc)
            if a.command not in ("train", "fit", "render") and distributed.env_rank() != 0:
                return 0    # one-process commands run once, on rank 0
        # Every command on a run folder also appends its events to RUN/log.jsonl.
        run = RunFolder(a.run) if getattr(a, "run", None) else None
        with events.copied_to(run.log, when=run.is_run) if run else nullcontext():
            return _run_reporting_errors(a, multi, quiet_stderr=view is not None)
    finally:
        if view is not None:
            events.set_view(None)
            try:
                view.close()
            except (OSError, ValueError):
                events.lose_output()


def _terminal_view(a: argparse.Namespace, argv: list[str]):
    """The terminal view of the events (backend.terminal) when stdout is a terminal, --json is
    not given and this is not a worker process under torchrun; None: JSON lines."""
    if a.json or os.environ.get("WORLD_SIZE") or not _isatty(sys.stdout):
        return None
    try:
        from .terminal import TerminalView
    except ImportError:      # rich missing: JSON lines are still the whole output
        return None
    view = TerminalView(resume_hint=_resume_hint(a, argv))
    events.set_view(view)
    return view


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _resume_hint(a: argparse.Namespace, argv: list[str]) -> str | None:
    """The command that continues this one after a stop (train, fit: with --resume; cache: again)."""
    if a.command not in ("train", "fit", "cache"):
        return None
    args = [x for x in argv if x != "--overwrite"]
    if a.command in ("train", "fit") and "--resume" not in args:
        args.append("--resume")
    return f"{_prog()} {shlex.join(args)}"


def _prog() -> str:
    """How this command was started, for the commands it suggests."""
    return "xscale-nvs" if os.path.basename(sys.argv[0]) == "xscale-nvs" else "python -m backend"


def _run_reporting_errors(a: argparse.Namespace, multi: bool, quiet_stderr: bool = False) -> int:
    """Run the command; errors become an `error` event plus one line on stderr (the terminal view
    already shows it in red when stderr is the same terminal)."""
    def to_stderr(text: str) -> None:
        if not (quiet_stderr and _isatty(sys.stderr)):
            events.write_safely(text, sys.stderr)
    try:
        # Jobs that honour a stop do so from the start: a stop while inputs are still being read
        # ends the job at its first check (a `stopped` event, exit 0), not with a kill.
        with StopFlag() if a.command in STOPPABLE else nullcontext():
            rc = run_command(a)
        if multi:
            from . import distributed
            distributed.shutdown()
        return rc
    except (InputError, DeviceError) as e:
        events.emit("error", message=str(e))
        to_stderr(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        events.emit("error", message="interrupted")
        return 130
    except Exception as e:  # unexpected: keep the traceback for bug reports, still emit an event
        from .toolchain import explain
        if (why := explain(e)) is not None:       # a missing build tool is the user's to fix: no traceback
            events.emit("error", message=why)
            to_stderr(f"error: {why}\n")
            return 2
        events.write_safely(traceback.format_exc(), sys.stderr)
        events.emit("error", message=f"internal error: {type(e).__name__}: {e}")
        return 1
