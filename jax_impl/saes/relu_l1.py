"""`relu-l1`: the seed's SAE. features = ReLU(x @ w_enc + b_enc), reconstruction = features @ w_dec + b_dec,
loss = MSE + l1_coeff * batch mean of each row's L1 norm; free decoder norms, no pre-encoder bias.

Keys are upstream's `SparseAutoencoder` (encoder.{weight,bias}, decoder.{weight,bias}); init is torch's
Linear init (models.mlp.torch_linear), encoder then decoder from one nnx.Rngs(key), as the seed's module drew it
(parity_tests/seed_sae.py), so the seed recipe's bytes do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.checks import check_dict_size, require_finite
from jax_impl.models.mlp import torch_linear
from jax_impl.saes.base import Architecture, Batch, KeyMapEntry, Params, SaeLensFormat, TrainContext, mse


@dataclass(frozen=True)
class Config:
    l1_coeff: float = 1e-4

    def validate(self, dict_size: int) -> None:
        require_finite(self)  # NaN passes every comparison below, inf every lower bound
        check_dict_size(dict_size)
        if self.l1_coeff < 0:
            raise ValueError(f"l1_coeff must be >= 0, got {self.l1_coeff}")


def init(key: jax.Array, input_dim: int, dict_size: int, cfg: Config, output_dim: int | None = None) -> tuple[Params, dict]:
    rngs = nnx.Rngs(key)
    encoder = torch_linear(input_dim, dict_size, rngs=rngs)
    decoder = torch_linear(dict_size, input_dim if output_dim is None else output_dim, rngs=rngs)
    return {"w_enc": encoder.kernel[...], "b_enc": encoder.bias[...], "w_dec": decoder.kernel[...], "b_dec": decoder.bias[...]}, {}


def activate(pre: jax.Array, params: Params, buffers: dict, cfg: Config) -> jax.Array:
    return jax.nn.relu(pre)


def loss(p: Params, buffers: dict, batch: Batch, ctx: TrainContext, cfg: Config):
    features = jax.nn.relu(batch.pre_activation(p))
    error, l1 = mse(batch.decode(p, features), batch.target), jnp.mean(jnp.sum(jnp.abs(features), axis=1))
    return error + cfg.l1_coeff * l1, (features, buffers, {"mse": error, "l1": l1})


ARCHITECTURE = Architecture(
    name="relu-l1",
    summary="the seed's SAE: ReLU + L1, free decoder norms (Towards Monosemanticity's basic setup)",
    config=Config,
    init=init,
    activate=activate,
    loss=loss,
    key_map=(
        KeyMapEntry("encoder.weight", "w_enc", transpose=True),
        KeyMapEntry("encoder.bias", "b_enc"),
        KeyMapEntry("decoder.weight", "w_dec", transpose=True),
        KeyMapEntry("decoder.bias", "b_dec"),
    ),
    unit_decoder=False,
    keep_partial_batch=True,  # the seed's DataLoader(shuffle=True, drop_last=False)
    tied_bias=False,
    saelens=SaeLensFormat("standard", reads=("standard",)),  # with apply_b_dec_to_input false
)
