"""Shared test helpers. Tests that need bpy set BLENDER_USER_RESOURCES before importing it."""
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Isolate Blender's user folders for the whole session (must happen before `import bpy`).
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="xscale-blender-user-"))

import json  # noqa: E402

import pytest  # noqa: E402


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def pytest_report_header(config):
    """The free space where tests write: the ray cache keeps 1 GB free on its disk (DISK_RESERVE)
    and refuses to start below that, so a nearly full temp disk fails the cache tests by design."""
    import shutil
    free = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    line = f"temp folder {tempfile.gettempdir()}: {free:.1f} GB free"
    return line + (" (below 3 GB: tests that build ray caches may stop with 'the disk has ... free')"
                   if free < 3 else "")


def run_triton_interpreted(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`python *argv` in a child with TRITON_INTERPRET=1 (read when triton loads, so not settable
    in this process): the Triton kernels run on CPU tensors."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# --- Backend: a tiny scene and its ray cache, shared by the pipeline and multi-process tests ----
TINY = {"batch_rays": 512, "log2_table": 12}     # training overrides for seconds-long CPU runs


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A striped plane seen by a few odd cameras (tests/helpers.py); copy it before changing it."""
    from helpers import striped_plane_scene
    return striped_plane_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="session")
def run(scene, tmp_path_factory):
    """The scene's ray cache (ss 2, every 3rd view held out, small shards); copy before training."""
    from backend.cache import build_cache
    run = tmp_path_factory.mktemp("run")
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    return run


@pytest.fixture(scope="session")
def trained_run(run, tmp_path_factory):
    """The `run` fixture trained for a few steps (small preset): a checkpoint to render from."""
    import shutil
    from backend import events
    from backend.train import train
    r = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(run, r)
    with events.silenced():
        train(str(r), iters=3, device="cpu", preset="small", overrides=TINY)
    return r


def cli(*args, **kw) -> subprocess.CompletedProcess:
    """`python -m backend ARGS` in a child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True,
                          env=env, **kw)


def events_of(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith('{"event"')]


def expect_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Bad input: exit code 2, one `error: ...` line on stderr containing `needles`, no traceback,
    and an error event as the last line on stdout."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in res.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert json.loads(res.stdout.strip().splitlines()[-1])["event"] == "error"


# --- Blender side (xscale_blender): fixtures for tests/test_blender_*.py ----------------------
# They live in tests/blender_fixtures.py; importing them here registers them once per session.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from blender_fixtures import addon, blank, bpy_module, tiny_scene  # noqa: E402,F401
