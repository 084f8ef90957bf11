"""Feature atlas: label every SAE feature with a task concept and test the label causally.

The task's ground truth is known, so instead of eyeballing top activations we score every
feature against a vocabulary of concepts read off the inputs (pointer values, pointed values,
the target, the order of the two pointed values, raw cells, a pointer together with the value
it points at), pick its best label, and then check the label by intervening on `layer2`:

- ablation: remove the feature's contribution `f_j * d_j` from `layer2` (the SAE's
  reconstruction error is kept, so only this feature changes) and compare how much the MLP
  output moves on rows where the label's concept holds versus rows where it does not;
- steering: clamp the feature to a typical "on" value on rows where the concept does not hold,
  and measure how far the output follows the target the *task* gives if the concept were true
  (e.g. forcing `p1=2` should turn the output into `|a[2] - b[p2]|`).

Everything is computed on arrays; `Dictionary` and `Readout` hold the few weights needed, so
the analysis can be tested on hand-built models. See docs/atlas.md for the definitions.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import rankdata

from jax_impl.evaluation import inference
from jax_impl.files import jsonfile
from jax_impl.precision import highest_precision
from jax_impl.reports.atlas_page import render_page
from jax_impl.files.atomic import write_text_atomic
from jax_impl.errors import UserError
from jax_impl.models.mlp import DEFAULT_HOOK, HOOKS, InterpretabilityMLP, check_hook
from jax_impl.saes import SAE, Architecture
from jax_impl.task.pointer import Split, TaskShape, pointer_targets

ATLAS_JSON = "feature_atlas.json"
ATLAS_HTML = "feature_atlas.html"
FAMILIES = ("pointer", "pointed", "target", "order", "cell", "conjunction")
DENSE_RATE = 0.1  # a feature active on more than this share of rows counts as dense
MIN_STEER_ROWS = 10  # fewer rows where the label predicts a change: steering is not evidence


# --------------------------------------------------------------------------- weights


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


# --------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concepts:
    """The task's concept vocabulary evaluated on N input rows.

    names, families: (C,) str. mask (N, C) bool: the concept holds on the row.
    counterfactual (N, C) float32: the task's target if the concept were made true on that
    row (NaN where the task does not define one, i.e. for the `>`/`<` order concepts).
    """

    names: list[str]
    families: list[str]
    mask: np.ndarray
    counterfactual: np.ndarray


def _column_letter(c: int) -> str:
    return string.ascii_lowercase[c]


def task_concepts(inputs: np.ndarray, x_dim: int, y_dim: int) -> Concepts:
    """Build the concept vocabulary for inputs (N, x_dim*y_dim) int.

    Column c holds x_dim-1 values then its pointer; columns are lettered a, b, ... and
    pointers p1, p2, .... Concepts true on every row or on none are dropped (no score exists).
    """
    n = len(inputs)
    shape = TaskShape(x_dim, y_dim)
    cols = np.asarray(inputs, dtype=np.int64).reshape(n, y_dim, x_dim)
    pointers = cols[:, :, -1]
    pointed = np.take_along_axis(cols[:, :, :-1], pointers[:, :, None], axis=2)[:, :, 0]
    target = pointer_targets(cols.reshape(n, -1), shape)
    values = np.unique(cols[:, :, :-1])
    rows = np.arange(n)
    names: list[str] = []
    families: list[str] = []
    masks: list[np.ndarray] = []
    cfs: list[np.ndarray] = []

    def add(name: str, family: str, mask: np.ndarray, counterfactual: np.ndarray) -> None:
        if mask.any() and not mask.all():
            names.append(name)
            families.append(family)
            masks.append(mask)
            cfs.append(counterfactual.astype(np.float32))

    def edited(c: int, j: np.ndarray | int, v: int) -> np.ndarray:
        """Target after setting cell j of column c (j may differ per row) to v."""
        out = cols.copy()
        out[rows, c, j] = v
        return pointer_targets(out.reshape(n, -1), shape)

    for c in range(y_dim):
        for k in range(x_dim - 1):
            add(f"p{c + 1}={k}", "pointer", pointers[:, c] == k, edited(c, x_dim - 1, k))
    for c in range(y_dim):
        for v in values:
            name = f"{_column_letter(c)}[p{c + 1}]={v}"
            add(name, "pointed", pointed[:, c] == v, edited(c, pointers[:, c], v))
    for t in np.unique(target):
        add(f"target={t}", "target", target == t, np.full(n, t))
    first, last = "a[p1]", f"{_column_letter(y_dim - 1)}[p{y_dim}]"
    diff = pointed[:, 0] - pointed[:, -1]
    nan = np.full(n, np.nan)
    # Order does not determine the target (it is |diff|), except that equal values give 0.
    add(f"{first}>{last}", "order", diff > 0, nan)
    add(f"{first}<{last}", "order", diff < 0, nan)
    add(f"{first}={last}", "order", diff == 0, np.zeros(n))
    for c in range(y_dim):
        for j in range(x_dim - 1):
            for v in values:
                name = f"{_column_letter(c)}_{j}={v}"
                add(name, "cell", cols[:, c, j] == v, edited(c, j, v))
    # `p1=k & a_k=v`: the pointer and the value it points at. A feature for one of these is `a[p1]=v` split
    # by pointer (or `p1=k` split by value); without this family it would score low on both and count as noise.
    for c in range(y_dim):
        for k in range(x_dim - 1):
            for v in values:
                both = cols.copy()
                both[:, c, -1], both[:, c, k] = k, v
                holds = (pointers[:, c] == k) & (cols[:, c, k] == v)
                counterfactual = pointer_targets(both.reshape(n, -1), shape)
                add(f"p{c + 1}={k} & {_column_letter(c)}_{k}={v}", "conjunction", holds, counterfactual)
    return Concepts(names, families, np.stack(masks, axis=1), np.stack(cfs, axis=1))


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class ConceptScores:
    """Scores of F features against C concepts, each (F, C) float64.

    precision/recall/f1 treat "feature > 0" as a prediction of the concept; auroc ranks
    rows by the feature's activation (0.5 = chance; ties, mostly zeros, count half).
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    auroc: np.ndarray


