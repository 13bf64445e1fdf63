"""What the add-on needs in Blender's own Python, and how to install what is missing (standard
library only, no bpy).

Blender's official builds ship numpy; distribution packages (Debian's `blender`, Fedora's, ...)
use the system Python, which has numpy only when its package is installed. Without numpy the
add-on registers what works without it (preferences, Check and Set Up Backend, the sidebar tab,
which then says what is missing and how to install it) and leaves out importing, camera paths and
the render engine.
"""
from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from pathlib import Path
from typing import Optional

REQUIRED = ("numpy",)

# Distribution families (os-release ID / ID_LIKE) and their numpy package command.
_DISTRO_COMMANDS = (
    (("debian", "ubuntu"), "sudo apt install python3-numpy"),
    (("fedora", "rhel", "centos"), "sudo dnf install python3-numpy"),
    (("arch",), "sudo pacman -S python-numpy"),
    (("opensuse", "suse"), "sudo zypper install python3-numpy"),
    (("alpine",), "sudo apk add py3-numpy"),
    (("gentoo",), "sudo emerge dev-python/numpy"),
)

_missing: Optional[dict[str, str]] = None


def check() -> dict[str, str]:
    """{module: why it cannot be imported} for the required modules that do not import."""
    missing = {}
    for name in REQUIRED:
        try:
            __import__(name)
        except ImportError as e:          # absent, or broken (e.g. built for another Python)
            missing[name] = str(e) or f"No module named '{name}'"
    return missing


def missing() -> dict[str, str]:
    """check(), once per session (register() decides what to register from it)."""
    global _missing
    if _missing is None:
        _missing = check()
    return _missing


def refresh() -> dict[str, str]:
    global _missing
    _missing = None
    return missing()


def _quote(path: str) -> str:
    return f'"{path}"' if os.name == "nt" else shlex.quote(path)


def _os_release(text: Optional[str]) -> set[str]:
    if text is None:
        try:
            text = Path("/etc/os-release").read_text(encoding="utf-8")
        except OSError:
            return set()
    ids: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip('"').lower().split())
    return ids


def system_python(python: str = sys.executable, prefix: str = sys.prefix,
                  stdlib: Optional[str] = None, platform: str = sys.platform) -> bool:
    """Blender runs on the distribution's Python (its packages come from the package manager;
    PEP 668 marks such a Python EXTERNALLY-MANAGED, so pip refuses to install into it)."""
    if not platform.startswith("linux"):
        return False
    stdlib = stdlib if stdlib is not None else sysconfig.get_path("stdlib")
    return (Path(stdlib) / "EXTERNALLY-MANAGED").is_file() or prefix in ("/usr", "/usr/local")


def install_command(module: str = "numpy", python: str = sys.executable, prefix: str = sys.prefix,
                    stdlib: Optional[str] = None, platform: str = sys.platform,
                    os_release: Optional[str] = None) -> str:
    """The command that installs `module` for this Blender's Python."""
    if system_python(python, prefix, stdlib, platform):
        ids = _os_release(os_release)
        for family, command in _DISTRO_COMMANDS:
            if ids.intersection(family):
                return command if module == "numpy" else command.replace("numpy", module)
        return f"install your distribution's numpy package for {python} (often python3-numpy)"
    py = _quote(python)
    return f"{py} -m ensurepip && {py} -m pip install {module}"


def message(missing_modules: Optional[dict[str, str]] = None, python: str = sys.executable) -> str:
    """One paragraph for the panel and the console: what is missing, why, and the fix."""
    missing_modules = missing() if missing_modules is None else missing_modules
    if not missing_modules:
        return ""
    names = ", ".join(missing_modules)
    why = "; ".join(missing_modules.values())
    return (f"XScale-NVS needs {names} in Blender's Python ({python}): {why}. Install it with: "
            f"{install_command(next(iter(missing_modules)), python)} - then restart Blender.")
