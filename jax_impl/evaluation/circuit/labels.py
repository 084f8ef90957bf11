"""What each transcoder feature stands for: its best concept of the task's vocabulary (jax_impl.task.concepts,
scored by jax_impl.evaluation.atlas.scores.score_features), its top-activating inputs, and the causal variable it
mediates, measured on counterfactual pairs (jax_impl.task.variables).

Variable of a feature: for each variable V, pairs of independent held-out rows whose source changes V and pairs
whose source keeps V (while the rest of the row is redrawn); the feature's mean |activation change| on each,
change_V and keep_V: the input is intervened on, the feature's response measured. score_V = 1 - keep_V / change_V (clipped to
[0, 1]): 1 when the feature moves only when V moves. The feature's variable is the best-scoring V with
score >= MIN_SCORE (None otherwise). T = |D|, so a feature of T also scores 1 on D (every pair keeping D keeps
T); where D scores best and T within TIE of it, T is taken: a feature of D moves on the pairs that flip D's
sign and keep T, and scores lower on T.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jax_impl.evaluation.atlas.scores import score_features
from jax_impl.evaluation.circuit.config import LAYERS
from jax_impl.evaluation.circuit.replacement import Replacement, mlp_hidden
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.task.concepts import task_concepts
from jax_impl.task.pointer import TaskShape
from jax_impl.task.variables import PairSampler, TaskVariables

VARIABLES = ("P1", "P2", "A", "B", "D", "T")
MIN_SCORE = 0.5
TIE = 0.05
TOP_INPUTS = 3


@jax.jit
def _features(rep: Replacement, hidden: list[jax.Array]) -> list[jax.Array]:
    return [rep.activate(layer, rep.pre(layer, hidden[layer])) for layer in range(len(rep.transcoders))]


@highest_precision
def transcoder_features(rep: Replacement, mlp: InterpretabilityMLP, inputs: np.ndarray) -> list[np.ndarray]:
    """Each transcoder's features (N, F_l) float32 on inputs (N, D), reading the MLP's true activations."""
    _, hidden = mlp_hidden(mlp, inputs)
    return [np.asarray(f) for f in _features(rep, list(hidden))]


def cell_names(shape: TaskShape) -> list[str]:
    """The input cells' names: a_0..a_3, p1, b_0..b_3, p2 for the 5x2 task."""
    names = []
    for c in range(shape.y_dim):
        letter = "abcdefghijklmnopqrstuvwxyz"[c]
        names += [f"{letter}_{j}" for j in range(shape.x_dim - 1)] + [f"p{c + 1}"]
    return names


def concept_labels(rep: Replacement, mlp: InterpretabilityMLP, rows: np.ndarray, shape: TaskShape
                   ) -> dict[str, dict]:
    """{"layer1/12": {"label", "f1", "top_inputs": [{"input", "activation"}]}} for every feature that fires on
    rows (N, D) int: its best concept by F1 (label "concept" or "concept?" below F1 0.5) and its TOP_INPUTS
    strongest rows."""
    concepts = task_concepts(rows, shape.x_dim, shape.y_dim)
    out = {}
    for layer, f in zip(LAYERS, transcoder_features(rep, mlp, rows)):
        live = np.flatnonzero((f > 0).any(axis=0))
        if not len(live):
            continue
        f1 = score_features(f[:, live], concepts.mask).f1
        best = np.argmax(f1, axis=1)
        top = np.argsort(-f[:, live], axis=0, kind="stable")[:TOP_INPUTS].T
        for i, j in enumerate(live):
            score = float(f1[i, best[i]])
            name = concepts.names[best[i]]
            out[f"{layer}/{j}"] = {
                "label": name if score >= 0.5 else f"{name}?", "f1": score,
                "top_inputs": [{"input": rows[r].tolist(), "activation": float(f[r, j])} for r in top[i] if f[r, j] > 0],
            }
    return out


@highest_precision
def feature_variables(rep: Replacement, mlp: InterpretabilityMLP, shape: TaskShape, pairs: int, seed: int,
                      exclude: np.ndarray | None = None, variables: Sequence[str] = VARIABLES) -> dict[str, np.ndarray]:
    """score_V (F_total,) float64 per variable over all features, LAYERS order concatenated (module docstring).

    The pairs are independent random rows (base, source) drawn outside `exclude`, split by whether V has the same
    value on both: changing and keeping pairs then differ in V only, not in how far apart their rows are (minimal
    edits would make every keeping pair look close). `pairs` is the fewest pairs of either kind per variable."""
    task = TaskVariables(shape)
    sampler = PairSampler(task, seed, exclude=exclude)
    # P(same value) is about 1/19 for D: enough random pairs that every variable has `pairs` keeping ones
    n = 24 * pairs
    base, source = sampler.fresh_rows(n), sampler.fresh_rows(n)
    different = np.any(base != source, axis=1)
    moved = np.concatenate([np.abs(s - b) for b, s in zip(transcoder_features(rep, mlp, base),
                                                           transcoder_features(rep, mlp, source))], axis=1)
    values_base, values_source = task.values(base), task.values(source)
    out = {}
    for v in variables:
        same = (values_base[v] == values_source[v]) & different
        change = moved[~same & different].mean(axis=0).astype(np.float64)
        keep = moved[same].mean(axis=0).astype(np.float64) if same.any() else np.zeros_like(change)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[v] = np.where(change > 1e-6, np.clip(1.0 - keep / change, 0.0, 1.0), 0.0)
    return out


def assign_variable(scores: dict[str, np.ndarray], index: int) -> tuple[str | None, float]:
    """The variable feature `index` (of the concatenated features) mediates, and its score (module docstring)."""
    names = list(scores)
    values = np.array([scores[v][index] for v in names])
    best = float(values.max())
    if best < MIN_SCORE:
        return None, best
    choice = names[int(np.argmax(values))]
    if choice == "D" and "T" in scores and scores["T"][index] >= best - TIE:
        choice = "T"
    return choice, float(scores[choice][index])


