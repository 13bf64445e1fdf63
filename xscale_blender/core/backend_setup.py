"""Set Up Backend: make a Python environment for the backend and install it there, so artists
never touch a terminal (standard library only, no bpy; runs as a script).

    python backend_setup.py --venv DIR --source EXT_DIR [--python PY] [--hardware auto|cuda|cpu]
                            [--torch-index-url URL|none] [--torch SPEC]

The add-on runs it as a background job with Blender's own Python (`sys.executable`); it prints
the JSON-line events of docs/protocol.md (progress with "unit": "%", log, done, error, stopped),
so the job plumbing that follows training follows this too. Steps:

1. a Python >= 3.10 with venv and ensurepip: --python, else the newest suitable one on PATH
   (python3.12, python3.11, ..., `py` on Windows), else the one running this script;
2. `PY -m venv DIR` (an environment already there is reused and updated);
3. pip updated in it (for download progress lines);
4. torch: with an NVIDIA GPU (`nvidia-smi -L` lists one) PyPI's CUDA build (on Windows the
   CUDA wheel index), else the CPU build from PyTorch's CPU wheel index; --torch-index-url
   overrides the index ("none": pip's own configuration), --torch the requirement;
5. the backend from EXT_DIR (its pyproject.toml, README.md and backend/, copied next to DIR first
   so nothing is written into the extension), with the `cuda` extra when CUDA is used;
6. the `photos` extra (pycolmap) in a step of its own: optional, a failure there is a warning;
7. a check that torch and the backend's libraries import; `done` names the environment's Python.

pip's output goes to DIR/../setup.log. Failures end with an `error` event that says what to do
(no suitable Python, no network, not enough disk space, no permission).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

try:
    from .pip_output import NEEDED_GB, PipProgress, diagnose
except ImportError:        # run as a script (Set Up Backend runs it with Blender's Python): its folder is on sys.path
    from pip_output import NEEDED_GB, PipProgress, diagnose

MIN_PYTHON = (3, 10)
# Newest first among the versions torch publishes wheels for; others >= MIN_PYTHON come after.
PREFERRED = ((3, 12), (3, 11), (3, 13), (3, 10))
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
WINDOWS_CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu128"   # PyPI's Windows torch is CPU-only
PROBE = ("import json, sys\n"
         "try:\n import venv, ensurepip\n ok = True\nexcept ImportError:\n ok = False\n"
         "print(json.dumps({'version': list(sys.version_info[:3]), 'venv': ok, 'executable': sys.executable}))")
VERIFY = "import torch, numpy, PIL, cv2, OpenEXR, rich; print(torch.__version__)"

# Phases of the overall progress (percent at their start, percent at their end).
PHASES = {"find python": (0, 2), "create environment": (2, 10), "update pip": (10, 14),
          "install torch": (14, 70), "install backend": (70, 92), "install photos": (92, 96), "verify": (96, 100)}


class SetupError(Exception):
    """A failure with what to do about it (one line)."""


class Stopped(Exception):
    pass


# --- events ---------------------------------------------------------------------------------

def emit(event: str, **kw) -> None:
    print(json.dumps({"event": event, **kw}), flush=True)


def progress(phase: str, fraction: float = 0.0) -> None:
    lo, hi = PHASES[phase]
    emit("progress", stage=phase, step=int(round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0))),
         total=100, unit="%")


def log(message: str) -> None:
    emit("log", message=message)


# --- finding a Python ------------------------------------------------------------------------

def probe(python: list[str]) -> Optional[dict]:
    """Version and venv support of an interpreter (None when it does not run)."""
    try:
        res = subprocess.run([*python, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in reversed(res.stdout.splitlines()):
        try:
            info = json.loads(line)
        except ValueError:
            continue
        if isinstance(info, dict) and "version" in info:
            return info
    return None


def candidates(fallback: Optional[str]) -> list[list[str]]:
    """Interpreters to try, as command prefixes: PATH first, then `fallback` (Blender's own)."""
    found: list[list[str]] = []
    if sys.platform == "win32":
        if shutil.which("py"):
            found += [["py", f"-{a}.{b}"] for a, b in PREFERRED] + [["py", "-3"]]
        names = ["python"]
    else:
        names = [f"python{a}.{b}" for a, b in PREFERRED] + ["python3", "python"]
    for name in names:
        path = shutil.which(name)
        if path and [path] not in found:
            found.append([path])
    if fallback:
        found.append([fallback])
    return found


def _rank(version: tuple) -> int:
    pref = [tuple(p) for p in PREFERRED]
    return pref.index(tuple(version[:2])) if tuple(version[:2]) in pref else len(pref)


def find_python(given: Optional[str], fallback: Optional[str],
                probe_fn: Callable[[list[str]], Optional[dict]] = probe) -> tuple[list[str], dict]:
    """The interpreter to make the environment with: `given`, else the best of `candidates`."""
    if given:
        info = probe_fn([given])
        if info is None:
            raise SetupError(f"the Python for setup ({given}) does not run: choose a Python 3.10 or newer "
                             "in the add-on preferences (Python for Setup), or leave it empty to find one.")
        _check_suitable(given, info)
        return [given], info
    problems: list[str] = []
    usable: list[tuple[int, int, list[str], dict]] = []
    for i, cmd in enumerate(candidates(fallback)):
        info = probe_fn(cmd)
        if info is None:
            continue
        try:
            _check_suitable(" ".join(cmd), info)
        except SetupError as e:
            problems.append(str(e))
            continue
        usable.append((_rank(info["version"]), i, cmd, info))
    if not usable:
        hint = ("install Python 3.12 from python.org (tick 'Add python.exe to PATH')" if sys.platform == "win32"
                else "install Python 3.10 or newer with venv (Debian/Ubuntu: sudo apt install python3 "
                     "python3-venv; macOS: python.org or Homebrew)")
        seen = f" (found: {'; '.join(problems)})" if problems else ""
        raise SetupError(f"no Python 3.10 or newer with venv was found{seen}: {hint}, or choose one in the "
                         "add-on preferences (Python for Setup), then press Set Up Backend again.")
    usable.sort(key=lambda u: (u[0], u[1]))
    return usable[0][2], usable[0][3]


def _check_suitable(name: str, info: dict) -> None:
    version = tuple(info["version"])
    shown = ".".join(map(str, version[:3]))
    if version < MIN_PYTHON:
        raise SetupError(f"{name} is Python {shown}; the backend needs 3.10 or newer")
    if not info.get("venv"):
        v = f"{version[0]}.{version[1]}"
        raise SetupError(f"{name} (Python {shown}) cannot make environments (no venv/ensurepip; "
                         f"Debian/Ubuntu: sudo apt install python{v}-venv)")


# --- GPU, disk ---------------------------------------------------------------------------------

def nvidia_gpu() -> bool:
    """An NVIDIA GPU with a driver: `nvidia-smi -L` lists one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and "GPU" in res.stdout


def torch_index(hardware: str, override: Optional[str], platform: str = sys.platform) -> Optional[str]:
    """The index URL for torch (None: pip's configuration, i.e. PyPI)."""
    if override:
        return None if override.lower() == "none" else override
    if hardware == "cpu":
        return None if platform == "darwin" else CPU_INDEX_URL      # macOS wheels on PyPI are CPU/MPS
    return WINDOWS_CUDA_INDEX_URL if platform == "win32" else None


# Overrides the room asked for, in GB ("0": no check), where the user knows better, e.g. pip's cache
# is off (PIP_NO_CACHE_DIR) or on another disk.
NEEDED_GB_ENV = "XSCALE_SETUP_NEEDED_GB"


def needed_gb(hardware: str, environ=os.environ) -> float:
    raw = environ.get(NEEDED_GB_ENV, "").strip()
    if not raw:
        return NEEDED_GB[hardware]
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise SetupError(f"{NEEDED_GB_ENV}={raw!r} is not a number of GB: unset it or set e.g. 4") from None


def check_disk(folder: Path, hardware: str, environ=os.environ) -> None:
    need = needed_gb(hardware, environ)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    free_gb = shutil.disk_usage(probe_dir).free / 1e9
    if free_gb < need:
        raise SetupError(f"not enough disk space: {free_gb:.1f} GB free in {probe_dir}, and the backend with "
                         f"{'CUDA ' if hardware == 'cuda' else ''}torch needs about {need:.0f} GB. "
                         "Free some space, then press Set Up Backend again.")


# --- running the steps ---------------------------------------------------------------------------

class Runner:
    def __init__(self, logfile: Path):
        self.proc: Optional[subprocess.Popen] = None
        self.stop_requested = False
        logfile.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(logfile, "a", encoding="utf-8")

    def stop(self, *_args) -> None:
        self.stop_requested = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def run(self, argv: list[str], phase: str, what: str, folder: Path, python_version: str,
            install_note: str = "") -> PipProgress:
        if self.stop_requested:
            raise Stopped()
        self.log.write(f"\n$ {' '.join(argv)}\n")
        self.log.flush()
        parser = PipProgress(install_note)
        progress(phase, 0.0)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                                         errors="replace", bufsize=1, env=env)
        except OSError as e:
            raise SetupError(f"{what} failed: cannot run {argv[0]} ({e.strerror or e}).") from None
        last_emit = 0.0
        for line in self.proc.stdout:
            self.log.write(line)
            message = parser.feed(line)
            now = time.monotonic()
            if message and (now - last_emit > 0.25 or not message.startswith("downloading")):
                progress(phase, parser.fraction)
                log(message)
                last_emit = now
        rc = self.proc.wait()
        self.log.flush()
        if self.stop_requested:
            raise Stopped()
        if rc != 0:
            raise SetupError(diagnose(parser.tail, what, folder, python_version))
        progress(phase, 1.0)
        return parser


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def stage_source(source: Path, dest: Path) -> Path:
    """Copy what pip needs (pyproject.toml, README.md, backend/) to `dest`."""
    missing = [n for n in ("pyproject.toml", "backend") if not (source / n).exists()]
    if missing:
        raise SetupError(f"{source} lacks {', '.join(missing)}: reinstall the XScale-NVS extension "
                         "(its zip carries the backend and pyproject.toml).")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(source / "pyproject.toml", dest / "pyproject.toml")
    if (source / "README.md").is_file():
        shutil.copy2(source / "README.md", dest / "README.md")
    else:
        (dest / "README.md").write_text("XScale-NVS backend\n", encoding="utf-8")
    shutil.copytree(source / "backend", dest / "backend",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def setup(args: argparse.Namespace, runner: Runner) -> dict:
    venv = Path(args.venv).resolve()
    folder = venv.parent
    progress("find python")
    base, info = find_python(args.python, args.fallback_python)
    version = ".".join(map(str, info["version"][:3]))
    log(f"using Python {version}: {' '.join(base)}")
    hardware = args.hardware
    if hardware == "auto":
        hardware = "cuda" if nvidia_gpu() else "cpu"
        log("NVIDIA GPU found: installing the CUDA build of torch" if hardware == "cuda"
            else "no NVIDIA GPU found (nvidia-smi): installing the CPU build of torch")
    check_disk(folder, hardware)
    vpy = venv_python(venv)
    if vpy.is_file() and probe([str(vpy)]) is not None:
        log(f"updating the environment in {venv}")
        progress("create environment", 1.0)
    else:
        log(f"creating the environment in {venv}")
        runner.run([*base, "-m", "venv", "--clear", str(venv)], "create environment",
                   "creating the environment", folder, version)
    pip = [str(vpy), "-m", "pip"]
    runner.run([*pip, "install", "--upgrade", "pip"], "update pip", "updating pip", folder, version)
    raw = _pip_has_raw_progress(vpy)
    bar = ["--progress-bar", "raw"] if raw else []
    index = torch_index(hardware, args.torch_index_url)
    torch_argv = [*pip, "install", *bar, args.torch] + (["--index-url", index] if index else [])
    log(f"installing {args.torch}" + (f" from {index}" if index else ""))
    runner.run(torch_argv, "install torch", "installing torch", folder, version,
               install_note="torch takes a few minutes")
    torch_version, torch_cuda = torch_build(vpy)
    if hardware == "cuda" and torch_cuda is None and args.torch_index_url.lower() != "none":
        raise SetupError(f"the torch installed from {index or 'PyPI'} ({torch_version}) has no CUDA support: set "
                         "Torch Index URL to PyTorch's CUDA index for your system, then press Set Up Backend again.")
    src = stage_source(Path(args.source), folder / "src")
    target = f"{src}[cuda]" if hardware == "cuda" else str(src)
    # The torch just installed stays (pip could otherwise swap a CPU build for PyPI's CUDA one), and
    # every library comes as a wheel: nothing compiles on the user's machine.
    pin = folder / "torch-constraint.txt"
    pin.write_text(f"torch=={torch_version}\n", encoding="utf-8")
    log("installing the backend and its libraries")
    runner.run([*pip, "install", *bar, "--only-binary", ":all:", "--constraint", str(pin), target],
               "install backend", "installing the backend", folder, version)
    install_photos(runner, [*pip, "install", *bar, "--only-binary", ":all:", "--constraint", str(pin)], src,
                   hardware, folder, version)
    progress("verify")
    res = subprocess.run([str(vpy), "-c", VERIFY], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"the new environment cannot import the backend's libraries ({why}); press Set Up "
                         f"Backend again (details in {folder / 'setup.log'}).")
    progress("verify", 1.0)
    log(f"the environment takes {folder_gb(venv):.1f} GB on disk ({venv})")
    return {"python": str(vpy), "torch": torch_version, "hardware": hardware, "base_python": " ".join(base),
            "python_version": version}


def install_photos(runner: Runner, pip_install: list[str], src: Path, hardware: str, folder: Path,
                   version: str) -> None:
    """The `photos` extra (pycolmap: cameras from photos alone), optional: where it has no wheel
    (a new Python, an uncommon platform) the backend works without it, so a failure is a warning."""
    extras = "cuda,photos" if hardware == "cuda" else "photos"
    log("installing pycolmap (cameras from photos alone; optional)")
    try:
        runner.run([*pip_install, f"{src}[{extras}]"], "install photos", "installing pycolmap", folder, version)
    except SetupError as e:
        log(f"warning: pycolmap was not installed, so importing a folder of photos alone will not work (the "
            f"rest does): {e}")


def torch_build(vpy: Path) -> tuple[str, Optional[str]]:
    """The environment's torch version and CUDA version (None: a CPU build)."""
    res = subprocess.run([str(vpy), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                         capture_output=True, text=True, timeout=600)
    words = (res.stdout.strip().splitlines() or ["?"])[-1].split()
    if res.returncode != 0 or not words:
        raise SetupError(f"torch does not import in the new environment ({(res.stderr.strip().splitlines() or ['?'])[-1]}); "
                         "press Set Up Backend again.")
    cuda = words[1] if len(words) > 1 and words[1] != "None" else None
    return words[0], cuda


def folder_gb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / 1e9


def _pip_has_raw_progress(vpy: Path) -> bool:
    """pip 24.1 and newer print 'Progress N of M' lines with --progress-bar raw."""
    try:
        res = subprocess.run([str(vpy), "-m", "pip", "--version"], capture_output=True, text=True, timeout=60)
        m = re.match(r"pip (\d+)\.(\d+)", res.stdout)
        return bool(m) and (int(m.group(1)), int(m.group(2))) >= (24, 1)
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Make a Python environment with the XScale-NVS backend.")
    ap.add_argument("--venv", required=True, help="the environment's folder")
    ap.add_argument("--source", required=True, help="folder with pyproject.toml and backend/")
    ap.add_argument("--python", default="", help="the Python to make the environment with (default: search)")
    ap.add_argument("--fallback-python", default="", help="used when the search finds none (Blender's own)")
    ap.add_argument("--hardware", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--torch-index-url", default="", help="index for torch ('none': pip's configuration)")
    ap.add_argument("--torch", default="torch", help="torch requirement (default: torch)")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    runner = Runner(Path(args.venv).resolve().parent / "setup.log")
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGBREAK", None)):
        if sig is not None:
            signal.signal(sig, runner.stop)
    try:
        result = setup(args, runner)
    except Stopped:
        emit("stopped", stage="setup", message="stopped; press Set Up Backend again to continue")
        return 0
    except SetupError as e:
        emit("error", message=str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        msg = diagnose([str(e)], "setting up the backend", Path(args.venv).resolve().parent, "")
        emit("error", message=msg)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    emit("done", stage="setup", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
