"""Read a user's activation matrix (the SAE's training data) from .npy, .pt/.pth or .safetensors.

An activation file holds one (N, d) float32 matrix: N samples of a d-wide hidden layer. Files can be far
larger than RAM, so nothing here loads a whole file that can be read lazily: `.npy` is memory-mapped and
`.safetensors` is read a slice at a time; only torch files are held in memory, because torch.load has no
safe lazy mode (its mmap path still unpickles, and weights_only=True is the only safe way to unpickle).

Every defect in the file (wrong suffix, dtype, rank, empty, NaN/inf, truncated, not the claimed format, a
pickle that would run code) is a one-line `UserError` that starts with the path and says what was expected.
What a file declares is checked before anything is read or allocated at its size: a `.npy` header's shape
against the file's size (in Python integers), a `.safetensors` header by bridge.safetensors_header, a torch
tensor's strides and storage by bridge.torch_load (a stride-0 view of 10**12 rows is refused, not scanned).
Misuse by calling code (a bad row range, chunk size or index) is a ValueError/IndexError/TypeError instead:
those are bugs, not bad input.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from safetensors import safe_open

from jax_impl.checks import require_torch
from jax_impl.errors import UserError

ACTIVATION_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")

# safetensors' dtype codes, spelled as numpy names in messages (users write the file from numpy/torch).
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}

# How many tensor names a "wrong number of tensors" message lists before it says "... and N more".
_MAX_NAMES_SHOWN = 5


class _Reader(Protocol):
    """What an ActivationFile reads through; bounds are checked by the caller."""

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a fresh C-contiguous (stop-start, d) float32 array."""
        ...

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        """Rows at strictly increasing int64 `indices` as a fresh (len, d) float32 array."""
        ...