def score_features(features: np.ndarray, mask: np.ndarray) -> ConceptScores:
    """Score features (N, F) float against concepts mask (N, C) bool (each concept on some rows, not all)."""
    n = len(mask)
    active = (features > 0).astype(np.float32)
    concept = mask.astype(np.float32)
    # Counts as matrix products; float32 sums of 0/1 are exact below 2**24 rows.
    tp = (active.T @ concept).astype(np.float64)  # (F, C)
    n_active = active.sum(axis=0, dtype=np.float64)[:, None]  # (F, 1)
    n_pos = concept.sum(axis=0, dtype=np.float64)[None, :]  # (1, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_active > 0, tp / n_active, 0.0)
    recall = tp / n_pos
    f1 = 2 * tp / (n_active + n_pos)
    # Mann-Whitney: AUROC = (sum of positive ranks - n_pos(n_pos+1)/2) / (n_pos * n_neg).
    ranks = rankdata(features, axis=0)  # (N, F) float64, ties averaged
    rank_sum = ranks.T @ mask.astype(np.float64)  # (F, C)
    auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    return ConceptScores(precision, recall, f1, auroc)


# --------------------------------------------------------------------------- linear ceiling


def best_threshold_f1(scores: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The highest F1 of "score > threshold" as a detector of mask, over all thresholds.

    scores (N,) float, mask (N,) bool with some positives -> (F1, threshold). Exact: every cut of the
    rows sorted by score is tried; the threshold is halfway between the last row in and the first out.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(mask[order])  # true positives when the first k+1 rows are called positive
    f1 = 2 * tp / (np.arange(1, len(scores) + 1) + mask.sum())
    # A cut can only fall between different scores.
    f1[:-1][sorted_scores[:-1] == sorted_scores[1:]] = -1.0
    k = int(np.argmax(f1))
    below = sorted_scores[k + 1] if k + 1 < len(scores) else sorted_scores[k] - 1.0
    return float(f1[k]), float((sorted_scores[k] + below) / 2)


def _adam_fit(loss, params, steps: int, lr: float):
    """Minimise loss(params) with full-batch Adam for a fixed number of steps (inside jit)."""
    tx = optax.adam(lr)

    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


@partial(jax.jit, static_argnames=("steps", "restarts"))
def _fit_half_spaces(
    x: jax.Array, y: jax.Array, key: jax.Array, steps: int, restarts: int, lr: float, l2: float
) -> tuple[jax.Array, jax.Array]:
    """Half-spaces z = x @ w + b that detect each column of y (N, C) well, `restarts` per concept.

    x (N, D) standardised. Restart 0 is a class-balanced logistic regression; every restart (that one
    included, from its solution; the others from random directions) then climbs a smooth F1, the mean
    sigmoid(z) standing in for "z > 0". The random starts matter for band-shaped concepts (|x| < c),
    where the logistic optimum is the symmetric, useless w = 0. -> w (D, C, R), b (C, R).
    """
    d = x.shape[1]
    pos_weight = (1 - y.mean(axis=0)) / y.mean(axis=0)

    def logistic(p):
        z = x @ p[0] + p[1]
        per_row = pos_weight * y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z)
        return jnp.sum(jnp.mean(per_row, axis=0)) + l2 * jnp.sum(jnp.square(p[0]))

    w0, b0 = _adam_fit(logistic, (jnp.zeros((d, y.shape[1])), jnp.zeros(y.shape[1])), steps, lr)
    random_w = jax.random.normal(key, (d, y.shape[1], restarts - 1)) / jnp.sqrt(d)
    w = jnp.concatenate([w0[:, :, None], random_w], axis=2)
    b = jnp.concatenate([b0[:, None], jnp.zeros((y.shape[1], restarts - 1))], axis=1)

    def negative_soft_f1(p):
        called = jax.nn.sigmoid(jnp.einsum("nd,dcr->ncr", x, p[0]) + p[1])
        tp = jnp.einsum("ncr,nc->cr", called, y)
        return -jnp.sum(2 * tp / (called.sum(axis=0) + y.sum(axis=0)[:, None]))

    return _adam_fit(negative_soft_f1, (w, b), steps, lr)


