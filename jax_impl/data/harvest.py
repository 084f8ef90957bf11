"""Harvesting the activations at a hook point (`layer2` by default): a per-sample eval-mode forward, vmapped
over the rows."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.models.mlp import DEFAULT_HOOK, InterpretabilityMLP
from jax_impl.precision import highest_precision


@partial(jax.jit, static_argnames="hook")
def _harvest(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, hook: str) -> jax.Array:
    def one_row(row: jax.Array) -> jax.Array:  # (D,) -> (width,)
        return nnx.merge(graphdef, state, copy=True).activation_at(row, hook)

    return jax.vmap(one_row)(x)


@highest_precision
def harvest_activations(model: InterpretabilityMLP, inputs: np.ndarray, hook: str = DEFAULT_HOOK) -> np.ndarray:
    """The activation at `hook` of every row in row order (upstream harvested layer2 in a shuffled order).
    inputs (N, D) -> (N, HOOK_WIDTHS[hook]) float32 (layer2: (N, 512)).

    Eval mode: BatchNorm uses its running statistics, so each row's activation depends on that row alone.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    return np.asarray(_harvest(graphdef, state, jnp.asarray(inputs, jnp.float32), hook))
