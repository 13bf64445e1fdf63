"""Environment report: what the backend can use on this machine, and whether it is ready.

"ready" means every default component really ran here (backend.readiness: a tiny rasterization
and a hash-grid step on the device the commands would use); what failed says how to fix it."""
from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path


def report(path: str = ".", recheck: bool = False) -> dict:
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
    r["nvdiffrast"] = _version("nvdiffrast") or "not installed (optional)"
    r["pycolmap"] = _pycolmap()
    if importlib.util.find_spec("tinycudann") is None:
        r["tinycudann"] = "not installed (optional)"
    elif not r.get("cuda_available"):
        r["tinycudann"] = "installed, not usable without CUDA"
    else:
        from .encoding.tcnn import self_check
        ok, msg = self_check()
        r["tinycudann"] = msg
        r["tinycudann_ok"] = ok
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:     # a run folder not made yet: its disk
        where = where.parent
    du = shutil.disk_usage(where)
    r["disk_free_gb"] = round(du.free / 1e9, 1)
    if not r["torch"]:
        r["ready"] = False
        r["fix"] = "install torch in this Python (README: Quick start)"
        return r
    import torch
    from .errors import DeviceError
    from .raster import RASTERIZERS, choose
    from .readiness import checks
    dev = torch.device("cuda" if r["cuda_available"] else "cpu")
    try:
        r["rasterizer"] = RASTERIZERS[choose("auto", dev).name].label
    except DeviceError as e:
        r["rasterizer"] = f"not usable: {e}"
    found = checks(dev, use_cache=not recheck)
    for c in found:
        r[f"check {c.name}"] = c.line()
    r["ready"] = all(c.ok for c in found)
    return r


def _pycolmap() -> str:
    """What `prepare` can make from photos alone here (pycolmap is optional)."""
    from .errors import InputError
    from .prepare import sfm
    if importlib.util.find_spec("pycolmap") is None:
        return f"not installed (optional: photos -> scene; {sfm.INSTALL})"
    try:
        m = sfm.load(Path("pycolmap"))
    except InputError as e:
        return f"broken: {e}"
    if sfm.has_cuda(m):
        return f"{m.__version__}, CUDA build (photos -> cameras and mesh)"
    return (f"{m.__version__}, CPU build (photos -> cameras; a mesh needs --mesh, or pycolmap-cuda12 on "
            "Linux + NVIDIA)")


def _version(mod: str) -> str | None:
    try:
        if importlib.util.find_spec(mod) is None:
            return None
    except (ImportError, ValueError):       # a module that refuses to be looked up counts as absent
        return None
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # a broken install is worth reporting, not crashing on
        return f"broken ({type(e).__name__}: {e})"


def main(as_json: bool, path: str = ".", recheck: bool = False) -> int:
    r = report(path, recheck)
    if as_json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:16s} {v}")
    return 0 if r["ready"] else 2
