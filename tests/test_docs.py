"""What README.md tells a new user to run is what CI runs, and it fails clearly where it cannot work."""
import re
import shlex
import subprocess
import sys

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
            assert "needs Python 3.11" in res.stderr and "pip install -e .[test]" in res.stderr


def test_demo_output_folder_is_ignored_by_git():
    from backend.cli import build_parser
    out = build_parser().parse_args(["demo"]).out
    ignored = [ln.strip().strip("/") for ln in (ROOT / ".gitignore").read_text().splitlines()]
    assert out in ignored and re.search(rf"--out {out}\b", (ROOT / "README.md").read_text())


def test_readme_tells_cpu_only_users_how_to_get_the_cpu_wheel():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme


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
