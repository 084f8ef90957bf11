"""`topk` (Gao et al. 2024): each row keeps its k largest pre-activations (ReLU'd), so L0 <= k by construction
and no penalty shrinks the features; AuxK gives latents silent for an epoch a gradient back towards the data."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.checks import check_dict_size, require_finite
from jax_impl.saes.anthropic import TIED_KEYS
from jax_impl.saes.base import (
    AUX_K_FACTOR,
    Architecture,
    Batch,
    KeyMapEntry,
    Params,
    SaeLensFormat,
    TrainContext,
    aux_k_loss,
    keep_top_k,
    mse,
    tied_init,
    top_k_sparse,
)


@dataclass(frozen=True)
class Config:
    k: int = 32  # features kept per row
    aux_coeff: float = 1 / 32  # weight of the AuxK loss (Gao et al.)

    def validate(self, dict_size: int) -> None:
        require_finite(self)  # NaN passes every comparison below, inf every lower bound
        check_dict_size(dict_size)
        if not 1 <= self.k <= dict_size:
            raise ValueError(f"k must be in 1..{dict_size} (the dictionary size), got {self.k}")
        if self.aux_coeff < 0:
            raise ValueError(f"aux_coeff must be >= 0, got {self.aux_coeff}")


def aux_k(cfg, dict_size: int) -> int:
    return min(AUX_K_FACTOR * cfg.k, dict_size)


def init(key: jax.Array, input_dim: int, dict_size: int, cfg, output_dim: int | None = None) -> tuple[Params, dict]:
    return tied_init(nnx.Rngs(key).params(), input_dim, dict_size, output_dim), {}


def activate(pre: jax.Array, params: Params, buffers: dict, cfg: Config) -> jax.Array:
    return keep_top_k(pre, cfg.k)


def loss(p: Params, buffers: dict, batch: Batch, ctx: TrainContext, cfg: Config):
    """MSE(reconstruction, target) + aux_coeff * AuxK over the dead latents."""
    pre = batch.pre_activation(p)
    values, indices = top_k_sparse(pre, cfg.k)
    reconstruction = batch.decode_sparse(p, values, indices)
    aux = aux_k_loss(p, pre, batch.target, reconstruction, ctx.dead, aux_k(cfg, pre.shape[-1]), group_dead=ctx.group_dead)
    features = jnp.put_along_axis(jnp.zeros_like(pre), indices, jax.lax.stop_gradient(values), axis=-1, inplace=False)
    error = mse(reconstruction, batch.target)
    return error + cfg.aux_coeff * aux, (features, buffers, {"mse": error, "aux": aux})


ARCHITECTURE = Architecture(
    name="topk",
    summary="Gao et al. 2024: per-row TopK activation, AuxK for dead latents, unit decoder rows",
    config=Config,
    init=init,
    activate=activate,
    loss=loss,
    key_map=(KeyMapEntry("b_dec", "b_dec"), KeyMapEntry("k", "k", source="config", dtype="int64"), *TIED_KEYS),
    saelens=SaeLensFormat("topk", reads=("topk",)),
)
