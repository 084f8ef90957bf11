"""Flax NNX models with PyTorch semantics: the task MLP and the sparse autoencoder.

Attribute names mirror the upstream torch modules (`layers.input`, `layers.bn1`, ...; `encoder`, `decoder`)
so that the key map in `bridge.py` is a rename plus a transpose of Linear kernels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

LAYER1_WIDTH = 256
LAYER2_WIDTH = 512  # the hooked `layer2` activation the SAE decomposes
LAYER3_WIDTH = 256

# Hook points: the post-ReLU activations an SAE can decompose (`--hook`), and their widths. layer2 (after bn2)
# is the seed's; layer1 is after bn1, layer3 after hidden2.
HOOKS = ("layer1", "layer2", "layer3")
HOOK_WIDTHS = {"layer1": LAYER1_WIDTH, "layer2": LAYER2_WIDTH, "layer3": LAYER3_WIDTH}
DEFAULT_HOOK = "layer2"


def check_hook(hook: str) -> str:
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; expected one of {', '.join(HOOKS)}")
    return hook


def _torch_uniform(fan_in: int):
    """torch.nn.Linear's default init for both weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """An nnx.Linear (kernel (in, out)) initialised like torch.nn.Linear (weight (out, in))."""
    init = _torch_uniform(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


class TorchBatchNorm1d(nnx.Module):
    """BatchNorm1d with torch's semantics, which flax's nnx.BatchNorm does not have.

    Training mode normalises with the biased batch variance but stores the *unbiased* one
    (n / (n - 1)) in `running_var`; `running = (1 - momentum) * running + momentum * batch` with torch's
    momentum 0.1 (flax's `momentum=0.9` is the same update written the other way round); eps 1e-5.
    `model.eval()` / `model.train()` toggle `use_running_average` like any nnx BatchNorm.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        # int64 in torch; int32 here because JAX runs without x64 (the bridge converts).
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.momentum = momentum
        self.eps = eps
        self.use_running_average = False

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (N, C) in training mode; (..., C) in eval mode (a single row (C,) works, for vmap)."""
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            n = x.shape[0]
            if x.ndim != 2 or n < 2:
                raise ValueError(f"BatchNorm in training mode needs a (N>=2, C) batch, got shape {x.shape}")
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * mean
            self.running_var[...] = (1 - m) * self.running_var[...] + m * var * (n / (n - 1))
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class InterpretabilityMLP(nnx.Module):
    """input -> bn1 -> ReLU -> hidden1 -> bn2 -> ReLU (= layer2, 512) -> hidden2 -> ReLU -> output."""

    def __init__(self, input_dim: int = 10, *, rngs: nnx.Rngs):
        self.input = torch_linear(input_dim, LAYER1_WIDTH, rngs=rngs)
        self.bn1 = TorchBatchNorm1d(LAYER1_WIDTH)
        self.hidden1 = torch_linear(LAYER1_WIDTH, LAYER2_WIDTH, rngs=rngs)
        self.bn2 = TorchBatchNorm1d(LAYER2_WIDTH)
        self.hidden2 = torch_linear(LAYER2_WIDTH, LAYER3_WIDTH, rngs=rngs)
        self.output = torch_linear(LAYER3_WIDTH, 1, rngs=rngs)

    def hidden_activation(self, x: jax.Array) -> jax.Array:
        """x (N, D) float32 -> layer2 (N, 512) float32 (the activation the SAE decomposes)."""
        h = jax.nn.relu(self.bn1(self.input(x)))
        return jax.nn.relu(self.bn2(self.hidden1(h)))

    def readout(self, layer2: jax.Array) -> jax.Array:
        """layer2 (N, 512) -> prediction (N, 1). Splicing an SAE reconstruction in goes through here."""
        return self.output(jax.nn.relu(self.hidden2(layer2)))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (N, D) -> (prediction (N, 1), layer2 (N, 512))."""
        layer2 = self.hidden_activation(x)
        return self.readout(layer2), layer2

    def activation_at(self, x: jax.Array, hook: str = DEFAULT_HOOK) -> jax.Array:
        """x (N, D) -> the activation at `hook` (N, HOOK_WIDTHS[hook]) float32."""
        check_hook(hook)
        layer1 = jax.nn.relu(self.bn1(self.input(x)))
        if hook == "layer1":
            return layer1
        layer2 = jax.nn.relu(self.bn2(self.hidden1(layer1)))
        return layer2 if hook == "layer2" else jax.nn.relu(self.hidden2(layer2))

    def readout_from(self, h: jax.Array, hook: str = DEFAULT_HOOK) -> jax.Array:
        """The activation at `hook` (N, width), possibly edited (an SAE's reconstruction spliced in) ->
        prediction (N, 1)."""
        if check_hook(hook) == "layer1":
            h = jax.nn.relu(self.bn2(self.hidden1(h)))
        if hook in ("layer1", "layer2"):
            h = jax.nn.relu(self.hidden2(h))
        return self.output(h)

    def forward_at(self, x: jax.Array, hook: str = DEFAULT_HOOK) -> tuple[jax.Array, jax.Array]:
        """x (N, D) -> (prediction (N, 1), the activation at `hook` (N, width))."""
        h = self.activation_at(x, hook)
        return self.readout_from(h, hook), h


