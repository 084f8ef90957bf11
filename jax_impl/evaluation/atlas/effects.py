"""Causal tests of feature labels by intervening on the hook's activation: ablation (remove a feature's
contribution) and steering (clamp it on where its concept does not hold), with the decision whether a feature's
interventions agree with its label; and the mean pointer swap, kept as a negative control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.files import jsonfile
from jax_impl.models.mlp import Readout
from jax_impl.task.concepts import Concepts

MIN_STEER_ROWS = 10  # fewer rows where the label predicts a change: steering is not evidence



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
    """The mean pointer swap, kept as a negative control (docs/atlas.md): swap `p1=k` for `p1=j` by adding the
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
            swaps.append({"to": concepts.names[j], "rows": int(rows.sum()), "gain": jsonfile.number(gain),
                          "exact": jsonfile.number(np.mean(np.round(swapped) == cf[rows]))})
        gains = [s["gain"] for s in swaps if s["gain"] is not None]
        mean_gain = float(np.mean(gains)) if gains else None
        rows_out.append({"concept": concepts.names[c], "features": int(f_c.shape[1]), "swaps": swaps,
                         "mean_gain": None if mean_gain is None else round(mean_gain, 4),
                         "works": mean_gain is not None and mean_gain >= min_gain})
    swappable = sum(r["mean_gain"] is not None for r in rows_out)
    works = sum(r["works"] for r in rows_out)
    return {"concepts": rows_out, "pointer_concepts": len(rows_out), "swappable": swappable, "works": works,
            "share": jsonfile.number(works / len(rows_out)) if rows_out else None}


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



def consistency(effects: CausalEffects, i: int, min_gain: float) -> tuple[str, bool]:
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
