"""Fuzzing the commands on hostile files (Hypothesis): `render` on generated camera paths and
`check` / `cache` on scenes with a generated cams file, mesh or photo. Whatever the files, a
command exits 0, or 2 with one `error:` line on stderr and no traceback, and writes nothing
outside its output folder (the run's log.jsonl apart). Most examples run the command line in
this process, a few as a real process (for the exit code and the streams themselves)."""
from __future__ import annotations

import shutil

from hypothesis import given, settings, strategies as st

from backend.campath import frame_filename
from conftest import cli, expect_error
from fuzzing import FUZZ, files_under, run_main
from test_fuzz_files import cam_files, camera_paths, obj_files, photos, ply_files

FEW = settings(FUZZ, max_examples=min(FUZZ.max_examples, 12))


def exits_cleanly(res) -> None:
    """The command's contract: success, or a user's error in one line (never a traceback)."""
    if res.returncode != 0:
        expect_error(res)


def render_contract(run_command, trained_run, tmp_path, blob) -> None:
    from backend.campath import read_camera_path
    from backend.errors import InputError
    path, out = tmp_path / "path.json", tmp_path / "frames"
    shutil.rmtree(out, ignore_errors=True)
    path.write_bytes(blob)
    outside = {**files_under(tmp_path), **{f"RUN/{k}": v for k, v in files_under(trained_run).items()}}
    res = run_command("render", "--run", str(trained_run), "--path", str(path), "--out", str(out), "--device", "cpu")
    exits_cleanly(res)
    try:
        numbers = read_camera_path(path)[0]
    except InputError:
        numbers = None
    assert (res.returncode == 0) == (numbers is not None)
    if numbers is None:
        assert not out.exists()
    else:
        assert sorted(files_under(out)) == sorted(frame_filename(n, "png") for n in numbers)
    now = {**files_under(tmp_path), **{f"RUN/{k}": v for k, v in files_under(trained_run).items()}}
    changed = {k for k in now.keys() | outside.keys() if now.get(k) != outside.get(k)}
    assert {k for k in changed if not k.startswith("frames/")} <= {"RUN/log.jsonl"}, changed


# The first example of each property (Hypothesis tries the first choice first) and about one in
# four after it run the command as a process; the others call its main() here.
RUNNERS = st.sampled_from(["process", "here", "here", "here"])


def runner(where: str):
    return (lambda *a: cli(*a, "--json")) if where == "process" else run_main


@FEW
@given(blob=camera_paths(), where=RUNNERS)
def test_render_on_generated_paths(trained_run, tmp_path, blob, where):
    render_contract(runner(where), trained_run, tmp_path, blob)


@st.composite
def damaged_scenes(draw):
    """(which file of the scene, its new bytes): a cams file, the mesh, or a photo."""
    which = draw(st.sampled_from(["cams", "mesh", "photo"]))
    if which == "cams":
        return "cams/00000001_cam.txt", draw(cam_files())
    if which == "mesh":
        return draw(st.sampled_from(["1.obj", "mesh.ply"])), draw(obj_files() | ply_files())
    return "images/00000002.png", draw(photos())


def check_contract(run_command, scene, tmp_path, damage) -> None:
    name, blob = damage
    s, run = tmp_path / "s", tmp_path / "run"
    for folder in (s, run):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(scene, s)
    if name.startswith(("1.obj", "mesh")):
        (s / "1.obj").unlink()
    (s / name).write_bytes(blob)
    before = files_under(tmp_path)
    exits_cleanly(run_command("check", str(s), "--no-coverage"))
    assert files_under(tmp_path) == before                  # check reads, it never writes
    res = run_command("cache", "--scene", str(s), "--run", str(run), "--device", "cpu")
    exits_cleanly(res)
    assert (res.returncode == 0) == run.is_dir()           # a failed cache leaves no run folder
    assert {k for k in files_under(tmp_path) if not k.startswith("run/")} == set(before)


@FEW
@given(damage=damaged_scenes(), where=RUNNERS)
def test_check_and_cache_on_damaged_scenes(scene, tmp_path, damage, where):
    check_contract(runner(where), scene, tmp_path, damage)