def linear_readout_f1(
    layer2: np.ndarray, mask: np.ndarray, fit_rows: np.ndarray, *,
    steps: int = 1000, restarts: int = 8, lr: float = 1e-2, l2: float = 1e-4, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """How well one linear read-out of layer2 can detect each concept: the ceiling on a feature's F1.

    A `relu-l1` or `anthropic` SAE feature is active exactly where an affine function of layer2 is
    positive, so its F1 for a concept is at most the best F1 of any half-space of layer2. This
    searches for that half-space (_fit_half_spaces) on the fit_rows and keeps, per concept, the best
    F1 over the restarts and all thresholds there. It is an estimate from below, not a bound: a search
    can miss the best half-space. The in-sample F1 errs on the generous side; the same half-space on
    the held-out rows shows how much of it is overfitting. (A `topk` feature also needs its
    pre-activation among the row's k largest, which a half-space ignores.)

    layer2 (N, 512) float, mask (N, C) bool, fit_rows (N,) bool (some rows held out; every concept
    on some fit rows and not all) -> (F1 on the fit rows, F1 on the held-out rows), each (C,) float64.
    """
    x = np.asarray(layer2, np.float64)
    mean, std = x[fit_rows].mean(axis=0), x[fit_rows].std(axis=0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    w, b = _fit_half_spaces(
        jnp.asarray(x[fit_rows]), jnp.asarray(mask[fit_rows], jnp.float32), jax.random.key(seed),
        steps=steps, restarts=restarts, lr=lr, l2=l2,
    )
    z = np.asarray(jnp.einsum("nd,dcr->ncr", jnp.asarray(x), w) + b)  # (N, C, R)
    held = ~fit_rows
    fit_f1, held_f1 = np.zeros(mask.shape[1]), np.zeros(mask.shape[1])
    for c in range(mask.shape[1]):
        (fit_f1[c], threshold), r = max((best_threshold_f1(z[fit_rows, c, r], mask[fit_rows, c]), r) for r in range(restarts))
        called = z[held, c, r] > threshold
        held_f1[c] = 2 * np.sum(called & mask[held, c]) / max(called.sum() + mask[held, c].sum(), 1)
    return fit_f1, held_f1


def ceilings_by_hook(
    mlp: InterpretabilityMLP, rows: Split, shape: TaskShape, fit_rows: np.ndarray,
    hooks: tuple[str, ...] = HOOKS, families: tuple[str, ...] = ("pointer", "pointed", "target", "order"),
) -> dict[str, Any]:
    """The linear ceiling of every concept of `families` at each hook point: where each concept lives.

    rows: N task rows, fit_rows (N,) bool (the others held out). Returns {"concepts": names (C,),
    "families": (C,), "rows": (C,) counts, "hooks": {hook: {"fit": (C,), "held_out": (C,)} F1 float64}}.
    """
    concepts = task_concepts(rows.inputs, shape.x_dim, shape.y_dim)
    chosen = [k for k, family in enumerate(concepts.families) if family in families]
    mask = concepts.mask[:, chosen]
    by_hook = {}
    for hook in hooks:
        _, h = inference.mlp_forward(mlp, rows.inputs, hook)
        fit_f1, held_f1 = linear_readout_f1(h, mask, fit_rows)
        by_hook[hook] = {"fit": fit_f1, "held_out": held_f1}
    return {"concepts": [concepts.names[k] for k in chosen], "families": [concepts.families[k] for k in chosen],
            "rows": mask.sum(axis=0), "hooks": by_hook}


# --------------------------------------------------------------------------- metrics


@jax.jit
def _splice(layer2: jax.Array, targets: jax.Array, dictionary: Dictionary, readout: Readout) -> dict[str, jax.Array]:
    features = dictionary.encode(layer2)

    def mse(h: jax.Array) -> jax.Array:
        return jnp.mean((readout(h) - targets) ** 2)

    clean, spliced = mse(layer2), mse(dictionary.decode(features))
    ablated = mse(jnp.broadcast_to(jnp.mean(layer2, axis=0), layer2.shape))
    return {
        "dense_fraction": jnp.mean(jnp.mean(features > 0, axis=0) > DENSE_RATE),
        "mean_ablated_mse": ablated,
        "mse_recovered": (ablated - spliced) / (ablated - clean),
    }


def splice_metrics(
    layer2: jax.Array, targets: jax.Array, dictionary: Dictionary, readout: Readout
) -> dict[str, float]:
    """The SAE metrics that inference.evaluate does not give, on N evaluation rows.

    layer2 (N, 512) float32, targets (N,) float32.
    dense_fraction: share of features active on more than 10% of the rows.
    mean_ablated_mse: MLP MSE with `layer2` replaced by its mean over the rows (on every row).
    mse_recovered = (mean_ablated_mse - spliced_mse) / (mean_ablated_mse - mse): 1 when splicing the
    reconstruction in place of `layer2` costs nothing, 0 when it is as bad as knowing only the mean.
    """
    out = _splice(jnp.asarray(layer2, jnp.float32), jnp.asarray(targets, jnp.float32).reshape(-1), dictionary, readout)
    return {k: float(v) for k, v in out.items()}


# --------------------------------------------------------------------------- causal


@dataclass(frozen=True)
class CausalEffects:
    """Per-feature intervention results, each (F,) for the F analysed features.

    ablation_in / ablation_out: mean |change of the MLP output| when the feature is removed,
    over rows where its label's concept holds / does not hold.
    steer_gain: with the feature clamped on, on rows where its concept does not hold and the task's
    counterfactual target differs from the target, how far the output moved to that
    counterfactual (see _steer_gain): 1 = exactly as the label says, 0 = not at all; NaN
    where there are fewer than MIN_STEER_ROWS such rows (no counterfactual: `>`/`<` labels).
    steer_rows: how many rows it was fitted on.
    """

    ablation_in: np.ndarray
    ablation_out: np.ndarray
    steer_gain: np.ndarray
    steer_rows: np.ndarray


@jax.jit
def _ablate_pairs(
    z: jax.Array, base: jax.Array, u: jax.Array, rows: jax.Array, cols: jax.Array, f: jax.Array, readout: Readout
) -> jax.Array:
    """|Output change| when one feature is removed, for P (row, feature) pairs.

    z (N, H) readout pre-activations of layer2, base (N,) the clean outputs, u (F, H) decoder
    directions through the readout's first layer, rows/cols (P,) int, f (P,) the feature's
    activation -> (P,) float32. Removing f * d from layer2 moves z by -f * u. (Gathering inside
    jit avoids materialising the gathered rows.)
    """
    return jnp.abs(readout.rest(z[rows] - f[:, None] * u[cols]) - base[rows])


@jax.jit
def _steer(
    z: jax.Array, base: jax.Array, u: jax.Array, sample: jax.Array, shift: jax.Array, readout: Readout
) -> jax.Array:
    """Output change when each of F features is clamped on S rows.

    z (N, H) and base (N,) as above, u (F, H), sample (F, S) row ids, shift (F, S) = clamp value
    minus the current activation -> (F, S) float32.
    """
    return readout.rest(z[sample] + shift[:, :, None] * u[:, None, :]) - base[sample]


def _steer_gain(steered: np.ndarray, clean: np.ndarray, counterfactual: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """How far steering moved the MLP output to the label's counterfactual target, per feature.

    steered, clean (the outputs with and without steering), counterfactual: (F, S) float;
    weight (F, S) bool marks the rows that count -> (F,) float64, NaN with < MIN_STEER_ROWS rows.
    Where the counterfactual varies over the rows it is the coefficient of the counterfactual in
    the least-squares fit steered ~ gain * counterfactual + kept * clean + c: an intervention that
    only erases information (pulls the output towards a constant) scores 0, one that makes the
    model compute the counterfactual scores 1. A constant counterfactual T (target=T,
    a[p1]=b[p2]) is indistinguishable from the intercept, so there the gain is the share of the
    way to T: sum((steered - clean)(T - clean)) / sum((T - clean)^2).
    """
    gain = np.full(len(steered), np.nan)
    for i, rows in enumerate(weight):
        if rows.sum() < MIN_STEER_ROWS:
            continue
        y, p, t = steered[i, rows], clean[i, rows], counterfactual[i, rows]
        if np.ptp(t) == 0:
            gain[i] = np.dot(y - p, t - p) / np.dot(t - p, t - p)
        else:
            design = np.stack([t, p, np.ones_like(t)], axis=1)
            gain[i] = np.linalg.lstsq(design, y, rcond=None)[0][0]
    return gain


@jax.jit
def _swap_outputs(h: jax.Array, removed: jax.Array, added: jax.Array, readout: Readout) -> tuple[jax.Array, jax.Array]:
    """(clean, swapped) outputs (R,): h (R, W) with `removed` (R, W) taken out and `added` (W,) put in."""
    return readout(h), readout(h - removed + added)


def mean_pointer_swaps(
    h: jax.Array, features: np.ndarray, directions: jax.Array, best: np.ndarray, concepts: Concepts,
    targets: np.ndarray, readout: Readout, min_gain: float = 0.5,
) -> dict[str, Any]:
    """The mean pointer swap, kept as a negative control (CHANGELOG.md): swap `p1=k` for `p1=j` by adding the
    *mean* contribution of the `p1=j` features. That vector carries no row's `a[j]`, so even a perfect pointer
    feature fails it; the atlas no longer reports it. jax_impl.evaluation.causal answers the question with interchange
    interventions instead.

    On the rows where pointer concept c (`pI=k`) holds and setting the pointer to j would change the target,
    the contribution of every feature labelled c (best concept; features split a pointer across several) is
    removed from the hook's activation and the mean contribution of the features labelled `pI=j` (over the
    rows where `pI=j` holds) is added; the MLP should then answer the task's counterfactual `|a[j] - b[p2]|`.
    Per (k, j): the steering gain of _steer_gain (1 = the model computes the counterfactual, 0 = not at all)
    and the share of rows whose rounded output equals it. A concept's swap works when its mean gain over the
    other values j is >= min_gain.

    h (N, W), features (N, F) of the live features, directions (F, W), best (F,) concept index of each,
    targets (N,). -> {"concepts": [per pointer concept], "pointer_concepts", "swappable", "works", "share"}.
    """
    pointer = [c for c, family in enumerate(concepts.families) if family == "pointer"]
    contribution = {c: (features[:, best == c], np.asarray(directions)[best == c]) for c in pointer}
    rows_out = []
    for c in pointer:
        slot = concepts.names[c].split("=")[0]
        partners = [j for j in pointer if j != c and concepts.names[j].split("=")[0] == slot]
        f_c, d_c = contribution[c]
        swaps = []
        for j in partners:
            f_j, d_j = contribution[j]
            cf = concepts.counterfactual[:, j]
            rows = concepts.mask[:, c] & (cf != targets)
            if f_c.shape[1] == 0 or f_j.shape[1] == 0 or rows.sum() < MIN_STEER_ROWS:
                continue
            added = (f_j[concepts.mask[:, j]] @ d_j).mean(axis=0)
            clean, swapped = (np.asarray(a) for a in _swap_outputs(
                jnp.asarray(h)[rows], jnp.asarray(f_c[rows] @ d_c), jnp.asarray(added, jnp.float32), readout))
            gain = _steer_gain(swapped[None], clean[None], cf[rows][None], np.ones((1, rows.sum()), bool))[0]
            swaps.append({"to": concepts.names[j], "rows": int(rows.sum()), "gain": _json_number(gain),
                          "exact": _json_number(np.mean(np.round(swapped) == cf[rows]))})
        gains = [s["gain"] for s in swaps if s["gain"] is not None]
        mean_gain = float(np.mean(gains)) if gains else None
        rows_out.append({"concept": concepts.names[c], "features": int(f_c.shape[1]), "swaps": swaps,
                         "mean_gain": None if mean_gain is None else round(mean_gain, 4),
                         "works": mean_gain is not None and mean_gain >= min_gain})
    swappable = sum(r["mean_gain"] is not None for r in rows_out)
    works = sum(r["works"] for r in rows_out)
    return {"concepts": rows_out, "pointer_concepts": len(rows_out), "swappable": swappable, "works": works,
            "share": _json_number(works / len(rows_out)) if rows_out else None}


def _padded_chunks(n: int, size: int) -> list[np.ndarray]:
    """Index chunks of a fixed length (the last one repeats its final index) so jit compiles once."""
    return [np.arange(s, s + size).clip(max=n - 1) for s in range(0, n, size)]


def causal_effects(
    layer2: jax.Array,
    features: np.ndarray,
    directions: jax.Array,
    readout: Readout,
    holds: np.ndarray,
    counterfactual: np.ndarray,
    targets: np.ndarray,
    steer_scale: float = 1.0,
    steer_sample: int = 256,
    seed: int = 0,
) -> CausalEffects:
    """Ablate and steer each of F features against its label.

    layer2 (N, 512) float32; features (N, F) float32 the F features' activations and
    directions (F, 512) their decoder directions; holds (N, F) bool and counterfactual (N, F)
    float32 are the label concept's mask and counterfactual target per feature.
    Ablation uses every row (it only changes rows where the feature fires). Steering clamps
    the feature to steer_scale x its mean activation where it fires with its concept (where
    it fires at all, if never with it), on at most steer_sample eligible rows per feature
    drawn with `seed`.
    """
    layer2 = jnp.asarray(layer2, jnp.float32)
    n, n_features = holds.shape
    z = layer2 @ readout.w1 + readout.b1  # (N, H)
    u = directions @ readout.w1  # (F, H)
    base = readout.rest(z)  # (N,)

    # Ablation over the (row, feature) pairs where the feature fires; elsewhere the change is 0.
    rows, cols = np.nonzero(features > 0)
    change = np.zeros(len(rows), np.float32)
    for idx in _padded_chunks(len(rows), 16384):
        r, c = rows[idx], cols[idx]
        change[idx] = np.asarray(_ablate_pairs(z, base, u, r, c, features[r, c], readout))
    inside = holds[rows, cols]
    n_in = holds.sum(axis=0)
    ablation_in = np.bincount(cols[inside], change[inside], n_features) / np.maximum(n_in, 1)
    ablation_out = np.bincount(cols[~inside], change[~inside], n_features) / np.maximum(n - n_in, 1)

    # Steering on rows where the concept does not hold and the task predicts a different target.
    delta_target = counterfactual - np.asarray(targets, np.float32)[:, None]  # (N, F), NaN = undefined
    eligible = ~holds & np.isfinite(delta_target) & (delta_target != 0)
    order = np.random.default_rng(seed).permutation(n)
    # Per feature the first steer_sample eligible rows in a random order; if fewer are eligible, the
    # rest of the sample is ineligible rows that get weight 0.
    ranked = np.argsort(~eligible[order], axis=0, kind="stable")[:steer_sample]  # (S, F) positions in order
    sample = order[ranked].T  # (F, S)
    weight = np.take_along_axis(eligible, sample.T, axis=0).T  # (F, S) bool
    on_label = (features > 0) & holds
    fires = features > 0
    alpha = steer_scale * np.where(
        on_label.any(axis=0),
        (features * on_label).sum(axis=0) / np.maximum(on_label.sum(axis=0), 1),
        (features * fires).sum(axis=0) / np.maximum(fires.sum(axis=0), 1),
    )
    f_sample = np.take_along_axis(features, sample.T, axis=0).T  # (F, S)
    shift = (alpha[:, None] - f_sample).astype(np.float32)
    moved = np.zeros(sample.shape, np.float32)
    for idx in _padded_chunks(n_features, 64):
        moved[idx] = np.asarray(_steer(z, base, u[idx], sample[idx], shift[idx], readout))
    clean = np.asarray(base)[sample]  # (F, S)
    target_cf = np.take_along_axis(counterfactual, sample.T, axis=0).T  # (F, S)
    gain = _steer_gain(moved + clean, clean, target_cf, weight)
    return CausalEffects(ablation_in, ablation_out, gain, weight.sum(axis=1))


# --------------------------------------------------------------------------- atlas


def _consistency(effects: CausalEffects, i: int, min_gain: float) -> tuple[str, bool]:
    """Decide whether feature i's interventions agree with its label (see docs/atlas.md).

    Where the label defines a counterfactual target on enough rows, steering decides:
    the output must move at least min_gain of the way the task predicts. Otherwise (the
    `>`/`<` order concepts, or too few rows) ablation decides: removing the feature must
    move the output by >= 0.05 on its concept's rows and at least twice as much as elsewhere.
    """
    if np.isfinite(effects.steer_gain[i]):
        return "steering", bool(effects.steer_gain[i] >= min_gain)
    inside, outside = effects.ablation_in[i], effects.ablation_out[i]
    return "ablation", bool(inside >= 0.05 and inside >= 2 * outside)


def _json_number(x: float, digits: int = 4) -> float | None:
    """Round for the JSON file; NaN becomes null (JSON has no NaN)."""
    return None if not np.isfinite(x) else round(float(x), digits)


@highest_precision
def build_atlas(
    layer2: jax.Array,
    inputs: np.ndarray,
    targets: np.ndarray,
    x_dim: int,
    y_dim: int,
    dictionary: Dictionary,
    readout: Readout,
    metrics: Mapping[str, float],
    min_f1: float = 0.7,
    min_gain: float = 0.5,
    steer_scale: float = 1.0,
    steer_sample: int = 256,
    top_k: int = 10,
    bins: int = 20,
) -> dict[str, Any]:
    """Label, score and test every live feature on N rows; returns the feature_atlas.json document.

    layer2 (N, 512) float32, inputs (N, x_dim*y_dim) int, targets (N,) float; dictionary: the SAE's encoder and
    decoder, readout: the MLP from the hook on (Dictionary.from_sae, Readout.from_mlp); metrics (the SAE's
    quality on these rows) is copied into the document. A feature is monosemantic when the F1 of its best
    concept is >= min_f1; its label is causally consistent when steering it (steer_scale x its mean activation,
    on at most steer_sample rows) moves the output >= min_gain of the way the task predicts (order concepts:
    when ablating it matters). Each feature gets its top_k rows and a histogram of `bins` bins.
    """
    layer2 = jnp.asarray(layer2, jnp.float32)
    inputs = np.asarray(inputs, np.int64)
    targets = np.asarray(targets, np.float32).reshape(-1)
    features_all = np.asarray(dictionary.encode(layer2))  # (N, F_total)
    live_ids = np.flatnonzero(features_all.max(axis=0) > 0)
    if len(live_ids) == 0:
        raise UserError(f"no SAE feature fires on any of the {len(inputs)} rows; nothing to label")
    features = features_all[:, live_ids]  # (N, F)
    concepts = task_concepts(inputs, x_dim, y_dim)
    scores = score_features(features, concepts.mask)
    best = scores.f1.argmax(axis=1)  # (F,)
    effects = causal_effects(
        layer2, features, dictionary.w_dec[live_ids], readout,
        concepts.mask[:, best], concepts.counterfactual[:, best], targets, steer_scale, steer_sample,
    )
    predictions = np.asarray(readout(layer2))
    density = (features > 0).mean(axis=0)
    best_f1 = scores.f1[np.arange(len(live_ids)), best]

    feature_rows = []
    for i, fid in enumerate(live_ids):
        act = features[:, i]
        fired = act[act > 0]
        hist, edges = np.histogram(fired, bins=bins, range=(0.0, float(fired.max())))
        top_rows = np.argpartition(-act, top_k)[:top_k] if len(act) > top_k else np.arange(len(act))
        top_rows = top_rows[np.argsort(-act[top_rows], kind="stable")]
        top_rows = top_rows[act[top_rows] > 0]
        top_concepts = np.argsort(-scores.f1[i], kind="stable")[:8]
        evidence, consistent = _consistency(effects, i, min_gain)
        c = best[i]
        feature_rows.append({
            "id": int(fid),
            "label": concepts.names[c],
            "family": concepts.families[c],
            "f1": _json_number(best_f1[i]),
            "precision": _json_number(scores.precision[i, c]),
            "recall": _json_number(scores.recall[i, c]),
            "auroc": _json_number(scores.auroc[i, c]),
            "monosemantic": bool(best_f1[i] >= min_f1),
            "density": _json_number(density[i], 5),
            "mean_act": _json_number(fired.mean()),
            "max_act": _json_number(fired.max()),
            "ablation_in": _json_number(effects.ablation_in[i]),
            "ablation_out": _json_number(effects.ablation_out[i]),
            "steer_gain": _json_number(effects.steer_gain[i]),
            "steer_rows": int(effects.steer_rows[i]),
            "evidence": evidence,
            "consistent": consistent,
            "hist": hist.tolist(),
            "hist_max": _json_number(edges[-1]),
            "top": [
                {"row": int(r), "input": inputs[r].tolist(), "target": _json_number(targets[r], 2),
                 "prediction": _json_number(predictions[r], 3), "act": _json_number(act[r])}
                for r in top_rows
            ],
            "scores": [
                {"concept": concepts.names[k], "precision": _json_number(scores.precision[i, k]),
                 "recall": _json_number(scores.recall[i, k]), "f1": _json_number(scores.f1[i, k]),
                 "auroc": _json_number(scores.auroc[i, k])}
                for k in top_concepts
            ],
        })

    concept_best = scores.f1.argmax(axis=0)  # (C,) index into live features
    concept_rows = [
        {"concept": name, "family": fam, "support": int(concepts.mask[:, k].sum()),
         "best_feature": int(live_ids[concept_best[k]]), "best_f1": _json_number(scores.f1[concept_best[k], k])}
        for k, (name, fam) in enumerate(zip(concepts.names, concepts.families, strict=True))
    ]
    mono = best_f1 >= min_f1
    consistent = np.array([row["consistent"] for row in feature_rows])
    label_family = np.array(concepts.families)[best]  # (F,)
    families = {}
    for fam in FAMILIES:
        ks = [k for k, f in enumerate(concepts.families) if f == fam]
        per_concept = scores.f1[:, ks].max(axis=0)
        families[fam] = {
            "concepts": len(ks),
            "covered": int((per_concept >= min_f1).sum()),
            "mean_best_f1": _json_number(per_concept.mean()),
            "monosemantic_features": int((mono & (label_family == fam)).sum()),
        }
    summary = {
        "features": int(features_all.shape[1]),
        "live": int(len(live_ids)),
        "monosemantic": int(mono.sum()),
        "monosemantic_share": _json_number(mono.mean()),
        "share_f1_0_9": _json_number((best_f1 >= 0.9).mean()),
        "consistent": int(consistent.sum()),
        "consistent_share_of_monosemantic": _json_number(consistent[mono].mean()) if mono.any() else None,
        "families": families,
    }
    return {
        "format": "monosem-feature-atlas/1",
        "rows": int(len(inputs)),
        "shape": {"x_dim": x_dim, "y_dim": y_dim},
        "settings": {"min_f1": min_f1, "min_gain": min_gain, "steer_scale": steer_scale,
                     "steer_sample": steer_sample, "dense_rate": DENSE_RATE, "min_steer_rows": MIN_STEER_ROWS},
        "metrics": dict(metrics),
        "summary": summary,
        "concepts": concept_rows,
        "features": feature_rows,
    }


# --------------------------------------------------------------------------- models and files


def model_splice_metrics(mlp: InterpretabilityMLP, sae: SAE, split: Split, hook: str = DEFAULT_HOOK) -> dict[str, float]:
    """splice_metrics of loaded models on a split (what `monosem evaluate` adds to inference.evaluate)."""
    _, h = inference.mlp_forward(mlp, split.inputs, hook)
    return splice_metrics(h, split.targets, Dictionary.from_sae(sae), Readout.from_mlp(mlp, hook))


@highest_precision
def atlas_from_models(
    mlp: InterpretabilityMLP, sae: SAE, split: Split, shape: TaskShape, source: str, hook: str = DEFAULT_HOOK,
    **settings: Any,
) -> dict[str, Any]:
    """build_atlas for loaded models (`mlp`, and `sae` reading the activations at `hook`) on a split of the task
    `shape`; source: where the models came from, recorded in the document; settings are build_atlas's keyword
    arguments."""
    _, h = inference.mlp_forward(mlp, split.inputs, hook)
    dictionary, readout = Dictionary.from_sae(sae), Readout.from_mlp(mlp, hook)
    metrics = inference.evaluate(mlp, split, sae, hook) | splice_metrics(h, split.targets, dictionary, readout)
    atlas = build_atlas(h, split.inputs, split.targets, shape.x_dim, shape.y_dim, dictionary, readout, metrics, **settings)
    return {"source": source, "hook": hook, **atlas}


def format_summary(atlas: Mapping[str, Any]) -> str:
    """A few lines for the terminal: coverage, monosemanticity, causal consistency."""
    s, m, settings = atlas["summary"], atlas["metrics"], atlas["settings"]
    families = ", ".join(f"{name} {f['covered']}/{f['concepts']}" for name, f in s["families"].items())
    consistent_mono = s["consistent_share_of_monosemantic"]
    return "\n".join([
        f"Feature atlas over {atlas['rows']} rows: {s['live']} of {s['features']} features live "
        f"(dead {100 * m['dead_fraction']:.1f}%, dense {100 * m['dense_fraction']:.1f}%), "
        f"explained variance {m['explained_variance']:.4f}, MSE recovered {m['mse_recovered']:.3f}",
        f"Monosemantic (best F1 >= {settings['min_f1']}): {s['monosemantic']} of {s['live']} live features "
        f"({100 * s['monosemantic_share']:.1f}%); best F1 >= 0.9: {100 * s['share_f1_0_9']:.1f}%",
        f"Causally consistent with their label: {s['consistent']} of {s['live']} live features"
        + ("" if consistent_mono is None else f", {100 * consistent_mono:.1f}% of the monosemantic ones"),
        f"Concepts with a feature of F1 >= {settings['min_f1']}: {families}",
        "Which features carry which variable, by interchange interventions: monosem causal (causal/causal.html)",
    ])


def write_atlas(atlas: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write out_dir/feature_atlas.json and out_dir/feature_atlas.html; returns both paths."""
    json_path, html_path = out_dir / ATLAS_JSON, out_dir / ATLAS_HTML
    write_text_atomic(json_path, json.dumps(atlas, separators=(",", ":"), allow_nan=False))
    write_text_atomic(html_path, render_page(atlas))
    return json_path, html_path


def feature_labels(atlas: Mapping[str, Any] | str | Path, min_f1: float | None = None) -> dict[int, str]:
    """{feature id: best concept label} for live features whose best F1 >= min_f1.

    atlas is a feature_atlas.json document or its path; without min_f1 the monosemantic
    features (by the atlas's own threshold) get a label.
    """
    if not isinstance(atlas, Mapping):
        return _file_labels(jsonfile.read(atlas, hint="rebuild it with `monosem atlas` or remove it"), min_f1)
    return {
        f["id"]: f["label"] for f in atlas["features"]
        if (f["monosemantic"] if min_f1 is None else f["f1"] is not None and f["f1"] >= min_f1)
    }


def _file_labels(doc: jsonfile.Node, min_f1: float | None) -> dict[int, str]:
    """feature_labels of a feature_atlas.json, every value it takes checked (UserError naming the file and key)."""
    labels = {}
    for f in doc["features"].elements():
        feature_id, label = f["id"].integer(0, 2**31 - 1), f["label"].string()
        f1 = f["f1"].number(0, 1, null=True)
        if f["monosemantic"].boolean() if min_f1 is None else f1 is not None and f1 >= min_f1:
            labels[feature_id] = label
    return labels
