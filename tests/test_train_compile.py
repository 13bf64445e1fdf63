"""XSCALE_COMPILE_DECODER=1 (a measurement aid): the decoder through torch.compile trains to the
same numbers as eager."""
import shutil

import pytest

from conftest import TINY, cli, events_of


@pytest.mark.slow
def test_compiled_decoder_trains_like_eager(run, tmp_path, monkeypatch):
    done = {}
    for flag in ("0", "1"):
        r = tmp_path / flag
        shutil.copytree(run, r)
        monkeypatch.setenv("XSCALE_COMPILE_DECODER", flag)
        res = cli("train", "--run", str(r), "--iters", "2", "--device", "cpu", "--preset", "small",
                  "--batch-rays", str(TINY["batch_rays"]), "--log2-table", str(TINY["log2_table"]), timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        done[flag] = [e for e in events_of(res.stdout) if e["event"] == "done"][0]
    assert done["1"]["loss"] == pytest.approx(done["0"]["loss"], rel=1e-5)
