"""The pointer task: its shape, targets and the seeded, vectorised generation of its rows and splits (on device).

An input is `y_dim` columns of `x_dim` integers, concatenated. In each column the first `x_dim - 1`
entries are values in 0..9 and the last is a pointer into them (0..x_dim-2). For the default 5x2 shape
the row is `[a0 a1 a2 a3 p1  b0 b1 b2 b3 p2]` and the target is `|a[p1] - b[p2]|`; with more columns only
the first and the last take part, exactly as the seed's generator does. A split on disk is the upstream .xlsx
format (jax_impl.task.splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.errors import UserError

MAX_VALUE = 9
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
    of the data stage's time (tests/task/test_task.py checks the equality).
    """
    inputs, targets = _sample_splits(key, len(sizes), max(sizes.values()), shape)
    inputs, targets = np.asarray(inputs, np.int32), np.asarray(targets, np.float32)
    return {name: Split(inputs[i, :n], targets[i, :n]) for i, (name, n) in enumerate(sizes.items())}


def parse_input_rows(texts: Sequence[str], shape: TaskShape, flag: str = "--input") -> np.ndarray:
    """Rows typed on a command line ("8,9,5,1,3,2,9,4,7,1" each) -> (N, D) int32; UserError naming the flag and the
    text that is not D integers in the task's ranges."""
    rows = []
    for text in texts:
        try:
            values = [int(v) for v in text.replace(" ", "").strip("[]").split(",")]
        except ValueError:
            raise UserError(f"{flag} {text!r}: expected {shape.input_dim} comma-separated integers like "
                            "8,9,5,1,3,2,9,4,7,1") from None
        if len(values) != shape.input_dim:
            raise UserError(f"{flag} {text!r}: expected {shape.input_dim} integers, got {len(values)}")
        invalid = first_invalid_input(np.asarray([values], np.int64), shape)
        if invalid is not None:
            raise UserError(f"{flag} {text!r}: {invalid[1]}")
        rows.append(values)
    return np.asarray(rows, np.int32).reshape(len(rows), shape.input_dim)


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


@dataclass(frozen=True)
class DataConfig:
    """The task's splits (rows of each) and its shape: `y_dim` columns of `x_dim` integers, so inputs are
    (N, x_dim * y_dim)."""

    n_train: int = 8000
    n_val: int = 1000
    n_test: int = 1000
    x_dim: int = 5  # entries per column: x_dim - 1 values and one pointer
    y_dim: int = 2  # columns; the target uses the first and the last


def check_task_shape(x_dim: int, y_dim: int, x_flag: str = "--x-dim", y_flag: str = "--y-dim") -> None:
    """UserError naming the flag when (x_dim, y_dim) is no task shape (jax_impl.task.pointer.TaskShape): every column needs a
    value and a pointer, and there must be a column."""
    if not x_dim >= 2:
        raise UserError(f"{x_flag} must be at least 2 (one value and one pointer per column), got {x_dim}")
    if not y_dim >= 1:
        raise UserError(f"{y_flag} must be at least 1 (columns), got {y_dim}")
