"""jax_impl.data.activations: the three activation formats, their validation, and bounded-memory reads."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from jax_impl.data.activations import (
    ACTIVATION_SUFFIXES,
    ActivationFile,
    iter_chunks,
    open_activations,
    sample_rows,
)
from jax_impl.errors import UserError

FORMATS = (".npy", ".pt", ".safetensors")


def _write(path: Path, array: np.ndarray) -> Path:
    """Write `array` in the format named by path's suffix (one tensor/array per file)."""
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix in (".pt", ".pth"):
        torch.save(torch.from_numpy(np.ascontiguousarray(array)), path)
    elif path.suffix == ".safetensors":
        save_file({"acts": np.ascontiguousarray(array)}, str(path))
    else:
        raise AssertionError(path)
    return path


def _matrix(n: int = 100, d: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _user_error(path: Path, *expected: str, **kwargs) -> str:
    """open_activations(path) must fail with one line that starts with the path and contains `expected`."""
    with pytest.raises(UserError) as info:
        open_activations(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    for text in expected:
        assert text in message, (text, message)
    return message


# ---------------------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("suffix", (*FORMATS, ".pth"))
def test_round_trip_is_exact_in_every_format(tmp_path, suffix):
    a = _matrix()
    src = open_activations(_write(tmp_path / f"acts{suffix}", a))
    assert isinstance(src, ActivationFile)
    assert (src.n_rows, src.width) == (100, 37)
    assert src.path == tmp_path / f"acts{suffix}"

    for start, stop in [(0, 100), (10, 23), (99, 100), (5, 5)]:
        got = src.rows(start, stop)
        assert got.dtype == np.float32 and got.shape == (stop - start, 37) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, a[start:stop])

    idx = np.array([42, 3, 3, 99, 0, 41, 43, 42])  # unsorted, with repeats and a consecutive run
    np.testing.assert_array_equal(src.take(idx), a[idx])
    assert src.take(np.array([], dtype=np.int64)).shape == (0, 37)

    chunks = list(iter_chunks(src, 16, np.random.default_rng(1)))
    assert sum(len(c) for c in chunks) == 100
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks), axis=0), np.sort(a, axis=0))


def test_npy_is_memory_mapped_and_rows_are_fresh_arrays(tmp_path):
    a = _matrix()
    src = open_activations(_write(tmp_path / "acts.npy", a))
    held = src._reader.array  # private, checked here on purpose: the point is that the file is not read whole
    assert isinstance(held, np.memmap)
    assert not held.flags.writeable

    got = src.rows(10, 20)
    assert type(got) is np.ndarray  # not an np.memmap view
    assert got.flags.c_contiguous and got.flags.owndata and got.flags.writeable
    assert type(src.take(np.array([1, 2]))) is np.ndarray
    got[:] = 0  # a fresh copy: neither the file nor the next read changes
    np.testing.assert_array_equal(src.rows(10, 20), a[10:20])


def test_torch_rows_do_not_alias_the_loaded_tensor(tmp_path):
    a = _matrix(20, 5)
    src = open_activations(_write(tmp_path / "acts.pt", a))
    got = src.rows(0, 20)
    got[:] = 0
    np.testing.assert_array_equal(src.rows(0, 20), a)


