"""Activation sets of many files: a folder or glob of `.npy` / `.safetensors` shards, and SAELens's cached
activations (a Hugging Face `datasets` folder), each read as one (N, d) float32 ActivationFile.

`open_activations` here takes any source a user has: one file (jax_impl.data.activations.open_activations, whose
checks every shard gets too), a folder or a glob of shards, or a SAELens cache folder. Nothing is loaded whole:

- shards: the files, in natural order of their names (`part_2` before `part_10`), are one matrix whose rows are the
  first shard's, then the second's, ...; every shard must have the first's width (a shard that differs, or any
  defect of one, is one line naming that shard). A read of rows [a, b) reads only the shards it overlaps.
- SAELens cache (CacheActivationsRunner's output, `datasets.Dataset.save_to_disk`): one row per sequence, a column
  named after the hook of `Array2D(shape=(context_size, d_in))` and a `token_ids` column; its rows here are the
  tokens, sequence by sequence, (n_sequences * context_size, d_in). The memory-mapped Arrow files are read a slice
  of sequences at a time; `datasets` is imported only when such a folder is opened.

A set's fingerprint (what a checkpoint's identity records of its data) covers every shard, in order: another
shard, a shard more or fewer, or the shards reordered give another fingerprint; names and paths do not count, so a
moved set still resumes.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl.data import activations as single
from jax_impl.data.activations import ActivationFile
from jax_impl.errors import UserError

SHARD_SUFFIXES = (".npy", ".safetensors")  # shards are read lazily; torch files would be held in memory whole
SAELENS_MARKERS = ("dataset_info.json", "state.json")  # what save_to_disk writes beside the Arrow files
_SHARDED_FORMAT = "monosem-sharded-activations-fingerprint/1"
_SAELENS_FORMAT = "monosem-saelens-cache-fingerprint/1"
_GLOB_CHARS = re.compile(r"[*?\[]")
# The dtypes a SAELens cache may store that float32 holds exactly (cfg.dtype "float16" halves the cache's size).
_EXACT_IN_FLOAT32 = ("float32", "float16")


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:limit]


def open_activations(path: Path | str, *, width: int | None = None, check_finite: bool = True) -> ActivationFile:
    """Any activation source as one (N, d) float32 ActivationFile: a file (.npy, .safetensors, .pt/.pth: the
    single-file checks of jax_impl.data.activations.open_activations), a folder or glob of .npy/.safetensors shards
    (ShardedActivations), or a SAELens cached-activations folder (a `datasets` folder; SAELensCache).

    width: the width the rows must have. check_finite=False skips the NaN/inf scan (the caller scans the rows it
    reads: check_finite_rows). Every defect is a one-line UserError naming the file (the shard) at fault."""
    text = str(path)
    path = Path(path)
    if path.is_dir():
        if all((path / name).is_file() for name in SAELENS_MARKERS):
            source: ActivationFile = open_saelens_cache(path)
        else:
            source = open_shards(path, _folder_shards(path), check_finite=check_finite)
    elif not path.exists() and _GLOB_CHARS.search(text):
        source = open_shards(path, _glob_shards(text), check_finite=check_finite)
    else:
        return single.open_activations(path, width=width, check_finite=check_finite)
    if width is not None and source.width != width:
        raise UserError(f"{path}: activations have shape ({source.n_rows}, {source.width}), expected (N, {width})")
    if check_finite and isinstance(source, SAELensCache):
        single.check_finite_rows(source, 0, source.n_rows)
    return source


# ---------------------------------------------------------------------------------------------------------
# shards


class _ConcatReader:
    """Rows of several ActivationFiles one after another; `offsets` (S + 1,) are the first global row of each."""

    def __init__(self, shards: tuple[ActivationFile, ...], offsets: tuple[int, ...], width: int) -> None:
        self.shards = shards
        self.offsets = offsets
        self.width = width

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.width), np.float32)
        s = bisect_right(self.offsets, start) - 1
        row = start
        while row < stop:  # only the shards the range overlaps are touched
            first, last = self.offsets[s], self.offsets[s + 1]
            end = min(stop, last)
            out[row - start:end - start] = self.shards[s].rows(row - first, end - first)
            row, s = end, s + 1
        return out

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.width), np.float32)
        cuts = np.searchsorted(indices, np.asarray(self.offsets))  # indices[cuts[s]:cuts[s+1]] lie in shard s
        for s, shard in enumerate(self.shards):
            a, b = int(cuts[s]), int(cuts[s + 1])
            if a < b:
                out[a:b] = shard.take(indices[a:b] - self.offsets[s])
        return out


@dataclass(frozen=True)
class ShardedActivations(ActivationFile):
    """Shards (each an ActivationFile of `width` columns) read as one (n_rows, width) float32 matrix: shard 0's rows,
    then shard 1's, ... `path` is the folder or glob given; `offsets` (len(shards) + 1,) the first row of each shard
    and n_rows."""

    shards: tuple[ActivationFile, ...]
    offsets: tuple[int, ...]

    @cached_property
    def fingerprint(self) -> str:
        """A sha256 (hex) of the shards' fingerprints (ActivationFile.fingerprint), in order."""
        text = f"{_SHARDED_FORMAT} {len(self.shards)} shards\n" + "".join(f"{s.fingerprint}\n" for s in self.shards)
        return hashlib.sha256(text.encode()).hexdigest()

    def shard_rows(self) -> list[int]:
        """Each shard's row count, in order."""
        return [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def open_shards(path: Path, files: list[Path], *, check_finite: bool = True) -> ShardedActivations:
    """The shard files (in this order) as one ShardedActivations named `path`. Each shard gets the single-file checks
    (jax_impl.data.activations.open_activations) and must have the first shard's width; one shard is a set too."""
    if not files:
        raise UserError(f"{path}: no {' or '.join(SHARD_SUFFIXES)} shards found, expected activation files "
                        "(N_i, d) float32 (or a SAELens cache folder with dataset_info.json and state.json)")
    shards: list[ActivationFile] = []
    for file in files:
        if file.suffix.lower() not in SHARD_SUFFIXES:
            raise UserError(f"{file}: a {file.suffix or '(no suffix)'!r} shard, expected {' or '.join(SHARD_SUFFIXES)} "
                            "(torch files are read whole; convert with np.save(path, t.numpy()))")
        shard = single.open_activations(file, check_finite=check_finite)
        if shards and shard.width != shards[0].width:
            raise UserError(f"{file}: activations have shape ({shard.n_rows}, {shard.width}), expected (N, "
                            f"{shards[0].width}) like the first shard {shards[0].path.name}")
        shards.append(shard)
    offsets = tuple(int(v) for v in np.cumsum([0] + [s.n_rows for s in shards]))
    width = shards[0].width
    return ShardedActivations(path, offsets[-1], width, _ConcatReader(tuple(shards), offsets, width), tuple(shards),
                              offsets)


def _natural_key(path: Path) -> list[Any]:
    # Numbers compare as numbers (shard_2 before shard_10), then the name itself breaks ties.
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name)] + [path.name]


