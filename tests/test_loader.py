"""The training ray stream (backend/loader.py): read-ahead ring, direct .npy reads, rank parts."""
import numpy as np
import pytest
import torch

from backend.cache import ShardReader, unpack_mask
from backend.loader import TRAIN_FIELDS, NpyFile, RayLoader, batch_part


def _stream(run, seed: int, epochs: int) -> dict[str, np.ndarray]:
    """The whole ray stream, epoch after epoch, read the plain way (np.load of every shard)."""
    reader = ShardReader(run)
    out = {k: [] for k in TRAIN_FIELDS}
    for e in range(epochs):
        for i in np.random.default_rng([seed, e]).permutation(len(reader.shards)):
            d = reader.load(int(i), mmap=False)
            for k in TRAIN_FIELDS:
                out[k].append(d[k])
    return {k: np.concatenate(v) for k, v in out.items()}


def _expected(stream, S, a, b) -> dict[str, torch.Tensor]:
    return {"xyz": torch.from_numpy(stream["xyz"][a:b]).float(),
            "mask": unpack_mask(torch.from_numpy(stream["mask"][a:b].astype(np.int32)), S),
            "dir": torch.from_numpy(stream["dir"][a:b]).float(),
            "rgb": torch.from_numpy(stream["rgb"][a:b]).float() / 255.0,
            "view": torch.from_numpy(stream["view"][a:b]).long()}


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("batch", [700, 4500])       # 4500: one batch spans 3-4 shards of ~2000 rays
def test_batches_follow_the_stream_and_never_alias(run, depth, batch):
    """Every batch equals the plain reading of the stream, with any read-ahead depth, also when a
    batch spans more shards than the ring has slots; batches kept across calls stay intact."""
    n_total = ShardReader(run).meta["n_rays"]
    steps = 3 * n_total // batch + 2
    stream = _stream(run, 0, steps * batch // n_total + 2)
    ld = RayLoader(run, torch.device("cpu"), batch, 0, prefetch=depth)
    got = [ld.next() for _ in range(steps)]           # all kept: later reads must not change them
    ld.close()
    S = ld.S
    for i, b in enumerate(got):
        exp = _expected(stream, S, i * batch, (i + 1) * batch)
        for k in exp:
            assert torch.equal(b[k], exp[k]), (i, k)


def test_rank_parts_with_read_ahead(run):
    """Three ranks with depth 1 and 3: their parts of each batch concatenate to the whole batch."""
    batch, world = 1001, 3
    cpu = torch.device("cpu")
    one = RayLoader(run, cpu, batch, 0, prefetch=2)
    ranks = [RayLoader(run, cpu, batch, 0, part=batch_part(batch, r, world), prefetch=1 + 2 * (r % 2))
             for r in range(world)]
    for _ in range(9):
        ref = one.next()
        got = [ld.next() for ld in ranks]
        for k in ref:
            assert torch.equal(torch.cat([g[k] for g in got]), ref[k]), k
    # each rank read about a third of the rows, and never the normals
    total = sum(ld.read_bytes for ld in ranks)
    assert abs(total - one.read_bytes) <= 0.02 * one.read_bytes + 3 * 2 * 2000 * 100
    for ld in (one, *ranks):
        ld.close()


def test_only_training_fields_are_read(run):
    ld = RayLoader(run, torch.device("cpu"), 500, 0, prefetch=1)
    ld.next()
    ld.close()              # the read ahead counts its fields one by one: let the one in flight end
    reader = ShardReader(run)
    first = reader.shards[ld._order(0)[0]]
    S = ld.S
    per_ray = 12 * S + 2 + 6 + 3 + 4           # xyz, mask, dir, rgb, view (no normal)
    assert ld.read_bytes >= first["n"] * per_ray
    assert ld.read_bytes % per_ray == 0


def test_npy_rows_read_into_a_buffer(tmp_path):
    a = np.random.default_rng(1).standard_normal((1000, 4, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    f = NpyFile(tmp_path / "a.npy")
    assert f.shape == (1000, 4, 3) and f.row_bytes == 48
    out = np.zeros((600, 4, 3), np.float32)
    from concurrent.futures import ThreadPoolExecutor
    import backend.loader as loader
    old = loader.READ_PIECE
    loader.READ_PIECE = 1000            # many small pieces over the pool
    try:
        with ThreadPoolExecutor(3) as pool:
            n = f.read_rows([(10, 210), (500, 900)], out, pool)
    finally:
        loader.READ_PIECE = old
    assert n == 600
    assert np.array_equal(out, np.concatenate([a[10:210], a[500:900]]))


def test_resume_mid_stream_matches_a_continuous_pass(run):
    cpu = torch.device("cpu")
    a = RayLoader(run, cpu, 777, 3, prefetch=2)
    for _ in range(5):
        a.next()
    b = RayLoader(run, cpu, 777, 3, dict(a.state()), prefetch=3)
    for _ in range(6):
        x, y = a.next(), b.next()
        assert all(torch.equal(x[k], y[k]) for k in x)
    a.close()
    b.close()