def test_big_endian_float32_npy_is_read_as_float32(tmp_path):
    a = _matrix(12, 7)
    path = tmp_path / "be.npy"
    np.save(path, a.astype(">f4"))
    src = open_activations(path)
    got = src.rows(0, 12)
    assert got.dtype == np.dtype(np.float32) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_iter_chunks_covers_every_row_once_in_a_seeded_block_order(tmp_path):
    # Column 0 is the row number, so each chunk tells which rows it holds.
    n, chunk = 103, 10
    a = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 3))
    src = open_activations(_write(tmp_path / "acts.npy", a))

    def block_order(seed):
        chunks = list(iter_chunks(src, chunk, np.random.default_rng(seed)))
        rows = np.concatenate([c[:, 0] for c in chunks]).astype(int)
        assert sorted(rows) == list(range(n))  # every row exactly once
        assert all(1 <= len(c) <= chunk for c in chunks)
        assert all(c.dtype == np.float32 and c.shape[1] == 3 for c in chunks)
        for c in chunks:  # each chunk is one contiguous block, starting on a block boundary
            assert c[0, 0] % chunk == 0
            np.testing.assert_array_equal(np.diff(c[:, 0]), 1)
        return [int(c[0, 0]) // chunk for c in chunks]

    assert len(block_order(0)) == 11
    assert block_order(0) == block_order(0)  # deterministic for a seed
    assert block_order(0) != block_order(1)  # and the seed matters
    assert sorted(block_order(2)) == list(range(11))

    assert [len(c) for c in iter_chunks(src, 1000, np.random.default_rng(0))] == [n]
    assert [len(c) for c in iter_chunks(src, 1, np.random.default_rng(0))] == [1] * n
    for bad in (0, -3):
        with pytest.raises(ValueError):
            iter_chunks(src, bad, np.random.default_rng(0))


def test_sample_rows_draws_distinct_rows(tmp_path):
    n = 50
    a = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 4))
    for suffix in FORMATS:
        src = open_activations(_write(tmp_path / f"acts{suffix}", a))
        got = sample_rows(src, 20, np.random.default_rng(3))
        assert got.shape == (20, 4) and got.dtype == np.float32
        ids = got[:, 0].astype(int)
        assert len(set(ids)) == 20
        np.testing.assert_array_equal(got, a[ids])
        again = sample_rows(src, 20, np.random.default_rng(3))
        np.testing.assert_array_equal(again, got)  # same seed, same sample in every format

        everything = sample_rows(src, 10_000, np.random.default_rng(4))  # capped at n_rows
        assert sorted(everything[:, 0].astype(int)) == list(range(n))
        assert sample_rows(src, 0, np.random.default_rng(5)).shape == (0, 4)


def test_misuse_by_calling_code_is_not_a_user_error(tmp_path):
    src = open_activations(_write(tmp_path / "acts.npy", _matrix(10, 3)))
    for start, stop in [(-1, 2), (3, 2), (0, 11)]:
        with pytest.raises(ValueError):
            src.rows(start, stop)
    with pytest.raises(IndexError):
        src.take(np.array([0, 10]))
    with pytest.raises(IndexError):
        src.take(np.array([-1]))
    with pytest.raises(TypeError):
        src.take(np.array([0.5]))
    with pytest.raises(ValueError):
        src.take(np.array([[0, 1]]))
    with pytest.raises(ValueError):
        open_activations(tmp_path / "acts.npy", check_finite_chunk_rows=0)


# ---------------------------------------------------------------------------------------------------------
# bad input: every defect is one UserError line naming the file and what was expected


def test_missing_file_folder_and_unknown_suffix(tmp_path):
    _user_error(tmp_path / "nope.npy", "file not found")
    (tmp_path / "acts.npy").mkdir()
    _user_error(tmp_path / "acts.npy", "is a folder")
    for name in ("acts.csv", "acts"):
        (tmp_path / name).write_text("1,2,3\n")
        _user_error(tmp_path / name, *ACTIVATION_SUFFIXES)


BAD_ARRAYS = {
    # name: (array, expected substrings)
    "1-D": (np.zeros(10, np.float32), ("shape (10,)", "expected a 2-D (N, d) matrix")),
    "3-D": (np.zeros((4, 3, 2), np.float32), ("shape (4, 3, 2)", "expected a 2-D (N, d) matrix")),
    "0 rows": (np.zeros((0, 5), np.float32), ("0 rows", "expected at least 1")),
    "NaN": (np.where(np.arange(20)[:, None] == 3, np.nan, np.ones((20, 4))).astype(np.float32),
            ("row 3 contains NaN or infinite values",)),
    "+inf": (np.where(np.arange(20)[:, None] == 17, np.inf, np.ones((20, 4))).astype(np.float32),
             ("row 17 contains NaN or infinite values",)),
    "-inf": (np.where(np.arange(20)[:, None] == 0, -np.inf, np.ones((20, 4))).astype(np.float32),
             ("row 0 contains NaN or infinite values",)),
    "int32": (np.ones((5, 4), np.int32), ("int32", "expected", "float32")),
    "float64": (np.ones((5, 4), np.float64), ("64", "expected", "float32")),
    "float16": (np.ones((5, 4), np.float16), ("16", "expected", "float32")),
}


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_are_refused_in_every_format(tmp_path, suffix, case):
    array, expected = BAD_ARRAYS[case]
    _user_error(_write(tmp_path / f"acts{suffix}", array), *expected)


def test_zero_width_is_refused(tmp_path):
    for suffix in FORMATS:
        _user_error(_write(tmp_path / f"acts{suffix}", np.zeros((5, 0), np.float32)), "at least 1 column")


