"""End to end on the procedural scene: training must beat trivial predictors by a wide margin on
held-out views, and the PSNR floor must be out of reach of a model with a camera-convention bug."""
import json

import numpy as np
import pytest
import torch

from backend.cache import build_cache
from backend.cameras import Camera
from backend.checkpoint import load_model
from backend.evaluate import evaluate
from backend.imageio import read_image
from backend.meshio import load_mesh
from backend.metrics import psnr
from backend.synthetic.procedural import make_scene
from backend.raster import Rasterizer
from backend.render import render_srgb
from backend.runfolder import RunFolder
from backend.train import train

FLOOR_DB = 24.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    scene = make_scene(root / "scene", n_views=24, width=96, height=72)
    run = root / "run"
    build_cache(str(scene), str(run), ss=2, test_every=8, device="cpu")
    train(str(run), iters=300, device="cpu", preset="small", overrides={"batch_rays": 2048})
    return run


def test_heldout_psnr_far_above_constant_colour(trained):
    ev = evaluate(str(trained), device="cpu")
    cfg = json.loads((trained / "config.json").read_text())
    # constant-colour baseline: the mean training colour on the same covered pixels
    from backend.cache import ShardReader
    r = ShardReader(trained)
    mean_rgb = np.concatenate([r.load(i)["rgb"] for i in range(len(r.shards))]).mean(0) / 255.0
    base = []
    rast = Rasterizer(load_mesh(cfg["mesh"]), torch.device("cpu"))
    for i in cfg["test_views"]:
        cam = Camera.from_dict(cfg["views"][i]["camera"])
        gt = read_image(cfg["views"][i]["image"])
        s = rast.surface(cam, cfg["ss"])
        mask = s.mask.all(-1).numpy()
        base.append(psnr(np.broadcast_to(mean_rgb, gt.shape), gt, mask))
    print("held-out PSNR", ev["mean"], "constant-colour", np.mean(base))
    assert ev["mean"]["psnr"] > FLOOR_DB
    assert ev["mean"]["psnr"] > np.mean(base) + 6.0                    # a quarter of the error energy
    assert ev["mean"]["ssim"] > 0.7
    assert (trained / "eval" / f"{cfg['views'][cfg['test_views'][0]]['name']}.png").is_file()


def test_floor_rejects_a_principal_point_bug(trained):
    """The same model rendered with cx, cy moved to the image centre (what the official code does)
    misses the floor: the test's threshold detects convention bugs."""
    cfg = json.loads((trained / "config.json").read_text())
    model, _ = load_model(RunFolder(trained), torch.device("cpu"))
    rast = Rasterizer(load_mesh(cfg["mesh"]), torch.device("cpu"))
    scores = []
    for i in cfg["test_views"]:
        cam = Camera.from_dict(cfg["views"][i]["camera"])
        wrong = Camera(cam.width, cam.height, cam.K.copy(), cam.world_to_camera)
        wrong.K[0, 2], wrong.K[1, 2] = cam.width / 2, cam.height / 2
        wrong.K[1, 1] = wrong.K[0, 0]                                  # and fy := fx
        srgb, alpha = render_srgb(model, rast, wrong, cfg["ss"])
        gt = read_image(cfg["views"][i]["image"])
        scores.append(psnr(srgb, gt, alpha >= 1))
    assert np.mean(scores) < FLOOR_DB - 3
