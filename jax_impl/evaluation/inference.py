"""Running models already loaded into JAX: forward passes, the readout from a hook, the metrics of an MLP and an SAE
on a split and the feature probe."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.evaluation.metrics import prediction_metrics, reconstruction_quality, splice_metrics
from jax_impl.models.mlp import DEFAULT_HOOK, InterpretabilityMLP, Readout
from jax_impl.precision import highest_precision
from jax_impl.saes import SAE
from jax_impl.task.pointer import Split, TaskShape, pointer_targets

PROBE_THRESHOLD = 0.01  # upstream counts a feature as active above this
PROBE_TOP = 5

# The five inputs the seed's probe stage runs (its feature_probe.py).
SEED_PROBE_INPUTS: tuple[tuple[int, ...], ...] = (
    (8, 9, 5, 1, 3, 2, 9, 4, 7, 1),
    (8, 9, 5, 2, 3, 2, 8, 4, 7, 1),
    (8, 9, 5, 3, 3, 2, 7, 4, 7, 1),
    (8, 9, 5, 4, 3, 2, 5, 4, 7, 1),
    (8, 9, 5, 5, 3, 2, 4, 4, 7, 1),
)


@partial(jax.jit, static_argnames="hook")
def _mlp_forward(model: InterpretabilityMLP, x: jax.Array, hook: str) -> tuple[jax.Array, jax.Array]:
    return model.forward_at(x, hook)


@jax.jit
def _sae_forward(sae: SAE, layer2: jax.Array) -> tuple[jax.Array, jax.Array]:
    return sae(layer2)


@partial(jax.jit, static_argnames="hook")
def _readout(model: InterpretabilityMLP, h: jax.Array, hook: str) -> jax.Array:
    return model.readout_from(h, hook)


@highest_precision
def mlp_forward(model: InterpretabilityMLP, inputs: np.ndarray, hook: str = DEFAULT_HOOK) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode forward. inputs (N, D) -> (prediction (N,) float32, the activation at `hook` (N, width)
    float32: layer2 (N, 512) by default)."""
    model.eval()
    prediction, h = _mlp_forward(model, jnp.asarray(inputs, jnp.float32), hook)
    return np.asarray(prediction)[:, 0], np.asarray(h)


@highest_precision
def sae_forward(sae: SAE, layer2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """layer2 (N, 512) -> (reconstruction (N, 512), features (N, dict_size)), float32."""
    reconstruction, features = _sae_forward(sae, jnp.asarray(layer2, jnp.float32))
    return np.asarray(reconstruction), np.asarray(features)


@highest_precision
def readout(model: InterpretabilityMLP, h: np.ndarray, hook: str = DEFAULT_HOOK) -> np.ndarray:
    """The MLP's output from a (possibly edited) activation at `hook` (N, width) -> (N,) float32 (eval mode, jitted
    InterpretabilityMLP.readout_from)."""
    model.eval()
    return np.asarray(_readout(model, jnp.asarray(h, jnp.float32), hook))[:, 0]


@highest_precision
def evaluate(
    model: InterpretabilityMLP, split: Split, sae: SAE | None = None, hook: str = DEFAULT_HOOK
) -> dict[str, float]:
    """MLP metrics on a split (rows, mse, exact_match) and, with an SAE, its reconstruction quality on that split's
    activations at `hook` (layer2 by default): explained_variance, reconstruction_mse, l0, dead_fraction
    (jax_impl.evaluation.metrics) and spliced_mse, the MLP's MSE with the reconstruction in place of the hook's
    activation.
    """
    prediction, layer2 = mlp_forward(model, split.inputs, hook)
    metrics = {"rows": len(split), **prediction_metrics(prediction, split.targets)}
    if sae is None:
        return metrics
    reconstruction, features = sae_forward(sae, layer2)
    metrics.update(reconstruction_quality(layer2, reconstruction, features))
    metrics["spliced_mse"] = prediction_metrics(readout(model, reconstruction, hook), split.targets)["mse"]
    return metrics


def model_splice_metrics(mlp: InterpretabilityMLP, sae: SAE, split: Split, hook: str = DEFAULT_HOOK) -> dict[str, float]:
    """metrics.splice_metrics of loaded models on a split (what `monosem evaluate` adds to evaluate)."""
    _, h = mlp_forward(mlp, split.inputs, hook)
    return splice_metrics(h, split.targets, Dictionary.from_sae(sae), Readout.from_mlp(mlp, hook))


@dataclass(frozen=True)
class ProbeReport:
    inputs: tuple[int, ...]
    expected: float
    prediction: float
    active_count: int
    top_features: tuple[tuple[int, float], ...]  # (feature id, activation), strongest first


@partial(jax.jit, static_argnames="hook")
def _probe_forward(
    model: InterpretabilityMLP, sae: SAE, x: jax.Array, hook: str
) -> tuple[jax.Array, jax.Array]:
    # eval() here switches the traced copy, once per trace: outside jit it walks the module graph on every call.
    model.eval()
    prediction, h = model.forward_at(x, hook)
    _, features = sae(h)
    return prediction[:, 0], features


@highest_precision
def probe(
    model: InterpretabilityMLP, sae: SAE, inputs: np.ndarray, shape: TaskShape = TaskShape(),
    hook: str = DEFAULT_HOOK,
) -> list[ProbeReport]:
    """Which features of `sae` (an SAE on the activations at `hook`) fire on each input row, with `model` (the
    MLP) in eval mode. inputs (N, D) or one row (D,) of the task `shape`; one ProbeReport per row.

    One jitted call for all rows: per-row dispatch of two forwards cost more than the forwards themselves.
    """
    rows = np.asarray(inputs).reshape(-1, shape.input_dim)
    predictions, features = (np.asarray(a) for a in _probe_forward(model, sae, jnp.asarray(rows, jnp.float32), hook))
    active = features > PROBE_THRESHOLD
    # Strongest first, ties in id order; inactive features sort last and are cut below.
    order = np.argsort(-np.where(active, features, -np.inf), axis=1, kind="stable")[:, :PROBE_TOP]
    return [
        ProbeReport(
            inputs=tuple(row.tolist()),
            expected=float(target),
            prediction=float(prediction),
            active_count=int(count),
            top_features=tuple((int(i), float(f[i])) for i in top[f[top] > PROBE_THRESHOLD]),
        )
        for row, target, prediction, count, f, top in zip(
            rows, pointer_targets(rows, shape), predictions, active.sum(axis=1), features, order
        )
    ]


def format_probe(report: ProbeReport, labels: dict[int, str] | None = None) -> str:
    """The seed's probe report; with `labels`, each feature's concept label beside its id."""
    lines = [
        "",
        "--- Interpretability Report ---",
        f"Sample Input: {list(report.inputs)}     |     Expected Output: {report.expected}",
        f"MLP Output: {report.prediction:.4f}",
        f"Number of active SAE features: {report.active_count}",
        "",
        "Top Active Features (Monosemantic Candidates):",
    ]
    for feature, activation in report.top_features:
        line = f"Feature #{feature:4} | Activation: {activation:.4f}"
        if labels and feature in labels:
            line += f" | {labels[feature]}"
        lines.append(line)
    return "\n".join(lines)
