"""jax_impl.data.activation_sets and jax_impl.data.streaming: shards read as one matrix (order, width, defects named
by shard, fingerprint over every shard), SAELens's cache folder (see tests/data/test_saelens_cache.py for one the real
sae-lens writes), the shuffle buffer and the prefetch thread."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from jax_impl.data.activation_sets import ShardedActivations, check_finite_rows, open_activations, shard_assignment
from jax_impl.data.activations import ActivationFile, iter_chunks
from jax_impl.data.streaming import prefetched, stream_chunks
from jax_impl.errors import UserError


def _matrix(n: int = 1000, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _shards(folder: Path, a: np.ndarray, cuts: tuple[int, ...] = (300, 650), names: tuple[str, ...] = (
        "part_0.npy", "part_2.safetensors", "part_10.npy")) -> Path:
    """`a` cut at `cuts` into files named `names` (their suffix picks the format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in zip(names, np.split(a, cuts), strict=True):
        if name.endswith(".npy"):
            np.save(folder / name, part)
        else:
            save_file({"acts": np.ascontiguousarray(part)}, str(folder / name))
    return folder


def test_a_folder_of_shards_reads_as_its_rows_in_natural_order(tmp_path):
    a = _matrix()
    source = open_activations(_shards(tmp_path / "set", a))
    assert isinstance(source, ShardedActivations)
    assert [s.path.name for s in source.shards] == ["part_0.npy", "part_2.safetensors", "part_10.npy"]
    assert (source.n_rows, source.width, source.offsets) == (1000, 8, (0, 300, 650, 1000))
    assert np.array_equal(source.rows(0, 1000), a)
    assert np.array_equal(source.rows(299, 651), a[299:651])  # across both boundaries
    assert source.rows(650, 650).shape == (0, 8)
    idx = np.random.default_rng(1).integers(0, 1000, 500)
    assert np.array_equal(source.take(idx), a[idx])


def test_a_glob_selects_the_shards(tmp_path):
    a = _matrix()
    folder = _shards(tmp_path / "set", a)
    np.save(folder / "other.npy", _matrix(5))  # not matched by the glob (a folder would take it)
    source = open_activations(str(folder / "part_*"))
    assert np.array_equal(source.rows(0, source.n_rows), a)
    assert source.fingerprint == open_activations(_shards(tmp_path / "copy", a)).fingerprint


def test_the_fingerprint_covers_every_shard_and_their_order_not_their_names(tmp_path):
    a = _matrix()
    base = open_activations(_shards(tmp_path / "a", a)).fingerprint
    moved = _shards(tmp_path / "b", a, names=("x1.npy", "x2.safetensors", "x3.npy"))
    assert open_activations(moved).fingerprint == base
    b = a.copy()
    b[900] += 1  # a row of the last shard only (the fingerprint samples rows: the first and last of each shard)
    b[999] += 1
    assert open_activations(_shards(tmp_path / "c", b)).fingerprint != base
    swapped = _shards(tmp_path / "d", a, names=("part_10.npy", "part_2.safetensors", "part_0.npy"))
    assert open_activations(swapped).fingerprint != base
    fewer = _shards(tmp_path / "e", a[:650], cuts=(300,), names=("part_0.npy", "part_2.safetensors"))
    assert open_activations(fewer).fingerprint != base
    single = tmp_path / "one.npy"
    np.save(single, a)
    assert open_activations(single).fingerprint != base  # one file is another source than its shards


@pytest.mark.parametrize("case, message", [
    ("width", "part_2.safetensors: activations have shape (350, 9), expected (N, 8) like the first shard part_0.npy"),
    ("nan", "part_2.safetensors: row 17 contains NaN or infinite values"),
    ("dtype", "part_10.npy: activations have dtype float64, expected float32"),
    ("torch", "part_5.pt: a torch file among the shards of"),
    ("empty", "set: no .npy or .safetensors shards found"),
    ("glob", "nothing*.npy: no files match"),
])
def test_a_bad_shard_is_one_line_naming_it(case, message, tmp_path):
    a = _matrix()
    folder = _shards(tmp_path / "set", a)
    target: Path | str = folder
    if case == "width":
        save_file({"acts": _matrix(350, 9)}, str(folder / "part_2.safetensors"))
    elif case == "nan":
        bad = a[300:650].copy()
        bad[17, 3] = np.nan
        save_file({"acts": bad}, str(folder / "part_2.safetensors"))
    elif case == "dtype":
        np.save(folder / "part_10.npy", a[650:].astype(np.float64))
    elif case == "torch":
        (folder / "part_5.pt").write_bytes(b"not read")
    elif case == "empty":
        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "README.txt").write_text("no shards here")
    else:
        target = str(tmp_path / "nothing*.npy")
    with pytest.raises(UserError) as e:
        open_activations(target)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_check_finite_rows_names_the_shard_and_its_own_row(tmp_path):
    a = _matrix()
    a[700, 0] = np.inf
    source = open_activations(_shards(tmp_path / "set", a), check_finite=False)
    check_finite_rows(source, 0, 650)  # the bad row is outside: nothing to say
    with pytest.raises(UserError, match=r"part_10\.npy: row 50 contains NaN"):
        check_finite_rows(source, 600, 800)


