"""An SAE's weights as the analyses use them (the atlas, the causal map): encode and decode as plain functions of
arrays, so that an analysis runs on any SAE architecture, on a hand-built dictionary or on one read from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax

from jax_impl.saes import SAE, Architecture


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["w_enc", "b_enc", "w_dec", "b_dec", "b_pre", "threshold"], meta_fields=["arch", "cfg"],
)
@dataclass(frozen=True)
class Dictionary:
    """SAE weights: features = act((x - b_pre) @ w_enc + b_enc); reconstruction = features @ w_dec + b_dec.

    w_enc (512, F), b_enc (F,), w_dec (F, 512), b_dec (512,) float32; row j of w_dec is
    feature j's decoder direction. b_pre (512,) is the tied pre-encoder bias (None: the seed's SAE has none);
    act is the SAE architecture's inference activation (`arch`, with its config `cfg` and its `threshold`
    where it has one), or ReLU when arch is None.
    """

    w_enc: jax.Array
    b_enc: jax.Array
    w_dec: jax.Array
    b_dec: jax.Array
    b_pre: jax.Array | None = None
    threshold: jax.Array | None = None
    arch: Architecture | None = None
    cfg: Any = None

    @classmethod
    def from_sae(cls, sae: SAE) -> Dictionary:
        p, buffers = sae.params(), sae.buffers()
        threshold = p.get("threshold", buffers.get("threshold"))
        b_pre = p["b_dec"] if sae.arch.tied_bias else None
        return cls(p["w_enc"], p["b_enc"], p["w_dec"], p["b_dec"], b_pre, threshold, sae.arch, sae.cfg)

    def encode(self, x: jax.Array) -> jax.Array:
        """(N, 512) -> features (N, F) float32."""
        pre = (x if self.b_pre is None else x - self.b_pre) @ self.w_enc + self.b_enc
        if self.arch is None:
            return jax.nn.relu(pre)
        extra = {} if self.threshold is None else {"threshold": self.threshold}
        return self.arch.activate(pre, extra, extra, self.cfg)

    def decode(self, features: jax.Array) -> jax.Array:
        """(N, F) -> reconstruction (N, 512) float32."""
        return features @ self.w_dec + self.b_dec
