"""What the GPU path builds at run time, and what to say when a tool for it is missing.

Triton compiles the GPU kernels from its wheel, and builds a small launcher with the system C
compiler and Python's headers the first time it runs on a machine (Linux; triton-windows brings its
own compiler). nvdiffrast (optional) builds itself with ninja and the CUDA toolkit. `explain(exc)`
turns such a failure into one line naming the tool and the command that installs it, instead of an
internal error.
"""
from __future__ import annotations

import platform
import sys


def _install_c_compiler() -> str:
    if sys.platform == "win32":
        return ("pip install -U triton-windows (it brings its own C compiler), and use a Python from "
                "python.org (it has the headers Triton needs)")
    if sys.platform == "darwin":
        return "xcode-select --install"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        info = platform.freedesktop_os_release()
        distro = f"{info.get('ID', '')} {info.get('ID_LIKE', '')}"
    except OSError:
        distro = ""
    if any(d in distro for d in ("fedora", "rhel", "centos")):
        return f"sudo dnf install gcc python{ver}-devel"
    if "arch" in distro:
        return "sudo pacman -S gcc"
    return f"sudo apt install gcc python{ver}-dev"


def explain(exc: BaseException) -> str | None:
    """One line for a failure caused by a missing build tool (this exception or its causes)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if "Failed to find C compiler" in text or "Python.h" in text:
            what = "Python's headers" if "Python.h" in text else "a C compiler"
            return (f"the GPU kernels (Triton) need {what} the first time they run on this machine, "
                    f"to build their launcher: {_install_c_compiler()}; then run the command again.")
        if "Ninja is required" in text or ("ninja" in text.lower() and "not found" in text.lower()):
            return ("nvdiffrast (optional) builds itself with ninja and the CUDA toolkit, which this machine "
                    "lacks: use the default rasterizer (unset XSCALE_RASTERIZER), or pip install ninja and "
                    "install the CUDA toolkit.")
        if "CUDA_HOME" in text or ("nvcc" in text and ("not found" in text or "No such file" in text)):
            return ("nvdiffrast (optional) needs the CUDA toolkit (nvcc) to build itself: use the default "
                    "rasterizer (unset XSCALE_RASTERIZER), or install the CUDA toolkit and set CUDA_HOME.")
        e = e.__cause__ or e.__context__
    return None
