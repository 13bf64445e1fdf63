"""pycolmap installed but not loadable (its CUDA build without the CUDA 12 runtime, or a headless Linux
server without the X11 client libraries its wheels link): `prepare` on photos and `doctor` say which
library is missing and how to get it, instead of a traceback or "pycolmap is not installed"."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backend.imageio import write_png
from conftest import ROOT, expect_error

# What pycolmap's own __init__ does when its compiled core does not load: RuntimeError from the ImportError.
BROKEN = '''
try:
    raise ImportError({reason!r})
except ImportError as e:
    raise RuntimeError("Cannot import the C++ backend pycolmap._core.") from e
'''


def backend_with(fake: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`python -m backend ARGS` with a pycolmap package whose __init__ is `fake` first on the path."""
    (tmp_path / "site" / "pycolmap").mkdir(parents=True, exist_ok=True)
    (tmp_path / "site" / "pycolmap" / "__init__.py").write_text(fake, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for k in range(4):
        write_png(tmp_path / "photos" / f"p{k}.png", rng.uniform(0, 1, (24, 32, 3)).astype(np.float32))
    return tmp_path / "photos"


@pytest.mark.parametrize("reason, fix", [
    ("libSM.so.6: cannot open shared object file: No such file or directory", "apt install libsm6"),
    ("libcudart.so.12: cannot open shared object file: No such file or directory", "cuda-toolkit[cudart,curand]"),
    ("_core.so: undefined symbol: _ZN6colmap", "pip install --force-reinstall pycolmap"),
])
def test_prepare_names_the_missing_library_and_its_fix(photos, tmp_path, reason, fix):
    res = backend_with(BROKEN.format(reason=reason), tmp_path, "prepare", str(photos), "--out",
                       str(tmp_path / "scene"))
    expect_error(res, "pycolmap is installed but does not load", reason.split(":")[0], fix)
    assert not (tmp_path / "scene").exists()


def test_doctor_reports_a_broken_pycolmap_and_stays_up(tmp_path):
    res = backend_with(BROKEN.format(reason="libX11.so.6: cannot open shared object file"), tmp_path,
                       "doctor", "--json")
    line = json.loads(res.stdout.strip().splitlines()[-1])["pycolmap"]
    assert line.startswith("broken: ") and "libX11.so.6" in line and "apt install libsm6" in line, line


def test_doctor_says_what_photos_can_make_here(tmp_path):
    cpu = backend_with("__version__ = '4.2.1'\nhas_cuda = False\n", tmp_path, "doctor", "--json")
    line = json.loads(cpu.stdout.strip().splitlines()[-1])["pycolmap"]
    assert line.startswith("4.2.1, CPU build") and "pycolmap-cuda12" in line, line
    gpu = backend_with("__version__ = '4.2.1'\nhas_cuda = True\n", tmp_path, "doctor", "--json")
    assert json.loads(gpu.stdout.strip().splitlines()[-1])["pycolmap"] == \
        "4.2.1, CUDA build (photos -> cameras and mesh)"
