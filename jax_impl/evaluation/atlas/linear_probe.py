"""The linear ceiling: how well one half-space of a hook's activation can detect each concept, an estimate of the
best F1 any feature that is active exactly where an affine function is positive can reach. The half-spaces are
fitted with full-batch Adam (jitted), several restarts per concept."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas.scores import best_threshold_f1
from jax_impl.models.mlp import HOOKS, InterpretabilityMLP
from jax_impl.task.concepts import task_concepts
from jax_impl.task.pointer import Split, TaskShape


def _adam_fit(loss, params, steps: int, lr: float):
    """Minimise loss(params) with full-batch Adam for a fixed number of steps (inside jit)."""
    tx = optax.adam(lr)

    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


@partial(jax.jit, static_argnames=("steps", "restarts"))
def _fit_half_spaces(
    x: jax.Array, y: jax.Array, key: jax.Array, steps: int, restarts: int, lr: float, l2: float
) -> tuple[jax.Array, jax.Array]:
    """Half-spaces z = x @ w + b that detect each column of y (N, C) well, `restarts` per concept.

    x (N, D) standardised. Restart 0 is a class-balanced logistic regression; every restart (that one
    included, from its solution; the others from random directions) then climbs a smooth F1, the mean
    sigmoid(z) standing in for "z > 0". The random starts matter for band-shaped concepts (|x| < c),
    where the logistic optimum is the symmetric, useless w = 0. -> w (D, C, R), b (C, R).
    """
    d = x.shape[1]
    pos_weight = (1 - y.mean(axis=0)) / y.mean(axis=0)

    def logistic(p):
        z = x @ p[0] + p[1]
        per_row = pos_weight * y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z)
        return jnp.sum(jnp.mean(per_row, axis=0)) + l2 * jnp.sum(jnp.square(p[0]))

    w0, b0 = _adam_fit(logistic, (jnp.zeros((d, y.shape[1])), jnp.zeros(y.shape[1])), steps, lr)
    random_w = jax.random.normal(key, (d, y.shape[1], restarts - 1)) / jnp.sqrt(d)
    w = jnp.concatenate([w0[:, :, None], random_w], axis=2)
    b = jnp.concatenate([b0[:, None], jnp.zeros((y.shape[1], restarts - 1))], axis=1)

    def negative_soft_f1(p):
        called = jax.nn.sigmoid(jnp.einsum("nd,dcr->ncr", x, p[0]) + p[1])
        tp = jnp.einsum("ncr,nc->cr", called, y)
        return -jnp.sum(2 * tp / (called.sum(axis=0) + y.sum(axis=0)[:, None]))

    return _adam_fit(negative_soft_f1, (w, b), steps, lr)


def linear_readout_f1(
    layer2: np.ndarray, mask: np.ndarray, fit_rows: np.ndarray, *,
    steps: int = 1000, restarts: int = 8, lr: float = 1e-2, l2: float = 1e-4, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """How well one linear read-out of layer2 can detect each concept: the ceiling on a feature's F1.

    A `relu-l1` or `anthropic` SAE feature is active exactly where an affine function of layer2 is
    positive, so its F1 for a concept is at most the best F1 of any half-space of layer2. This
    searches for that half-space (_fit_half_spaces) on the fit_rows and keeps, per concept, the best
    F1 over the restarts and all thresholds there. It is an estimate from below, not a bound: a search
    can miss the best half-space. The in-sample F1 errs on the generous side; the same half-space on
    the held-out rows shows how much of it is overfitting. (A `topk` feature also needs its
    pre-activation among the row's k largest, which a half-space ignores.)

    layer2 (N, 512) float, mask (N, C) bool, fit_rows (N,) bool (some rows held out; every concept
    on some fit rows and not all) -> (F1 on the fit rows, F1 on the held-out rows), each (C,) float64.
    """
    x = np.asarray(layer2, np.float64)
    mean, std = x[fit_rows].mean(axis=0), x[fit_rows].std(axis=0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    w, b = _fit_half_spaces(
        jnp.asarray(x[fit_rows]), jnp.asarray(mask[fit_rows], jnp.float32), jax.random.key(seed),
        steps=steps, restarts=restarts, lr=lr, l2=l2,
    )
    z = np.asarray(jnp.einsum("nd,dcr->ncr", jnp.asarray(x), w) + b)  # (N, C, R)
    held = ~fit_rows
    fit_f1, held_f1 = np.zeros(mask.shape[1]), np.zeros(mask.shape[1])
    for c in range(mask.shape[1]):
        (fit_f1[c], threshold), r = max((best_threshold_f1(z[fit_rows, c, r], mask[fit_rows, c]), r) for r in range(restarts))
        called = z[held, c, r] > threshold
        held_f1[c] = 2 * np.sum(called & mask[held, c]) / max(called.sum() + mask[held, c].sum(), 1)
    return fit_f1, held_f1


def ceilings_by_hook(
    mlp: InterpretabilityMLP, rows: Split, shape: TaskShape, fit_rows: np.ndarray,
    hooks: tuple[str, ...] = HOOKS, families: tuple[str, ...] = ("pointer", "pointed", "target", "order"),
) -> dict[str, Any]:
    """The linear ceiling of every concept of `families` at each hook point: where each concept lives.

    rows: N task rows, fit_rows (N,) bool (the others held out). Returns {"concepts": names (C,),
    "families": (C,), "rows": (C,) counts, "hooks": {hook: {"fit": (C,), "held_out": (C,)} F1 float64}}.
    """
    concepts = task_concepts(rows.inputs, shape.x_dim, shape.y_dim)
    chosen = [k for k, family in enumerate(concepts.families) if family in families]
    mask = concepts.mask[:, chosen]
    by_hook = {}
    for hook in hooks:
        _, h = inference.mlp_forward(mlp, rows.inputs, hook)
        fit_f1, held_f1 = linear_readout_f1(h, mask, fit_rows)
        by_hook[hook] = {"fit": fit_f1, "held_out": held_f1}
    return {"concepts": [concepts.names[k] for k in chosen], "families": [concepts.families[k] for k in chosen],
            "rows": mask.sum(axis=0), "hooks": by_hook}
