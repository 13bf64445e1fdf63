"""The hash grid backward benchmark (benchmarks/bench_grid_backward.py) in its smoke mode: a tiny
grid and batch on the CPU, its Triton kernels in Triton's interpreter."""
from __future__ import annotations

import json

from conftest import needs_triton, run_triton_interpreted


@needs_triton
def test_smoke_run_prints_the_variants_and_writes_json(tmp_path):
    """Today's kernels, the sorted batch summing runs on every level, plain stores and torch's
    index_add_ on surface rays: a table as the last lines, each sorted variant's gradient that of
    today's (float32 sums in another order), the plain stores' labelled wrong and far off."""
    out = tmp_path / "grid_backward.json"
    r = run_triton_interpreted(["benchmarks/bench_grid_backward.py", "--quick", "--sets", "surface", "--out", str(out),
                                "--only", "today;sorted, runs summed on every;shuffled, plain;sorted, torch"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-6].startswith("Hash grid backward, 40 rays x 4 sub-samples, 5 levels x 2^12 x 4")
    assert lines[-5].split() == ["set", "variant", "fwd", "ms", "bwd", "ms", "sort", "ms", "total/today", "grad", "err"]
    assert [ln.split()[0] for ln in lines[-4:]] == ["surface"] * 4
    res = json.loads(out.read_text())
    v = {row["variant"]: row for row in res["variants"]}
    assert list(v) == ["today: shuffled, atomics", "shuffled, plain stores (WRONG grad: atomics' cost)",
                       "sorted, runs summed on every level", "sorted, torch index_add_ (scatter only)"]
    assert all("error" not in row and row["bwd_ms"] > 0 for row in v.values())
    assert v["today: shuffled, atomics"]["total_vs_today"] == 1.0
    assert v["sorted, runs summed on every level"]["sort_ms"] > 0
    assert v["sorted, runs summed on every level"]["grad_err"] < 1e-5
    assert v["sorted, torch index_add_ (scatter only)"]["grad_err"] < 1e-5
    assert v["shuffled, plain stores (WRONG grad: atomics' cost)"]["grad_err"] > 0.1
    assert any(row["metric"].startswith("surface: sort") for row in res["rows"])
