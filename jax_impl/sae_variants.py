"""SAE variants beside the seed's ReLU + L1 one: TopK (Gao et al. 2024) and Anthropic's (Towards Monosemanticity).

Both have a pre-encoder bias tied to the decoder bias and unit-norm decoder directions:

    features = act((x - b_dec) @ w_enc + b_enc)        x (N, D), w_enc (D, F)
    reconstruction = features @ w_dec + b_dec          w_dec (F, D), each row unit-norm

- `topk`: act keeps each row's k largest pre-activations (ReLU'd) and zeroes the rest, so L0 <= k by
  construction and no L1 penalty shrinks the features. Latents that have not fired for an epoch's worth of
  steps are "dead"; the AuxK loss asks the top `AUX_K_FACTOR * k` dead pre-activations to reconstruct the
  residual x - x_hat, which gives them a gradient back towards the data (weight `aux_coeff`, Gao: 1/32).
- `anthropic`: act = ReLU, loss = MSE + l1_coeff * sum |f|. Every `resample_every` epochs the features that
  fire on no training row are re-initialised towards rows the SAE reconstructs worst (drawn with probability
  proportional to the squared loss), with encoder norm 0.2 x the mean of the live ones and fresh Adam moments.

In both, after every step the component of each decoder row's gradient along that row is removed and the
rows are renormalised: with free norms an L1 penalty is dodged by shrinking f and growing w_dec, and a unit
norm makes activations comparable across features.

The torch classes with the same keys (`b_dec`, `k` for topk, `encoder.{weight,bias}`, `decoder.weight`)
are in torch_ref/sae_variants.py; the bridge tells the variants apart by those keys.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.config import SAEConfig
from jax_impl.models import LAYER2_WIDTH
from jax_impl.train import Log, TrainResult, run_epochs

AUX_K_FACTOR = 4  # dead latents AuxK may use per row, in units of k (Gao et al. use 512 with k = 32)
RESAMPLE_ENCODER_SCALE = 0.2  # Towards Monosemanticity: resampled encoder rows get 0.2 x the mean live norm

Params = dict[str, jax.Array]  # w_enc (D, F), b_enc (F,), w_dec (F, D), b_dec (D,)


# --------------------------------------------------------------------------- pure functions


def unit_rows(w: jax.Array) -> jax.Array:
    """Each row of w (F, D) scaled to unit L2 norm."""
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def pre_activation(p: Params, x: jax.Array) -> jax.Array:
    """x (..., D) -> encoder pre-activations (..., F), after subtracting the pre-encoder bias b_dec."""
    return (x - p["b_dec"]) @ p["w_enc"] + p["b_enc"]


def keep_top_k(pre: jax.Array, k: int) -> jax.Array:
    """ReLU of the k largest entries of each row of pre (..., F), zero elsewhere."""
    values, indices = jax.lax.top_k(pre, k)
    return jnp.put_along_axis(jnp.zeros_like(pre), indices, jax.nn.relu(values), axis=-1, inplace=False)


def encode(p: Params, x: jax.Array, k: int | None) -> jax.Array:
    """x (..., D) -> features (..., F): TopK with `k`, ReLU when k is None."""
    pre = pre_activation(p, x)
    return jax.nn.relu(pre) if k is None else keep_top_k(pre, k)


def decode(p: Params, features: jax.Array) -> jax.Array:
    """features (..., F) -> reconstruction (..., D)."""
    return features @ p["w_dec"] + p["b_dec"]


def anthropic_loss(p: Params, x: jax.Array, l1_coeff: float) -> tuple[jax.Array, jax.Array]:
    """MSE(reconstruction, x) + l1_coeff * batch mean of sum_j |f_j|. x (B, D) -> (loss, features (B, F))."""
    features = encode(p, x, None)
    mse = jnp.mean(jnp.square(decode(p, features) - x))
    return mse + l1_coeff * jnp.mean(jnp.sum(features, axis=-1)), features  # features >= 0: sum = L1


def topk_loss(
    p: Params, x: jax.Array, dead: jax.Array, k: int, aux_k: int, aux_coeff: float
) -> tuple[jax.Array, jax.Array]:
    """MSE(reconstruction, x) + aux_coeff * AuxK. x (B, D), dead (F,) bool -> (loss, features (B, F)).

    AuxK = MSE(the aux_k largest dead pre-activations decoded without bias, x - reconstruction); 0 when nothing is dead.
    """
    pre = pre_activation(p, x)
    features = keep_top_k(pre, k)
    reconstruction = decode(p, features)
    mse = jnp.mean(jnp.square(reconstruction - x))
    residual = jax.lax.stop_gradient(x - reconstruction)  # a target for the dead latents, not a loss to lower
    # No ReLU here (Gao et al.'s AuxK is TopK of the raw pre-activations): a latent whose pre-activation is
    # negative on every row would get no gradient through one, and those are the latents to revive.
    values, indices = jax.lax.top_k(jnp.where(dead, pre, -jnp.inf), aux_k)
    values = jnp.where(jnp.isfinite(values), values, 0.0)  # fewer than aux_k dead latents: the rest are -inf
    dead_features = jnp.put_along_axis(jnp.zeros_like(pre), indices, values, axis=-1, inplace=False)
    aux = jnp.mean(jnp.square(dead_features @ p["w_dec"] - residual))
    return mse + aux_coeff * jnp.where(jnp.any(dead), aux, 0.0), features


# --------------------------------------------------------------------------- modules


class TiedBiasSAE(nnx.Module):
    """The `anthropic` SAE: features = ReLU(encoder(x - b_dec)), reconstruction = decoder(features) + b_dec.

    `encoder` is an nnx.Linear (kernel (D, F), bias (F,)), `decoder` one without bias (kernel (F, D), unit rows).
    Initialised as Gao et al.: random unit decoder rows, encoder = their transpose, zero biases.
    """

    variant = "anthropic"
    k: int | None = None

    def __init__(self, input_dim: int = LAYER2_WIDTH, dict_size: int = 2048, *, rngs: nnx.Rngs):
        directions = unit_rows(jax.random.normal(rngs.params(), (dict_size, input_dim), jnp.float32))
        self.encoder = nnx.Linear(input_dim, dict_size, kernel_init=lambda *_: directions.T, rngs=rngs)
        self.decoder = nnx.Linear(dict_size, input_dim, use_bias=False, kernel_init=lambda *_: directions, rngs=rngs)
        self.b_dec = nnx.Param(jnp.zeros((input_dim,), jnp.float32))

    @property
    def dict_size(self) -> int:
        return self.encoder.out_features

    def params(self) -> Params:
        return {
            "w_enc": self.encoder.kernel[...], "b_enc": self.encoder.bias[...],
            "w_dec": self.decoder.kernel[...], "b_dec": self.b_dec[...],
        }

    def set_params(self, p: Params) -> None:
        self.encoder.kernel[...] = p["w_enc"]
        self.encoder.bias[...] = p["b_enc"]
        self.decoder.kernel[...] = p["w_dec"]
        self.b_dec[...] = p["b_dec"]

    def encode(self, x: jax.Array) -> jax.Array:
        """x (..., D) -> features (..., F), non-negative."""
        return encode(self.params(), x, self.k)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (N, D) -> (reconstruction (N, D), features (N, F)), like models.SparseAutoencoder."""
        features = self.encode(x)
        return decode(self.params(), features), features


