"""A ray cache damaged or tampered with on disk (truncated, not .npy, pickled objects, another
length than meta.json says) stops training with one line naming the file and how to rebuild it,
not an internal error with a traceback."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TINY, cli, expect_error


def damage(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:70])
    elif how == "not npy":
        path.write_bytes(b"these are not the rays you are looking for")
    elif how == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:                                          # a valid array of another length
        a = np.load(path)
        np.save(path, a[: len(a) // 2])


@pytest.mark.parametrize("name,how", [("rgb.npy", "truncated"), ("xyz.npy", "not npy"),
                                      ("view.npy", "pickled"), ("dir.npy", "shorter"),
                                      ("footprint.npy", "truncated")])
def test_a_damaged_cache_file_is_named_with_the_fix(run, tmp_path, name, how):
    r = tmp_path / "run"
    shutil.copytree(run, r)
    shards = [s["name"] for s in json.loads((r / "cache" / "meta.json").read_text())["shards"]]
    paths = [r / "cache" / name] if name == "footprint.npy" else [r / "cache" / s / name for s in shards]
    for path in paths:                   # every shard: training reads them in a shuffled order
        damage(path, how)
    res = cli("train", "--run", str(r), "--device", "cpu", "--preset", "small", "--iters", "2",
              "--batch-rays", str(TINY["batch_rays"]), "--log2-table", str(TINY["log2_table"]), timeout=300)
    expect_error(res, "the ray cache is damaged", "--overwrite", f"--run {r}")
    assert any(str(p) in res.stderr for p in paths), res.stderr


@pytest.mark.parametrize("change", [{"log2_table": 40}, {"width": 1 << 20}, {"n_levels": -3}])
def test_a_checkpoint_with_edited_sizes_is_refused_before_anything_is_allocated(trained_run, tmp_path, change):
    """Model settings changed in the checkpoint after training (a table of 2^40 entries) would be
    allocated as they say: they are compared with the checkpoint's own tensors first."""
    import torch
    r = tmp_path / "run"
    shutil.copytree(trained_run, r)
    ckpt = torch.load(r / "checkpoints" / "latest.pt", weights_only=True)
    cfg = ckpt["model_config"]
    for k, v in change.items():
        (cfg["grid"] if k in cfg.get("grid", {}) else cfg)[k] = v
    torch.save(ckpt, r / "checkpoints" / "latest.pt")
    res = cli("eval", "--run", str(r), "--device", "cpu", timeout=120)
    expect_error(res, str(r / "checkpoints" / "latest.pt"), "delete it and train again")
