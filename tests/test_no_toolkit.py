"""The GPU path on a machine set up as an artist's is: an NVIDIA driver and pip's torch, no CUDA
toolkit. `nvcc` and `ninja` on the PATH are stand-ins that fail, CUDA_HOME points nowhere, and the
extension, Triton and backend caches start empty; `doctor`, `fit`, `render` and `serve` must work
(the Triton rasterizer and hash grid compile from the wheels), and asking for nvdiffrast must end
in one line that says what is missing, not an internal error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.campath import write_camera_path
from conftest import ROOT, events_of, gpu
from helpers import odd_camera

pytestmark = [gpu, pytest.mark.gpu]


def no_toolkit_env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nvcc", "ninja"):       # found first on the PATH, and failing as a missing tool does
        (bin_dir / tool).write_text(f"#!/bin/sh\necho '{tool}: command not found' >&2\nexit 127\n", encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    caches = {k: tmp_path / k.lower() for k in ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "XSCALE_CACHE_DIR")}
    for p in caches.values():
        p.mkdir()
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
               CUDA_HOME=str(tmp_path / "no-cuda-toolkit"), PYTHONPATH=str(ROOT), **{k: str(v) for k, v in caches.items()})
    env.pop("CUDA_PATH", None)
    env.pop("XSCALE_RASTERIZER", None)
    return env


def run(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_gpu_path_without_the_cuda_toolkit(scene, tmp_path):
    env = no_toolkit_env(tmp_path)
    res = run(env, "doctor", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["ready"] is True and doc["cuda_available"] is True, doc
    assert "Triton" in doc["rasterizer"] and "checked before" not in doc["check rasterizer"], doc
    run_dir = tmp_path / "run"
    res = run(env, "fit", "--scene", str(scene), "--run", str(run_dir), "--device", "cuda", "--preset", "small",
              "--iters", "50")
    assert res.returncode == 0, res.stderr[-3000:]
    assert events_of(res.stdout)[-1]["event"] == "done"
    path = tmp_path / "path.json"
    write_camera_path(path, [1, 2, 3], [odd_camera(64, 48, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5))
                                        for a in (0.2, 0.5, 0.8)])
    res = run(env, "render", "--run", str(run_dir), "--path", str(path), "--out", str(tmp_path / "frames"),
              "--device", "cuda")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 3
    from xscale_blender.core import render_server as rs
    srv = rs.RenderServer([sys.executable, "-m", "backend", "serve", "--run", str(run_dir), "--device", "cuda"],
                          env).start(timeout=600)
    try:
        cam = odd_camera(64, 48, eye=(2.2, 0.4, 1.5))
        f = srv.render(cam.width, cam.height, cam.K, cam.world_to_camera)
        rgba = f.passes["rgba"] if hasattr(f, "passes") else f.rgba
        assert np.asarray(rgba)[..., 3].max() > 0.5       # the mesh covers part of the frame
    finally:
        srv.stop()
    res = run(dict(env, XSCALE_RASTERIZER="nvdiffrast"), "render", "--run", str(run_dir), "--path", str(path),
              "--out", str(tmp_path / "nv"), "--device", "cuda")
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr and "nvdiffrast" in err[0], res.stderr[-3000:]