def _folder_shards(folder: Path) -> list[Path]:
    """The folder's activation files (not its subfolders), in natural order; a torch file among them is refused."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    torch_files = [p for p in files if p.suffix.lower() in (".pt", ".pth")]
    if torch_files:
        raise UserError(f"{torch_files[0]}: a torch file among the shards of {folder}, expected only "
                        f"{' or '.join(SHARD_SUFFIXES)} shards (torch files are read whole; convert with "
                        "np.save(path, t.numpy()))")
    return sorted((p for p in files if p.suffix.lower() in SHARD_SUFFIXES), key=_natural_key)


def _glob_shards(pattern: str) -> list[Path]:
    files = [Path(p) for p in globbing.glob(pattern) if Path(p).is_file()]
    if not files:
        raise UserError(f"{pattern}: no files match, expected a file, a folder or a glob of "
                        f"{' or '.join(SHARD_SUFFIXES)} shards")
    return sorted(files, key=lambda p: (_natural_key(p.parent), _natural_key(p)))


def check_finite_rows(source: ActivationFile, start: int, stop: int) -> None:
    """The NaN/inf scan of rows [start, stop) of any source (UserError naming the first bad row; for shards the shard
    and its own row number)."""
    if not isinstance(source, ShardedActivations):
        single.check_finite_rows(source, start, stop)
        return
    for s, shard in enumerate(source.shards):
        first, last = max(start, source.offsets[s]), min(stop, source.offsets[s + 1])
        if first < last:
            single.check_finite_rows(shard, first - source.offsets[s], last - source.offsets[s])


def shard_assignment(source: ActivationFile, num_processes: int, process_id: int) -> tuple[int, int] | None:
    """The rows [start, stop) of whole shards process `process_id` of `num_processes` reads, where the set has at
    least one shard per process (None otherwise: the caller splits rows evenly). The shards are dealt out in
    order, as contiguous groups of balanced row counts (each group ends at the shard boundary nearest its even
    share), so no shard is read by two processes and the processes' rows in order are the set's rows in order."""
    if not isinstance(source, ShardedActivations) or len(source.shards) < num_processes:
        return None
    offsets = np.asarray(source.offsets)
    n_shards = len(source.shards)
    # Boundary p (between groups p-1 and p) is the shard boundary nearest p * N / P, kept strictly increasing and
    # leaving at least one shard for each later group.
    bounds = [0]
    for p in range(1, num_processes):
        target = p * source.n_rows / num_processes
        b = int(np.argmin(np.abs(offsets - target)))
        b = min(max(b, bounds[-1] + 1), n_shards - (num_processes - p))
        bounds.append(b)
    bounds.append(n_shards)
    return int(offsets[bounds[process_id]]), int(offsets[bounds[process_id + 1]])


# ---------------------------------------------------------------------------------------------------------
# SAELens cached activations (a `datasets` folder)


class _SAELensReader:
    """Token rows of one Array2D column (sequences x context_size x width) of memory-mapped Arrow data."""

    def __init__(self, column: Any, context_size: int, width: int) -> None:
        self.column = column  # a pyarrow ChunkedArray of the extension type; slicing it reads nothing
        self.context_size = context_size
        self.width = width

    def _sequences(self, first: int, count: int) -> np.ndarray:
        """Sequences [first, first + count) as (count * context_size, width) float32."""
        parts = []
        for chunk in self.column.slice(first, count).chunks:
            storage = getattr(chunk, "storage", chunk)  # list<list<float>>: flatten twice to the values
            parts.append(storage.flatten().flatten().to_numpy(zero_copy_only=False))
        values = np.concatenate(parts) if len(parts) != 1 else parts[0]
        return values.reshape(count * self.context_size, self.width)

    def read(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, self.width), np.float32)
        ctx = self.context_size
        first, last = start // ctx, (stop - 1) // ctx + 1
        block = self._sequences(first, last - first)[start - first * ctx:stop - first * ctx]
        return np.array(block, dtype=np.float32, order="C", copy=True)

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.width), np.float32)
        if len(indices) == 0:
            return out
        # One read per run of consecutive sequences holding the rows asked for.
        seqs = indices // self.context_size
        breaks = np.flatnonzero(np.diff(seqs) > 1) + 1
        bounds = np.concatenate(([0], breaks, [len(indices)]))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            first = int(seqs[a])
            block = self._sequences(first, int(seqs[b - 1]) + 1 - first)
            out[a:b] = block[indices[a:b] - first * self.context_size]
        return out


@dataclass(frozen=True)
class SAELensCache(ActivationFile):
    """A SAELens cached-activations folder's tokens as (n_rows = sequences * context_size, width) float32 rows, in
    the dataset's order (sequence by sequence). `hook` is the column read, `data_bytes` the Arrow files' size."""

    hook: str
    context_size: int
    data_bytes: int

    @cached_property
    def fingerprint(self) -> str:
        """The single-file fingerprint (jax_impl.data.activations.sampled_fingerprint) over the Arrow files' bytes."""
        return single.sampled_fingerprint(self, self.data_bytes, f"{_SAELENS_FORMAT} {self.hook} x{self.context_size}")


