"""Interchange interventions at one hook: whole-vector patches, learned subspaces (DAS) and named SAE features.

Everything works on a `Site`: a network cut at a hook into `activation` (input rows -> the hook's activation h)
and a `Readout` (h -> output) whose first layer is affine, `z = h @ w1 + b1`. That makes every patch cheap: a
patch adds `delta` to h, so it adds `delta @ w1` to z, and only the rest of the network is run again.

- whole vector: h* = h(source). A control: the output is the model's own output on the source row.
- subspace (distributed alignment search, Geiger et al. 2023): h* = h + (h' - h) R R^T with R (W, r) orthonormal
  (R = the Q of a QR decomposition of a free matrix), trained with optax so that the output is the
  counterfactual answer.
- named features: h* = h + sum_{i in S} (f_i(x') - f_i(x)) d_i for an SAE's features f and decoder rows d; the
  base's reconstruction error stays in h. S grows greedily on the training pairs from a shortlist ranked by
  attribution, the first-order gain `(answer - y) (f'_i - f_i) dy/df_i`.

IIA (interchange intervention accuracy) is the share of pairs whose rounded output equals the counterfactual
answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl.evaluation import inference
from jax_impl.evaluation.causal.config import DASConfig
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.models.mlp import InterpretabilityMLP, Readout


@dataclass(frozen=True)
class Site:
    """A network cut at one hook. activation: input rows (N, D) int -> h (N, W) float32; readout: h -> (N,)."""

    hook: str
    activation: Callable[[np.ndarray], np.ndarray]
    readout: Readout

    @classmethod
    def from_mlp(cls, mlp: InterpretabilityMLP, hook: str) -> Site:
        return cls(hook, lambda inputs: inference.mlp_forward(mlp, inputs, hook)[1], Readout.from_mlp(mlp, hook))

    @property
    def width(self) -> int:
        return int(self.readout.w1.shape[0])


def iia(outputs: np.ndarray, answers: np.ndarray) -> float:
    """Share of rows whose rounded output equals the answer; outputs (..., N), answers (N,)."""
    return float(np.mean(np.round(np.asarray(outputs)) == np.asarray(answers)))


@jax.jit
def _outputs(readout: Readout, h: jax.Array) -> jax.Array:
    return readout(h)


def outputs(readout: Readout, h: np.ndarray) -> np.ndarray:
    """readout(h): h (N, W) -> (N,) float32."""
    return np.asarray(_outputs(readout, jnp.asarray(h, jnp.float32)))


# --------------------------------------------------------------------------- subspaces


def orthonormal(m: jax.Array) -> jax.Array:
    """(W, r) -> the orthonormal Q (W, r) of its QR decomposition (signs fixed so that diag(R) > 0)."""
    q, r = jnp.linalg.qr(m)
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)


@partial(jax.jit, static_argnames=("steps", "batch_size"))
def _fit_rotations(
    readout: Readout, z: jax.Array, delta: jax.Array, answer: jax.Array, init: jax.Array, used: jax.Array,
    key: jax.Array, steps: int, batch_size: int, lr: float,
) -> jax.Array:
    """One rotation per variable, all at once, from each of S starting points; the one that fits the pairs best is
    kept. z (V, N, H) base pre-activations, delta (V, N, W) = h' - h, answer (V, N), init (V, S, W, P), used (P,)
    1.0 for the first r columns and 0.0 after -> R (V, W, P) with the unused columns zero. The first r columns
    of a QR factor depend only on the first r columns of its matrix, so this is exactly a rank-r search; the
    padding lets ranks up to P share one compiled program."""
    n = z.shape[1]
    tx = optax.adam(lr)

    def loss(m, z_v, delta_v, answer_v):
        r = orthonormal(m) * used
        z_star = z_v + (delta_v @ r) @ (r.T @ readout.w1)
        return jnp.mean((readout.rest(z_star) - answer_v) ** 2)

    def fit_one(m0, z_v, delta_v, answer_v, key_v):
        def step(carry, step_key):
            m, state = carry
            idx = jax.random.randint(step_key, (batch_size,), 0, n)
            grads = jax.grad(loss)(m, z_v[idx], delta_v[idx], answer_v[idx])
            updates, state = tx.update(grads, state, m)
            return (optax.apply_updates(m, updates), state), None

        (m, _), _ = jax.lax.scan(step, (m0, tx.init(m0)), jax.random.split(key_v, steps))
        return orthonormal(m) * used, loss(m, z_v, delta_v, answer_v)

    def fit_variable(init_v, z_v, delta_v, answer_v, key_v):
        keys = jax.random.split(key_v, init_v.shape[0])
        rotations, losses = jax.vmap(fit_one, in_axes=(0, None, None, None, 0))(init_v, z_v, delta_v, answer_v, keys)
        return rotations[jnp.argmin(losses)]

    return jax.vmap(fit_variable)(init, z, delta, answer, jax.random.split(key, z.shape[0]))


@jax.jit
def _rotation_outputs(readout: Readout, z: jax.Array, delta: jax.Array, rotation: jax.Array) -> jax.Array:
    """z (V, N, H), delta (V, N, W), rotation (V, W, r) -> outputs (V, N)."""
    def one(z_v, delta_v, r):
        return readout.rest(z_v + (delta_v @ r) @ (r.T @ readout.w1))
    return jax.vmap(one)(z, delta, rotation)


def fit_subspaces(
    readout: Readout, h: np.ndarray, h_source: np.ndarray, answer: np.ndarray, rank: int, key: jax.Array,
    config: DASConfig = DASConfig(), *, init_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Distributed alignment search for V variables at one hook, each with its own training pairs.

    h, h_source (V, N, W) float32 the base's and the source's activations; answer (V, N) float32 the
    counterfactual answers; init_rows (V, N) bool: the pairs whose differences give the principal starting point
    (the minimal pairs: there h' - h is what the variable's own edit moved; default all) -> R (V, W, rank)
    float32, orthonormal columns."""
    h = jnp.asarray(h, jnp.float32)
    z = h @ readout.w1 + readout.b1
    delta = jnp.asarray(h_source, jnp.float32) - h
    # Two starting points per variable: the top principal directions of its pairs' differences h' - h (for
    # minimal pairs these lie in what the edit moved), and a random one.
    rows = np.ones(answer.shape, bool) if init_rows is None else np.asarray(init_rows, bool)
    # ranks up to 16 share one compiled program (never wider than the hook)
    padded = min(next(p for p in (16, 32, rank) if p >= rank), delta.shape[2])
    principal = np.stack([_top_directions(d[m], padded, seed=i) for i, (d, m) in enumerate(zip(np.asarray(delta), rows))])
    # the random start from numpy: one compiled program fewer (jax.random.normal of this shape compiles for
    # seconds), and as reproducible
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    random_init = np.random.default_rng(seed).standard_normal(principal.shape).astype(np.float32)
    init = jnp.stack([jnp.asarray(principal, jnp.float32), jnp.asarray(random_init)], axis=1)
    fit_key = jax.random.fold_in(key, 1)
    used = jnp.asarray(np.arange(padded) < rank, jnp.float32)
    batch = min(config.batch_size, h.shape[1])
    rotation = _fit_rotations(readout, z, delta, jnp.asarray(answer, jnp.float32), init, used, fit_key,
                              steps=config.steps, batch_size=batch, lr=config.lr)
    return np.asarray(rotation)[:, :, :rank]


