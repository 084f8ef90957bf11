"""`jumprelu` (Rajamanoharan et al. 2024): features = pre * H(pre - threshold) with one trained threshold per
feature, and an L0 penalty. H has no useful gradient, so both the activation's and the L0's derivatives with
respect to the threshold come from straight-through estimators with a rectangle kernel of width `bandwidth`:

    d jumprelu / d threshold = -(threshold / bandwidth) * rect((pre - threshold) / bandwidth)
    d H(pre - threshold) / d threshold = -(1 / bandwidth) * rect((pre - threshold) / bandwidth)

The threshold is a parameter itself, not exp(log_threshold): with Adam's unit-sized steps of lr a log
parameterisation moves a 0.001 threshold by a factor e^lr per step at most, which in practice leaves it unmoved;
after each step it is clipped to stay >= MIN_THRESHOLD. The decoder's row norms are free (no renormalisation), as
in SAELens: the L0 penalty counts features and does not reward shrinking them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from jax_impl.checks import check_dict_size, require_finite
from jax_impl.saes import topk
from jax_impl.saes.anthropic import TIED_KEYS
from jax_impl.saes.base import (
    Architecture,
    Batch,
    KeyMapEntry,
    Params,
    SaeLensFormat,
    TrainContext,
    jump,
    mse,
)

MIN_THRESHOLD = 1e-6


@dataclass(frozen=True)
class Config:
    l0_coeff: float = 1e-4  # weight of the mean count of active features per row
    # The next three are SAELens' defaults. The kernel's width is in the units of the pre-activations: 0.05 suits
    # features of magnitude ~1 (DeepMind's 0.001 assumes activations scaled to unit mean squared norm).
    bandwidth: float = 0.05  # width of the rectangle kernel of the straight-through estimators
    init_threshold: float = 0.01
    # Initial norm of every decoder row; the encoder starts as the decoder's transpose, and the decoder's norms
    # are free in training (SAELens' decoder_init_norm, Anthropic's heuristic: small pre-activations at the
    # start). An L0 penalty does not reward shrinking the features, so nothing pins the norms. Measured on the
    # ground-truth benchmark (CHANGELOG.md), MCC at L0 ~4: unit encoder columns and unit decoder rows
    # 0.80; encoder columns of norm 0.1, unit decoder rows 0.88; this 0.89-0.90 (SAELens 0.895).
    decoder_init_norm: float = 0.1

    def validate(self, dict_size: int) -> None:
        require_finite(self)  # NaN passes every comparison below, inf every lower bound
        check_dict_size(dict_size)
        if self.l0_coeff < 0 or self.bandwidth <= 0 or self.init_threshold < MIN_THRESHOLD or self.decoder_init_norm <= 0:
            raise ValueError(
                f"l0_coeff must be >= 0, bandwidth > 0, init_threshold >= {MIN_THRESHOLD}, decoder_init_norm > 0; got "
                f"{self.l0_coeff}, {self.bandwidth}, {self.init_threshold}, {self.decoder_init_norm}"
            )


def _rect(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """pre (B, F) where pre > threshold (F,), else 0."""
    return jump(pre, threshold)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jump(pre, threshold), (pre, threshold)


def _jumprelu_bwd(bandwidth, saved, g):
    pre, threshold = saved
    d_pre = jnp.where(pre > threshold, g, 0.0)
    d_threshold = -(threshold / bandwidth) * _rect((pre - threshold) / bandwidth) * g
    return d_pre, jnp.sum(d_threshold.reshape(-1, threshold.shape[-1]), axis=0)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """1.0 where pre > threshold, else 0.0 (B, F); gradient only to the threshold (straight through)."""
    return (pre > threshold).astype(pre.dtype)


def _heaviside_fwd(pre, threshold, bandwidth):
    return heaviside(pre, threshold, bandwidth), (pre, threshold)


def _heaviside_bwd(bandwidth, saved, g):
    pre, threshold = saved
    d_threshold = -(1.0 / bandwidth) * _rect((pre - threshold) / bandwidth) * g
    return jnp.zeros_like(pre), jnp.sum(d_threshold.reshape(-1, threshold.shape[-1]), axis=0)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


def init(key: jax.Array, input_dim: int, dict_size: int, cfg: Config, output_dim: int | None = None) -> tuple[Params, dict]:
    params, _ = topk.init(key, input_dim, dict_size, cfg, output_dim)  # unit decoder rows, encoder = their transpose
    params = params | {"w_enc": params["w_enc"] * cfg.decoder_init_norm, "w_dec": params["w_dec"] * cfg.decoder_init_norm}
    return params | {"threshold": jnp.full((dict_size,), cfg.init_threshold, jnp.float32)}, {}


def activate(pre: jax.Array, params: Params, buffers: dict, cfg) -> jax.Array:
    return jump(pre, params["threshold"])


def loss(p: Params, buffers: dict, batch: Batch, ctx: TrainContext, cfg: Config):
    """MSE(reconstruction, target) + l0_coeff * batch mean of the count of active features."""
    pre = batch.pre_activation(p)
    features = jumprelu(pre, p["threshold"], cfg.bandwidth)
    l0 = jnp.mean(jnp.sum(heaviside(pre, p["threshold"], cfg.bandwidth), axis=-1))
    error = mse(batch.decode(p, features), batch.target)
    return error + cfg.l0_coeff * l0, (features, buffers, {"mse": error, "l0_penalty": l0})


def keep_thresholds_positive(p: Params) -> Params:
    return p | {"threshold": jnp.maximum(p["threshold"], MIN_THRESHOLD)}


ARCHITECTURE = Architecture(
    name="jumprelu",
    summary="Rajamanoharan et al. 2024: per-feature trained thresholds (straight-through), L0 penalty",
    config=Config,
    init=init,
    activate=activate,
    loss=loss,
    key_map=(KeyMapEntry("b_dec", "b_dec"), KeyMapEntry("threshold", "threshold"), *TIED_KEYS),
    post_update=keep_thresholds_positive,
    unit_decoder=False,
    static_floats=("bandwidth",),  # jumprelu()'s and heaviside()'s nondiff_argnums
    saelens=SaeLensFormat("jumprelu", reads=("jumprelu",)),
)