def test_a_width_is_checked_for_a_set_too(tmp_path):
    with pytest.raises(UserError, match=r"set: activations have shape \(1000, 8\), expected \(N, 9\)"):
        open_activations(_shards(tmp_path / "set", _matrix()), width=9)


def _set_of(shard_rows: list[int], tmp_path: Path) -> ShardedActivations:
    a = _matrix(sum(shard_rows), 2)
    cuts = tuple(np.cumsum(shard_rows)[:-1])
    return open_activations(_shards(tmp_path / "set", a, cuts, tuple(f"s{i}.npy" for i in range(len(shard_rows)))))


@pytest.mark.parametrize("shard_rows, processes, expected", [
    ([300, 350, 350], 3, [(0, 300), (300, 650), (650, 1000)]),
    ([300, 350, 350], 2, [(0, 650), (650, 1000)]),
    ([100] * 8, 3, [(0, 300), (300, 500), (500, 800)]),
    ([10, 10, 500, 10], 4, [(0, 10), (10, 20), (20, 520), (520, 530)]),  # every process gets a shard
    ([1000, 1, 1], 3, [(0, 1000), (1000, 1001), (1001, 1002)]),
])
def test_whole_shards_are_dealt_out_in_order(shard_rows, processes, expected, tmp_path):
    source = _set_of(shard_rows, tmp_path)
    got = [shard_assignment(source, processes, p) for p in range(processes)]
    assert got == expected
    assert shard_assignment(source, len(shard_rows) + 1, 0) is None  # fewer shards than processes: row ranges


def test_a_single_file_has_no_shards_to_deal(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, _matrix())
    assert shard_assignment(open_activations(path), 2, 0) is None


# ---------------------------------------------------------------------------------------------------------
# streaming


def _in_memory(a: np.ndarray, tmp_path: Path) -> ActivationFile:
    np.save(tmp_path / "a.npy", a)
    return open_activations(tmp_path / "a.npy")


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_without_a_buffer_the_chunks_and_the_rng_are_iter_chunks(prefetch, tmp_path):
    a = _matrix(1000, 4)
    source = _in_memory(a, tmp_path)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    ours = list(stream_chunks(source, 128, r1, prefetch=prefetch))
    theirs = list(iter_chunks(source, 128, r2))
    assert len(ours) == len(theirs) == 8 and all(np.array_equal(x, y) for x, y in zip(ours, theirs, strict=True))
    assert r1.integers(1 << 30) == r2.integers(1 << 30)


@pytest.mark.parametrize("buffer", [1, 200, 5000])
def test_a_buffer_yields_every_row_once_in_chunks_of_the_same_lengths(buffer, tmp_path):
    a = np.arange(1000, dtype=np.float32)[:, None].repeat(3, axis=1)  # row i holds i: where each row went is visible
    source = _in_memory(a, tmp_path)
    chunks = list(stream_chunks(source, 128, np.random.default_rng(2), shuffle_buffer=buffer))
    assert [len(c) for c in chunks] == [128] * 7 + [104]
    seen = np.concatenate(chunks)[:, 0].astype(int)
    assert sorted(seen) == list(range(1000))
    again = list(stream_chunks(source, 128, np.random.default_rng(2), shuffle_buffer=buffer))
    assert all(np.array_equal(x, y) for x, y in zip(chunks, again, strict=True))  # the rng alone decides
    blocks_in_first = len(set(chunks[0][:, 0].astype(int) // 128))
    assert blocks_in_first >= (2 if buffer >= 128 else 1)
    if buffer >= 1000:  # a buffer of the whole set: the first chunk draws from all eight blocks
        assert blocks_in_first == 8


def test_a_buffer_mixes_rows_of_many_shards_into_each_chunk(tmp_path):
    a = np.arange(1000, dtype=np.float32)[:, None].repeat(2, axis=1)
    source = open_activations(_shards(tmp_path / "ordered", a, tuple(range(100, 1000, 100)),
                                      tuple(f"s{i}.npy" for i in range(10))))
    plain = next(iter(stream_chunks(source, 100, np.random.default_rng(0))))
    mixed = next(iter(stream_chunks(source, 100, np.random.default_rng(0), shuffle_buffer=400)))
    assert len(set(plain[:, 0].astype(int) // 100)) == 1  # one block = one shard
    assert len(set(mixed[:, 0].astype(int) // 100)) == 5  # the buffer's four blocks and the next one


def test_a_read_error_in_the_prefetch_thread_reaches_the_consumer_at_its_chunk():
    def chunks():
        yield 1
        yield 2
        raise UserError("shard.npy: went away")

    got = []
    with pytest.raises(UserError, match="went away"):
        for item in prefetched(chunks()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_thread():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # joins the thread
    assert threading.active_count() == before and len(produced) <= 3 + 2 + 1
