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
