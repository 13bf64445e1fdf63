"""Ray cache: records match the photos and cameras, the CUDA path matches the CPU path, and an
interrupted or disk-limited build resumes to identical shards."""
import io
import json
from pathlib import Path

import numpy as np
import pytest

from backend.cache import ShardReader, build_cache
from backend.imageio import read_image
from conftest import ROOT, cli, events_of, gpu


def test_cache_records_match_photos_and_cameras(scene, run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["test_views"] == [1, 4] and len(cfg["train_views"]) == 4
    reader = ShardReader(run)
    assert len(reader.shards) > 1                        # several shards, each shuffled
    recs = [reader.load(i) for i in range(len(reader.shards))]
    view = np.concatenate([r["view"] for r in recs])
    assert set(view.tolist()) == set(cfg["train_views"])
    assert np.any(np.diff(view) != 0) and not np.all(np.diff(view) >= 0)
    from backend.cameras import Camera
    from backend.raster_cpu import rasterize
    from backend.meshio import load_mesh
    mesh = load_mesh(scene / "1.obj")
    covered_total = 0
    for i in cfg["train_views"]:
        cam = Camera.from_dict(cfg["views"][i]["camera"])
        r = rasterize(mesh, cam.scaled(2))
        covered_total += r.mask.reshape(cam.height, 2, cam.width, 2).any((1, 3)).sum()
    assert len(view) == covered_total
    # every record: its first sub-sample projects inside its pixel, colour = the photo's pixel
    r0 = recs[0]
    imgs = {i: (read_image(cfg["views"][i]["image"]) * 255).round() for i in cfg["train_views"]}
    for k in range(0, len(r0["view"]), 37):
        v = int(r0["view"][k])
        cam = Camera.from_dict(cfg["views"][v]["camera"])
        uv, _ = cam.project(r0["xyz"][k, :1].astype(np.float64))
        i, j = int(uv[0, 0]), int(uv[0, 1])
        assert np.array_equal(imgs[v][j, i], r0["rgb"][k])
        d = cam.directions(np.array([[i + 0.5, j + 0.5]]))[0]
        assert np.allclose(d, r0["dir"][k].astype(np.float64), atol=2e-3)


def _records_by_pixel(run_dir) -> dict[str, np.ndarray]:
    """Every cached ray, sorted by (view, pixel of its first sub-sample); key = that pixel's id."""
    from backend.cameras import Camera
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    recs = _shards(run_dir)
    r = {k: np.concatenate([x[k] for x in recs]) for k in recs[0]}
    key = np.empty(len(r["view"]), np.int64)
    for v in np.unique(r["view"]):
        cam = Camera.from_dict(cfg["views"][v]["camera"])
        sel = r["view"] == v
        uv, _ = cam.project(r["xyz"][sel, 0].astype(np.float64))
        key[sel] = (v * cam.height + uv[:, 1].astype(np.int64)) * cam.width + uv[:, 0].astype(np.int64)
    order = np.argsort(key)
    return {"key": key[order], **{k: v[order] for k, v in r.items()}}


@gpu
@pytest.mark.gpu
def test_cuda_cache_matches_cpu_cache(scene, run, tmp_path):
    """The CUDA cache path (sorting and gathering on the GPU, pinned copies) stores the same rays
    as the CPU one; only pixels whose coverage the two rasterizers decide differently may differ."""
    gpu_run = tmp_path / "g"
    build_cache(str(scene), str(gpu_run), ss=2, test_every=3, device="cuda", shard_rays=2000)
    a, b = _records_by_pixel(run), _records_by_pixel(gpu_run)
    common, ia, ib = np.intersect1d(a["key"], b["key"], return_indices=True)
    assert len(common) >= 0.995 * max(len(a["key"]), len(b["key"]))
    assert np.array_equal(a["rgb"][ia], b["rgb"][ib]) and np.array_equal(a["view"][ia], b["view"][ib])
    assert np.abs(a["dir"][ia].astype(np.float32) - b["dir"][ib]).max() < 2e-3
    same_mask = a["mask"][ia] == b["mask"][ib]
    assert same_mask.mean() > 0.99
    assert np.abs(a["xyz"][ia][same_mask] - b["xyz"][ib][same_mask]).max() < 1e-4
    assert np.abs(a["normal"][ia].astype(np.float32) - b["normal"][ib]).max() < 2e-2


def _shards(run_dir):
    r = ShardReader(run_dir)
    return [{k: np.asarray(v) for k, v in r.load(i).items()} for i in range(len(r.shards))]


def _assert_same_shards(ref, run):
    a, b = _shards(ref), _shards(run)
    assert len(a) == len(b) > 1
    for sa, sb in zip(a, b):
        for k in sa:
            assert np.array_equal(sa[k], sb[k]), k


def test_interrupted_cache_resumes_to_identical_shards(scene, tmp_path, monkeypatch):
    import backend.cache as C
    ref = tmp_path / "ref"
    build_cache(str(scene), str(ref), ss=2, test_every=3, device="cpu", shard_rays=2000)
    run = tmp_path / "run"
    real_view_rays, calls = C.view_rays, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_view_rays(*a, **k)

    monkeypatch.setattr(C, "view_rays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    assert json.loads((run / "cache.tmp" / "progress.json").read_text())["done"] == 2
    # interrupted again while writing shards
    monkeypatch.setattr(C, "view_rays", real_view_rays)
    real_save, saves = np.save, []

    def save_then_fail(*a, **k):
        saves.append(1)
        if len(saves) == 8:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    monkeypatch.setattr(C.np, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    monkeypatch.setattr(C.np, "save", real_save)
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    assert not (run / "cache.tmp").exists()
    _assert_same_shards(ref, run)


def test_cache_rebuilt_when_interrupted_files_lost_data(scene, tmp_path, monkeypatch):
    """After a power cut the bucket files can be shorter than progress.json says: the build
    must not resume onto zero-filled records but start over (and still give the same shards)."""
    import backend.cache as C
    from backend import events
    ref = tmp_path / "ref"
    build_cache(str(scene), str(ref), ss=2, test_every=3, device="cpu", shard_rays=2000)
    run = tmp_path / "run"
    real_view_rays = C.view_rays

    def interrupted(*a, **k):
        if a[4] == 3:
            raise KeyboardInterrupt
        return real_view_rays(*a, **k)

    monkeypatch.setattr(C, "view_rays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    monkeypatch.setattr(C, "view_rays", real_view_rays)
    f = max((run / "cache.tmp" / "buckets").glob("*.xyz"), key=lambda p: p.stat().st_size)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 24)
    log = io.StringIO()
    monkeypatch.setattr(events, "_stream", log)
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    assert "lost data" in log.getvalue() and "resuming" not in log.getvalue()
    _assert_same_shards(ref, run)


def test_cache_stops_before_the_disk_fills_and_resumes(scene, tmp_path, monkeypatch):
    """A disk about to fill stops the build before a view with a message that says how much is
    free and needed; once there is room the build resumes to the same shards."""
    import shutil
    import backend.cache as C
    from backend import events
    from backend.errors import InputError
    ref = tmp_path / "ref"
    build_cache(str(scene), str(ref), ss=2, test_every=3, device="cpu", shard_rays=2000)
    run = tmp_path / "run"
    free = {"bytes": 10**15}
    real_view_rays, real_usage = C.view_rays, shutil.disk_usage

    def view_rays(*a, **k):
        if a[4] == 2:                  # the 2nd training view: from now on the disk looks full
            free["bytes"] = C.DISK_RESERVE + 1000
        return real_view_rays(*a, **k)

    monkeypatch.setattr(C, "view_rays", view_rays)
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=free["bytes"]))
    log = io.StringIO()
    monkeypatch.setattr(events, "_stream", log)
    with pytest.raises(InputError, match=r"1\.1 GB free; the next view needs up to 0\.0 GB \(plus 1\.1 GB "
                       r"kept free\) and 2 views are left.*resumes after view 2"):
        build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    # Room for one view at a time only: the first view warns that the rest will not fit.
    free["bytes"] = C.DISK_RESERVE + 48 * 32 * C.ray_bytes(2)
    monkeypatch.setattr(C, "view_rays", real_view_rays)
    build_cache(str(scene), str(tmp_path / "other"), ss=2, test_every=3, device="cpu", shard_rays=2000)
    assert "warning: the ray cache will need about 0 GB more for the remaining 3 views" in log.getvalue()
    monkeypatch.setattr(C.shutil, "disk_usage", real_usage)
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    _assert_same_shards(ref, run)


# The CLI in a child process whose views each take 0.3 s more to rasterize: time to stop it.
SLOW_VIEWS = ("import sys, time, backend.cache as C\n"
              "real = C.view_rays\n"
              "def slow(*a, **k):\n"
              "    time.sleep(0.3)\n"
              "    return real(*a, **k)\n"
              "C.view_rays = slow\n"
              "from backend.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stop_during_the_cache_exits_0_and_fit_resume_continues(scene, tmp_path, sig):
    """Blender's Stop (SIGTERM) or Ctrl-C during the cache: a `stopped` event, exit 0, the views
    done so far kept; `fit --resume` continues the cache, then trains."""
    import os
    import signal
    import subprocess
    import sys
    r = tmp_path / "r"
    args = ["fit", "--scene", str(scene), "--run", str(r), "--ss", "2", "--test-every", "3", "--iters", "2",
            "--device", "cpu", "--batch-rays", "256", "--log2-table", "12"]
    p = subprocess.Popen([sys.executable, "-c", SLOW_VIEWS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if '"progress"' in line and '"cache"' in line:
            break
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    evs = events_of("".join(lines) + out)
    assert p.returncode == 0, err
    assert evs[-1]["event"] == "stopped" and evs[-1]["stage"] == "cache", evs[-1]
    assert not any(e["event"] in ("error", "done") for e in evs) and "Traceback" not in err
    done = evs[-1]["step"]
    assert 1 <= done < 4 and json.loads((r / "cache.tmp" / "progress.json").read_text())["done"] == done
    if sig == "SIGTERM":
        res = cli("fit", "--resume", *args[1:])
        assert res.returncode == 0, res.stderr
        evs = events_of(res.stdout)
        assert any(f"resuming the ray cache after {done} of 4 views" in e.get("message", "") for e in evs)
        assert [e["stage"] for e in evs if e["event"] == "done"] == ["cache", "train"]


def test_stop_while_writing_shards_resumes_to_identical_shards(scene, tmp_path, monkeypatch):
    from backend import stopflag
    from backend.cache import CacheBuild
    ref = tmp_path / "ref"
    build_cache(str(scene), str(ref), ss=2, test_every=3, device="cpu", shard_rays=2000)
    real = CacheBuild._write_shard

    def stop_after_one(self, b, *a):
        shard = real(self, b, *a)
        stopflag.request_stop()                  # as SIGTERM after the first shard
        return shard

    monkeypatch.setattr(CacheBuild, "_write_shard", stop_after_one)
    run = tmp_path / "run"
    res = build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    assert res["stopped"] and res["phase"] == "shards" and res["step"] == 1 and not (run / "cache").exists()
    monkeypatch.setattr(CacheBuild, "_write_shard", real)
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    _assert_same_shards(ref, run)


def test_stop_while_the_inputs_are_read_creates_nothing(scene, tmp_path):
    """Blender's Stop right after Start (the scene and mesh still loading): exit 0 with a
    `stopped` event of the cache, and no run folder."""
    import os
    import signal
    import subprocess
    import sys
    slow_load = ("import sys, time, backend.cache as C\n"
                 "real = C.load_scene\n"
                 "def slow(*a, **k):\n"
                 "    print('loading', flush=True)\n"
                 "    time.sleep(1.0)\n"
                 "    return real(*a, **k)\n"
                 "C.load_scene = slow\n"
                 "from backend.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")
    r = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-c", slow_load, "fit", "--scene", str(scene), "--run", str(r),
                          "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "loading"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    evs = events_of(out)
    assert evs[-1]["event"] == "stopped" and evs[-1]["stage"] == "cache" and evs[-1]["step"] == 0
    assert not r.exists()
