"""The photos benchmark (benchmarks/bench_photos.py) end to end in its CPU smoke mode, and the
camera alignment it reports (benchmarks/camera_alignment.py)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.cameras import look_at
from benchmarks.camera_alignment import Similarity, camera_errors

ROOT = Path(__file__).resolve().parents[1]


def _rot(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K


def test_camera_errors_undo_the_frame_and_find_the_wrong_camera():
    truth = {}
    for i in range(8):
        eye = np.array([4 * math.cos(i), 4 * math.sin(i), 1.5 + 0.3 * i])
        E = look_at(eye, np.zeros(3))
        truth[f"p{i}"] = (E[:3, :3], eye)
    frame = Similarity(0.37, _rot([1, 2, 3], 70), np.array([5.0, -2.0, 1.0]))   # truth -> SfM's frame
    rec = {n: (R @ frame.R.T, frame.apply(c)) for n, (R, c) in truth.items()}
    rec["p3"] = (_rot([0, 1, 0], 0.8) @ rec["p3"][0], rec["p3"][1])              # one camera turned by 0.8 deg
    err = camera_errors(rec, truth)
    assert err.to_truth.s == pytest.approx(1 / 0.37)
    assert err.rotation_deg["p3"] == pytest.approx(0.8, abs=1e-6)
    assert max(v for n, v in err.rotation_deg.items() if n != "p3") < 1e-6
    assert max(err.centre.values()) < 1e-9
    back = err.to_truth.inverse()                                              # truth -> SfM again
    assert np.allclose(back.apply(truth["p5"][1]), rec["p5"][1])


def _bench(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_photos.py"), *args],
                          capture_output=True, text=True, **kw)


def test_without_dense_stereo_the_full_run_says_so_and_exits_2(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    if pycolmap.has_cuda:
        pytest.skip("this pycolmap runs dense stereo")
    res = _bench("--out", str(tmp_path / "photos.json"), "--work", str(tmp_path / "work"))
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pycolmap.has_cuda is False" in err[0]
    assert "pycolmap-cuda12" in err[0] and "--smoke" in err[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.slow                # 3 minutes on two busy CPU cores
def test_smoke_runs_photos_to_model_beside_the_reference(tmp_path):
    pytest.importorskip("pycolmap")
    out = tmp_path / "photos.json"
    res = _bench("--smoke", "--out", str(out), "--work", str(tmp_path / "work"), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["metric"]: r["value"] for r in d["rows"]}
    for p in ("features", "matching", "mapping"):
        assert rows[f"prepare {p}"] > 0
    n = rows["photos registered"]
    assert 12 <= n <= 30 and n + len(d["unregistered"]) == 30      # 22 on pycolmap 4.2.1
    assert len(d["cameras"]) == n
    # both runs hold out the same photos, and the photos scene is scored on them
    assert d["heldout"]["reference"] == d["heldout"]["photos"] and d["targets"]["same_heldout"]
    assert len(d["heldout"]["photos"]) >= 2
    assert 5 < rows["held-out PSNR reference"] < 60
    for label in ("reference", "photos"):
        assert [v["view"] for v in d["eval"][label]["views"]] == d["heldout"][label]
    # wrong cameras (see the benchmark's docstring) may leave the photos scene's held-out views uncovered
    p = rows["held-out PSNR photos"]
    assert math.isnan(p) or 5 < p < 60
    if not math.isnan(p):
        assert rows["PSNR reference - photos"] == pytest.approx(rows["held-out PSNR reference"] - p)
    assert d["mesh"].startswith("true mesh") and rows[f"mesh triangles, {d['mesh']}"] == 13952
    table = res.stdout.strip().splitlines()
    assert table[-1].startswith("wrote ") and any(line.startswith("PSNR reference - photos") for line in table)
