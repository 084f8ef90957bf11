"""Harvesting the `layer2` activations: a per-sample eval-mode forward, vmapped over the rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.models import InterpretabilityMLP


@jax.jit
def _harvest(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    def one_row(row: jax.Array) -> jax.Array:  # (D,) -> (512,)
        return nnx.merge(graphdef, state, copy=True).hidden_activation(row)

    return jax.vmap(one_row)(x)


def harvest_activations(model: InterpretabilityMLP, inputs: np.ndarray) -> np.ndarray:
    """layer2 of every row in row order (upstream harvested in a shuffled order). inputs (N, D) -> (N, 512) float32.

    Eval mode: BatchNorm uses its running statistics, so each row's activation depends on that row alone.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    return np.asarray(_harvest(graphdef, state, jnp.asarray(inputs, jnp.float32)))
