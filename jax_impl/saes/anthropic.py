"""`anthropic` (Towards Monosemanticity): tied pre-encoder bias, unit decoder rows, ReLU, L1 penalty, and
resampling of dead features.

Every `resample_every` epochs the features that fire on none of a sample of rows are re-initialised towards
rows the SAE reconstructs worst (drawn with probability proportional to the squared loss), with encoder norm
0.2 x the mean of the live ones and fresh Adam moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.checks import check_dict_size, require_finite
from jax_impl.saes.base import (
    Architecture,
    Batch,
    KeyMapEntry,
    Params,
    SaeLensFormat,
    TrainContext,
    mse,
    tied_init,
    unit_rows,
)

RESAMPLE_ENCODER_SCALE = 0.2  # Towards Monosemanticity: resampled encoder rows get 0.2 x the mean live norm

TIED_KEYS = (
    KeyMapEntry("encoder.weight", "w_enc", transpose=True),
    KeyMapEntry("encoder.bias", "b_enc"),
    KeyMapEntry("decoder.weight", "w_dec", transpose=True),
)


@dataclass(frozen=True)
class Config:
    l1_coeff: float = 1e-4
    resample_every: int = 25  # epochs between resamplings of dead features

    def validate(self, dict_size: int) -> None:
        require_finite(self)  # NaN passes every comparison below, inf every lower bound
        check_dict_size(dict_size)
        if self.l1_coeff < 0 or self.resample_every < 1:
            raise ValueError(f"l1_coeff must be >= 0 and resample_every >= 1, got {self.l1_coeff}, {self.resample_every}")


def init(key: jax.Array, input_dim: int, dict_size: int, cfg, output_dim: int | None = None) -> tuple[Params, dict]:
    # nnx.Rngs(key).params(): the stream the earlier TiedBiasSAE drew from, so old seeds give the same init.
    return tied_init(nnx.Rngs(key).params(), input_dim, dict_size, output_dim), {}


def activate(pre: jax.Array, params: Params, buffers: dict, cfg) -> jax.Array:
    return jax.nn.relu(pre)


def loss(p: Params, buffers: dict, batch: Batch, ctx: TrainContext, cfg: Config):
    """MSE(reconstruction, target) + l1_coeff * batch mean of sum_j |f_j|."""
    features = jax.nn.relu(batch.pre_activation(p))
    error, l1 = mse(batch.decode(p, features), batch.target), jnp.mean(jnp.sum(features, axis=-1))
    return error + cfg.l1_coeff * l1, (features, buffers, {"mse": error, "l1": l1})


@jax.jit
def _per_row_error(p: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(squared reconstruction error (N,), feature fires anywhere (F,))."""
    features = jax.nn.relu(batch.pre_activation(p))
    return jnp.sum(jnp.square(batch.decode(p, features) - batch.target), axis=1), jnp.any(features > 0, axis=0)


def resample_dead(p: Params, opt_state, batch: Batch, key: jax.Array) -> tuple[Params, object, int]:
    """Towards Monosemanticity's resampling of the features that fire on none of the batch's rows (N of them).

    Each dead feature gets the direction of a row drawn with probability proportional to its squared
    reconstruction loss (minus b_dec): decoder row = that unit direction, encoder column = the same scaled to
    0.2 x the mean live encoder norm, encoder bias 0, and zero Adam moments for all three. For a transcoder the
    decoder row is the drawn row's target (minus b_dec) and the encoder column its input, each as a unit vector.
    Returns (params, opt_state, number resampled).
    """
    error, alive = _per_row_error(p, batch)
    dead = np.flatnonzero(~np.asarray(alive))
    if dead.size == 0 or not np.asarray(alive).any():
        return p, opt_state, 0
    weight = np.square(np.asarray(error, np.float64))
    rows = jax.random.choice(key, batch.x.shape[0], (dead.size,), p=jnp.asarray(weight / weight.sum()))
    directions = unit_rows(batch.target[rows] - p["b_dec"])  # (n_dead, D_out)
    reads = directions if batch.target is batch.x else unit_rows(batch.x[rows])  # (n_dead, D_in)
    live_norm = jnp.mean(jnp.linalg.norm(p["w_enc"][:, np.asarray(alive)], axis=0))
    p = p | {
        "w_dec": p["w_dec"].at[dead].set(directions),
        "w_enc": p["w_enc"].at[:, dead].set(reads.T * RESAMPLE_ENCODER_SCALE * live_norm),
        "b_enc": p["b_enc"].at[dead].set(0.0),
    }

    def reset(moments: Params) -> Params:
        return moments | {
            "w_dec": moments["w_dec"].at[dead].set(0.0),
            "w_enc": moments["w_enc"].at[:, dead].set(0.0),
            "b_enc": moments["b_enc"].at[dead].set(0.0),
        }

    # optax.adam(...) is chain(scale_by_adam, scale_by_learning_rate): its first state holds mu and nu.
    adam = opt_state[0]
    opt_state = (adam._replace(mu=reset(adam.mu), nu=reset(adam.nu)), *opt_state[1:])
    return p, opt_state, int(dead.size)


def epoch_hook(p: Params, opt_state, rows: Batch, key: jax.Array, epoch: int, cfg: Config, epochs: int):
    # Resample on schedule, but leave the last interval to settle (the paper stops resampling late too).
    if (epoch + 1) % cfg.resample_every or epoch + 1 + cfg.resample_every > epochs:
        return p, opt_state, None
    p, opt_state, n = resample_dead(p, opt_state, rows, key)
    return p, opt_state, f"resampled {n} dead features"


ARCHITECTURE = Architecture(
    name="anthropic",
    summary="Towards Monosemanticity: tied pre-encoder bias, unit decoder rows, ReLU + L1, dead-feature resampling",
    config=Config,
    init=init,
    activate=activate,
    loss=loss,
    key_map=(KeyMapEntry("b_dec", "b_dec"), *TIED_KEYS),
    epoch_hook=epoch_hook,
    saelens=SaeLensFormat("standard", reads=("standard",)),
)
