"""Backend pipeline on tiny scenes (CPU): cache contents, training, resume, stop, render, errors."""
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.cache import ShardReader, build_cache
from backend.campath import write_camera_path
from backend.imageio import read_exr, read_image
from backend.render import render_path
from backend.train import train
from conftest import gpu
from helpers import grid_plane, odd_camera, striped_plane_scene

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch_rays": 512, "log2_table": 12}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return striped_plane_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    build_cache(str(scene), str(run), ss=2, test_every=3, device="cpu", shard_rays=2000)
    return run


def cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True,
                          env=env, **kw)


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
def test_resume_is_exact(run, tmp_path, device):
    import shutil
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(run, d)
    train(str(a), iters=6, device=device, preset="small", overrides=TINY)
    train(str(b), iters=6, device=device, preset="small", overrides=TINY, stop_at=3)
    train(str(b), iters=6, resume=True, device=device)
    pa = torch.load(a / "checkpoints/latest.pt", weights_only=False, map_location="cpu")
    pb = torch.load(b / "checkpoints/latest.pt", weights_only=False, map_location="cpu")
    assert pa["step"] == pb["step"] == 6
    assert pa["loader"] == pb["loader"]
    for k in pa["model"]:
        if device == "cpu":
            assert torch.equal(pa["model"][k], pb["model"][k]), k
        else:   # CUDA gradients are summed with atomics (order varies): equal but for rare rows
            off = (pa["model"][k] - pb["model"][k]).abs() > 1e-3
            assert off.float().mean().item() < 1e-3, k


def test_sigterm_saves_and_resume_continues(run, tmp_path):
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "backend", "train", "--run", str(r), "--iters", "100000",
                          "--device", "cpu", "--preset", "small", "--batch-rays", "256", "--log2-table", "12"],
                         stdout=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if '"progress"' in line and json.loads(line)["step"] >= 2:
            break
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    stopped = [json.loads(x) for x in out.splitlines() if '"stopped"' in x]
    assert stopped and stopped[0]["step"] >= 2
    ck = torch.load(r / "checkpoints/latest.pt", weights_only=False)
    assert ck["step"] == stopped[0]["step"]
    res = cli("train", "--run", str(r), "--resume", "--iters", str(ck["step"] + 2), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    done = [json.loads(x) for x in res.stdout.splitlines() if '"done"' in x]
    assert done[-1]["step"] == ck["step"] + 2


def test_render_png_and_exr(run, tmp_path):
    train(str(run), iters=20, device="cpu", preset="small", overrides=TINY)
    cams = [odd_camera(40, 30, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in (0.2, 0.5, 0.8)]
    cams[1].K[0, 0] *= 1.3                                   # animated focal length
    path = tmp_path / "path.json"
    write_camera_path(path, [10, 11, 12], cams)
    out = tmp_path / "png"
    res = cli("render", "--run", str(run), "--path", str(path), "--out", str(out), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["frame_000010.png", "frame_000011.png", "frame_000012.png"]
    from PIL import Image
    im = np.asarray(Image.open(out / files[0]))
    assert im.shape == (30, 40, 4)
    from backend.raster_cpu import rasterize
    from backend.meshio import load_mesh
    cov = rasterize(load_mesh(json.loads((run / "config.json").read_text())["mesh"]), cams[0].scaled(2))
    cov = cov.mask.reshape(30, 2, 40, 2).mean((1, 3))
    assert np.allclose(im[..., 3] / 255.0, cov, atol=1 / 255)      # alpha = coverage, 0 off the mesh
    assert im[..., :3][cov > 0].std() > 3                          # not a constant colour
    render_path(str(run), str(path), str(tmp_path / "exr"), fmt="exr", device="cpu")
    ch = read_exr(tmp_path / "exr" / "frame_000011.exr")
    assert set("RGBAZ") <= set(ch)
    assert np.isinf(ch["Z"][ch["A"] == 0]).all() and np.isfinite(ch["Z"][ch["A"] > 0]).all()


# --- bad input: one line naming the file and the fix, exit code 2, no traceback ------------

def _expect_error(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in res.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert json.loads(res.stdout.strip().splitlines()[-1])["event"] == "error"


def test_second_writer_of_a_run_folder_is_refused(scene, run, tmp_path):
    """While one process trains or caches into a run folder, another gets a one-line error instead
    of interleaving files; the lock goes away with its holder."""
    import shutil
    from backend.runfolder import RunFolder
    r = tmp_path / "r"
    shutil.copytree(run, r)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from backend.runfolder import RunFolder\n"
                               f"with RunFolder({str(r)!r}).exclusive('test'):\n"
                               "    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        _expect_error(cli("train", "--run", str(r), "--iters", "2", "--device", "cpu"),
                      str(r), "another process is already writing")
        _expect_error(cli("cache", "--scene", str(scene), "--run", str(r), "--device", "cpu"),
                      "another process is already writing")
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(r).exclusive("test"):      # released when its holder died
        pass
    train(str(r), iters=2, device="cpu", preset="small", overrides=TINY)
    assert (r / "checkpoints/latest.pt").is_file()


def test_error_missing_image(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "images" / "00000002.png").unlink()
    _expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000002_cam.txt", "no image")


def test_error_malformed_cam(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "cams" / "00000001_cam.txt").write_text("extrinsic\n1 0 0 0\n")
    _expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000001_cam.txt", "malformed")


def test_error_image_size_disagrees_with_K(scene, tmp_path):
    import shutil
    from PIL import Image
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    Image.new("RGB", (24, 16)).save(s / "images" / "00000003.png")      # half size, full-size K
    _expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "00000003.png", "24x16")


def test_error_empty_mesh(scene, tmp_path):
    import shutil
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    (s / "1.obj").write_text("# nothing\n")
    _expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "1.obj", "empty")


def test_error_mesh_no_camera_sees(scene, tmp_path):
    import shutil
    from backend.meshio import write_obj
    s = tmp_path / "s"
    shutil.copytree(scene, s)
    far = grid_plane(4)
    far.vertices[:, 2] -= 100.0                                      # behind/below every camera's view
    far.vertices[:, 0] += 500.0
    write_obj(s / "1.obj", far)
    _expect_error(cli("cache", "--scene", str(s), "--run", str(tmp_path / "r"), "--device", "cpu"),
                  "1.obj", "same world frame")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_error_no_cuda(scene, tmp_path):
    _expect_error(cli("cache", "--scene", str(scene), "--run", str(tmp_path / "r"), "--device", "cuda"),
                  "--device cuda", "--device cpu")


def test_error_train_without_cache(tmp_path):
    _expect_error(cli("train", "--run", str(tmp_path / "nothing"), "--device", "cpu"), "backend cache")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tinycudann") is not None,
                    reason="checks the message when tinycudann is missing")