@pytest.mark.parametrize("suffix", FORMATS)
def test_nan_after_the_first_scan_chunk_is_found(tmp_path, suffix):
    a = _matrix(30, 37)
    a[21, 5] = np.nan
    path = _write(tmp_path / f"acts{suffix}", a)
    _user_error(path, "row 21 contains NaN", check_finite_chunk_rows=8)
    a[21, 5] = 0
    a[29, 36] = np.inf  # the last row, in the short last chunk
    _user_error(_write(path, a), "row 29 contains NaN", check_finite_chunk_rows=8)
    a[29, 36] = 0
    assert open_activations(_write(path, a), check_finite_chunk_rows=8).n_rows == 30


class _RunsCode:
    """Unpickling this would run a shell command (that creates the marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pt_that_is_not_one_tensor_is_refused(tmp_path):
    path = tmp_path / "acts.pt"
    torch.save({"acts": torch.zeros(3, 2)}, path)
    _user_error(path, "holds a dict", "expected one torch.Tensor")
    torch.save([torch.zeros(3, 2)], path)
    _user_error(path, "holds a list", "expected one torch.Tensor")
    torch.save(torch.zeros(3, 2).to_sparse(), path)
    _user_error(path, "sparse", "expected a dense")
    # bridge.torch_load words this as a refusal (the fallback unpickler rejects the bytes); either way it is
    # a one-line UserError naming the file
    path.write_bytes(b"not a torch file at all")
    _user_error(path)
    path.write_bytes(b"")
    _user_error(path)


def test_pt_whose_pickle_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save(_RunsCode(marker), zipped)  # torch's zip format
    legacy = tmp_path / "evil.pth"
    with open(legacy, "wb") as fh:  # a bare pickle, which torch.load also accepts
        pickle.dump(_RunsCode(marker), fh, protocol=2)  # 2: what torch.load expects
    for path in (zipped, legacy):
        _user_error(path, "refused to load")
        assert not marker.exists()


def test_safetensors_with_not_exactly_one_tensor(tmp_path):
    path = tmp_path / "acts.safetensors"
    save_file({"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 2), np.float32)}, str(path))
    _user_error(path, "2 tensors", "'a'", "'b'", "expected exactly one")
    save_file({}, str(path))
    _user_error(path, "no tensors", "expected exactly one")
    save_file({f"t{i}": np.zeros((1, 1), np.float32) for i in range(8)}, str(path))
    message = _user_error(path, "8 tensors", "and 3 more")
    assert "'t7'" not in message


def test_broken_safetensors_files(tmp_path):
    path = tmp_path / "acts.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(200))
    _user_error(path, "not a readable .safetensors file")
    path.write_bytes(b"")
    _user_error(path, "not a readable .safetensors file")
    save_file({"acts": _matrix(10, 4)}, str(path))
    path.write_bytes(path.read_bytes()[:-12])
    _user_error(path, "not a readable .safetensors file")


def test_broken_npy_files(tmp_path):
    path = _write(tmp_path / "acts.npy", _matrix(10, 4))
    whole = path.read_bytes()
    path.write_bytes(whole[:-12])  # data cut short
    _user_error(path, "truncated .npy file")
    path.write_bytes(whole[:40])  # header cut short
    _user_error(path, "not a readable .npy file")
    path.write_bytes(b"")
    _user_error(path, "not a .npy file")
    path.write_bytes(b"garbage, not an array" * 4)
    _user_error(path, "not a .npy file")

    np.save(path, np.array([[1.0, None]], dtype=object), allow_pickle=True)
    _user_error(path, "dtype object", "expected float32")
    np.save(path, np.zeros((3, 2), dtype=[("x", np.float32), ("y", np.float32)]))
    _user_error(path, "structured", "expected float32")
    np.savez(tmp_path / "acts.npz", a=_matrix(3, 2))
    os.replace(tmp_path / "acts.npz", path)
    _user_error(path, "not a .npy file")


def test_fortran_ordered_npy_is_refused(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.asfortranarray(_matrix(10, 4)))
    _user_error(path, "Fortran", "expected C (row-major) order")
    np.save(path, np.asfortranarray(_matrix(10, 1)))  # one column: C and Fortran order coincide
    np.testing.assert_array_equal(open_activations(path).rows(0, 10), _matrix(10, 1))