class _ArrayReader:
    """Rows of an in-memory ndarray or an np.memmap (whose pages are read only when touched)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def read(self, start: int, stop: int) -> np.ndarray:
        # np.array copies, so the caller never holds a view that pins the memmap (or aliases a torch
        # tensor), and dtype= byte-swaps a big-endian float32 file to native order on the way.
        return np.array(self.array[start:stop], dtype=np.float32, order="C", copy=True)

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        # Fancy indexing already copies; sorted indices make a memmap read its pages front to back.
        return np.ascontiguousarray(self.array[indices], dtype=np.float32)


class _SafetensorsReader:
    """Rows of the single tensor of a .safetensors file, read slice by slice.

    The file is reopened for each read rather than a handle being kept: opening costs one small header
    parse, and holding no handle means an ActivationFile never leaks a file descriptor or an mmap.
    """

    def __init__(self, path: Path, name: str, width: int) -> None:
        self.path = path
        self.name = name
        self.width = width

    def read(self, start: int, stop: int) -> np.ndarray:
        with safe_open(self.path, framework="numpy") as f:
            block = f.get_slice(self.name)[start:stop]
        return np.ascontiguousarray(block, dtype=np.float32)

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.width), dtype=np.float32)
        if len(indices) == 0:
            return out
        # One slice per run of consecutive indices: a random sample of a few rows costs a few small reads,
        # and a dense range costs one read, instead of one read per row or one read of the whole span.
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        bounds = np.concatenate(([0], breaks, [len(indices)]))
        with safe_open(self.path, framework="numpy") as f:
            sl = f.get_slice(self.name)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                out[a:b] = sl[int(indices[a]) : int(indices[b - 1]) + 1]
        return out


@dataclass(frozen=True)
class ActivationFile:
    """A validated (n_rows, width) float32 activation matrix on disk (or, for torch files, in memory).

    Build it with `open_activations`; it is already checked (dtype, rank, non-empty, all finite), so every
    row read from it is a finite float32 vector of length `width`.
    """

    path: Path
    n_rows: int
    width: int
    # The backing store (an ndarray, an np.memmap, or a safetensors slice reader); private because the
    # kind differs per format and callers should only read through rows()/take().
    _reader: _Reader = field(repr=False, compare=False)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a fresh C-contiguous (stop-start, width) float32 array (never a view)."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"rows({start}, {stop}) is outside 0 <= start <= stop <= {self.n_rows}")
        return self._reader.read(start, stop)

    @cached_property
    def fingerprint(self) -> str:
        """A sha256 (hex) of what identifies the file's content, at a cost independent of its size: the file's
        size in bytes, its shape, and the float32 values of its first and last rows and of FINGERPRINT_ROWS rows
        drawn over it with a fixed seed (read through `take`: a few small reads of any file). Computed once per
        opened file (a sweep records it in every configuration's identity).

        What a checkpoint's identity records of its training data (jax_impl.training.checkpoints): a resume on another
        file of the same name and shape is told apart unless the two agree on every sampled row, which data that
        differs anywhere but in a few rows does not. Independent of the path, so a moved file still resumes."""
        return sampled_fingerprint(self, self.path.stat().st_size)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at integer `indices` (len,), in the order given (sorted or not, repeats allowed).

        Returns a fresh (len, width) float32 array. The rows are read in sorted order, each distinct row once.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise ValueError(f"take() needs a 1-D array of row indices, got shape {idx.shape}")
        if idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"take() needs integer row indices, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"take(): row indices must lie in [0, {self.n_rows}), got [{idx.min()}, {idx.max()}]")
        unique, inverse = np.unique(idx, return_inverse=True)
        return np.ascontiguousarray(self._reader.read_sorted(unique)[inverse.reshape(-1)])


class _PairedReader:
    """Rows of two readers side by side: each read reads both and concatenates them (pair_activations)."""

    def __init__(self, left: _Reader, right: _Reader) -> None:
        self.left = left
        self.right = right

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.concatenate((self.left.read(start, stop), self.right.read(start, stop)), axis=1)

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        return np.concatenate((self.left.read_sorted(indices), self.right.read_sorted(indices)), axis=1)


@dataclass(frozen=True)
class PairedActivations(ActivationFile):
    """A transcoder's training data: an input file's rows and a target file's rows side by side, (n_rows,
    inputs.width + targets.width) float32, read lazily from both (pair_activations). `path` is the input file's
    (messages about the rows name it); the fingerprint covers both files' content."""

    inputs: ActivationFile
    targets: ActivationFile

    @cached_property
    def fingerprint(self) -> str:
        """A sha256 (hex) of the two files' fingerprints (ActivationFile.fingerprint), in order: another input
        or another target file, or the two swapped, give another one."""
        text = f"{_PAIRED_FORMAT}\n{self.inputs.fingerprint}\n{self.targets.fingerprint}\n"
        return hashlib.sha256(text.encode()).hexdigest()


def pair_activations(inputs: ActivationFile, targets: ActivationFile) -> PairedActivations:
    """The rows of `inputs` (N, D_in) and `targets` (N, D_out) side by side, (N, D_in + D_out) float32, read
    lazily (each read reads the same rows of both files): what a transcoder trains on (sae_trainer.fit).
    UserError (one line naming both files and their row counts) where the files' row counts differ."""
    if inputs.n_rows != targets.n_rows:
        raise UserError(f"{targets.path}: {targets.n_rows} rows, but {inputs.path} has {inputs.n_rows}: a "
                        "transcoder's target file must hold one row per row of its input file, in the same order")
    return PairedActivations(inputs.path, inputs.n_rows, inputs.width + targets.width,
                             _PairedReader(inputs._reader, targets._reader), inputs, targets)