class TopKSAE(TiedBiasSAE):
    """The `topk` SAE: as TiedBiasSAE, but features keep only each row's k largest pre-activations."""

    variant = "topk"

    def __init__(self, input_dim: int = LAYER2_WIDTH, dict_size: int = 2048, *, k: int, rngs: nnx.Rngs):
        if not 1 <= k <= dict_size:
            raise ValueError(f"k must be in 1..{dict_size}, got {k}")
        super().__init__(input_dim, dict_size, rngs=rngs)
        self.k = k  # a plain int: static under jit, saved by the bridge as the torch buffer `k`


def make_sae(variant: str, input_dim: int, cfg: SAEConfig, *, rngs: nnx.Rngs) -> TiedBiasSAE:
    """A fresh `topk` or `anthropic` SAE of cfg.dict_size features (relu-l1 is models.SparseAutoencoder)."""
    if variant == "topk":
        return TopKSAE(input_dim, cfg.dict_size, k=cfg.k, rngs=rngs)
    if variant == "anthropic":
        return TiedBiasSAE(input_dim, cfg.dict_size, rngs=rngs)
    raise ValueError(f"no tied-bias SAE variant {variant!r}; expected topk or anthropic")


# --------------------------------------------------------------------------- training


def _project_out_parallel(grads: Params, p: Params) -> Params:
    """Remove from each decoder row's gradient its component along the (unit) row: the norm stays 1."""
    g, w = grads["w_dec"], p["w_dec"]
    return grads | {"w_dec": g - jnp.sum(g * w, axis=1, keepdims=True) * w}


def _make_epoch_fn(sae: TiedBiasSAE, cfg: SAEConfig, tx: optax.GradientTransformation, dead_after: int):
    """A jitted `epoch((p, opt_state, since_fired), x, batches (S, B)) -> (carry, step_losses (S,))`.

    since_fired (F,) int32 counts the steps since each feature last fired in a batch.
    """
    if sae.k is None:
        loss_fn = lambda p, x, dead: anthropic_loss(p, x, cfg.l1_coeff)  # noqa: E731
    else:
        aux_k = min(AUX_K_FACTOR * sae.k, sae.dict_size)
        loss_fn = partial(topk_loss, k=sae.k, aux_k=aux_k, aux_coeff=cfg.aux_coeff)

    def step(carry, x):
        p, opt_state, since_fired = carry
        (loss, features), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, since_fired >= dead_after)
        updates, opt_state = tx.update(_project_out_parallel(grads, p), opt_state, p)
        p = optax.apply_updates(p, updates)
        p = p | {"w_dec": unit_rows(p["w_dec"])}
        since_fired = jnp.where(jnp.any(features > 0, axis=0), 0, since_fired + 1)
        return (p, opt_state, since_fired), loss

    @partial(jax.jit, donate_argnums=0)
    def epoch(carry, x, batches):
        return jax.lax.scan(lambda c, idx: step(c, x[idx]), carry, batches)

    return epoch


