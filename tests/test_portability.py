"""The CPU path where Triton is absent (macOS has no Triton wheels) and with the paths a Windows or
non-English user has: spaces and non-ASCII letters in the scene and run folders, and no reliance on
the platform's default text encoding (Windows' is not UTF-8)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend.campath import write_camera_path
from conftest import ROOT, TINY, events_of
from helpers import odd_camera

# Imported first in the child (a sitecustomize on its path): Triton cannot be found, as where no
# Triton wheel exists.
NO_TRITON = """
import sys
class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoTriton())
"""


def backend_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m backend ARGS` without Triton, failing on any text file opened without an explicit
    encoding (PEP 597's EncodingWarning: such a file reads differently on Windows)."""
    site = tmp_path / "no_triton"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TRITON, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), XSCALE_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-X", "warn_default_encoding", "-W", "error::EncodingWarning",
                           "-m", "backend", *args], capture_output=True, text=True, env=env, timeout=600)


def test_cpu_pipeline_without_triton_in_a_non_ascii_folder(scene, tmp_path):
    root = tmp_path / "Zoë's captures" / "été 2026"
    scene_dir = shutil.copytree(scene, root / "scène 1")
    run = root / "runs" / "première"
    res = backend_cli(tmp_path, "doctor", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["triton"] is None and doc["ready"] is True and "CPU" in doc["rasterizer"]
    res = backend_cli(tmp_path, "fit", "--scene", str(scene_dir), "--run", str(run), "--device", "cpu",
                      "--preset", "small", "--iters", "4", "--batch-rays", str(TINY["batch_rays"]),
                      "--log2-table", str(TINY["log2_table"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert events_of(res.stdout)[-1]["event"] == "done"
    path = root / "chemins" / "vol à l'aube.json"
    path.parent.mkdir(parents=True)
    write_camera_path(path, [1, 2], [odd_camera(24, 16, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in (0.2, 0.6)])
    out = root / "rendus"
    res = backend_cli(tmp_path, "render", "--run", str(run), "--path", str(path), "--out", str(out), "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["frame_000001.png", "frame_000002.png"]
    res = backend_cli(tmp_path, "eval", "--run", str(run), "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "eval.json").read_text(encoding="utf-8"))