def open_activations(path: Path | str, *, width: int | None = None, check_finite_chunk_rows: int = 65536,
                     check_finite: bool = True) -> ActivationFile:
    """Open and validate an activation matrix: an (N, d) float32 array with N >= 1, d >= 1 (d == width where
    given: the hook's width a run's activations must have), all finite.

    `.npy` is memory-mapped, `.safetensors` is read lazily, `.pt`/`.pth` (one tensor, loaded with
    weights_only=True) is held in memory. The NaN/inf scan reads `check_finite_chunk_rows` rows at a time,
    so its peak memory is one chunk, not the file. Any defect raises a one-line UserError naming the path.
    check_finite=False skips that scan: the caller scans the rows it reads (check_finite_rows), as a process
    of a multi-process run does with its shard.
    """
    if int(check_finite_chunk_rows) < 1:
        raise ValueError(f"check_finite_chunk_rows must be >= 1, got {check_finite_chunk_rows}")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an activation file ({_suffix_list()})")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        source = _open_npy(path)
    elif suffix in (".pt", ".pth"):
        source = _open_torch(path)
    elif suffix == ".safetensors":
        source = _open_safetensors(path)
    else:
        raise UserError(
            f"{path}: unknown activation file type {path.suffix or '(no suffix)'!r}, expected one of {_suffix_list()}"
        )
    if width is not None and source.width != width:
        raise UserError(f"{path}: activations have shape ({source.n_rows}, {source.width}), expected (N, {width})")
    if check_finite:
        _check_finite(source, int(check_finite_chunk_rows))
    return source


def read_activations(path: Path | str, *, width: int | None = None) -> np.ndarray:
    """Every row of an activation file (open_activations' checks), in memory: (N, d) float32."""
    source = open_activations(path, width=width)
    return source.rows(0, source.n_rows)


def check_finite_rows(source: ActivationFile, start: int, stop: int, chunk_rows: int = 65536) -> None:
    """The NaN/inf scan of open_activations over rows [start, stop) only (UserError naming the first bad row)."""
    _check_finite(source, chunk_rows, start, stop)


def iter_chunks(source: ActivationFile, chunk_rows: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Every row exactly once, as fresh (<= chunk_rows, width) float32 chunks, in a block order from `rng`.

    The rows are cut into contiguous blocks of `chunk_rows` (the last may be shorter) and the blocks are
    visited in a random permutation. Rows inside a block stay in file order: the trainer shuffles within a
    chunk on device, and contiguous blocks are what keep each read sequential and peak memory at one chunk.
    """
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n_blocks = -(-source.n_rows // chunk_rows)
    # The permutation is drawn when the generator is created (not at the first next()), so the rng's state
    # afterwards does not depend on how far the caller iterates.
    order = rng.permutation(n_blocks)
    return _chunks(source, chunk_rows, order)


def _chunks(source: ActivationFile, chunk_rows: int, order: np.ndarray) -> Iterator[np.ndarray]:
    for block in order:
        start = int(block) * chunk_rows
        yield source.rows(start, min(start + chunk_rows, source.n_rows))


def sample_rows(source: ActivationFile, n: int, rng: np.random.Generator) -> np.ndarray:
    """`min(n, n_rows)` distinct rows drawn uniformly without replacement, as a (k, width) float32 array.

    The rows come back in the random order drawn (so any prefix is itself a uniform sample); they are
    read in sorted order through `take`, touching only those rows of the file.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    k = min(n, source.n_rows)
    # Generator.choice without replacement avoids materialising a full permutation when k << n_rows.
    indices = rng.choice(source.n_rows, size=k, replace=False)
    return source.take(indices)


FINGERPRINT_ROWS = 64  # rows sampled over the file beside its first and last
_FINGERPRINT_SEED = 0x5EED  # fixed: the same file always gives the same sample, hence the same fingerprint
_FINGERPRINT_FORMAT = "monosem-activations-fingerprint/1"
_PAIRED_FORMAT = "monosem-paired-activations-fingerprint/1"


def sampled_fingerprint(source: ActivationFile, size_bytes: int, kind: str = _FINGERPRINT_FORMAT) -> str:
    """ActivationFile.fingerprint's sha256 (hex) of `kind`, the data's size in bytes, the shape, and the rows sampled
    with the fixed seed (a source kept in several files, jax_impl.data.activation_sets, passes their total size)."""
    n = source.n_rows
    sampled = np.random.default_rng(_FINGERPRINT_SEED).choice(n, size=min(FINGERPRINT_ROWS, n), replace=False)
    indices = np.unique(np.concatenate(([0, n - 1], sampled)).astype(np.int64))
    digest = hashlib.sha256(f"{kind} {size_bytes} bytes, {n} x {source.width} float32\n".encode())
    digest.update(indices.astype("<i8").tobytes())
    digest.update(source.take(indices).astype("<f4").tobytes())
    return digest.hexdigest()


def fingerprint(source: ActivationFile) -> str:
    """`source.fingerprint`: a sha256 (hex) of what identifies the file's content (ActivationFile.fingerprint)."""
    return source.fingerprint


# ---------------------------------------------------------------------------------------------------------
# per-format openers


def _suffix_list() -> str:
    return ", ".join(ACTIVATION_SUFFIXES)


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:limit]


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise UserError(f"{path}: activations have shape {tuple(shape)}, expected a 2-D (N, d) matrix")
    n_rows, width = int(shape[0]), int(shape[1])
    if n_rows < 1:
        raise UserError(f"{path}: activations have 0 rows, expected at least 1")
    if width < 1:
        raise UserError(f"{path}: activations have shape {tuple(shape)} (width 0), expected at least 1 column")
    return n_rows, width


