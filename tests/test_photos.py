"""Photos are decoded before they cost time: `check` decodes every photo and flags sizes that
disagree with the cameras; `cache` refuses a held-out photo that `eval` could not read."""
import json
import shutil


from conftest import cli, events_of, expect_error


def _copy(scene, tmp_path):
    return shutil.copytree(scene, tmp_path / "s")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_check_decodes_every_photo(scene, tmp_path):
    s = _copy(scene, tmp_path)
    _truncate(s / "images" / "00000002.png")
    bad = s / "images" / "00000005.png"
    bad.write_bytes(bad.read_bytes()[:33] + bytes(range(256)) * 4)     # its size header, then noise
    res = cli("check", str(s), "--no-coverage")
    expect_error(res, "2 photo(s) cannot be used", "00000002.png")
    done = [e for e in events_of(res.stdout) if e["event"] == "done"][0]
    assert done["status"] == "error"
    assert sorted(done["report"]["photos_unusable"]) == ["00000002", "00000005"]
    assert any(e["event"] == "progress" and e.get("phase") == "photos" for e in events_of(res.stdout))


def test_check_flags_a_photo_resized_without_its_camera(scene, tmp_path):
    from PIL import Image
    s = _copy(scene, tmp_path)
    p = s / "images" / "00000003.png"
    with Image.open(p) as im:
        im.resize((round(im.width * 1.3), round(im.height * 1.3))).save(p)
    res = cli("check", str(s), "--no-coverage")
    assert res.returncode == 0, res.stderr
    done = [e for e in events_of(res.stdout) if e["event"] == "done"][0]
    assert done["status"] == "warning" and list(done["report"]["photo_sizes_off"]) == ["00000003"]
    assert "00000003.png" in done["report"]["warnings"][0] and "62x42" in done["report"]["warnings"][0]
    # the untouched capture: decoded, no size warning
    res = cli("check", str(scene), "--no-coverage", "--json")
    report = json.loads(res.stdout[res.stdout.index("{\n"):res.stdout.index("\n}\n") + 2])
    assert report["photos_decoded"] and not report["photos_unusable"] and not report["photo_sizes_off"]


def test_cache_refuses_a_corrupt_held_out_photo_before_training(scene, tmp_path):
    s = _copy(scene, tmp_path)
    _truncate(s / "images" / "00000004.png")          # held out with --test-every 3
    r = tmp_path / "r"
    res = cli("fit", "--scene", str(s), "--run", str(r), "--test-every", "3", "--iters", "2", "--device", "cpu")
    expect_error(res, "00000004.png", "cannot decode")
    assert not r.exists()
