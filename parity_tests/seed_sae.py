"""The seed's SAE as the upstream script wrote it: an nnx module (`SparseAutoencoder`, encoder/decoder Linear
layers), its MSE + L1 loss and its training loop. Only the parity tests and benchmarks use it: they compare it
with the PyTorch reference step by step. The library trains the same architecture as `relu-l1` of the SAE
family (jax_impl.saes.relu_l1, whose init draws the same numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.interop import bridge
from jax_impl.jobs.run_config import SAEConfig
from jax_impl.models.mlp import LAYER2_WIDTH, torch_linear
from jax_impl.training.loop import Log, TrainResult, fit_module
from jax_impl.training.sae_trainer import sae_optimizer

# upstream state_dict key -> (the module's layer, its attribute, transposed in torch's layout)
SAE_KEY_MAP: dict[str, tuple[str, str, bool]] = {
    "encoder.weight": ("encoder", "kernel", True),
    "encoder.bias": ("encoder", "bias", False),
    "decoder.weight": ("decoder", "kernel", True),
    "decoder.bias": ("decoder", "bias", False),
}


def sae_loss(sae: SparseAutoencoder, x: jax.Array, l1_coeff: float) -> jax.Array:
    """MSE(reconstruction, x) + l1_coeff * batch mean of each row's L1 norm of the features. x (B, 512)."""
    reconstruction, features = sae(x)
    mse = jnp.mean(jnp.square(reconstruction - x))
    return mse + l1_coeff * jnp.mean(jnp.sum(jnp.abs(features), axis=1))


def fit_sae(
    sae: SparseAutoencoder,
    activations: np.ndarray,
    cfg: SAEConfig,
    *,
    key: jax.Array | None = None,
    permutations: np.ndarray | None = None,
    log: Log = print,
) -> TrainResult:
    """Train the SAE with the seed recipe: Adam, MSE + L1. activations (N, 512) float32.

    Prints `SAE Epoch [10/100] | Loss: 0.004299` (mean of the epoch's batch losses) every `cfg.log_every`.
    """
    x = jnp.asarray(activations, jnp.float32)
    loss_fn = partial(sae_loss, l1_coeff=cfg.architecture.l1_coeff)

    def on_epoch_end(current: SparseAutoencoder, e: int, losses: np.ndarray) -> str | None:
        if (e + 1) % cfg.log_every:
            return None
        return f"SAE Epoch [{e + 1}/{cfg.epochs}] | Loss: {losses.mean():.6f}"

    return fit_module(
        sae, loss_fn, (x,), sae_optimizer(cfg), epochs=cfg.epochs, batch_size=cfg.batch_size, key=key,
        permutations=permutations, stage="SAE", on_epoch_end=on_epoch_end, log=log,
    )


class SparseAutoencoder(nnx.Module):
    """features = ReLU(encoder(x)) (dict_size), reconstruction = decoder(features)."""

    def __init__(self, input_dim: int = LAYER2_WIDTH, dict_size: int = 2048, *, rngs: nnx.Rngs):
        self.encoder = torch_linear(input_dim, dict_size, rngs=rngs)
        self.decoder = torch_linear(dict_size, input_dim, rngs=rngs)

    def encode(self, x: jax.Array) -> jax.Array:
        """x (N, 512) -> features (N, dict_size), non-negative."""
        return jax.nn.relu(self.encoder(x))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (N, 512) -> (reconstruction (N, 512), features (N, dict_size))."""
        features = self.encode(x)
        return self.decoder(features), features


def seed_sae_from_state_dict(sd: Mapping[str, object], *, source: str = "state_dict") -> SparseAutoencoder:
    """The nnx SparseAutoencoder holding upstream `encoder.*`/`decoder.*` tensors (checked as the library checks
    them: bridge.sae_from_state_dict reads them as a relu-l1 SAE)."""
    params = bridge.sae_from_state_dict(sd, source=source).params()
    width, dict_size = params["w_enc"].shape
    module = SparseAutoencoder(width, dict_size, rngs=nnx.Rngs(0))
    module.encoder.kernel = nnx.Param(params["w_enc"])
    module.encoder.bias = nnx.Param(params["b_enc"])
    module.decoder.kernel = nnx.Param(params["w_dec"])
    module.decoder.bias = nnx.Param(params["b_dec"])
    return module


def seed_sae_as_family(module: SparseAutoencoder):
    """The module as the library's relu-l1 SAE (jax_impl.saes.SAE), e.g. to save it with bridge.save_sae."""
    from jax_impl import saes
    from jax_impl.saes.base import SAE

    arch = saes.get("relu-l1")
    params = {"w_enc": module.encoder.kernel[...], "b_enc": module.encoder.bias[...],
              "w_dec": module.decoder.kernel[...], "b_dec": module.decoder.bias[...]}
    return SAE(arch, arch.config(), params, {})