def _is_float32(dtype: np.dtype) -> bool:
    # Either byte order: a big-endian float32 file holds float32 values; reads convert it to native order.
    return dtype.kind == "f" and dtype.itemsize == 4 and dtype.fields is None and dtype.subdtype is None


def _npy_dtype_name(dtype: np.dtype) -> str:
    return str(dtype) if dtype.fields is None else f"structured {dtype}"


def _peek_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a .npy header, or None where numpy's own loader should judge."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
        except (ValueError, EOFError) as e:
            message = f"{path}: not a .npy file ({_first_line(e)}), expected an array written by np.save"
            raise UserError(message) from None
        # 3.0 differs from 2.0 only in its header's encoding (utf-8 field names of a structured dtype): read as
        # 2.0, such a name comes out garbled, and a structured dtype is refused whatever its names.
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                   (3, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:  # an unknown version: np.load refuses it with its own message
            return None
        try:
            shape, _fortran, dtype = readers[version](fh)
        except Exception as e:  # noqa: BLE001 - numpy parses the header as Python literals: ValueError, EOFError, SyntaxError, tokenize.TokenError, ...
            message = f"{path}: not a readable .npy file (broken or truncated header: {_first_line(e)})"
            raise UserError(message) from None
        return tuple(shape), np.dtype(dtype), fh.tell()


def _open_npy(path: Path) -> ActivationFile:
    # The header is checked before np.load so that an object array, an empty matrix or a truncated file gets
    # a message saying what is wrong, instead of the memmap's own error ("mmap length is greater ..."); and
    # its size is computed in Python integers, so that a header claiming (2**32, 2**32) is "truncated", not an
    # overflow (numpy's memmap multiplies the shape in int64 and prints a RuntimeWarning before failing).
    peeked = _peek_npy_header(path)
    if peeked is not None:
        shape, dtype, offset = peeked
        _check_npy_dtype(path, dtype)
        _check_shape(path, shape)
        need = offset + math.prod(int(n) for n in shape) * dtype.itemsize
        have = path.stat().st_size
        if have < need:
            raise UserError(
                f"{path}: truncated .npy file: its header describes a {shape} {dtype} array "
                f"({need} bytes with the header), but the file has {have} bytes"
            )
    try:
        # mmap_mode="r": pages are read when touched, so a file larger than RAM still opens; allow_pickle=False
        # because a .npy with pickled objects could run code. A warning numpy would print becomes the error
        # below instead (one line on this path, never a warning before it).
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in numpy's reader in many ways (see the header above)
        raise UserError(f"{path}: not a readable .npy file (truncated or another format: {_first_line(e)})") from None
    if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for zip archives (.npz renamed)
        raise UserError(f"{path}: holds an .npz archive, expected a single array written by np.save")
    _check_npy_dtype(path, array.dtype)
    n_rows, width = _check_shape(path, array.shape)
    if not array.flags.c_contiguous:
        # Refused rather than handled: a row of a column-major file is scattered across the whole file, so
        # every chunk read would touch every page of it.
        raise UserError(
            f"{path}: activations are stored in Fortran (column-major) order, expected C (row-major) order "
            "(rewrite with np.save(path, np.ascontiguousarray(a)))"
        )
    return ActivationFile(path, n_rows, width, _ArrayReader(array))


def _check_npy_dtype(path: Path, dtype: np.dtype) -> None:
    if not _is_float32(dtype):
        raise UserError(
            f"{path}: activations have dtype {_npy_dtype_name(dtype)}, expected float32 "
            "(convert with a.astype(np.float32))"
        )


def _open_torch(path: Path) -> ActivationFile:
    # Imported here, not at the top: bridge pulls in flax and the model zoo, which readers of .npy files do
    # not need. torch_load is torch.load(weights_only=True) with one-line errors, and it has checked the
    # tensor's declared sizes against its storage (bridge.check_tensor: no stride-0 view of 10**12 rows).
    from jax_impl.interop.bridge import torch_load

    obj = torch_load(path)  # a one-line UserError where torch is not installed
    torch = require_torch(str(path))
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"{path}: holds a {type(obj).__name__}, expected one torch.Tensor (torch.save(tensor, path))")
    if obj.is_meta:  # a shape without data (device "meta")
        raise UserError(f"{path}: holds a meta tensor, expected a dense tensor with data")
    if obj.layout != torch.strided or obj.is_quantized:
        kind = "quantized" if obj.is_quantized else str(obj.layout).removeprefix("torch.")
        raise UserError(f"{path}: holds a {kind} tensor, expected a dense (strided) tensor (convert with t.to_dense())")
    if obj.dtype != torch.float32:
        raise UserError(
            f"{path}: activations have dtype {obj.dtype}, expected torch.float32 (convert with t.float())"
        )
    n_rows, width = _check_shape(path, tuple(obj.shape))
    try:
        array = obj.detach().numpy()  # shares the tensor's memory; rows() copies out of it
    except Exception as e:  # noqa: BLE001 - odd tensors (e.g. with a storage numpy cannot wrap) fail variously
        message = f"{path}: cannot read the tensor as an array ({_first_line(e)}), expected a plain float32 tensor"
        raise UserError(message) from None
    return ActivationFile(path, n_rows, width, _ArrayReader(array))