@jax.jit
def _per_row_error(p: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ReLU-variant diagnostics over all rows: (squared reconstruction error (N,), feature fires anywhere (F,))."""
    features = encode(p, x, None)
    return jnp.sum(jnp.square(decode(p, features) - x), axis=1), jnp.any(features > 0, axis=0)


def resample_dead(p: Params, opt_state: optax.OptState, x: jax.Array, key: jax.Array) -> tuple[Params, optax.OptState, int]:
    """Towards Monosemanticity's resampling of the features that fire on none of the rows x (N, D).

    Each dead feature gets the direction of a row drawn with probability proportional to its squared
    reconstruction loss (minus b_dec): decoder row = that unit direction, encoder column = the same scaled to
    0.2 x the mean live encoder norm, encoder bias 0, and zero Adam moments for all three.
    Returns (params, opt_state, number resampled).
    """
    error, alive = _per_row_error(p, x)
    dead = np.flatnonzero(~np.asarray(alive))
    if dead.size == 0 or not np.asarray(alive).any():
        return p, opt_state, 0
    weight = np.square(np.asarray(error, np.float64))
    rows = jax.random.choice(key, x.shape[0], (dead.size,), p=jnp.asarray(weight / weight.sum()))
    directions = unit_rows(x[rows] - p["b_dec"])  # (n_dead, D)
    live_norm = jnp.mean(jnp.linalg.norm(p["w_enc"][:, np.asarray(alive)], axis=0))
    p = p | {
        "w_dec": p["w_dec"].at[dead].set(directions),
        "w_enc": p["w_enc"].at[:, dead].set(directions.T * RESAMPLE_ENCODER_SCALE * live_norm),
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


def fit_variant(
    sae: TiedBiasSAE, activations: np.ndarray, cfg: SAEConfig, *, key: jax.Array, log: Log = print
) -> TrainResult:
    """Train a `topk` or `anthropic` SAE on activations (N, D): Adam(cfg.lr), cfg.epochs epochs of the
    floor(N / batch) full batches of a fresh permutation (the remainder rows differ every epoch).

    b_dec starts at the mean row. Logs `SAE Epoch [10/100] | Loss: 0.004299` every cfg.log_every epochs,
    plus the resampling count for `anthropic`. Returns the trained SAE (a new module; `sae` is untouched).
    """
    x = jnp.asarray(activations, jnp.float32)
    n_steps = x.shape[0] // cfg.batch_size
    # Copies: the epoch donates its carry, and `sae` keeps its initial weights.
    p = jax.tree.map(jnp.copy, sae.params()) | {"b_dec": jnp.mean(x, axis=0)}  # centre (papers: geometric median)
    tx = optax.adam(cfg.lr, b1=0.9, b2=0.999, eps=1e-8)
    carry = (p, tx.init(p), jnp.zeros((sae.dict_size,), jnp.int32))
    epoch_fn = _make_epoch_fn(sae, cfg, tx, dead_after=n_steps)  # dead: silent for a whole epoch of batches

    def run_epoch(e: int) -> jax.Array:
        nonlocal carry
        order = jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[: n_steps * cfg.batch_size]
        carry, losses = epoch_fn(carry, x, order.reshape(n_steps, cfg.batch_size))
        return losses

    def on_epoch_end(e: int, losses: np.ndarray) -> str | None:
        nonlocal carry
        line = f"SAE Epoch [{e + 1}/{cfg.epochs}] | Loss: {losses.mean():.6f}" if (e + 1) % cfg.log_every == 0 else None
        # Resample on schedule, but leave the last interval to settle (the paper stops resampling late too).
        if sae.k is None and (e + 1) % cfg.resample_every == 0 and e + 1 + cfg.resample_every <= cfg.epochs:
            p, opt_state, n = resample_dead(carry[0], carry[1], x, jax.random.fold_in(jax.random.fold_in(key, e), 1))
            carry = (p, opt_state, carry[2])
            line = f"{line or f'SAE Epoch [{e + 1}/{cfg.epochs}]'} | resampled {n} dead features"
        return line

    step_losses, log_lines, epoch_seconds = run_epochs(cfg.epochs, "SAE", run_epoch, on_epoch_end, log)
    trained = nnx.clone(sae)
    trained.set_params(carry[0])
    return TrainResult(model=trained, step_losses=step_losses, log_lines=log_lines, epoch_seconds=epoch_seconds)
