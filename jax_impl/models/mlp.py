"""The task MLP as a Flax NNX model with PyTorch semantics, and its readout from a hook point.

Attribute names mirror the upstream torch module (`input`, `bn1`, `hidden1`, ...) so that the key map in
jax_impl.interop.bridge is a rename plus a transpose of Linear kernels. This module is the one home of what the
MLP computes after a hook: `InterpretabilityMLP.readout_from` layer by layer (the forward pass), and `Readout`,
the same function as weights whose first layer is affine (bn2 folded in), which the analyses take apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

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

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (N, D) float32 -> (prediction (N, 1), layer2 (N, 512), the activation the seed's SAE decomposes)."""
        return self.forward_at(x, "layer2")

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
        prediction (N, 1). `Readout.from_mlp(self, hook)` is the same function with bn2 folded into hidden1."""
        if check_hook(hook) == "layer1":
            h = jax.nn.relu(self.bn2(self.hidden1(h)))
        if hook in ("layer1", "layer2"):
            h = jax.nn.relu(self.hidden2(h))
        return self.output(h)

    def forward_at(self, x: jax.Array, hook: str = DEFAULT_HOOK) -> tuple[jax.Array, jax.Array]:
        """x (N, D) -> (prediction (N, 1), the activation at `hook` (N, width))."""
        h = self.activation_at(x, hook)
        return self.readout_from(h, hook), h


@partial(jax.tree_util.register_dataclass, data_fields=["w1", "b1", "tail_w", "tail_b"], meta_fields=[])
@dataclass(frozen=True)
class Readout:
    """The MLP after the hook point: prediction = rest(h @ w1 + b1), rest(z) = the tail layers applied to
    ReLU(z): a = ReLU(z); a = ReLU(a @ W + b) for each tail layer but the last; prediction = a @ w + b.

    w1 (W, H), b1 (H,) float32; tail_w / tail_b: the tail's weights, the last one (H', ) and () (one output).
    Its first layer is affine, which is what makes the causal analysis cheap: moving the hook's activation
    along a direction d moves the first pre-activation along d @ w1.

    From `layer2`: w1 = hidden2, tail = output. From `layer1`: w1 = hidden1 with bn2 (eval mode, affine)
    folded in, tail = hidden2, output. From `layer3` the rest of the MLP is one affine map h @ w + b, written
    exactly in this form as ReLU(h @ [I, -I]) @ [w; -w] + b (ReLU(t) - ReLU(-t) = t).
    """

    w1: jax.Array
    b1: jax.Array
    tail_w: tuple[jax.Array, ...]
    tail_b: tuple[jax.Array, ...]

    @classmethod
    def from_mlp(cls, mlp: InterpretabilityMLP, hook: str = DEFAULT_HOOK) -> Readout:
        w_out, b_out = mlp.output.kernel[...][:, 0], mlp.output.bias[...][0]
        if check_hook(hook) == "layer3":
            eye = jnp.eye(w_out.shape[0], dtype=w_out.dtype)
            return cls(jnp.concatenate([eye, -eye], axis=1), jnp.zeros(2 * w_out.shape[0], w_out.dtype),
                       (jnp.concatenate([w_out, -w_out]),), (b_out,))
        w2, b2 = mlp.hidden2.kernel[...], mlp.hidden2.bias[...]
        if hook == "layer2":
            return cls(w2, b2, (w_out,), (b_out,))
        bn = mlp.bn2  # eval mode: y = (x - mean) / sqrt(var + eps) * weight + bias, an affine map per column
        scale = bn.weight[...] * jax.lax.rsqrt(bn.running_var[...] + bn.eps)
        w1 = mlp.hidden1.kernel[...] * scale
        b1 = (mlp.hidden1.bias[...] - bn.running_mean[...]) * scale + bn.bias[...]
        return cls(w1, b1, (w2, w_out), (b2, b_out))

    def rest(self, z: jax.Array) -> jax.Array:
        """After the first affine layer: pre-activation z (..., H) -> prediction (...)."""
        a = jax.nn.relu(z)
        for w, b in zip(self.tail_w[:-1], self.tail_b[:-1]):
            a = jax.nn.relu(a @ w + b)
        return a @ self.tail_w[-1] + self.tail_b[-1]

    def __call__(self, h: jax.Array) -> jax.Array:
        """The hook's activation (N, W) -> prediction (N,) float32."""
        return self.rest(h @ self.w1 + self.b1)
