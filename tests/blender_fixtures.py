"""Helpers and fixtures for the Blender-side tests (tests/test_blender_*.py).

bpy is imported lazily (after conftest.py has pointed BLENDER_USER_RESOURCES at a temporary
folder), and every test that needs it skips cleanly when the bpy module is not installed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from backend.cameras import look_at  # noqa: F401 (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bumpy_grid(n: int = 6, half: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A small non-planar surface around the origin (z up): vertices (V, 3), triangles (F, 3)."""
    s = np.linspace(-half, half, n)
    gx, gy = np.meshgrid(s, s, indexing="ij")
    gz = 0.15 * np.sin(2.0 * gx) * np.cos(3.0 * gy)
    v = np.stack([gx, gy, gz], -1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, c, d], 1), np.stack([a, d, b], 1)])
    return v, f


# Deliberately awkward intrinsics: fx != fy, off-centre principal points, portrait and landscape.
TINY_VIEWS = [
    # name, width, height, fx, fy, cx, cy, eye
    ("view_000", 48, 32, 52.0, 50.0, 24.7, 15.2, (0.3, -3.0, 2.0)),
    ("view_001", 32, 48, 44.0, 47.5, 15.1, 25.3, (2.6, 1.2, 1.8)),
    ("view_002", 40, 30, 41.0, 41.0, 20.0, 15.0, (-2.4, 1.5, 2.2)),
]


def make_tiny_scene(root: Path, views=TINY_VIEWS, n_grid: int = 6) -> Path:
    """A minimal MVSNet scene: bumpy grid mesh (1.obj), cams/NAME_cam.txt, solid-colour PNGs."""
    from PIL import Image

    from backend.cameras import Camera, write_mvsnet_cam

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "cams").mkdir(exist_ok=True)
    v, f = bumpy_grid(n_grid)
    with open(root / "1.obj", "w") as fh:
        fh.writelines(f"v {x!r} {y!r} {z!r}\n" for x, y, z in v)
        fh.writelines(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in f)
    rng = np.random.default_rng(0)
    for name, w, h, fx, fy, cx, cy, eye in views:
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        cam = Camera(w, h, K, look_at(eye, (0.0, 0.0, 0.0)), name, (1.0, 8.0))
        write_mvsnet_cam(root / "cams" / f"{name}_cam.txt", cam)
        colour = rng.integers(40, 220, size=3, dtype=np.uint8)
        Image.fromarray(np.broadcast_to(colour, (h, w, 3)).copy()).save(root / "images" / f"{name}.png")
    return root


def read_obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(t) for t in ln.split()[1:4]]
                     for ln in Path(path).read_text().splitlines() if ln.startswith("v ")])


def backend_python() -> str:
    """Interpreter for the real backend in tests: $XSCALE_BACKEND_PYTHON or this one."""
    return os.environ.get("XSCALE_BACKEND_PYTHON") or sys.executable


def backend_ready() -> str:
    """'' when `python -m backend fit` can run with torch, else the reason it cannot."""
    py = backend_python()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        res = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return f"the backend interpreter {py} has no torch"
        res = subprocess.run([py, "-m", "backend", "fit", "--help"], capture_output=True, text=True,
                             env=env, cwd=str(ROOT), timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run the backend interpreter {py}: {e}"
    return "" if res.returncode == 0 else "`python -m backend fit --help` fails: " + res.stderr[-300:]


def import_trained(bpy, scene, scene_dir, run_dir, monkeypatch) -> None:
    """The MVSNet scene `scene_dir` imported into `scene`, rendered by the XScale-NVS engine from
    the trained run `run_dir` on the CPU (the backend in this interpreter)."""
    monkeypatch.setenv("XSCALE_BACKEND_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert bpy.ops.import_scene.xscale_mvsnet(directory=str(scene_dir), show_photos=False) == {"FINISHED"}
    scene.xscale.run_dir, scene.xscale.device = str(run_dir), "cpu"
    scene.render.engine = "XSCALE_NVS"


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bpy_module():
    try:
        import bpy
    except ImportError as e:   # not installed, or its system libraries are missing
        pytest.skip(f"bpy is not importable: {e}")
    return bpy


@pytest.fixture(scope="session")
def addon(bpy_module):
    """xscale_blender registered from the source tree for the whole session."""
    import xscale_blender
    xscale_blender.register()
    yield xscale_blender
    xscale_blender.unregister()


@pytest.fixture
def blank(addon, bpy_module):
    """An empty scene (objects, cameras, images and strips of earlier tests are gone)."""
    bpy = bpy_module
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_percentage = 100
    return scene


@pytest.fixture
def tiny_scene(tmp_path) -> Path:
    return make_tiny_scene(tmp_path / "tiny")
