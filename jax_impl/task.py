"""The pointer task: generation (seeded, vectorised, on device) and the upstream xlsx split format.

An input is `y_dim` columns of `x_dim` integers, concatenated. In each column the first `x_dim - 1`
entries are values in 0..9 and the last is a pointer into them (0..x_dim-2). For the default 5x2 shape
the row is `[a0 a1 a2 a3 p1  b0 b1 b2 b3 p2]` and the target is `|a[p1] - b[p2]|`; with more columns only
the first and the last take part, exactly as the seed's generator does.

The xlsx format is the upstream one: one sheet, a header row `input_list | output_list`, cells holding
Python list literals as text (`"[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]"`, `"[8]"`).
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from xml.etree.ElementTree import ParseError

import jax
import jax.numpy as jnp
import numpy as np
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from jax_impl import xlsx
from jax_impl.errors import UserError

MAX_VALUE = 9
INPUT_COLUMN = "input_list"
TARGET_COLUMN = "output_list"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskShape:
    x_dim: int = 5
    y_dim: int = 2

    @property
    def input_dim(self) -> int:
        return self.x_dim * self.y_dim

    @property
    def max_pointer(self) -> int:
        return self.x_dim - 2


@dataclass(frozen=True)
class Split:
    """One split of the task. `inputs` (N, D) int32, `targets` (N,) float32."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def concat_splits(splits: list[Split]) -> Split:
    """The rows of several splits, in order, as one Split."""
    return Split(np.concatenate([s.inputs for s in splits]), np.concatenate([s.targets for s in splits]))


def split_filename(split: str) -> str:
    return f"mlp_{split}.xlsx"


def pointer_targets(inputs, shape: TaskShape = TaskShape()):
    """`|first[p_first] - last[p_last]|` for each row. inputs (N, D) int (numpy or jax) -> (N,) int."""
    xp = jnp if isinstance(inputs, jax.Array) else np
    grid = inputs.reshape(-1, shape.y_dim, shape.x_dim)
    first, last = grid[:, 0], grid[:, -1]
    a = xp.take_along_axis(first, first[:, -1:], axis=1)[:, 0]
    b = xp.take_along_axis(last, last[:, -1:], axis=1)[:, 0]
    return xp.abs(a - b)


def sample_pointer_task(key: jax.Array, n: int, shape: TaskShape = TaskShape()) -> tuple[jax.Array, jax.Array]:
    """Draw `n` task rows on device. Returns inputs (n, D) int32 and targets (n,) int32.

    Traceable (usable inside jit/scan), so online training can draw fresh rows every step.
    """
    value_key, pointer_key = jax.random.split(key)
    values = jax.random.randint(value_key, (n, shape.y_dim, shape.x_dim - 1), 0, MAX_VALUE + 1)
    pointers = jax.random.randint(pointer_key, (n, shape.y_dim, 1), 0, shape.max_pointer + 1)
    inputs = jnp.concatenate([values, pointers], axis=-1).reshape(n, shape.input_dim)
    return inputs, pointer_targets(inputs, shape)


# This program runs once per pipeline, on 10,000 rows: XLA's compile time is most of its cost, and LLVM's
# optimisations double it. It is integer arithmetic only, so the rows are bit-identical at any level.
_GENERATOR_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@partial(jax.jit, static_argnums=(1, 2, 3), compiler_options=_GENERATOR_COMPILER_OPTIONS)
def _sample_splits(key: jax.Array, count: int, n: int, shape: TaskShape) -> tuple[jax.Array, jax.Array]:
    """`sample_pointer_task(fold_in(key, i), n)` for i < count: inputs (count, n, D), targets (count, n) int32."""
    return jax.vmap(lambda i: sample_pointer_task(jax.random.fold_in(key, i), n, shape))(jnp.arange(count))


