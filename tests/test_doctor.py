import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_json_reports_environment():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "backend", "doctor", "--json"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    import torch
    assert r["torch"] == torch.__version__
    assert r["cuda_available"] == torch.cuda.is_available()
    assert r["disk_free_gb"] > 0
    assert "tinycudann" in r and r["rasterizer"]


def test_doctor_child_check_survives_a_crashing_extension():
    from backend.encoding.tcnn import self_check
    ok, msg = self_check("import os; os.abort()")
    assert not ok and "exit code" in msg
    ok, msg = self_check("print('ok')")
    assert ok


def test_missing_build_tools_are_named_with_their_fix():
    """Triton's launcher build without a C compiler (as an artist's Linux machine may be), and
    nvdiffrast's without ninja: one line naming the tool and its install command, whatever wraps it."""
    from backend.toolchain import explain
    try:
        try:
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
        except RuntimeError as e:
            raise ValueError("kernel launch failed") from e
    except ValueError as e:
        msg = explain(e)
    assert "a C compiler" in msg and ("install gcc" in msg or "-S gcc" in msg)
    assert "Python's headers" in explain(RuntimeError("fatal error: Python.h: No such file or directory"))
    assert "ninja" in explain(RuntimeError("Ninja is required to load C++ extensions"))
    assert explain(RuntimeError("CUDA out of memory")) is None