def open_saelens_cache(folder: Path) -> SAELensCache:
    """A SAELens cached-activations folder (CacheActivationsRunner's, written by `Dataset.save_to_disk`): its one
    Array2D column (the hook's activations, (context_size, d_in) per sequence) as token rows. UserError naming the
    folder where `datasets` is missing, the folder does not load, or it has no (or several) Array2D columns of a
    float dtype float32 holds exactly."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{folder}: a Hugging Face datasets folder (SAELens's cached activations), which needs the "
                        "`datasets` package: pip install datasets") from None
    try:
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
        features = info["features"]
        if not isinstance(features, dict):
            raise TypeError("features is not an object")
    except Exception as e:  # noqa: BLE001 - unreadable, not JSON, or another shape: all one message
        raise UserError(f"{folder}/dataset_info.json: not a datasets folder's info ({_first_line(e)}), "
                        "expected the file Dataset.save_to_disk writes") from None
    columns = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Array2D"]
    if len(columns) != 1:
        found = ", ".join(repr(c) for c in columns) if columns else "none"
        raise UserError(f"{folder}: {len(columns)} Array2D columns ({found}), expected exactly one: the hook's "
                        "activations of a SAELens cache, (context_size, d_in) per sequence")
    hook = columns[0]
    dtype = str(features[hook].get("dtype"))
    if dtype not in _EXACT_IN_FLOAT32:
        raise UserError(f"{folder}: column {hook!r} has dtype {dtype}, expected float32 (or float16, read exactly "
                        "as float32)")
    try:
        dataset = datasets.load_from_disk(str(folder))
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"holds a {type(dataset).__name__} (several splits), expected one Dataset")
        if dataset._indices is not None:  # noqa: SLF001 - an indices mapping would reorder rows; save_to_disk flattens it
            dataset = dataset.flatten_indices()
        column = dataset.data.table.column(hook)
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow fail in many ways on a damaged folder
        raise UserError(f"{folder}: not a readable datasets folder ({_first_line(e)}), expected SAELens's "
                        "cached activations (Dataset.save_to_disk)") from None
    shape = features[hook].get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v >= 1 for v in shape)):
        raise UserError(f"{folder}: column {hook!r} has shape {shape}, expected (context_size, d_in), both >= 1")
    context_size, width = shape
    n_sequences = len(column)
    if n_sequences < 1:
        raise UserError(f"{folder}: activations have 0 rows, expected at least 1")
    data_bytes = sum(p.stat().st_size for p in folder.glob("*.arrow"))
    return SAELensCache(folder, n_sequences * context_size, width, _SAELensReader(column, context_size, width), hook,
                        context_size, data_bytes)