def generate_splits(key: jax.Array, sizes: dict[str, int], shape: TaskShape = TaskShape()) -> dict[str, Split]:
    """Independent splits drawn from one key, in the order of `sizes`: split i is `sample_pointer_task(fold_in(key, i))`.

    All splits come from one compiled call at the largest size, cut to each split's size. That is the same
    as drawing each at its own size (JAX's threefry is partitionable: a row's random bits depend on its
    index, not on how many rows are drawn) and compiles once instead of once per size, which was most
    of the data stage's time (tests/test_task.py checks the equality).
    """
    inputs, targets = _sample_splits(key, len(sizes), max(sizes.values()), shape)
    inputs, targets = np.asarray(inputs, np.int32), np.asarray(targets, np.float32)
    return {name: Split(inputs[i, :n], targets[i, :n]) for i, (name, n) in enumerate(sizes.items())}


def write_split(path: Path | str, split: Split) -> None:
    """Write one split in the upstream xlsx format (atomically): sheet `Sheet1`, the header, then per row
    the two list literals as text, as pandas' `to_excel` writes them."""

    def rows() -> Iterator[str]:
        yield xlsx.sheet_start()
        yield f'<row r="1">{xlsx.text_cell(INPUT_COLUMN)}{xlsx.text_cell(TARGET_COLUMN)}</row>'
        for r, (row, target) in enumerate(zip(split.inputs.tolist(), split.targets.tolist()), start=2):
            yield f'<row r="{r}">{xlsx.text_cell(str(row))}{xlsx.text_cell(str([int(target)]))}</row>'
        yield xlsx.SHEET_END

    xlsx.write_workbook(path, "Sheet1", rows())


_INT32 = 2**31 - 1  # the split is held as int32 inputs / float32 targets; anything larger is surely wrong