def _open_safetensors(path: Path) -> ActivationFile:
    from jax_impl.interop.bridge import safetensors_header

    # The header's shapes, dtypes and data offsets against each other and the file's size, before safetensors
    # maps anything (the file is read a slice at a time, so it is not held to the memory budget).
    safetensors_header(path, in_memory=False)
    try:
        with safe_open(path, framework="numpy") as f:
            names = list(f.keys())
            if len(names) != 1:
                shown = ", ".join(repr(n) for n in names[:_MAX_NAMES_SHOWN])
                more = f" and {len(names) - _MAX_NAMES_SHOWN} more" if len(names) > _MAX_NAMES_SHOWN else ""
                found = f"{len(names)} tensors ({shown}{more})" if names else "no tensors"
                raise UserError(f"{path}: holds {found}, expected exactly one (N, d) float32 tensor")
            sl = f.get_slice(names[0])
            dtype, shape = sl.get_dtype(), tuple(int(s) for s in sl.get_shape())
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ... for garbage or truncated files
        message = f"{path}: not a readable .safetensors file (truncated or another format: {_first_line(e)})"
        raise UserError(message) from None
    if dtype != "F32":
        raise UserError(
            f"{path}: activations {names[0]!r} have dtype {dtype} ({_SAFETENSORS_DTYPES.get(dtype, 'unknown')}), "
            "expected F32 (float32; convert with a.astype(np.float32))"
        )
    n_rows, width = _check_shape(path, shape)
    return ActivationFile(path, n_rows, width, _SafetensorsReader(path, names[0], width))


def _check_finite(source: ActivationFile, chunk_rows: int, first: int = 0, last: int | None = None) -> None:
    """Refuse NaN/inf, naming the first bad row; reads one chunk at a time so memory stays bounded."""
    last = source.n_rows if last is None else last
    for start in range(first, last, chunk_rows):
        stop = min(start + chunk_rows, last)
        finite_rows = np.isfinite(source.rows(start, stop)).all(axis=1)
        if not finite_rows.all():
            row = start + int(np.argmin(finite_rows))
            raise UserError(f"{source.path}: row {row} contains NaN or infinite values, expected finite activations")
