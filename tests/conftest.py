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

import pytest  # noqa: E402


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def run_triton_interpreted(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`python *argv` in a child with TRITON_INTERPRET=1 (read when triton loads, so not settable
    in this process): the Triton kernels run on CPU tensors."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# --- Blender side (xscale_blender): fixtures for tests/test_blender_*.py ----------------------
# They live in tests/blender_fixtures.py; importing them here registers them once per session.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from blender_fixtures import addon, blank, bpy_module, tiny_scene  # noqa: E402,F401
