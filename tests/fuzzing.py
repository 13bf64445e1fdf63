"""Shared by the hostile-input and fuzz tests (tests/test_fuzz_*.py): the command line run in
this process (no interpreter start per example), Hypothesis settings sized for CI, and the
contract every bad input must meet."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, settings

from backend import events
from backend.errors import InputError

# A few seconds per property on a busy 2-core CI machine (XSCALE_FUZZ_EXAMPLES=2000 searches
# longer); tmp_path is reused across examples, each of which rewrites its files.
FUZZ = settings(max_examples=int(os.environ.get("XSCALE_FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_main(*args: str) -> subprocess.CompletedProcess:
    """`python -m backend ARGS --json` run by backend.cli.main in this process: its exit code,
    stdout (the events) and stderr, as `conftest.cli` returns them."""
    from backend.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = events._stream
    events.set_stream(out)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([*args, "--json"])
    finally:
        events.set_stream(old)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def refused_or_read(fn, *args, max_bytes: int = 64 << 20):
    """fn(*args) either returns or raises InputError with a one-line message, and allocates at most
    `max_bytes` of Python and numpy memory on the way; returns the result or the InputError."""
    tracemalloc.start()
    try:
        try:
            result = fn(*args)
        except InputError as e:
            result = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= max_bytes, f"{fn.__name__} allocated {peak / 1e6:.0f} MB"
    if isinstance(result, InputError):
        assert str(result) and "\n" not in str(result), repr(str(result))
    return result


def parsed(fn, path: Path, blob: bytes, *args, max_bytes: int = 64 << 20):
    """fn(path, *args) on a file holding `blob`, under refused_or_read's contract; None when it
    was refused (the message then starts with the file's name), else what it returned."""
    path.write_bytes(blob)
    got = refused_or_read(fn, path, *args, max_bytes=max_bytes)
    if isinstance(got, InputError):
        assert str(got).startswith(f"{path}: "), str(got)
        return None
    return got


def files_under(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path -> size), to see what a command wrote."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
