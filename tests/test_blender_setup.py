"""Set Up Backend (preferences): find a Python, make an environment, install torch and the backend
with pip, show progress, set Backend Python, run Check; say what to do when it fails.

Fast tests run backend_setup.py's parts and the operator against a stand-in Python whose pip
prints canned output; `test_setup_backend_for_real` makes a real environment with a real pip
install through the installed extension (slow: a minute or two)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from blender_fixtures import ROOT
from xscale_blender.core import backend_setup as bs
from xscale_blender.core import jobs

PIP_TORCH = """\
Looking in indexes: https://download.pytorch.org/whl/cpu
Collecting torch==2.13.0
  Downloading https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl (195.2 MB)
Progress 0 of 195200000
Progress 97600000 of 195200000
Progress 195200000 of 195200000
Collecting filelock (from torch==2.13.0)
  Downloading filelock-4.3.1-py3-none-any.whl (244 kB)
Processing /opt/files/sympy-1.14.0-py3-none-any.whl (from torch==2.13.0)
Installing collected packages: mpmath, sympy, filelock, torch
Successfully installed filelock-4.3.1 mpmath-1.3.0 sympy-1.14.0 torch-2.13.0+cpu
"""


def test_pip_output_becomes_progress_and_messages():
    p = bs.PipProgress("torch takes a few minutes")
    seen = [(p.feed(line), p.fraction) for line in PIP_TORCH.splitlines()]
    messages = [m for m, _f in seen if m]
    fractions = [f for _m, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 < fractions[4] < fractions[6] < 0.8
    assert messages[:3] == ["collecting torch", "downloading torch (195.2 MB)", "downloading torch: 0 of 195 MB"]
    assert "downloading torch: 98 of 195 MB" in messages and "collecting sympy" in messages
    assert "installing 4 packages (torch takes a few minutes)" in messages


@pytest.mark.parametrize("lines,needle", [
    (["WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...: Failed to "
      "establish a new connection: [Errno -3] Temporary failure in name resolution')'",
      "ERROR: Could not find a version that satisfies the requirement torch (from versions: none)"],
     "no network"),
    (["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"], "disk is full"),
    (["ERROR: Could not find a version that satisfies the requirement torch (from versions: none)",
      "ERROR: No matching distribution found for torch"], "no torch package for Python 3.14"),
    (["ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/x'"], "no permission"),
    (["WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(SSLCertVerificationError(1, "
      "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate "
      "chain (_ssl.c:1006)'))'", "ERROR: Could not find a version that satisfies the requirement torch"],
     "PIP_CERT"),
    (["ERROR: something odd"], "ERROR: something odd"),
])
def test_pip_failures_say_what_to_do(lines, needle, tmp_path):
    text = bs.diagnose(lines, "installing torch", tmp_path, "3.14.0")
    assert text.startswith("installing torch failed: ") and needle in text


def test_disk_check_asks_for_room_by_hardware(monkeypatch, tmp_path):
    monkeypatch.setattr(bs.shutil, "disk_usage", lambda path: SimpleNamespace(free=3.9e9))
    bs.check_disk(tmp_path / "new" / "venv", "cpu", environ={})                  # 2 GB asked
    with pytest.raises(bs.SetupError, match=r"3.9 GB free in .*, and the backend with CUDA torch needs about 8 GB"):
        bs.check_disk(tmp_path / "new" / "venv", "cuda", environ={})
    bs.check_disk(tmp_path, "cuda", environ={bs.NEEDED_GB_ENV: "3"})             # the user's own amount
    with pytest.raises(bs.SetupError, match="needs about 5 GB"):
        bs.check_disk(tmp_path, "cpu", environ={bs.NEEDED_GB_ENV: "5"})
    with pytest.raises(bs.SetupError, match="XSCALE_SETUP_NEEDED_GB='lots' is not a number"):
        bs.check_disk(tmp_path, "cpu", environ={bs.NEEDED_GB_ENV: "lots"})


def test_find_python_prefers_a_version_torch_has(monkeypatch):
    infos = {"/a/python3.13": [3, 13, 1], "/a/python3.11": [3, 11, 9], "/a/python3": [3, 9, 2],
             "/blender/python": [3, 11, 7]}
    monkeypatch.setattr(bs, "candidates", lambda fallback: [[p] for p in infos if p != "/blender/python"]
                        + ([[fallback]] if fallback else []))
    probe = lambda cmd: {"version": infos[cmd[0]], "venv": True}   # noqa: E731
    assert bs.find_python("", "/blender/python", probe)[0] == ["/a/python3.11"]
    with pytest.raises(bs.SetupError, match="is Python 3.9.2; the backend needs 3.10"):
        bs.find_python("/a/python3", "", probe)
    with pytest.raises(bs.SetupError, match="does not run"):
        bs.find_python("/nope/python", "", lambda cmd: None)
    no_venv = lambda cmd: {"version": infos[cmd[0]], "venv": False}   # noqa: E731
    with pytest.raises(bs.SetupError, match=r"no Python 3.10 or newer with venv was found.*python3.11-venv"):
        bs.find_python("", "", no_venv)


def test_torch_index_by_hardware():
    assert bs.torch_index("cpu", "", "linux") == bs.CPU_INDEX_URL
    assert bs.torch_index("cuda", "", "linux") is None                   # PyPI's Linux torch has CUDA
    assert bs.torch_index("cuda", "", "win32") == bs.WINDOWS_CUDA_INDEX_URL
    assert bs.torch_index("cpu", "", "darwin") is None
    assert bs.torch_index("cpu", "none", "linux") is None
    assert bs.torch_index("cpu", "https://mirror/simple", "linux") == "https://mirror/simple"


# --- the operator, against a stand-in Python ---------------------------------------------------

# Stands in for a base Python and, copied by `-m venv`, for the environment's Python: `-c` runs
# the real interpreter (version probe, import check), `-m pip` prints FAKE_PIP's canned output.
FAKE_PYTHON = textwrap.dedent('''
    import json, os, shutil, stat, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    if args[:1] == ["-c"]:
        code = args[1]
        if "import torch" in code:
            print("2.13.0+cpu")
            sys.exit(0)
        os.execv(REAL, [REAL, "-c", code])
    if args[:2] == ["-m", "venv"]:
        bindir = Path(args[-1]) / ("Scripts" if os.name == "nt" else "bin")
        bindir.mkdir(parents=True, exist_ok=True)
        shutil.copy(__file__, bindir / "python")
        (bindir / "python").chmod(0o755)
        sys.exit(0)
    if args[:2] == ["-m", "pip"]:
        Path(os.environ["FAKE_PIP_LOG"]).open("a").write(json.dumps(args[2:]) + "\\n")
        if args[2:3] == ["--version"]:
            print("pip 24.2 from /x (python 3.11)")
            sys.exit(0)
        mode = os.environ.get("FAKE_PIP", "ok")
        if mode == "network" and "torch" in " ".join(args):
            print("WARNING: Retrying after connection broken by 'NewConnectionError: Failed to establish a new connection'")
            print("ERROR: Could not find a version that satisfies the requirement torch (from versions: none)")
            sys.exit(1)
        if mode == "nophotos" and "[photos]" in " ".join(args):
            print("ERROR: Could not find a version that satisfies the requirement pycolmap>=3.12 (from versions: none)")
            sys.exit(1)
        if mode == "slow" and "torch" in " ".join(args):
            print("Collecting torch", flush=True)
            time.sleep(60)
        print(PIP_TORCH if "torch" in " ".join(args) else "Collecting pillow\\nInstalling collected packages: pillow\\nSuccessfully installed pillow-11")
        sys.exit(0)
    if "backend" in args and "doctor" in args:
        print(json.dumps({"python": "3.11", "torch": "2.13.0+cpu", "cuda": None}))
        sys.exit(0)
    sys.exit(f"fake python: unexpected {args}")
''')


@pytest.fixture
def fake_base(tmp_path, monkeypatch):
    script = tmp_path / "base" / "python3"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nREAL = {sys.executable!r}\nPIP_TORCH = {PIP_TORCH!r}\n" + FAKE_PYTHON)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_PIP_LOG", str(tmp_path / "pip.log"))
    monkeypatch.delenv("XSCALE_BACKEND_PYTHON", raising=False)
    monkeypatch.setenv(bs.NEEDED_GB_ENV, "0")        # the stand-in pip writes nothing: any free space will do
    return script


@pytest.fixture
def prefs(addon, monkeypatch):
    """The add-on registered from the source tree has no preferences entry: a stand-in."""
    from xscale_blender import preferences
    stand_in = SimpleNamespace(python="", setup_python="")
    monkeypatch.setattr(preferences, "addon_preferences", lambda: stand_in)
    preferences.doctor_lines.clear()
    yield stand_in
    preferences.doctor_lines.clear()
    jobs.set_active(None)


def _pip_calls(tmp_path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "pip.log").read_text().splitlines()]


def test_setup_backend_headless(prefs, bpy_module, fake_base, tmp_path, capsys):
    from xscale_blender import preferences
    bpy = bpy_module
    venv = tmp_path / "data" / "venv"
    assert bpy.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(venv), hardware="cpu") == {"FINISHED"}
    job = jobs.active()
    assert job.label == "set up backend" and job.state.status == jobs.DONE
    assert prefs.python == str(venv / "bin" / "python")
    assert "torch: 2.13.0+cpu" in preferences.doctor_lines            # Check ran with the new Python
    installs = [c for c in _pip_calls(tmp_path) if c[:1] == ["install"]]
    assert installs[0] == ["install", "--upgrade", "pip"]
    assert installs[1] == ["install", "--progress-bar", "raw", "torch", "--index-url", bs.CPU_INDEX_URL]
    pin = venv.parent / "torch-constraint.txt"          # the torch just installed stays; wheels only
    assert installs[2] == ["install", "--progress-bar", "raw", "--only-binary", ":all:", "--constraint", str(pin),
                           str(venv.parent / "src")]                                  # no cuda extra
    assert installs[3] == [*installs[2][:-1], f"{venv.parent / 'src'}[photos]"]          # pycolmap, optional
    assert pin.read_text(encoding="utf-8") == "torch==2.13.0+cpu\n"
    src = venv.parent / "src"
    assert (src / "pyproject.toml").is_file() and (src / "backend" / "__main__.py").is_file()
    out = capsys.readouterr().out
    assert "XScale set up backend: collecting torch" in out and "Backend Python is now" in out
    assert (venv.parent / "setup.log").is_file()


def test_setup_backend_without_a_pycolmap_wheel_warns_and_finishes(prefs, bpy_module, fake_base, tmp_path,
                                                                  monkeypatch, capsys):
    """pycolmap (cameras from photos alone) is optional: no wheel for this Python is a warning."""
    monkeypatch.setenv("FAKE_PIP", "nophotos")
    venv = tmp_path / "venv"
    assert bpy_module.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(venv), hardware="cpu") == {"FINISHED"}
    assert jobs.active().state.status == jobs.DONE and prefs.python == str(venv / "bin" / "python")
    out = capsys.readouterr().out
    assert "warning: pycolmap was not installed, so importing a folder of photos alone will not work" in out, out


def test_setup_backend_without_network_says_so(prefs, bpy_module, fake_base, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PIP", "network")
    with pytest.raises(RuntimeError, match="could not reach the package index .no network.*Set Up Backend again"):
        bpy_module.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(tmp_path / "venv"))
    assert prefs.python == ""                  # nothing set on failure
    assert jobs.active().state.status == jobs.FAILED


def test_setup_backend_refuses_a_cpu_torch_for_cuda(prefs, bpy_module, fake_base, tmp_path):
    """Asked for CUDA, an index that serves a CPU build of torch (the stand-in's) is refused, before
    the backend is installed on top of it."""
    with pytest.raises(RuntimeError, match=r"\(2.13.0\+cpu\) has no CUDA support: set Torch Index URL"):
        bpy_module.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(tmp_path / "venv"), hardware="cuda",
                                            torch_index_url="https://mirror.example/simple")
    assert not any("src" in " ".join(c) for c in _pip_calls(tmp_path) if c[:1] == ["install"])


def test_setup_backend_without_a_suitable_python(prefs, bpy_module, tmp_path):
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\necho '{\"version\": [2, 7, 18], \"venv\": false}'\n")
    old.chmod(0o755)
    with pytest.raises(RuntimeError, match="Python 2.7.18; the backend needs 3.10 or newer"):
        bpy_module.ops.xscale.setup_backend(python=str(old), venv_dir=str(tmp_path / "venv"))


def test_setup_backend_ui_path_and_stop(prefs, bpy_module, fake_base, tmp_path, monkeypatch):
    """With a UI the operator returns at once and the job timer follows it; Stop ends pip."""
    from xscale_blender import job_runner, preferences
    bpy = bpy_module
    monkeypatch.setattr(job_runner, "_blocking", lambda wait: False)
    t0 = time.monotonic()
    assert bpy.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(tmp_path / "venv")) == {"FINISHED"}
    assert time.monotonic() - t0 < 2.0 and jobs.busy()
    t_end = time.monotonic() + 60
    while job_runner._ui_tick() is not None and time.monotonic() < t_end:
        time.sleep(0.05)
    bpy.app.timers.unregister(job_runner._ui_tick) if bpy.app.timers.is_registered(job_runner._ui_tick) else None
    job = jobs.active()
    assert job.state.status == jobs.DONE and job.state.unit == "%" and job.state.step == 100
    assert prefs.python and preferences.doctor_lines == ["Checking ..."]    # Check started (its timer)
    # a second setup, stopped while pip downloads
    monkeypatch.setenv("FAKE_PIP", "slow")
    assert bpy.ops.xscale.setup_backend(python=str(fake_base), venv_dir=str(tmp_path / "venv")) == {"FINISHED"}
    job = jobs.active()
    while job.state.stage != "install torch" and time.monotonic() < t_end:
        job.poll()
        time.sleep(0.05)
    job.stop()
    state = job.wait(timeout=30)
    assert state.status == jobs.STOPPED and "Set Up Backend again" in state.message


def test_preferences_offer_set_up(prefs, bpy_module, monkeypatch):
    from test_blender_ui import draw, labels

    from xscale_blender import preferences
    bpy = bpy_module
    monkeypatch.delenv(preferences.ENV_PYTHON, raising=False)
    text = " ".join(labels(draw(bpy, preferences.XScalePreferences, bpy.context, python="", setup_python="")))
    assert "xscale.setup_backend" in text and "No backend yet" in text and "xscale.check_backend" in text
    job = jobs.Job([sys.executable, "-c", "import time; time.sleep(30)"], label="set up backend").start()
    try:
        jobs.set_active(job)
        job.state.stage, job.state.step, job.state.total, job.state.unit = "install torch", 45, 100, "%"
        job.state.message = "downloading torch: 98 of 195 MB"
        wide = SimpleNamespace(preferences=bpy.context.preferences, region=SimpleNamespace(width=900))
        log = draw(bpy, preferences.XScalePreferences, wide, python="", setup_python="")
        bars = [kw for n, _a, kw in log if n == "progress"]
        assert bars and bars[0]["text"] == "install torch 45%"
        assert "downloading torch: 98 of 195 MB" in " ".join(labels(log))
        assert ("operator", ("xscale.stop",), {"text": "Stop", "icon": "CANCEL"}) in log
    finally:
        job.kill()
        job.wait(timeout=10)
        jobs.set_active(None)


# --- for real ------------------------------------------------------------------------------------

REAL_SCRIPT = r'''
import json, sys
import bpy
zip_path, venv = sys.argv[1], sys.argv[2]
name = "bl_ext.user_default.xscale_nvs"
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
res = bpy.ops.xscale.setup_backend(venv_dir=venv, torch_requirement="torch==2.13.0", torch_index_url=sys.argv[3])
prefs = bpy.context.preferences.addons[name].preferences
mod = sys.modules[name]
print("RESULT " + json.dumps({"result": sorted(res), "python": prefs.python,
                               "doctor": mod.preferences.doctor_lines,
                               "source": mod.backend_link.pythonpath()}))
'''


def _torch_index() -> str:
    """'' (automatic: PyTorch's CPU index, where CI gets torch too), or 'none' (pip's own
    configuration, e.g. a local wheel folder) on a machine that cannot resolve that index's host
    (pip would retry it for minutes before looking elsewhere)."""
    import socket
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return "none"
    return ""


@pytest.mark.slow
def test_setup_backend_for_real(bpy_module, tmp_path):
    """The installed extension makes a real environment with pip (the CPU build of torch on this
    machine without an NVIDIA GPU, from PyTorch's CPU index; torch pinned as CI pins it) and the
    backend from the extension folder, then Check runs `backend doctor` in it."""
    import shutil

    sys.path.insert(0, str(ROOT / "tools"))
    import build_extension
    zip_path = build_extension.build(tmp_path / "dist")
    script = tmp_path / "setup.py"
    script.write_text(REAL_SCRIPT)
    venv = tmp_path / "data" / "venv"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    for key in ("PYTHONPATH", "XSCALE_BACKEND_PYTHON"):
        env.pop(key, None)
    try:
        res = subprocess.run([sys.executable, str(script), str(zip_path), str(venv), _torch_index()],
                             cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=1800)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        assert res.returncode == 0 and lines, res.stdout[-4000:] + res.stderr[-4000:]
        out = json.loads(lines[-1][len("RESULT "):])
        python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        assert out["result"] == ["FINISHED"] and out["python"] == str(python)
        doctor = "\n".join(out["doctor"])
        assert "torch" in doctor and "2.13.0" in doctor, doctor
        assert "CPU build (photos -> cameras" in doctor, doctor         # pycolmap came with it
        assert "XScale set up backend: installing torch==2.13.0" in res.stdout
        # the environment has the backend package (its command) and trains from the extension folder
        assert (python.parent / ("xscale-nvs.exe" if os.name == "nt" else "xscale-nvs")).is_file()
        run = subprocess.run([str(python), "-m", "backend", "fit", "--help"], capture_output=True, text=True,
                             env=dict(env, PYTHONPATH=out["source"]), timeout=300)
        assert run.returncode == 0 and "--overwrite" in run.stdout, run.stderr[-2000:]
    finally:
        shutil.rmtree(venv, ignore_errors=True)       # about 1 GB