def _top_directions(rows: np.ndarray, r: int, seed: int, iterations: int = 6) -> np.ndarray:
    """The top-r right singular directions of rows (N, W) by subspace iteration (W, r), orthonormal: a few
    matrix products, where a full SVD costs seconds on a small CPU."""
    basis = np.random.default_rng(seed).standard_normal((rows.shape[1], r))
    for _ in range(iterations):
        basis = np.linalg.qr(rows.T @ (rows @ basis))[0]
    return basis.astype(np.float32)


def subspace_outputs(readout: Readout, h: np.ndarray, h_source: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Outputs after the subspace patch: h, h_source (V, N, W), rotation (V, W, r) -> (V, N) float32."""
    h = jnp.asarray(h, jnp.float32)
    z = h @ readout.w1 + readout.b1
    return np.asarray(_rotation_outputs(readout, z, jnp.asarray(h_source, jnp.float32) - h, jnp.asarray(rotation)))


# --------------------------------------------------------------------------- named features


def feature_patch(h: jax.Array, f: jax.Array, f_source: jax.Array, w_dec: jax.Array, features) -> jax.Array:
    """h + sum_{i in S} (f_i(x') - f_i(x)) d_i: h (N, W), f, f_source (N, F), w_dec (F, W), features S (k,) int."""
    return h + (f_source[:, features] - f[:, features]) @ w_dec[features]


@jax.jit
def _set_outputs(readout: Readout, z: jax.Array, df: jax.Array, u: jax.Array, sets: jax.Array, used: jax.Array) -> jax.Array:
    """Outputs after patching each of S feature sets: sets (S, K) int, used (S, K) bool -> (S, N)."""
    def one(idx, m):
        return readout.rest(z + (df[:, idx] * m) @ u[idx])
    return jax.vmap(one)(sets, used)


@jax.jit
def _attribution(readout: Readout, z: jax.Array, df: jax.Array, u: jax.Array, answer: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per feature (F,): the mean first-order gain of patching it, (answer - y) * df_i * (dy/dz . u_i), and the mean
    size of its effect, |df_i * (dy/dz . u_i)|. The gradient is averaged along the path from the base to the
    patch of every feature (integrated gradients, 4 points): at the base alone a ReLU that the patch would open
    has no gradient, and the features that open it would rank last."""
    y = readout.rest(z)
    total = df @ u  # (N, H)

    def grad_at(alpha):
        _, pullback = jax.vjp(readout.rest, z + alpha * total)
        return pullback(jnp.ones_like(y))[0]

    grad_z = jnp.mean(jax.vmap(grad_at)(jnp.array([0.125, 0.375, 0.625, 0.875])), axis=0)
    effect = df * (grad_z @ u.T)  # (N, F)
    return jnp.mean((answer - y)[:, None] * effect, axis=0), jnp.mean(jnp.abs(effect), axis=0)


@jax.jit
def _candidate_errors(readout: Readout, z_s: jax.Array, df: jax.Array, u: jax.Array, answer: jax.Array,
                      candidates: jax.Array, sign: float) -> tuple[jax.Array, jax.Array]:
    """Squared error and IIA on the pairs after adding (sign +1) or removing (-1) each candidate: (C,), (C,)."""
    def one(c):
        out = readout.rest(z_s + sign * df[:, c, None] * u[c])
        return jnp.mean((out - answer) ** 2), jnp.mean(jnp.round(out) == answer)
    return jax.lax.map(one, candidates)


def _best(errors: np.ndarray, hits: np.ndarray) -> int:
    """The candidate with the most exact answers, ties by the smaller squared error."""
    return int(np.lexsort((errors, -hits))[0])


def select_features(readout: Readout, z: np.ndarray, df: np.ndarray, u: np.ndarray, answer: np.ndarray, *,
                    max_size: int = 16, shortlist: int = 48) -> list[list[int]]:
    """Feature sets for one variable at one hook, of each size 1..max_size, chosen on its training pairs.

    z (N, H) the base's pre-activations after the hook; df (N, F) = f(source) - f(base); u (F, H) = w_dec @ w1
    (each feature's direction as the readout sees it); answer (N,) the counterfactual answers.
    The shortlist: half the features of highest attribution (the gain toward the answer), the rest by the size
    of their effect (among features that differ on some pair). Two greedy searches over it, on IIA then squared
    error: forward (add the best feature, max_size times) and backward (patch the whole shortlist, then drop the
    feature that costs least, down to one). Features act together (a one-hot pointer moves the output only when
    its old and new bits move at once), which a forward step cannot see and a backward step can. Per size the
    better of the two sets is kept. -> sets[k - 1] (k features), at most max_size of them."""
    z, df, u, answer = (jnp.asarray(a, jnp.float32) for a in (z, df, u, answer))
    moving = np.flatnonzero(np.asarray(jnp.any(df != 0, axis=0)))
    if len(moving) == 0:
        return []
    gain, size = (np.asarray(a)[moving] for a in _attribution(readout, z, df, u, answer))
    by_gain = list(moving[np.argsort(-gain, kind="stable")])
    by_size = list(moving[np.argsort(-size, kind="stable")])
    candidates = list(dict.fromkeys(by_gain[: shortlist // 2] + by_size))[:shortlist]

    cand = jnp.asarray(candidates, jnp.int32)  # one fixed shape: a step compiles once, used ones are masked

    def pick(z_s: jax.Array, sign: float, active: np.ndarray) -> int:
        errors, hits = (np.asarray(a) for a in _candidate_errors(readout, z_s, df, u, answer, cand, sign))
        return _best(np.where(active, errors, np.inf), np.where(active, hits, -1.0))

    forward: list[list[int]] = []
    active, z_s = np.ones(len(candidates), bool), z
    for _ in range(min(max_size, len(candidates))):
        i = pick(z_s, 1.0, active)
        active[i] = False
        forward.append((forward[-1] if forward else []) + [int(candidates[i])])
        z_s = z_s + df[:, candidates[i], None] * u[candidates[i]]
    backward: dict[int, list[int]] = {}
    active = np.ones(len(candidates), bool)
    z_s = z + df[:, cand] @ u[cand]
    while active.sum() > 1:
        if active.sum() <= max_size:
            backward[int(active.sum())] = [int(c) for c, a in zip(candidates, active) if a]
        i = pick(z_s, -1.0, active)
        active[i] = False
        z_s = z_s - df[:, candidates[i], None] * u[candidates[i]]
    backward[1] = [int(c) for c, a in zip(candidates, active) if a]
    options = [(k, s) for k in range(1, min(max_size, len(candidates)) + 1)
               for s in (forward[k - 1] if k <= len(forward) else None, backward.get(k)) if s is not None]
    size = max(len(s) for _, s in options)
    idx = np.array([s + [0] * (size - len(s)) for _, s in options], np.int32)
    used = np.array([[1.0] * len(s) + [0.0] * (size - len(s)) for _, s in options], np.float32)
    out = _set_outputs(readout, z, df, u, jnp.asarray(idx), jnp.asarray(used))
    hits = np.asarray(jnp.mean(jnp.round(out) == answer, axis=1))
    errors = np.asarray(jnp.mean((out - answer) ** 2, axis=1))
    sets = []
    for k in range(1, min(max_size, len(candidates)) + 1):
        mine = [i for i, (size_i, _) in enumerate(options) if size_i == k]
        best = max(mine, key=lambda i: (hits[i], -errors[i]))
        sets.append(options[best][1])
    return sets


def set_outputs(readout: Readout, h: np.ndarray, f: np.ndarray, f_source: np.ndarray, w_dec: np.ndarray,
                sets: list[list[int]]) -> np.ndarray:
    """Outputs after patching each feature set (S sets): (S, N) float32."""
    size = max(1, max(len(s) for s in sets))
    idx = np.array([s + [0] * (size - len(s)) for s in sets], np.int32)
    used = np.array([[1.0] * len(s) + [0.0] * (size - len(s)) for s in sets], np.float32)
    h = jnp.asarray(h, jnp.float32)
    z = h @ readout.w1 + readout.b1
    u = jnp.asarray(w_dec) @ readout.w1
    df = jnp.asarray(f_source) - jnp.asarray(f)
    return np.asarray(_set_outputs(readout, z, df, u, jnp.asarray(idx), jnp.asarray(used)))


def mean_ablation_outputs(readout: Readout, h: np.ndarray, f: np.ndarray, f_mean: np.ndarray, w_dec: np.ndarray,
                          keep: list[int], *, keep_error: bool = True, error_mean: np.ndarray | None = None) -> np.ndarray:
    """Outputs with every feature outside `keep` set to its mean: h - sum_{i not in keep} (f_i - mean_i) d_i.
    keep_error False: the reconstruction error is replaced by error_mean (W,) too. h (N, W), f (N, F) -> (N,)."""
    mask = np.ones(f.shape[1], np.float32)
    mask[list(keep)] = 0.0
    h = jnp.asarray(h, jnp.float32)
    h_star = h - ((jnp.asarray(f) - jnp.asarray(f_mean)) * mask) @ jnp.asarray(w_dec)
    if not keep_error:
        reconstruction = jnp.asarray(f) @ jnp.asarray(w_dec)
        h_star = h_star - (h - reconstruction) + jnp.asarray(error_mean)
    return outputs(readout, h_star)


@jax.jit
def _ablation_effects(readout: Readout, z: jax.Array, shift: jax.Array, u: jax.Array) -> jax.Array:
    """Mean |change of the output| when each of K features is moved by its shift: z (N, H) pre-activations,
    shift (N, K) the change of each feature's activation, u (K, H) its direction as the readout sees it -> (K,)."""
    out = readout.rest(z)
    return jax.lax.map(lambda k: jnp.mean(jnp.abs(readout.rest(z + shift[:, k, None] * u[k]) - out)),
                       jnp.arange(u.shape[0]))


def ablation_effects(readout: Readout, h: np.ndarray, f: np.ndarray, f_mean: np.ndarray, w_dec: np.ndarray,
                     features: list[int]) -> np.ndarray:
    """For each feature of `features`, the mean |change of the output| when it alone is set to its mean in h:
    h (N, W) (e.g. a circuit's activation), f (N, F), f_mean (F,) -> (K,) float32."""
    idx = np.asarray(features, np.int64)
    z = jnp.asarray(h, jnp.float32) @ readout.w1 + readout.b1
    u = jnp.asarray(w_dec[idx]) @ readout.w1
    shift = jnp.asarray(f_mean[idx] - f[:, idx], jnp.float32)
    return np.asarray(_ablation_effects(readout, z, shift, u))


def encode(dictionary: Dictionary, h: np.ndarray) -> np.ndarray:
    """The SAE's features of h (N, W) -> (N, F) float32."""
    return np.asarray(_encode(dictionary, jnp.asarray(h, jnp.float32)))


@jax.jit
def _encode(dictionary: Dictionary, h: jax.Array) -> jax.Array:
    return dictionary.encode(h)
