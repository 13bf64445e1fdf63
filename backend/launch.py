"""`--nproc N`: re-run the same command under torchrun (one process per GPU).

    python -m torch.distributed.run --standalone --nproc-per-node N -m -- backend train --run R
is what `--nproc N` runs (the `--` stops torchrun from reading `--run` as its own `--run-path`);
raw torchrun works too.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import events


def relaunch(argv: list[str], nproc: int) -> int:
    """Run `python -m backend ARGV` as `nproc` processes under torchrun with this interpreter.

    Relays the ranks' stdout (identical error events once) and maps the exit status to the
    protocol's: torchrun itself exits non-zero after passing on a stop, so a `stopped` event means 0,
    an `error` event for bad input means 2."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # torchrun would set 1 thread per process; share the cores instead (matters on CPU only).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Time between a stop and SIGKILL: rank 0 must be able to write a multi-GB checkpoint.
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    if sys.platform == "win32":
        # torch's Windows builds have no libuv, which torchrun's rendezvous store uses by default.
        env.setdefault("USE_LIBUV", "0")
    # `--` ends torchrun's options: it would take e.g. `--run` for its own `--run-path`.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "--", "backend", *argv]
    proc: subprocess.Popen | None = None
    early_stop = False

    def forward(signum, frame):
        # SIGTERM (e.g. from the Blender job) reaches only this process: pass it on (once torchrun
        # runs; a SIGHUP too, as a SIGTERM: its ranks stop the same way). A terminal's Ctrl+C
        # already reaches the whole process group, so SIGINT is not sent a second time.
        nonlocal early_stop
        if signum not in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            return
        if proc is None:
            early_stop = True
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    # SIGBREAK (Windows): Blender's Stop sends CTRL_BREAK to the job's process group, which the
    # ranks are in too; the launcher must outlive it to relay their `stopped` events. The handlers
    # come first: a stop while torchrun starts must not end the launcher.
    stops = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGBREAK", None),
                         getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, forward) for s in stops}
    seen_errors: set[str] = set()
    stopped = bad_input = False
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
        if early_stop:
            forward(signal.SIGTERM, None)
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, message = _event_of(line)
            if kind == "error":
                if line in seen_errors:
                    continue
                seen_errors.add(line)
                bad_input = bad_input or not message.startswith(("internal error", "interrupted"))
            stopped = stopped or kind == "stopped"
            lost = events.output_lost()
            events.forward_line(line)       # as JSON, or to the terminal view
            if events.output_lost() and not lost:   # nobody reads us any more: stop the job cleanly
                forward(signal.SIGTERM, None)
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc == 0 or stopped:
        return 0
    return 2 if bad_input else rc


def _event_of(line: str) -> tuple[str, str]:
    if not line.startswith("{"):
        return "", ""
    try:
        obj = json.loads(line)
    except ValueError:
        return "", ""
    if not isinstance(obj, dict):
        return "", ""
    return str(obj.get("event", "")), str(obj.get("message", ""))
