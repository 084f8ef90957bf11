"""The pointer task's causal variables and counterfactual pairs for each.

The high-level model of the task (first column `a`, last column `b`, as `task.pointer_targets` reads them):

    P1 = a's pointer, P2 = b's pointer,  A = a[P1],  B = b[P2],  D = A - B,  T = |D| (the output)

and the cells `a_j`, `b_j` themselves. An interchange intervention sets one variable of a *base* row to its
value on a *source* row; `counterfactual_answers` gives the task's output after it (e.g. `P1` from the source:
`|a_base[p1_source] - B_base|`; `a_j`: the base's answer unless `p1 == j`). D and T have the same
counterfactual answers (the output is |D|), so interchange alone cannot tell them apart.

Pairs come in two kinds. *minimal*: the source is the base with only the variable's own inputs edited (P1: the
pointer; A: the pointed cell; a_j: the cell). *random*: the source is an independent row, so that a pointer
and the value it selects can be told apart (patching a hook that holds `A` from a P1-minimal source looks like
patching the pointer; from a random source it does not). Only pairs whose counterfactual answer differs from
the base's answer are kept: an intervention that should change nothing proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jax_impl.task.pointer import MAX_VALUE, TaskShape

MINIMAL, RANDOM = 0, 1  # Pairs.kind
KIND_NAMES = ("minimal", "random")


@dataclass(frozen=True)
class TaskVariables:
    """The causal variables of one task shape: names and how each is read off and set on input rows."""

    shape: TaskShape

    @property
    def first(self) -> str:
        return "a"

    @property
    def last(self) -> str:
        return "b" if self.shape.y_dim <= 2 else chr(ord("a") + self.shape.y_dim - 1)

    @property
    def cells(self) -> list[str]:
        n = self.shape.x_dim - 1
        return [f"{self.first}_{j}" for j in range(n)] + [f"{self.last}_{j}" for j in range(n)]

    @property
    def names(self) -> list[str]:
        """P1, P2, A, B, D, T, then the cells a_0.., b_0.. (for the 5x2 task: 14 variables)."""
        return ["P1", "P2", "A", "B", "D", "T", *self.cells]

    def has_minimal_pairs(self, name: str) -> bool:
        """Whether the variable has its own inputs to edit (D and T are computed from A and B)."""
        return name not in ("D", "T")

    def parts(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """inputs (N, D) int -> {"a": (N, x-1), "b": (N, x-1), "p1": (N,), "p2": (N,)} int64."""
        grid = np.asarray(inputs, np.int64).reshape(len(inputs), self.shape.y_dim, self.shape.x_dim)
        return {"a": grid[:, 0, :-1], "b": grid[:, -1, :-1], "p1": grid[:, 0, -1], "p2": grid[:, -1, -1]}

    def values(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every variable's value on each row: {name: (N,) int64}."""
        p = self.parts(inputs)
        rows = np.arange(len(inputs))
        a_sel, b_sel = p["a"][rows, p["p1"]], p["b"][rows, p["p2"]]
        out = {"P1": p["p1"], "P2": p["p2"], "A": a_sel, "B": b_sel, "D": a_sel - b_sel, "T": np.abs(a_sel - b_sel)}
        for j in range(self.shape.x_dim - 1):
            out[f"{self.first}_{j}"] = p["a"][:, j]
            out[f"{self.last}_{j}"] = p["b"][:, j]
        return out

    def counterfactual_answers(self, name: str, base: np.ndarray, source: np.ndarray) -> np.ndarray:
        """The task's output on each base row (N, D) after its variable `name` takes its value on the source row:
        (N,) float32."""
        b, s = self.parts(base), self.parts(source)
        vb, vs = self.values(base), self.values(source)
        rows = np.arange(len(base))
        A, B = vb["A"], vb["B"]
        if name == "P1":
            A = b["a"][rows, s["p1"]]
        elif name == "P2":
            B = b["b"][rows, s["p2"]]
        elif name == "A":
            A = vs["A"]
        elif name == "B":
            B = vs["B"]
        elif name in ("D", "T"):
            return vs["T"].astype(np.float32)
        elif name in self.cells:
            column, j = name.split("_")
            j = int(j)
            if column == self.first:
                A = np.where(b["p1"] == j, s["a"][:, j], A)
            else:
                B = np.where(b["p2"] == j, s["b"][:, j], B)
        else:
            raise ValueError(f"unknown variable {name!r}; expected one of {', '.join(self.names)}")
        return np.abs(A - B).astype(np.float32)

    def minimal_sources(self, name: str, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The base rows (N, D) with only `name`'s own input changed to another value (P1/P2: the pointer;
        A/B: the pointed cell; a_j/b_j: the cell)."""
        x, n_values = self.shape.x_dim, MAX_VALUE + 1
        grid = np.asarray(base, np.int64).reshape(len(base), self.shape.y_dim, x).copy()
        rows = np.arange(len(base))
        column = {"P1": 0, "A": 0, "P2": -1, "B": -1}.get(name)
        if name in ("P1", "P2"):
            shift = rng.integers(1, x - 1, len(base))  # another pointer, uniformly
            grid[:, column, -1] = (grid[:, column, -1] + shift) % (x - 1)
        elif name in ("A", "B"):
            cell = grid[:, column, -1]
            grid[rows, column, cell] = (grid[rows, column, cell] + rng.integers(1, n_values, len(base))) % n_values
        elif name in self.cells:
            letter, j = name.split("_")
            column = 0 if letter == self.first else -1
            grid[:, column, int(j)] = (grid[:, column, int(j)] + rng.integers(1, n_values, len(base))) % n_values
        else:
            raise ValueError(f"variable {name!r} has no inputs of its own to edit")
        return grid.reshape(len(base), -1).astype(np.int32)


@dataclass(frozen=True)
class Pairs:
    """N counterfactual pairs of one variable.

    base, source (N, D) int32 task rows; answer (N,) float32: the task's output on the base with the variable set
    to its value on the source; base_answer (N,) float32: the base's own output; kind (N,) int8 (MINIMAL/RANDOM).
    """

    base: np.ndarray
    source: np.ndarray
    answer: np.ndarray
    base_answer: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.answer)

    def take(self, index: np.ndarray | slice) -> Pairs:
        return Pairs(self.base[index], self.source[index], self.answer[index], self.base_answer[index], self.kind[index])


def random_rows(rng: np.random.Generator, n: int, shape: TaskShape) -> np.ndarray:
    """n uniform task rows (N, D) int32: values 0..9, pointers 0..x_dim-2."""
    grid = rng.integers(0, MAX_VALUE + 1, (n, shape.y_dim, shape.x_dim))
    grid[:, :, -1] = rng.integers(0, shape.x_dim - 1, (n, shape.y_dim))
    return grid.reshape(n, -1).astype(np.int32)


def _row_keys(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(rows, np.int8)).view(f"V{rows.shape[1]}").ravel()


class PairSampler:
    """Draws counterfactual pairs whose base and source rows are all outside `exclude` (e.g. the rows the SAEs
    trained on), from one numpy generator: the same seed gives the same pairs."""

    def __init__(self, variables: TaskVariables, seed: int, exclude: np.ndarray | None = None):
        self.variables = variables
        self.rng = np.random.default_rng(seed)
        self._excluded = None if exclude is None or len(exclude) == 0 else np.unique(_row_keys(exclude))

    def fresh_rows(self, n: int) -> np.ndarray:
        """n uniform task rows (N, D) int32 outside `exclude`."""
        got: list[np.ndarray] = []
        while sum(len(r) for r in got) < n:
            rows = random_rows(self.rng, 4 * n, self.variables.shape)
            got.append(rows[self._allowed(rows)])
        return np.concatenate(got)[:n]

    def _allowed(self, rows: np.ndarray) -> np.ndarray:
        if self._excluded is None:
            return np.ones(len(rows), bool)
        return ~np.isin(_row_keys(rows), self._excluded)

    def _candidates(self, name: str, n: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
        base = random_rows(self.rng, n, self.variables.shape)
        if kind == MINIMAL:
            source = self.variables.minimal_sources(name, base, self.rng)
        else:
            source = random_rows(self.rng, n, self.variables.shape)
        return base, source

    def pairs(self, name: str, n: int) -> Pairs:
        """n pairs of variable `name` whose counterfactual answer differs from the base's: half minimal, half
        random (all random for D and T), in a random order."""
        kinds = [MINIMAL, RANDOM] if self.variables.has_minimal_pairs(name) else [RANDOM]
        counts = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
        parts = [self._draw(name, count, kind, changes_answer=True) for kind, count in zip(kinds, counts)]
        return _shuffle(_concat(parts), self.rng)

    def isolation_pairs(self, name: str, n: int) -> Pairs:
        """n pairs whose source has the same value of `name` as the base but differs in other variables: minimal
        edits of every other variable that has them, and random rows. `answer` is the base's own output (what a
        patch of `name` alone must leave)."""
        others = [v for v in self.variables.names if v != name and self.variables.has_minimal_pairs(v)]
        sources = [(v, MINIMAL) for v in others] + [(None, RANDOM)]
        batch = max(32, 2 * n // len(sources))
        got: list[Pairs] = []
        for _ in range(200):
            # Each kind of source in proportion to how often it keeps `name` (an edit of A never keeps D).
            got += [self._filtered(v, batch, kind, keep=name) for v, kind in sources]
            if sum(len(p) for p in got) >= n:
                pairs = _shuffle(_concat(got), self.rng).take(slice(0, n))
                return Pairs(pairs.base, pairs.source, pairs.base_answer, pairs.base_answer, pairs.kind)
        raise ValueError(f"could not draw {n} isolation pairs for {name}")

    def _filtered(self, name: str | None, n: int, kind: int, *, changes_answer: bool = False,
                  keep: str | None = None) -> Pairs:
        """The pairs among n candidates of one kind that pass the filters (see _draw)."""
        base, source = self._candidates(name or "T", n, kind)
        ok = self._allowed(base) & self._allowed(source) & np.any(base != source, axis=1)
        base_values, source_values = self.variables.values(base), self.variables.values(source)
        base_answer = base_values["T"].astype(np.float32)
        answer = self.variables.counterfactual_answers(name, base, source) if name else source_values["T"]
        answer = np.asarray(answer, np.float32)
        if changes_answer:
            ok &= answer != base_answer
        if keep is not None:
            ok &= base_values[keep] == source_values[keep]
        idx = np.flatnonzero(ok)
        return Pairs(base[idx], source[idx], answer[idx], base_answer[idx], np.full(len(idx), kind, np.int8))

    def _draw(self, name: str | None, n: int, kind: int, *, changes_answer: bool = False, keep: str | None = None) -> Pairs:
        """n pairs of one kind: `name`'s generator (name None: random rows); changes_answer: only pairs whose
        counterfactual answer differs from the base's; keep: only pairs whose source has the base's value of it
        and is another row."""
        got: list[Pairs] = []
        have = 0
        for _ in range(200):
            if have >= n:
                return _concat(got).take(slice(0, n))
            pairs = self._filtered(name, max(4 * (n - have), 64), kind, changes_answer=changes_answer, keep=keep)
            got.append(pairs)
            have += len(pairs)
        raise ValueError(f"could not draw {n} pairs for {name or 'random rows'}; the task shape "
                         f"{self.variables.shape} leaves too few")


def _concat(parts: list[Pairs]) -> Pairs:
    return Pairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("base", "source", "answer", "base_answer", "kind")))


def _shuffle(pairs: Pairs, rng: np.random.Generator) -> Pairs:
    return pairs.take(rng.permutation(len(pairs)))
