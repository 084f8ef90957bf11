"""What every SAE architecture of the family shares: the interface, the tied-bias parameterisation, the hooks.

An architecture (one module of this package each) is an `Architecture`: its config dataclass, its
initialisation, its inference activation, its training loss, its extra buffers and its torch key map.
The trainer (jax_impl.training.sae_trainer) and the bridge, atlas, export and CLI only ever ask the registry
(jax_impl.saes) for one; none of them branches on a name.

Tied-bias parameterisation (all architectures but the seed's `relu-l1`, and no transcoder):

    pre = (x - b_dec) @ w_enc + b_enc            x (N, D), w_enc (D, F), b_enc (F,)
    features = activate(pre)                     (N, F), non-negative
    reconstruction = features @ w_dec + b_dec    w_dec (F, D), each row a unit-norm feature direction

After every optimizer step the component of each decoder row's gradient along that row is removed and the
rows are renormalised: with free norms a sparsity penalty is dodged by shrinking f and growing w_dec, and
unit norms make activations comparable across features.

Transcoders: every architecture also trains as a transcoder (Dunefsky et al. 2024), whose encoder reads one
activation x (N, D_in) and whose decoder predicts another, the target (N, D_out): w_enc (D_in, F), w_dec
(F, D_out), b_dec (D_out,), no pre-encoder bias (b_dec lives in the output's space), and optionally a linear
skip connection w_skip (D_in, D_out), initialised to zero (Paulo et al. 2025):

    prediction = activate(x @ w_enc + b_enc) @ w_dec + b_dec + x @ w_skip

A loss sees a `Batch` (x, target; target is x for an SAE) and never asks which of the two it trains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Params = dict[str, jax.Array]  # trained: w_enc (D, F), b_enc (F,), w_dec (F, D), b_dec (D,) (+ e.g. threshold (F,),
#                                  a transcoder's w_skip (D_in, D_out))
Buffers = dict[str, jax.Array]  # saved but not trained (e.g. batchtopk's inference threshold ())

AUX_K_FACTOR = 4  # dead latents AuxK may use per row, in units of k (Gao et al. use 512 with k = 32)
TRANSCODER_KEY = "transcoder"  # int64 scalar 1 in a transcoder's state_dict: what tells it from an SAE of equal widths
SKIP_KEY = "skip.weight"  # a skip transcoder's w_skip in a state_dict, torch Linear layout (D_out, D_in)


# --------------------------------------------------------------------------- shared math


def unit_rows(w: jax.Array) -> jax.Array:
    """Each row of w (F, D) scaled to unit L2 norm."""
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def pre_activation(p: Params, x: jax.Array) -> jax.Array:
    """x (..., D) -> encoder pre-activations (..., F), after subtracting the pre-encoder bias b_dec."""
    return (x - p["b_dec"]) @ p["w_enc"] + p["b_enc"]


def decode(p: Params, features: jax.Array) -> jax.Array:
    """features (..., F) -> reconstruction (..., D) (without a transcoder's skip term: Batch.decode adds it)."""
    return features @ p["w_dec"] + p["b_dec"]


def with_skip(p: Params, x: jax.Array, out: jax.Array) -> jax.Array:
    """out (..., D_out) plus a skip transcoder's linear term x (..., D_in) @ w_skip (D_in, D_out); out itself
    (no addition, so an SAE's numbers are untouched) without one."""
    return out + x @ p["w_skip"] if "w_skip" in p else out


@partial(jax.tree_util.register_dataclass, data_fields=["x", "target"], meta_fields=["tied"])
@dataclass(frozen=True)
class Batch:
    """What a loss trains on: the encoder's input x (B, D_in) and the decoder's target (B, D_out), which is x
    itself for an SAE. tied: subtract b_dec from x before encoding (an SAE of a tied-bias architecture)."""

    x: jax.Array
    target: jax.Array
    tied: bool

    def pre_activation(self, p: Params) -> jax.Array:
        """The encoder's pre-activations (B, F)."""
        return pre_activation(p, self.x) if self.tied else self.x @ p["w_enc"] + p["b_enc"]

    def decode(self, p: Params, features: jax.Array) -> jax.Array:
        """features (B, F) -> the prediction of the target (B, D_out), skip term included."""
        return with_skip(p, self.x, decode(p, features))

    def decode_sparse(self, p: Params, values: jax.Array, indices: jax.Array) -> jax.Array:
        """decode() from k active latents per row (decode_sparse)."""
        return with_skip(p, self.x, decode_sparse(p, values, indices))


def keep_top_k(pre: jax.Array, k: int) -> jax.Array:
    """ReLU of the k largest entries of each row of pre (..., F), zero elsewhere."""
    values, indices = top_k_sparse(pre, k)
    return jnp.put_along_axis(jnp.zeros_like(pre), indices, values, axis=-1, inplace=False)


def top_k_sparse(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k largest entries of each row of pre (B, F), ReLU'd, and their latents: ((B, k), (B, k) int32)."""
    values, indices = jax.lax.top_k(pre, k)
    return jax.nn.relu(values), indices


def decode_sparse(p: Params, values: jax.Array, indices: jax.Array) -> jax.Array:
    """The reconstruction (B, D) from k active latents per row: values (B, k), indices (B, k).

    Equal to decode() of the dense features, at k/F of its cost: the decoder rows are gathered instead of
    multiplying the F - k zeros of every row (the backward pass is a scatter-add into those k rows)."""
    return jnp.einsum("bk,bkd->bd", values, p["w_dec"][indices]) + p["b_dec"]


def keep_batch_top_k(pre: jax.Array, k: int) -> jax.Array:
    """ReLU of the k x B largest entries of the whole batch pre (B, F), zero elsewhere (Bussmann et al. 2024)."""
    flat = pre.reshape(-1)
    values, indices = jax.lax.top_k(flat, k * pre.shape[0])
    return jnp.zeros_like(flat).at[indices].set(jax.nn.relu(values)).reshape(pre.shape)


def jump(pre: jax.Array, threshold: jax.Array) -> jax.Array:
    """pre where pre > threshold, else 0 (threshold () or (F,), positive): the inference activation of the
    threshold architectures."""
    return jnp.where(pre > threshold, pre, 0.0)


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(a - b))


def aux_k_loss(p: Params, pre: jax.Array, target: jax.Array, reconstruction: jax.Array, dead: jax.Array, aux_k: int,
               group_dead: jax.Array | None = None) -> jax.Array:
    """Gao et al.'s AuxK: MSE(the aux_k largest dead pre-activations decoded without bias, target - reconstruction).

    pre (B, F), dead (F,) bool. 0 when nothing is dead. No ReLU on the dead pre-activations: a latent whose
    pre-activation is negative on every row would get no gradient through one, and those are the ones to revive.
    The residual target - reconstruction (target: x for an SAE) is a target for the dead latents, not a loss to
    lower: no gradient flows into the reconstruction. group_dead () int32: under a sweep's vmap, the largest count of dead latents in
    the configurations trained together (TrainContext.group_dead; None: this one's own count).
    """
    residual = jax.lax.stop_gradient(target - reconstruction)
    n_dead = jnp.sum(dead, dtype=jnp.int32)
    return _dead_latent_loss(p["w_dec"], pre, residual, dead, n_dead if group_dead is None else group_dead, aux_k)


def at_least_kth_largest(x: jax.Array, valid: jax.Array, k: int) -> jax.Array:
    """(B, C) bool: the entries of each row of x (B, C) float32 that are >= its k-th largest valid entry
    (valid (C,) or (B, C) bool; all valid entries where a row has fewer than k).

    A radix select: the k-th largest is found bit by bit on float32's order-preserving unsigned key, 32
    compare-and-count passes over the row, with no sort. XLA:CPU's top_k sorts each row, and with k a large
    share of the row (AuxK: 4k of the few hundred dead latents) that costs several times these passes. The
    same set as top_k's except for exact ties at the k-th value, which top_k breaks arbitrarily and this keeps.
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))  # larger float -> larger key
    keys = jnp.where(valid, keys, jnp.uint32(0))

    def next_bit(i, prefix):
        candidate = prefix | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        enough = jnp.sum(keys >= candidate, axis=-1, keepdims=True) >= k
        return jnp.where(enough, candidate, prefix)

    kth = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32))
    return valid & (keys >= kth)


def _dead_latent_branches(dead: jax.Array, group_dead: jax.Array, aux_k: int) -> tuple[jax.Array, list[Callable]]:
    """(branch index, branches): AuxK on the dead latents only, each branch `loss(w_dec, pre, residual)`.

    The dead latents' columns of pre are gathered into a block of `cap` columns, the smallest of aux_k,
    2 aux_k, 4 aux_k, ..., F that holds them all (one compiled branch per size, chosen per step), so the top-k
    and the decoding cost cap/F of the whole dictionary's. With at most aux_k dead latents (most of training)
    the top-k would keep all of them and is skipped. Branch 0: nothing is dead, nothing is computed. Equal to
    the top-k over the whole masked row up to float32 summation order and exact ties at the aux_k-th value
    (parity_tests/test_sae_family.py).

    The branch is chosen by group_dead, which under a sweep's vmap is the same for every configuration of the
    group (a per-configuration index would turn the switch into a select that runs every branch); each
    configuration then uses its own dead latents, and one with none gets 0.
    """
    dict_size = dead.shape[0]
    caps = sorted({min(aux_k << i, dict_size) for i in range(dict_size.bit_length() + 1)})
    n_dead = jnp.sum(dead, dtype=jnp.int32)

    def compact_loss(cap: int) -> Callable:
        def loss_of(w_dec: jax.Array, pre: jax.Array, residual: jax.Array) -> jax.Array:
            latents = jnp.nonzero(dead, size=cap, fill_value=0)[0]  # (cap,) the dead latents first, ascending
            valid = jnp.arange(cap) < n_dead
            dead_pre = pre[:, latents]  # (B, cap)
            if cap > aux_k:  # keep each row's aux_k largest among the dead
                keep = at_least_kth_largest(jax.lax.stop_gradient(dead_pre), valid, aux_k)
            else:
                keep = jnp.broadcast_to(valid, dead_pre.shape)
            dead_features = jnp.where(keep, dead_pre, 0.0)
            return jnp.where(n_dead > 0, mse(dead_features @ w_dec[latents], residual), 0.0)

        return loss_of

    branches = [lambda w_dec, pre, residual: jnp.zeros((), pre.dtype)] + [compact_loss(cap) for cap in caps]
    index = jnp.where(group_dead == 0, 0, 1 + jnp.searchsorted(jnp.asarray(caps, jnp.int32), group_dead))
    return index, branches


# A custom VJP so that the backward pass runs only the chosen branch's own backward: differentiating a
# lax.switch directly makes every step materialise the (zero-filled) intermediates of all branches.
@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _dead_latent_loss(w_dec: jax.Array, pre: jax.Array, residual: jax.Array, dead: jax.Array, group_dead: jax.Array,
                      aux_k: int) -> jax.Array:
    index, branches = _dead_latent_branches(dead, group_dead, aux_k)
    return jax.lax.switch(index, branches, w_dec, pre, residual)


def _dead_latent_loss_fwd(w_dec, pre, residual, dead, group_dead, aux_k):
    return _dead_latent_loss(w_dec, pre, residual, dead, group_dead, aux_k), (w_dec, pre, residual, dead, group_dead)


def _dead_latent_loss_bwd(aux_k, saved, g):
    w_dec, pre, residual, dead, group_dead = saved
    index, branches = _dead_latent_branches(dead, group_dead, aux_k)

    def backward(branch: Callable) -> Callable:
        def grads(w_dec, pre, residual):
            _, vjp = jax.vjp(lambda w, a: branch(w, a, residual), w_dec, pre)
            return vjp(g)
        return grads

    grad_w_dec, grad_pre = jax.lax.switch(index, [backward(b) for b in branches], w_dec, pre, residual)
    return grad_w_dec, grad_pre, jnp.zeros_like(residual), None, None


_dead_latent_loss.defvjp(_dead_latent_loss_fwd, _dead_latent_loss_bwd)


def project_out_parallel(grads: Params, p: Params) -> Params:
    """Remove from each decoder row's gradient its component along the (unit) row: the norm stays 1."""
    g, w = grads["w_dec"], p["w_dec"]
    return grads | {"w_dec": g - jnp.sum(g * w, axis=1, keepdims=True) * w}


def renormalise_decoder(p: Params) -> Params:
    return p | {"w_dec": unit_rows(p["w_dec"])}


def tied_init(key: jax.Array, input_dim: int, dict_size: int, output_dim: int | None = None) -> Params:
    """Gao et al.'s init: random unit decoder rows, encoder = their transpose, zero biases.

    A transcoder (output_dim given) has no transpose to take: its encoder columns are drawn independently, unit
    norm in the input's space, its decoder rows unit norm in the output's."""
    if output_dim is None:
        directions = unit_rows(jax.random.normal(key, (dict_size, input_dim), jnp.float32))
        encoder = directions.T
    else:
        decoder_key, encoder_key = jax.random.split(key)
        directions = unit_rows(jax.random.normal(decoder_key, (dict_size, output_dim), jnp.float32))
        encoder = unit_rows(jax.random.normal(encoder_key, (dict_size, input_dim), jnp.float32)).T
    return {
        "w_enc": encoder, "b_enc": jnp.zeros((dict_size,), jnp.float32),
        "w_dec": directions, "b_dec": jnp.zeros((directions.shape[1],), jnp.float32),
    }


# --------------------------------------------------------------------------- the interface


@dataclass(frozen=True)
class KeyMapEntry:
    """One torch state_dict key: where its value lives here and how it is stored there.

    source: "param" (trained, in Params), "buffer" (in Buffers) or "config" (a field of the architecture
    config, saved so the file says what it was trained with, e.g. `k`). transpose: a Linear weight (torch
    (out, in) vs our (in, out)). dtype: the torch dtype's numpy name.
    """

    torch_key: str
    name: str
    source: str = "param"
    transpose: bool = False
    dtype: str = "float32"


@dataclass(frozen=True)
class SaeLensFormat:
    """How an architecture is written in SAELens's on-disk format (jax_impl.interop.saelens) and read back from it.

    architecture: the SAELens architecture written to cfg.json (the inference one: SAELens itself saves a
    trained BatchTopK as "jumprelu" with its threshold in every feature). reads: the SAELens architectures
    built as this one when a file carries none of our metadata, for the SAELens `apply_b_dec_to_input` that
    equals our `tied_bias`. SAELens's tensors are ours by name, in our layout (W_enc (D, F), W_dec (F, D)):
    w_enc -> W_enc, b_enc -> b_enc, w_dec -> W_dec, b_dec -> b_dec, threshold -> threshold.
    """

    architecture: str
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainContext:
    """What a loss may depend on beside the batch: dead (F,) bool latents silent for `dead_after` steps;
    group_dead () int32: the largest count of dead latents in a sweep's vmapped group (None outside a sweep)."""

    dead: jax.Array
    group_dead: jax.Array | None = None


@dataclass(frozen=True)
class Architecture:
    """One SAE architecture. Functions take `cfg`, an instance of `config` (static under jit: frozen, hashable).

    init(key, input_dim, dict_size, cfg, output_dim=None) -> (Params, Buffers)   (output_dim: a transcoder's)
    activate(pre (N, F), params, buffers, cfg) -> features (N, F)   (inference: needs no batch)
    loss(params, buffers, batch: Batch, ctx, cfg) -> (loss, (features (B, F), new buffers, terms))   (training;
        terms: the loss's parts by name, () float32 each, "mse" (the reconstruction's) always: training curves)
    epoch_hook(params, opt_state, rows: Batch (M rows), key, epoch, cfg, train_cfg) -> (params, opt_state, line | None)
    unit_decoder: remove the parallel gradient and renormalise the decoder rows after each step.
    keep_partial_batch: train on the last, shorter batch of an epoch too (torch DataLoader's default, the
    seed recipe's), instead of dropping the remainder (needed where the batch size enters the loss).
    """

    name: str
    summary: str
    config: type
    init: Callable[..., tuple[Params, Buffers]]
    activate: Callable[..., jax.Array]
    loss: Callable[..., tuple[jax.Array, tuple[jax.Array, Buffers, dict[str, jax.Array]]]]
    key_map: tuple[KeyMapEntry, ...]
    unit_decoder: bool = True
    keep_partial_batch: bool = False
    epoch_hook: Callable[..., tuple[Params, Any, str | None]] | None = None
    post_update: Callable[[Params], Params] | None = None  # e.g. keep jumprelu's thresholds positive
    resolve: Callable[[Any, int], Any] | None = None  # cfg, dict_size -> cfg with its defaults made explicit
    tied_bias: bool = True  # pre-encoder bias b_dec subtracted, and b_dec initialised to the mean row
    saelens: SaeLensFormat | None = None  # None: not expressible in SAELens's format
    # Config floats that must stay Python constants under jit (e.g. a custom_vjp's non-differentiable
    # argument). A sweep (jax_impl.training.vmapped) passes every other float field as a traced, vmapped value, and
    # groups configurations that differ in one of these into separate programs, like ints and tuples.
    static_floats: tuple[str, ...] = ()

    def config_from_file(self, values: Mapping[str, Any]) -> Any:
        """The config recorded in a state_dict (its "config" keys, e.g. k), other fields at their defaults."""
        return self.config(**{name: (tuple(v) if isinstance(v, list) else v) for name, v in values.items()})

    def pre_activation(self, params: Params, x: jax.Array, transcoder: bool = False) -> jax.Array:
        if self.tied_bias and not transcoder:
            return pre_activation(params, x)
        return x @ params["w_enc"] + params["b_enc"]

    def encode(self, params: Params, buffers: Buffers, x: jax.Array, cfg: Any, transcoder: bool = False) -> jax.Array:
        """x (..., D_in) -> features (..., F) at inference."""
        return self.activate(self.pre_activation(params, x, transcoder), params, buffers, cfg)

    def batch(self, x: jax.Array, target: jax.Array | None = None) -> Batch:
        """The Batch a loss of this architecture trains on: an SAE's (target None) or a transcoder's."""
        return Batch(x, x, self.tied_bias) if target is None else Batch(x, target, False)

    def config_keys(self) -> tuple[str, ...]:
        return tuple(e.torch_key for e in self.key_map)


class SAE(nnx.Module):
    """Any architecture's SAE or transcoder as one nnx module: trained tensors as nnx.Param, buffers as
    nnx.BatchStat.

    `sae(x)` -> (reconstruction (N, D) or a transcoder's prediction (N, D_out), features (N, F)) at inference.
    transcoder: the decoder predicts another activation than the encoder reads (no pre-encoder bias; skip term
    where params hold w_skip).
    """

    def __init__(self, arch: Architecture, cfg: Any, params: Params, buffers: Buffers, transcoder: bool = False):
        self.arch = arch
        self.cfg = cfg  # frozen dataclass: static
        self.transcoder = bool(transcoder)
        if "w_skip" in params and not self.transcoder:
            raise ValueError("a skip connection (w_skip) needs a transcoder")
        self.input_dim, self.dict_size = (int(s) for s in params["w_enc"].shape)
        self.output_dim = int(params["w_dec"].shape[1])
        self.p = nnx.Dict({k: nnx.Param(jnp.asarray(v)) for k, v in params.items()})
        self.b = nnx.Dict({k: nnx.BatchStat(jnp.asarray(v)) for k, v in buffers.items()})

    def params(self) -> Params:
        return {k: v[...] for k, v in self.p.items()}

    def buffers(self) -> Buffers:
        return {k: v[...] for k, v in self.b.items()}

    @property
    def skip(self) -> bool:
        return "w_skip" in self.p

    def encode(self, x: jax.Array) -> jax.Array:
        """x (..., D_in) -> features (..., F), non-negative."""
        return self.arch.encode(self.params(), self.buffers(), x, self.cfg, self.transcoder)

    def decode(self, features: jax.Array, x: jax.Array | None = None) -> jax.Array:
        """features (..., F) -> (..., D_out); x (..., D_in): the input, needed for a skip transcoder's term."""
        p = self.params()
        if self.skip and x is None:
            raise ValueError("a skip transcoder's decode needs its input x")
        return with_skip(p, x, decode(p, features))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = self.encode(x)
        return self.decode(features, x), features


def numpy_state(sae: SAE) -> dict[str, np.ndarray]:
    """The SAE's tensors by torch key (torch layout and dtype), in the architecture's key order; a transcoder's
    then add TRANSCODER_KEY (int64 1) and, with a skip connection, SKIP_KEY (D_out, D_in)."""
    p, b = sae.params(), sae.buffers()
    out = {}
    for e in sae.arch.key_map:
        if e.source == "config":
            value = np.asarray(getattr(sae.cfg, e.name), dtype=e.dtype)
        else:
            value = np.asarray((p if e.source == "param" else b)[e.name])
            value = value.T if e.transpose else value
        out[e.torch_key] = np.array(value, dtype=e.dtype, order="C")
    if sae.transcoder:
        out[TRANSCODER_KEY] = np.array(1, dtype=np.int64)
    if sae.skip:
        out[SKIP_KEY] = np.array(np.asarray(p["w_skip"]).T, dtype=np.float32, order="C")
    return out
