"""What README.md tells a new user to run is what CI runs, and it fails clearly where it cannot work."""
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, cli


def _readme_test_command() -> str:
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if ln.startswith("    ") and "pytest -q" in ln and '".[test,blender]"' in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readme_test_command():
    assert _readme_test_command() in (ROOT / ".ci" / "run").read_text().splitlines()


def test_ci_runs_the_blender_tests_on_blender_42_as_the_readme_says():
    """The oldest supported Blender (blender_manifest.toml) is tested too, with the README's command."""
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if ln.startswith("    ") and "bpy==4.2.0" in ln]
    assert len(lines) == 1 and "for f in tests/test_blender_*.py" in lines[0] and "pytest -q -m \"not slow\" \"$f\"" in lines[0], lines
    assert lines[0] in (ROOT / ".ci" / "run").read_text().splitlines()
    assert 'blender_version_min = "4.2.0"' in (ROOT / "blender_manifest.toml").read_text()


def test_readme_test_command_needs_python_311_and_says_so():
    """bpy 5.0.1 exists for Python 3.11 only: on another version the command stops before pip
    with a message that names 3.11 and what to run instead."""
    argv = shlex.split(_readme_test_command())
    assert argv[:2] == ["python", "-c"] and argv[3] == "&&"
    for version, fails in (((3, 12, 1), True), ((3, 10, 14), True), ((3, 11, 7), False)):
        code = f"import sys; sys.version_info = {version!r}; " + argv[2]
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (res.returncode != 0) == fails, (version, res)
        if fails:
            assert "needs Python 3.11" in res.stderr and 'pip install -e ".[test]"' in res.stderr
            hint = res.stderr.split("run: ", 1)[1].strip()
            _runs_in_a_shell_that_refuses_unmatched_globs(hint)


def _runs_in_a_shell_that_refuses_unmatched_globs(command):
    """`command` (pip and pytest replaced by echo) in bash with failglob, which refuses an
    unmatched glob as zsh (macOS's shell) does: an unquoted .[test] fails there."""
    with tempfile.TemporaryDirectory() as empty:
        echoed = re.sub(r"\b(pip|pytest)\b", "echo", command)
        res = subprocess.run(["bash", "-O", "failglob", "-c", echoed], cwd=empty, capture_output=True, text=True)
    assert res.returncode == 0 and "install -e .[test]" in res.stdout, (command, res)


def test_demo_output_folder_is_ignored_by_git():
    from backend.cli import build_parser
    out = build_parser().parse_args(["demo"]).out
    ignored = [ln.strip().strip("/") for ln in (ROOT / ".gitignore").read_text().splitlines()]
    assert out in ignored and re.search(rf"--out {out}\b", (ROOT / "README.md").read_text())


def test_readme_tells_cpu_only_users_how_to_get_the_cpu_wheel():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme


def _quick_start() -> tuple[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return section, [ln.strip() for ln in section.splitlines() if ln.startswith("    ")]


def test_quick_start_clones_first_then_the_cpu_install_then_says_what_the_tests_cost():
    section, commands = _quick_start()
    assert re.match(r"git clone \S+ (\S+) && cd \1$", commands[0]), commands[0]
    cpu = next(i for i, c in enumerate(commands) if "download.pytorch.org/whl/cpu" in c)
    gpu = next(i for i, c in enumerate(commands) if "pip install -e . &&" in c and "whl/cpu" not in c)
    assert 0 < cpu < gpu, commands
    before_tests = " ".join(section.split(_readme_test_command())[0].split("\n\n")[-2].split())
    for claim in ("Python 3.11", "820 MB", "15-20 minutes on two CPU cores"):
        assert claim in before_tests, (claim, before_tests)


def test_the_readme_size_of_bpy_is_what_it_takes_on_disk():
    """The quick start says what the test command's bpy costs; checked against the installed one."""
    said = int(re.search(r"about (\d+) MB of disk for `bpy`", " ".join(_quick_start()[0].split())).group(1))
    try:
        files = importlib.metadata.distribution("bpy").files
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("bpy is not installed")
    if importlib.metadata.version("bpy") != "5.0.1":           # the test command's bpy
        pytest.skip("another bpy than the test command's")
    size_mb = sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 2**20
    assert abs(size_mb - said) < 0.1 * said, (size_mb, said)


def test_every_command_line_flag_has_help():
    """`--help` of every command explains each of its flags (render's --run and --out among them)."""
    from backend.cli import build_parser
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = [(name, a.option_strings) for name, p in commands.items() for a in p._actions if not a.help]
    assert not missing, missing
    res = cli("render", "--help")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "--run RUN run folder of a trained model" in text and "--out OUT folder for the frames" in text
