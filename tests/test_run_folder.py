"""Run folders: a ray cache is built only where it deletes nothing the backend did not write, a run
folder belongs to one scene, and the cache of a trained run changes only with --overwrite."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.cache import build_cache
from backend.errors import InputError
from backend.train import train
from conftest import cli, expect_error

CACHE = dict(ss=2, test_every=3, device="cpu", shard_rays=2000)     # the `run` fixture's settings


def snapshot(folder: Path, skip=()) -> dict:
    """Every file and folder under `folder` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.name not in skip}


def test_cache_never_touches_a_folder_the_backend_did_not_write(scene, tmp_path):
    """A folder of the user's that happens to hold `cache`, `cache.tmp`, a config.json and a
    log.jsonl: refused, even with --overwrite, and nothing in it deleted, changed or added."""
    mine = tmp_path / "mine"
    (mine / "cache").mkdir(parents=True)
    (mine / "cache" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    (mine / "cache.tmp").mkdir()
    (mine / "cache.tmp" / "notes.txt").write_text("keep me")
    (mine / "config.json").write_text('{"theme": "dark"}')
    (mine / "log.jsonl").write_text("my own log\n")
    before = snapshot(mine)
    for extra in ((), ("--overwrite",)):
        expect_error(cli("cache", "--scene", str(scene), "--run", str(mine), "--device", "cpu", *extra),
                     str(mine), "not a run folder", "cache, cache.tmp, config.json, log.jsonl", "new or empty folder")
        assert snapshot(mine) == before
    expect_error(cli("fit", "--scene", str(scene), "--run", str(mine), "--device", "cpu", "--iters", "1"),
                 "not a run folder")
    assert snapshot(mine) == before


def test_a_run_folder_belongs_to_its_scene(scene, trained_run, tmp_path):
    """Another scene's cache into a trained run folder is refused with the scene it belongs to and
    nothing is touched (`fit --resume` too, which would train the first scene's cache); with
    --overwrite the folder starts over with the other scene: its model goes."""
    other = shutil.copytree(scene, tmp_path / "other scene")
    r = shutil.copytree(trained_run, tmp_path / "r")
    owner = str(Path(scene).resolve())
    before = snapshot(r, skip=("log.jsonl",))
    common = ("--ss", "2", "--test-every", "3", "--device", "cpu")
    expect_error(cli("cache", "--scene", str(other), "--run", str(r), *common),
                 f"belongs to the scene {owner}, not {other}", "--overwrite")
    expect_error(cli("fit", "--resume", "--scene", str(other), "--run", str(r), *common, "--iters", "5"),
                 f"belongs to the scene {owner}", f"--scene {owner}")
    assert snapshot(r, skip=("log.jsonl",)) == before
    # A folder from before RUN/run.json: its cache says which scene it belongs to.
    (r / "run.json").unlink()
    with pytest.raises(InputError, match="belongs to the scene"):
        build_cache(str(other), str(r), **CACHE)
    build_cache(str(other), str(r), overwrite=True, **CACHE)
    assert not (r / "checkpoints" / "latest.pt").exists()
    assert json.loads((r / "config.json").read_text())["scene"] == str(other.resolve())
    assert json.loads((r / "run.json").read_text()) == {"scene": str(other.resolve())}


def test_a_trained_run_keeps_the_cache_it_was_trained_on(scene, run, trained_run, tmp_path):
    """Other cache settings on a trained run are refused (the model would no longer match:
    `eval` against other views, `train --resume` failing on sizes); the same settings rebuild the
    same cache (e.g. after deleting it to free space) and training resumes on it. An untrained run
    of the scene is simply rebuilt."""
    r = shutil.copytree(trained_run, tmp_path / "r")
    before = snapshot(r, skip=("log.jsonl",))
    with pytest.raises(InputError, match="holds a model trained on its ray cache.*--overwrite"):
        build_cache(str(scene), str(r), **{**CACHE, "ss": 1})
    assert snapshot(r, skip=("log.jsonl",)) == before
    shutil.rmtree(r / "cache")
    build_cache(str(scene), str(r), **CACHE)
    assert train(str(r), iters=4, resume=True, device="cpu")["step"] == 4
    fresh = shutil.copytree(run, tmp_path / "fresh")
    assert build_cache(str(scene), str(fresh), **{**CACHE, "ss": 1})["ss"] == 1


def test_a_scene_prepared_again_in_place_is_not_taken_for_up_to_date(scene, tmp_path):
    """`fit` skips the cache of the same scene and settings, but not once the scene's photos,
    cameras or mesh changed at the same paths (a scene prepared again, e.g. with other cameras):
    the trained run is then refused without --overwrite, and rebuilt from the new photos with it."""
    from PIL import Image
    from backend.cache import cache_matches, inputs_fingerprint
    from backend.fit import fit
    from backend.scene import load_scene
    s = shutil.copytree(scene, tmp_path / "s")
    r = tmp_path / "r"
    args = dict(ss=2, test_every=3, iters=1, device="cpu", preset="small")
    fit(str(s), str(r), **args)
    assert cache_matches(str(r), str(s), 2, 3, None, None)
    photo = load_scene(s).views[0].image_path
    old_rgb = np.load(r / "cache" / "shard_00000" / "rgb.npy")
    Image.fromarray(255 - np.asarray(Image.open(photo).convert("RGB"))).save(photo)      # prepared again
    assert not cache_matches(str(r), str(s), 2, 3, None, None)
    with pytest.raises(InputError, match="holds a model trained on its ray cache.*--overwrite"):
        fit(str(s), str(r), **args)
    fit(str(s), str(r), overwrite=True, **args)
    assert json.loads((r / "config.json").read_text())["inputs"] == inputs_fingerprint(load_scene(s))
    assert not np.array_equal(np.load(r / "cache" / "shard_00000" / "rgb.npy"), old_rgb)
    assert cache_matches(str(r), str(s), 2, 3, None, None)
    cam = sorted((s / "cams").iterdir())[0]              # another focal length, same size and time
    st = cam.stat()
    text = cam.read_text()
    assert "\n80.0 " in text
    cam.write_text(text.replace("\n80.0 ", "\n81.0 ", 1))
    os.utime(cam, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not cache_matches(str(r), str(s), 2, 3, None, None)


def test_the_log_of_a_new_run_folder_starts_with_its_first_event(scene, tmp_path):
    """Blender creates the (empty) run folder before `fit`: the events from before the cache
    claims it (here the mesh warning) are in RUN/log.jsonl too."""
    import numpy as np
    from backend.meshio import Mesh, write_obj
    from conftest import events_of
    from helpers import grid_plane
    s = shutil.copytree(scene, tmp_path / "s")
    m = grid_plane(10)
    fin = np.array([[0.0, 0.0, 0.5]], np.float32)                  # a third face on an inner edge
    faces = np.concatenate([m.faces, [[1, 10, len(m.vertices)]]]).astype(np.int32)
    write_obj(s / "1.obj", Mesh(np.concatenate([m.vertices, fin]), faces))
    r = tmp_path / "r"
    r.mkdir()
    res = cli("cache", "--scene", str(s), "--run", str(r), "--ss", "1", "--test-every", "3", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    printed = events_of(res.stdout)
    assert "non-manifold edges" in printed[0]["message"]
    assert [json.loads(x) for x in (r / "log.jsonl").read_text().splitlines()] == printed
