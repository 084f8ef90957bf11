"""The task's concept vocabulary: what a feature of the MLP could stand for, read off the inputs.

Each concept is a predicate on an input row (a pointer's value, the value a pointer points at, the target, the
order of the two pointed values, a raw cell, a pointer together with the value it points at) with, where the task
defines one, the counterfactual target: what the task would give if the concept were made true on the row. The
feature atlas (jax_impl.evaluation.atlas) scores SAE features against it and tests their labels with the
counterfactuals.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from jax_impl.task.pointer import TaskShape, pointer_targets

FAMILIES = ("pointer", "pointed", "target", "order", "cell", "conjunction")


@dataclass(frozen=True)
class Concepts:
    """The task's concept vocabulary evaluated on N input rows.

    names, families: (C,) str. mask (N, C) bool: the concept holds on the row.
    counterfactual (N, C) float32: the task's target if the concept were made true on that
    row (NaN where the task does not define one, i.e. for the `>`/`<` order concepts).
    """

    names: list[str]
    families: list[str]
    mask: np.ndarray
    counterfactual: np.ndarray


def _column_letter(c: int) -> str:
    return string.ascii_lowercase[c]


def task_concepts(inputs: np.ndarray, x_dim: int, y_dim: int) -> Concepts:
    """Build the concept vocabulary for inputs (N, x_dim*y_dim) int.

    Column c holds x_dim-1 values then its pointer; columns are lettered a, b, ... and
    pointers p1, p2, .... Concepts true on every row or on none are dropped (no score exists).
    """
    n = len(inputs)
    shape = TaskShape(x_dim, y_dim)
    cols = np.asarray(inputs, dtype=np.int64).reshape(n, y_dim, x_dim)
    pointers = cols[:, :, -1]
    pointed = np.take_along_axis(cols[:, :, :-1], pointers[:, :, None], axis=2)[:, :, 0]
    target = pointer_targets(cols.reshape(n, -1), shape)
    values = np.unique(cols[:, :, :-1])
    rows = np.arange(n)
    names: list[str] = []
    families: list[str] = []
    masks: list[np.ndarray] = []
    cfs: list[np.ndarray] = []

    def add(name: str, family: str, mask: np.ndarray, counterfactual: np.ndarray) -> None:
        if mask.any() and not mask.all():
            names.append(name)
            families.append(family)
            masks.append(mask)
            cfs.append(counterfactual.astype(np.float32))

    def edited(c: int, j: np.ndarray | int, v: int) -> np.ndarray:
        """Target after setting cell j of column c (j may differ per row) to v."""
        out = cols.copy()
        out[rows, c, j] = v
        return pointer_targets(out.reshape(n, -1), shape)

    for c in range(y_dim):
        for k in range(x_dim - 1):
            add(f"p{c + 1}={k}", "pointer", pointers[:, c] == k, edited(c, x_dim - 1, k))
    for c in range(y_dim):
        for v in values:
            name = f"{_column_letter(c)}[p{c + 1}]={v}"
            add(name, "pointed", pointed[:, c] == v, edited(c, pointers[:, c], v))
    for t in np.unique(target):
        add(f"target={t}", "target", target == t, np.full(n, t))
    first, last = "a[p1]", f"{_column_letter(y_dim - 1)}[p{y_dim}]"
    diff = pointed[:, 0] - pointed[:, -1]
    nan = np.full(n, np.nan)
    # Order does not determine the target (it is |diff|), except that equal values give 0.
    add(f"{first}>{last}", "order", diff > 0, nan)
    add(f"{first}<{last}", "order", diff < 0, nan)
    add(f"{first}={last}", "order", diff == 0, np.zeros(n))
    for c in range(y_dim):
        for j in range(x_dim - 1):
            for v in values:
                name = f"{_column_letter(c)}_{j}={v}"
                add(name, "cell", cols[:, c, j] == v, edited(c, j, v))
    # `p1=k & a_k=v`: the pointer and the value it points at. A feature for one of these is `a[p1]=v` split
    # by pointer (or `p1=k` split by value); without this family it would score low on both and count as noise.
    for c in range(y_dim):
        for k in range(x_dim - 1):
            for v in values:
                both = cols.copy()
                both[:, c, -1], both[:, c, k] = k, v
                holds = (pointers[:, c] == k) & (cols[:, c, k] == v)
                counterfactual = pointer_targets(both.reshape(n, -1), shape)
                add(f"p{c + 1}={k} & {_column_letter(c)}_{k}={v}", "conjunction", holds, counterfactual)
    return Concepts(names, families, np.stack(masks, axis=1), np.stack(cfs, axis=1))
