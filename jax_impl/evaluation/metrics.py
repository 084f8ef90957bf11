"""The metrics of the MLP and of an SAE: the one home of their formulas.

Prediction: `prediction_metrics` (MSE, exact match). Reconstruction (a transcoder's: its prediction against its
target, in the target's width), from the sums every caller gathers its own
way (in memory: `inference.evaluate`; streamed over an activation file: `reconstruction_metrics` for `monosem
train-sae` and the sweep; chunks of synthetic data: jax_impl.evaluation.groundtruth):

  mse                  SSE / (rows x width), per element
  explained_variance   1 - SSE / centred sum of squares (None where every row is the same: nothing to explain)
  l0                   mean count of features > 0 per row
  dead_fraction        share of features > 0 on no row

The centred sum of squares is two-pass where the rows are in memory (`centred_sum_of_squares`) and one-pass from
column sums where they are streamed (`centred_sum_of_squares_from_sums`). Splicing the reconstruction into the MLP:
`splice_metrics` (dense share, MSE with the hook's mean, share of the MLP's MSE recovered).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.data.activations import ActivationFile
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.models.mlp import Readout
from jax_impl.saes import SAE

DENSE_RATE = 0.1  # a feature active on more than this share of rows counts as dense


# --------------------------------------------------------------------------- prediction


def prediction_metrics(prediction: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """`mse` and `exact_match` (share of rows whose rounded prediction equals the target), in float64.

    prediction, targets (N,)."""
    prediction = np.asarray(prediction, np.float64)
    targets = np.asarray(targets, np.float64)
    return {
        "mse": float(np.mean(np.square(prediction - targets))),
        "exact_match": float(np.mean(np.round(prediction) == targets)),
    }


# --------------------------------------------------------------------------- reconstruction: the formulas


def mse_per_element(sse: float, elements: int) -> float:
    """The mean squared reconstruction error over `elements` (rows x width) values whose squared errors sum to sse."""
    return float(sse / elements)


def explained_variance(sse: float, centred: float) -> float | None:
    """1 - sse / centred: the share of the rows' variance about their mean that the reconstruction explains.
    None where centred is 0 (every row the same)."""
    return float(1.0 - sse / centred) if centred > 0 else None


def centred_sum_of_squares(x: np.ndarray) -> float:
    """sum ||x - mean(x)||^2 over the rows of x (N, D) float64, in two passes (the rows are in memory)."""
    return np.sum(np.square(x - x.mean(axis=0)))


def centred_sum_of_squares_from_sums(col_sum: np.ndarray, col_sq: np.ndarray, rows: int) -> float:
    """sum ||x - mean(x)||^2 from the column sums of x and of x^2 (D,) float64 over `rows` rows (one pass)."""
    return float(np.sum(col_sq - col_sum**2 / rows))


def mean_l0(active: float, rows: int) -> float:
    """The mean count of active features per row, from the count over all rows."""
    return active / rows


def dead_fraction(fired: np.ndarray) -> float:
    """The share of features that fired on no row; fired (F,) bool: the feature was active on some row."""
    return float(1.0 - fired.mean())


# --------------------------------------------------------------------------- reconstruction: the sums


def reconstruction_quality(x: np.ndarray, reconstruction: np.ndarray, features: np.ndarray) -> dict[str, float | None]:
    """explained_variance, reconstruction_mse, l0 and dead_fraction of rows held in memory, summed in float64.

    x, reconstruction (N, D) float32; features (N, F)."""
    x = np.asarray(x, np.float64)
    sse = np.sum(np.square(x - reconstruction))
    active = features > 0
    return {
        "explained_variance": explained_variance(sse, centred_sum_of_squares(x)),
        "reconstruction_mse": mse_per_element(sse, x.size),
        "l0": mean_l0(float(active.sum()), len(x)),
        "dead_fraction": dead_fraction(active.any(axis=0)),
    }


@jax.jit
def _chunk_sums(sae: SAE, rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    # A transcoder's rows hold its input and its target side by side (data.activations.pair_activations); an
    # SAE's target is its input.
    x, target = (rows[:, :sae.input_dim], rows[:, sae.input_dim:]) if sae.transcoder else (rows, rows)
    reconstruction, features = sae(x)
    active = features > 0
    return (
        jnp.sum(jnp.square(reconstruction - target), dtype=jnp.float32),
        jnp.sum(active, dtype=jnp.float32),
        jnp.any(active, axis=0),
        jnp.sum(target, axis=0),
        jnp.sum(jnp.square(target), axis=0),
    )


def reconstruction_sums(sae: SAE, source: ActivationFile, first: int, last: int, chunk_rows: int) -> dict[str, Any]:
    """What reconstruction_metrics adds up over rows [first, last): sse, active (float), fired (F,) bool,
    col_sum and col_sq (D_out,) float64 of the target (an SAE's: its input; a transcoder's rows hold input and
    target side by side); sums of row ranges add up to the sums of their union."""
    sse = active = 0.0
    fired = np.zeros(sae.dict_size, bool)
    col_sum = np.zeros(sae.output_dim, np.float64)
    col_sq = np.zeros(sae.output_dim, np.float64)
    for start in range(first, last, chunk_rows):
        x = jnp.asarray(source.rows(start, min(start + chunk_rows, last)))
        s, a, f, cs, cq = _chunk_sums(sae, x)
        sse, active = sse + float(s), active + float(a)
        fired |= np.asarray(f)
        col_sum += np.asarray(cs, np.float64)
        col_sq += np.asarray(cq, np.float64)
    return {"sse": sse, "active": active, "fired": fired, "col_sum": col_sum, "col_sq": col_sq}


def metrics_from_sums(sums: dict[str, Any], n: int, width: int) -> dict[str, float | None]:
    """rows, mse, explained_variance, l0 and dead_fraction from reconstruction_sums over n rows of `width`."""
    sse, active, fired, col_sum, col_sq = (sums[k] for k in ("sse", "active", "fired", "col_sum", "col_sq"))
    return {
        "rows": n,
        "mse": mse_per_element(sse, n * width),
        "explained_variance": explained_variance(sse, centred_sum_of_squares_from_sums(col_sum, col_sq, n)),
        "l0": mean_l0(active, n),
        "dead_fraction": dead_fraction(fired),
    }


def reconstruction_metrics(sae: SAE, source: ActivationFile, chunk_rows: int) -> dict[str, float | None]:
    """Over every row of source, chunk by chunk: rows, mse, explained_variance, l0 and dead_fraction. A
    transcoder's (source: its input and target side by side) measure its prediction against the target."""
    sums = reconstruction_sums(sae, source, 0, source.n_rows, chunk_rows)
    return metrics_from_sums(sums, source.n_rows, sae.output_dim)


# --------------------------------------------------------------------------- splicing into the MLP


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
    """The SAE metrics that inference.evaluate does not give, on N evaluation rows, in float32 (one jitted call).

    layer2 (N, 512) float32, targets (N,) float32.
    dense_fraction: share of features active on more than DENSE_RATE of the rows.
    mean_ablated_mse: MLP MSE with `layer2` replaced by its mean over the rows (on every row).
    mse_recovered = (mean_ablated_mse - spliced_mse) / (mean_ablated_mse - mse): 1 when splicing the
    reconstruction in place of `layer2` costs nothing, 0 when it is as bad as knowing only the mean.
    """
    out = _splice(jnp.asarray(layer2, jnp.float32), jnp.asarray(targets, jnp.float32).reshape(-1), dictionary, readout)
    return {k: float(v) for k, v in out.items()}
