"""Environment report: what the backend can use on this machine."""
from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys

TCNN_CHECK = r"""
import torch, tinycudann as tcnn
enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                        "log2_hashmap_size": 12, "base_resolution": 4, "per_level_scale": 2.0})
x = torch.rand(64, 3, device="cuda")
y = enc(x)
torch.cuda.synchronize()
assert torch.isfinite(y).all()
print("ok")
"""


def _child_ok(code: str, timeout: float = 120) -> tuple[bool, str]:
    """Run `code` in a child interpreter: a crashing extension cannot take the caller down."""
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if p.returncode == 0 and p.stdout.strip().endswith("ok"):
        return True, "self-check passed"
    tail = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
    return False, f"self-check failed (exit code {p.returncode}): {tail}"


def report(path: str = ".") -> dict:
    r: dict = {"python": sys.version.split()[0], "executable": sys.executable,
               "platform": platform.platform()}
    try:
        import torch
        r["torch"] = torch.__version__
        r["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            r["cuda_device"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
            r["cuda_runtime"] = torch.version.cuda
            r["cuda_device_count"] = torch.cuda.device_count()
    except ImportError:
        r["torch"] = None
        r["cuda_available"] = False
    r["triton"] = _version("triton")
    r["opencv"] = _version("cv2") or "not installed (prepare cannot undistort photos)"
    r["nvdiffrast"] = _version("nvdiffrast")
    if importlib.util.find_spec("tinycudann") is None:
        r["tinycudann"] = "not installed (optional)"
    elif not r.get("cuda_available"):
        r["tinycudann"] = "installed, not usable without CUDA"
    else:
        ok, msg = _child_ok(TCNN_CHECK)
        r["tinycudann"] = msg
        r["tinycudann_ok"] = ok
    du = shutil.disk_usage(path)
    r["disk_free_gb"] = round(du.free / 1e9, 1)
    r["ready"] = bool(r["torch"])
    r["rasterizer"] = "nvdiffrast (CUDA)" if r.get("cuda_available") and r["nvdiffrast"] else "software (CPU)"
    return r


def _version(mod: str) -> str | None:
    if importlib.util.find_spec(mod) is None:
        return None
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # a broken install is worth reporting, not crashing on
        return f"broken ({type(e).__name__}: {e})"


def main(as_json: bool, path: str = ".") -> int:
    r = report(path)
    if as_json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:16s} {v}")
    return 0 if r["ready"] else 2
