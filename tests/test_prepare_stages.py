"""Resumable stages (backend/prepare/stages.py) with items, and patch match's maps after a kill
(backend/prepare/sfm.py): what the per-photo progress says, and that a map cut short is made again."""
from __future__ import annotations

import json
import time

import numpy as np

from backend import events
from backend.prepare import sfm
from backend.prepare.stages import Stages
from backend.terminal import row_parts
from dense_helpers import write_dense_map


def collect(monkeypatch) -> list[dict]:
    got: list[dict] = []
    monkeypatch.setattr(events, "emit", lambda event, **kw: got.append({"event": event, **kw}))
    monkeypatch.setattr(events, "log", lambda message, **kw: got.append({"event": "log", "message": message}))
    return got


def test_a_stage_of_items_reports_them_and_an_eta_from_their_rate(tmp_path, monkeypatch):
    """10 items, 2 left done by an interrupted run, then one every 0.5 s: the ETA follows that rate
    (and not the stage's estimate of 1000 s), plus the later stage's estimate."""
    got = collect(monkeypatch)
    items = tmp_path / "items"
    items.mkdir()
    for k in range(2):
        (items / f"{k}").touch()

    def work(_part, _token):
        for k in range(2, 10):
            time.sleep(0.5)
            (items / f"{k}").touch()
        return {"made": 8}

    stages = Stages(tmp_path / "work", "sfm", ["stereo", "fusion"], {"stereo": 1000.0, "fusion": 7.0})
    rec = stages.run("stereo", "", {}, work, count=lambda: (len(list(items.iterdir())), 10, "depth maps"))
    assert rec == {"made": 8}
    prog = [e for e in got if e["event"] == "progress" and "items" in e]
    assert prog and all(e["items_total"] == 10 and e["item_unit"] == "depth maps" for e in prog)
    assert prog[0]["items"] == 2 and 1006.0 < prog[0]["eta_s"] <= 1007.0    # nothing done yet: the estimate
    later = [e for e in prog if 2 < e["items"] < 10]
    assert later, prog
    for e in later:                                                     # 0.5 s per item left, + fusion's 7 s
        left = (10 - e["items"]) * 0.5 + 7.0
        assert 0.6 * left <= e["eta_s"] <= 1.6 * left, (e, left)
    assert row_parts("stereo", later[-1])["item"] == f"{later[-1]['items']}/10 depth maps"
    assert json.loads((tmp_path / "work" / "stereo.json").read_text())["result"] == {"made": 8}


def test_maps_cut_short_are_removed_and_counted_out(tmp_path, monkeypatch):
    got = collect(monkeypatch)
    ws = tmp_path / "dense"
    (ws / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (ws / "images" / name).touch()
    rng = np.random.default_rng(0)
    depth, normal = rng.uniform(1, 2, (6, 9)).astype(np.float32), rng.normal(size=(6, 9, 3)).astype(np.float32)
    for name in ("a.jpg", "b.jpg"):
        write_dense_map(ws / "stereo" / "depth_maps" / f"{name}.photometric.bin", depth)
        write_dense_map(ws / "stereo" / "normal_maps" / f"{name}.photometric.bin", normal)
    write_dense_map(ws / "stereo" / "depth_maps" / "a.jpg.geometric.bin", depth)
    write_dense_map(ws / "stereo" / "normal_maps" / "a.jpg.geometric.bin", normal)
    cut = ws / "stereo" / "normal_maps" / "a.jpg.geometric.bin"       # killed while writing it
    cut.write_bytes(cut.read_bytes()[:100])
    (ws / "stereo" / "depth_maps" / "c.jpg.photometric.bin").write_bytes(b"")     # killed right after opening
    assert sfm.stereo_count(ws) == (4, 6, "depth maps")

    ran = []

    class FakeColmap:            # COLMAP skips a photo whose depth and normal maps both exist
        @staticmethod
        def patch_match_stereo(workspace, cancellation_token=None):
            ran.append(sorted(p.relative_to(workspace / "stereo").as_posix()
                              for p in (workspace / "stereo").rglob("*.bin")))

    sfm.stereo(FakeColmap, ws, None)
    assert ran == [["depth_maps/a.jpg.geometric.bin", "depth_maps/a.jpg.photometric.bin",
                    "depth_maps/b.jpg.photometric.bin", "normal_maps/a.jpg.photometric.bin",
                    "normal_maps/b.jpg.photometric.bin"]]
    msg = [e["message"] for e in got if e["event"] == "log"]
    assert len(msg) == 1 and "2 map(s)" in msg[0] and "normal_maps/a.jpg.geometric.bin" in msg[0], msg
    assert sfm.complete_map(ws / "stereo" / "depth_maps" / "a.jpg.geometric.bin")
    assert sfm.stereo_count(ws) == (3, 6, "depth maps")