def _shown(text: str, limit: int = 80) -> str:
    """repr(text), cut to `limit` characters: a message stays one short line whatever the cell holds."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _parse_int_list(text: object, path: Path, row: int, column: str, length: int, example: str) -> list[int]:
    where = f"{path}: row {row}, column {column}"
    expected = f"expected a list of {length} integer{'s' if length > 1 else ''} like {example!r}"
    if not isinstance(text, str):
        raise UserError(f"{where}: {expected}, got {repr(text)[:80]}")
    try:
        # A Python list of ints is valid JSON, and json cannot execute anything (unlike eval).
        values = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise UserError(f"{where}: {expected}, got {_shown(text)} (not a list literal)") from None
    if not isinstance(values, list):
        raise UserError(f"{where}: {expected}, got {_shown(text)} (not a list)")
    if len(values) != length:
        raise UserError(f"{where}: {expected}, got {len(values)} element(s) in {_shown(text)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where}: {expected}, got non-number {_shown(v) if isinstance(v, str) else repr(v)[:40]} in {_shown(text)}")
        if not math.isfinite(v):
            raise UserError(f"{where}: {expected}, got non-finite {v!r} in {_shown(text)}")
        if v != int(v):
            raise UserError(f"{where}: {expected}, got non-integer {v!r} in {_shown(text)}")
        if abs(v) > _INT32:
            raise UserError(f"{where}: {expected}, got out-of-range {str(v)[:24]} in {_shown(text)}")
        out.append(int(v))
    return out


def first_invalid_input(inputs: np.ndarray, shape: TaskShape) -> tuple[int, str] | None:
    """(row index, what is wrong) for the first row with a value or pointer out of range, else None.

    inputs (N, D) int.
    """
    grid = inputs.reshape(-1, shape.y_dim, shape.x_dim)
    value_bad = (grid[:, :, :-1] < 0) | (grid[:, :, :-1] > MAX_VALUE)
    pointer_bad = (grid[:, :, -1] < 0) | (grid[:, :, -1] > shape.max_pointer)
    for bad, what, allowed in ((value_bad, "value", f"0..{MAX_VALUE}"), (pointer_bad, "pointer", f"0..{shape.max_pointer}")):
        if bad.any():
            r, col, *pos = np.argwhere(bad)[0]
            position = col * shape.x_dim + (pos[0] if pos else shape.x_dim - 1)
            return int(r), f"{what} at position {position} is {inputs[r, position]}, expected {allowed}"
    return None


def _check_split(split: Split, row_numbers: np.ndarray, shape: TaskShape, path: Path) -> None:
    """Range and target checks over the whole split at once; the first offending row is reported."""
    invalid = first_invalid_input(split.inputs, shape)
    if invalid:
        r, problem = invalid
        raise UserError(f"{path}: row {row_numbers[r]}, column {INPUT_COLUMN}: {problem}")
    expected = pointer_targets(split.inputs, shape)
    wrong = np.flatnonzero(expected != split.targets)
    if wrong.size:
        r = wrong[0]
        raise UserError(
            f"{path}: row {row_numbers[r]}: {TARGET_COLUMN} [{int(split.targets[r])}] contradicts {INPUT_COLUMN}: "
            f"the task gives {int(expected[r])} (|first column[its pointer] - last column[its pointer]|); "
            f"{wrong.size} row(s) disagree"
        )


def read_split(path: Path | str, shape: TaskShape = TaskShape()) -> Split:
    """Read and validate an upstream-format xlsx split; any defect raises UserError naming row and column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected an .xlsx split with columns {INPUT_COLUMN}, {TARGET_COLUMN})")
    # Our own handle, closed whatever happens: openpyxl leaves the file open when it fails half-way.
    with open(path, "rb") as fh:
        try:
            wb = openpyxl.load_workbook(fh, read_only=True, data_only=True)
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ParseError, zlib.error) as e:
            raise UserError(f"{path}: not a readable .xlsx workbook ({e.__class__.__name__}: {str(e).strip()[:100]})") from None
        except ValueError as e:
            # openpyxl wraps what its XML parser refused ("Unable to read workbook"); with defusedxml installed
            # (sae-lens brings it), an entity-expanding sheet is refused as EntitiesForbidden: name the cause.
            cause = e.__cause__ or e.__context__ or e
            raise UserError(
                f"{path}: not a readable .xlsx workbook (its XML is damaged or hostile: {cause.__class__.__name__}: "
                f"{str(cause).strip().splitlines()[0][:100] if str(cause).strip() else ''})"
            ) from None
        try:
            rows = wb.worksheets[0].iter_rows(values_only=True)
            header = next(rows, None)
            if header is None:
                raise UserError(f"{path}: the sheet is empty; expected a header row {INPUT_COLUMN} | {TARGET_COLUMN}")
            header = [h.strip() if isinstance(h, str) else h for h in header]
            for name in (INPUT_COLUMN, TARGET_COLUMN):
                if name not in header:
                    raise UserError(f"{path}: missing column {name!r} in the header row (found {[h for h in header if h is not None]})")
            i_col, t_col = header.index(INPUT_COLUMN), header.index(TARGET_COLUMN)
            example_input = str([0] * shape.input_dim)
            inputs, targets, row_numbers = [], [], []
            for row_number, row in enumerate(rows, start=2):
                if row is None or all(c is None for c in row):
                    continue  # trailing blank rows that spreadsheet programs leave behind
                cell = lambda c: row[c] if c < len(row) else None  # noqa: E731
                x = _parse_int_list(cell(i_col), path, row_number, INPUT_COLUMN, shape.input_dim, example_input)
                (t,) = _parse_int_list(cell(t_col), path, row_number, TARGET_COLUMN, 1, "[8]")
                inputs.append(x)
                targets.append(t)
                row_numbers.append(row_number)
        except (ParseError, zipfile.BadZipFile, zlib.error, EOFError) as e:
            # the sheet is read lazily: a damaged or hostile (entity-expanding) sheet XML surfaces here
            raise UserError(f"{path}: not a readable .xlsx workbook (its sheet is damaged: {e.__class__.__name__}: {str(e).strip()[:100]})") from None
        finally:
            wb.close()
    if not inputs:
        raise UserError(f"{path}: no data rows below the header")
    split = Split(np.asarray(inputs, np.int32), np.asarray(targets, np.float32))
    _check_split(split, np.asarray(row_numbers), shape, path)
    return split
