"""Rendering camera paths: files, formats, alpha = coverage, pixels = the rendered frames."""
import json

import numpy as np
import pytest
import torch

from backend.campath import write_camera_path
from backend.imageio import read_exr
from backend.render import render_path
from backend.train import train
from conftest import TINY, cli, expect_error, gpu
from helpers import odd_camera


def test_render_png_and_exr(run, tmp_path):
    import shutil
    run = shutil.copytree(run, tmp_path / "run")
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
    rast = Rasterizer(load_mesh(RunFolder(str(r)).settings().mesh), dev)
    for n, cam in zip(range(1, n_frames + 1), cams):
        fr = render_camera(model, rast, cam, 2)
        rgb, alpha = fr["rgba"][..., :3], fr["rgba"][..., 3]
        assert alpha.max() > 0
        png = np.asarray(Image.open(tmp_path / "png" / frame_filename(n, "png")))
        # sRGB on the GPU vs numpy's pow: a value on a rounding boundary may land one level apart
        diff = np.abs(png[..., :3].astype(int) - to_u8(linear_to_srgb(rgb)).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        assert np.array_equal(png[..., 3], to_u8(alpha))
        exr = read_exr(tmp_path / "exr" / frame_filename(n, "exr"))
        # premultiplied RGB, as OpenEXR defines it and Blender reads it
        assert np.array_equal(exr["R"], rgb[..., 0] * alpha) and np.array_equal(exr["A"], alpha)
        assert np.array_equal(exr["Z"], fr["depth"])
        for name in ("Normal", "Position"):
            got = np.stack([exr[f"{name}.{c}"] for c in "XYZ"], -1)
            assert np.array_equal(got, fr[name.lower()])


def test_normal_and_position_passes_follow_blender(trained_run):
    """Normal and Position are world space and follow Cycles' conventions (checked against Cycles
    in test_blender_compositing): the normal faces the camera whichever way the mesh's triangles
    wind and is premultiplied by alpha (0 off the mesh); the position is a point of the surface,
    0 off the mesh, and agrees with the depth."""
    from backend.checkpoint import load_model
    from backend.meshio import Mesh, load_mesh
    from backend.raster import Rasterizer
    from backend.render import render_camera
    from backend.runfolder import RunFolder
    dev = torch.device("cpu")
    model, _ = load_model(RunFolder(str(trained_run)), dev)
    mesh = load_mesh(RunFolder(str(trained_run)).settings().mesh)
    flipped = Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    for eye, up in (((2.2, 0.4, 1.5), 1.0), ((1.6, -1.2, -1.4), -1.0)):     # above and below the plane
        cam = odd_camera(40, 30, eye=eye)
        for m in (mesh, flipped):
            fr = render_camera(model, Rasterizer(m, dev), cam, 2, passes=("rgba", "depth", "normal", "position"))
            a, n, p, z = fr["rgba"][..., 3], fr["normal"], fr["position"], fr["depth"]
            inside, edge, off = a == 1, (a > 0) & (a < 1), a == 0
            assert inside.sum() > 100 and edge.sum() > 10 and off.sum() > 10
            assert np.abs(n[inside] - [0, 0, up]).max() < 1e-6
            assert np.allclose(np.linalg.norm(n[edge], axis=-1), a[edge], atol=1e-6)
            assert (n[off] == 0).all() and (p[off] == 0).all()
            assert np.abs(p[a > 0][:, 2]).max() < 1e-6 and np.abs(p[a > 0][:, :2]).max() <= 1 + 1e-6
            cam_z = p[a > 0] @ cam.R[2] + cam.t[2]
            assert np.allclose(cam_z, z[a > 0], rtol=1e-5)


def _path_with(tmp_path, name, **frame2):
    """A 3-frame camera path whose frame 2 has the given entries replaced."""
    cams = [odd_camera(40, 30, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in (0.2, 0.5, 0.8)]
    path = tmp_path / f"{name}.json"
    write_camera_path(path, [1, 2, 3], cams)
    data = json.loads(path.read_text())
    data["frames"][1].update(frame2)
    path.write_text(json.dumps(data))
    return path


def test_render_refuses_camera_paths_with_impossible_cameras(run, tmp_path):
    """All-zero, NaN or scaled (not rigid) world_to_camera and bad K: refused before any frame
    is rendered, naming the file and the frame; a valid path passes."""
    from backend.campath import read_camera_path
    from backend.errors import InputError
    cam = odd_camera(40, 30)
    E, K = cam.world_to_camera, cam.K
    bad = {"zeros": dict(world_to_camera=np.zeros((4, 4)).tolist()),
           "nan": dict(world_to_camera=np.where(np.eye(4) == 1, np.nan, E).tolist()),
           "scaled": dict(world_to_camera=(np.diag([1.3, 1.3, 1.3, 1.0]) @ E).tolist()),
           "mirrored": dict(world_to_camera=(np.diag([-1.0, 1, 1, 1]) @ E).tolist()),
           "sheared": dict(world_to_camera=(E + np.array([[0, 1e-3, 0, 0], [0] * 4, [0] * 4, [0] * 4])).tolist()),
           "negative fx": dict(K=(K * [[-1], [1], [1]]).tolist()),
           "K with inf": dict(K=np.where(np.eye(3) == 1, np.inf, K).tolist()),
           "zero size": dict(width=0)}
    for name, frame2 in bad.items():
        path = _path_with(tmp_path, name.replace(" ", "_"), **frame2)
        with pytest.raises(InputError, match=rf"{path}: frame 2\b"):
            read_camera_path(path)
    read_camera_path(_path_with(tmp_path, "ok", world_to_camera=(E + 1e-6).tolist()))   # float32 export noise
    out = tmp_path / "frames"
    res = cli("render", "--run", str(run), "--path", str(_path_with(tmp_path, "scaled", **bad["scaled"])),
              "--out", str(out), "--device", "cpu")
    expect_error(res, "scaled.json", "frame 2", "rigid")
    assert not out.exists()


def test_sigterm_during_render_stops_between_frames(run, tmp_path):
    """Blender's Stop while rendering: the frames written so far are complete files, a `stopped`
    event names them, exit 0."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from conftest import ROOT, events_of
    r = shutil.copytree(run, tmp_path / "r")
    train(str(r), iters=2, device="cpu", preset="small", overrides=TINY)
    cams = [odd_camera(96, 64, eye=(2.2 * np.cos(a), 2.2 * np.sin(a), 1.5)) for a in np.linspace(0, 6, 400)]
    write_camera_path(tmp_path / "path.json", list(range(1, 401)), cams)
    p = subprocess.Popen([sys.executable, "-m", "backend", "render", "--run", str(r), "--path", str(tmp_path / "path.json"),
                          "--out", str(tmp_path / "out"), "--device", "cpu"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    first = p.stdout.readline()
    while '"progress"' not in first:
        first = p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    stopped = events_of(first + out)[-1]
    assert stopped["event"] == "stopped" and stopped["stage"] == "render" and 1 <= stopped["step"] < 400
    files = sorted(x.name for x in (tmp_path / "out").iterdir())
    assert files == sorted(stopped["files"]) and len(files) == stopped["step"]
