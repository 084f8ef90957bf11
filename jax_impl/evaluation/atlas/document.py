"""The feature atlas document (feature_atlas.json): every live feature's best concept label, its scores, its
causal tests and its top rows; built from arrays (`build_atlas`) or from loaded models (`atlas_from_models`),
summarised for the terminal (`format_summary`) and read back as labels (`feature_labels`). The page and the files
are written by jax_impl.reports.atlas_page."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.errors import UserError
from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas.effects import MIN_STEER_ROWS, causal_effects, consistency
from jax_impl.evaluation.atlas.scores import score_features
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.evaluation.metrics import DENSE_RATE, splice_metrics
from jax_impl.files import jsonfile
from jax_impl.models.mlp import DEFAULT_HOOK, InterpretabilityMLP, Readout
from jax_impl.precision import highest_precision
from jax_impl.saes import SAE
from jax_impl.task.concepts import FAMILIES, task_concepts
from jax_impl.task.pointer import Split, TaskShape

ATLAS_JSON = "feature_atlas.json"
ATLAS_HTML = "feature_atlas.html"


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
        evidence, consistent = consistency(effects, i, min_gain)
        c = best[i]
        feature_rows.append({
            "id": int(fid),
            "label": concepts.names[c],
            "family": concepts.families[c],
            "f1": jsonfile.number(best_f1[i]),
            "precision": jsonfile.number(scores.precision[i, c]),
            "recall": jsonfile.number(scores.recall[i, c]),
            "auroc": jsonfile.number(scores.auroc[i, c]),
            "monosemantic": bool(best_f1[i] >= min_f1),
            "density": jsonfile.number(density[i], 5),
            "mean_act": jsonfile.number(fired.mean()),
            "max_act": jsonfile.number(fired.max()),
            "ablation_in": jsonfile.number(effects.ablation_in[i]),
            "ablation_out": jsonfile.number(effects.ablation_out[i]),
            "steer_gain": jsonfile.number(effects.steer_gain[i]),
            "steer_rows": int(effects.steer_rows[i]),
            "evidence": evidence,
            "consistent": consistent,
            "hist": hist.tolist(),
            "hist_max": jsonfile.number(edges[-1]),
            "top": [
                {"row": int(r), "input": inputs[r].tolist(), "target": jsonfile.number(targets[r], 2),
                 "prediction": jsonfile.number(predictions[r], 3), "act": jsonfile.number(act[r])}
                for r in top_rows
            ],
            "scores": [
                {"concept": concepts.names[k], "precision": jsonfile.number(scores.precision[i, k]),
                 "recall": jsonfile.number(scores.recall[i, k]), "f1": jsonfile.number(scores.f1[i, k]),
                 "auroc": jsonfile.number(scores.auroc[i, k])}
                for k in top_concepts
            ],
        })

    concept_best = scores.f1.argmax(axis=0)  # (C,) index into live features
    concept_rows = [
        {"concept": name, "family": fam, "support": int(concepts.mask[:, k].sum()),
         "best_feature": int(live_ids[concept_best[k]]), "best_f1": jsonfile.number(scores.f1[concept_best[k], k])}
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
            "mean_best_f1": jsonfile.number(per_concept.mean()),
            "monosemantic_features": int((mono & (label_family == fam)).sum()),
        }
    summary = {
        "features": int(features_all.shape[1]),
        "live": int(len(live_ids)),
        "monosemantic": int(mono.sum()),
        "monosemantic_share": jsonfile.number(mono.mean()),
        "share_f1_0_9": jsonfile.number((best_f1 >= 0.9).mean()),
        "consistent": int(consistent.sum()),
        "consistent_share_of_monosemantic": jsonfile.number(consistent[mono].mean()) if mono.any() else None,
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
