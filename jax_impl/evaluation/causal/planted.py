"""Hand-built networks whose causal structure is known, for tests and for a user checking the tool.

- late selection: the hook holds the one-hot pointers and the raw cells, `[onehot(p1), a, onehot(p2), b]`;
  the selection `a[p1]` happens after it. Patching `P1` at the hook works; so does patching a cell.
- early selection: the hook holds the selected values only, `[A, B]`; the pointers are gone. Patching `P1`
  fails on random sources; patching `A` works.

Both readouts are exact ReLU networks in `Readout`'s form (an affine layer, then ReLU layers), so every
intervention of jax_impl.evaluation.causal runs on them unchanged. Their activations are non-negative, so the identity
dictionary (feature i = coordinate i) is an SAE of each with no reconstruction error.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax_impl.evaluation.causal.interventions import Site
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.models.mlp import Readout
from jax_impl.task.pointer import MAX_VALUE, TaskShape
from jax_impl.task.variables import TaskVariables


def _abs_readout(w1: np.ndarray, b1: np.ndarray, signed: np.ndarray) -> Readout:
    """ReLU(h @ w1 + b1) @ signed gives (A - B); |A - B| = ReLU(A - B) + ReLU(B - A)."""
    tail = np.stack([signed, -signed], axis=1)  # (H, 2)
    return Readout(jnp.asarray(w1, jnp.float32), jnp.asarray(b1, jnp.float32),
                   (jnp.asarray(tail, jnp.float32), jnp.ones(2, jnp.float32)), (jnp.zeros(2, jnp.float32), jnp.zeros((), jnp.float32)))


def late_selection(shape: TaskShape = TaskShape()) -> Site:
    """h = [onehot(p1) (n), a (n), onehot(p2) (n), b (n)], n = x_dim - 1. Readout: a[p1] = sum_j ReLU(a_j + 10 o_j - 10)
    (a_j <= 9, so only j = p1 passes), likewise b[p2], then |A - B|."""
    variables = TaskVariables(shape)
    n = shape.x_dim - 1
    big = MAX_VALUE + 1

    def activation(inputs: np.ndarray) -> np.ndarray:
        p = variables.parts(inputs)
        eye = np.eye(n, dtype=np.float32)
        return np.concatenate([eye[p["p1"]], p["a"], eye[p["p2"]], p["b"]], axis=1).astype(np.float32)

    w1 = np.zeros((4 * n, 2 * n), np.float32)
    for j in range(n):
        w1[j, j], w1[n + j, j] = big, 1.0  # unit j: a_j + 10 o_j
        w1[2 * n + j, n + j], w1[3 * n + j, n + j] = big, 1.0
    b1 = np.full(2 * n, -big, np.float32)
    signed = np.concatenate([np.ones(n), -np.ones(n)]).astype(np.float32)
    return Site("late", activation, _abs_readout(w1, b1, signed))


def early_selection(shape: TaskShape = TaskShape()) -> Site:
    """h = [A, B] = [a[p1], b[p2]]; readout |A - B|."""
    variables = TaskVariables(shape)

    def activation(inputs: np.ndarray) -> np.ndarray:
        v = variables.values(inputs)
        return np.stack([v["A"], v["B"]], axis=1).astype(np.float32)

    w1 = np.eye(2, dtype=np.float32)
    return Site("early", activation, _abs_readout(w1, np.zeros(2, np.float32), np.array([1.0, -1.0], np.float32)))


def identity_dictionary(width: int) -> Dictionary:
    """features = ReLU(h), decoder rows = the unit vectors: exact for non-negative activations."""
    eye = jnp.eye(width, dtype=jnp.float32)
    return Dictionary(eye, jnp.zeros(width), eye, jnp.zeros(width))