def test_error_tcnn_backend_unavailable(run):
    _expect_error(cli("train", "--run", str(run), "--grid-backend", "tcnn", "--device", "cpu"),
                  "--grid-backend tcnn", "--grid-backend auto")


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
def test_render_files_hold_the_rendered_frames(run, tmp_path, device):
    """Frames are packed where they were rendered (on CUDA: copied on a side stream) and written
    by threads: the files hold exactly what render_camera returns for each camera (PNG 8-bit
    sRGB + alpha, EXR linear RGB, alpha, depth)."""
    import shutil
    from PIL import Image
    from backend.campath import frame_filename
    from backend.checkpoint import load_model
    from backend.colour import linear_to_srgb, to_u8
    from backend.meshio import load_mesh
    from backend.raster import Rasterizer
    from backend.render import render_camera
    from backend.runfolder import RunFolder
    r = tmp_path / "r"
    shutil.copytree(run, r)
    train(str(r), iters=3, device=device, preset="small", overrides=TINY)
    n_frames = 12 if device == "cuda" else 3
    cams = [odd_camera(96, 64, eye=(0.3 * k, -2.6, 1.8)) for k in range(n_frames)]
    write_camera_path(tmp_path / "path.json", list(range(1, n_frames + 1)), cams)
    for fmt in ("png", "exr"):
        render_path(str(r), str(tmp_path / "path.json"), str(tmp_path / fmt), fmt=fmt, device=device)
    dev = torch.device(device)
    model, _ = load_model(RunFolder(str(r)), dev)
    rast = Rasterizer(load_mesh(RunFolder(str(r)).read_config()["mesh"]), dev)
    for n, cam in zip(range(1, n_frames + 1), cams):
        fr = render_camera(model, rast, cam, 2)
        assert fr.alpha.max() > 0
        png = np.asarray(Image.open(tmp_path / "png" / frame_filename(n, "png")))
        # sRGB on the GPU vs numpy's pow: a value on a rounding boundary may land one level apart
        diff = np.abs(png[..., :3].astype(int) - to_u8(linear_to_srgb(fr.rgb_linear)).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        assert np.array_equal(png[..., 3], to_u8(fr.alpha))
        exr = read_exr(tmp_path / "exr" / frame_filename(n, "exr"))
        assert np.array_equal(exr["R"], fr.rgb_linear[..., 0]) and np.array_equal(exr["A"], fr.alpha)
        assert np.array_equal(exr["Z"], fr.depth)
