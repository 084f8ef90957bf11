"""The circuit document (format monosem-circuit/1, docs/circuit.md): the replacement's quality, one attribution
graph per asked input, every feature node's label and variable, and the global view over many held-out graphs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jax_impl.evaluation.circuit.attribution import (
    Attribution,
    ablation_checks,
    agrees,
    completeness,
    edge_checks,
    graph_edges,
    prune,
)
from jax_impl.evaluation.circuit.config import LAYERS, READS, CircuitConfig
from jax_impl.evaluation.circuit.labels import assign_variable, cell_names
from jax_impl.evaluation.circuit.replacement import Replacement
from jax_impl.files.jsonfile import number
from jax_impl.task.pointer import TaskShape, pointer_targets

FORMAT = "monosem-circuit/1"


def _num(value: float) -> float | None:
    return number(float(value), 6)


def feature_id(layer: int, feature: int) -> str:
    return f"{LAYERS[layer]}/{feature}"


def measure_graphs(rep: Replacement, att: Attribution, config: CircuitConfig) -> dict[str, Any]:
    """Prune, completeness and both kinds of checks for every row of `att`, as arrays (what the graphs and the
    targets read): keep, completeness (N,), n_features (N,), ablations (ablation_checks' dict), edges (per row)."""
    keep = prune(rep, att, config.share, config.max_feature_nodes)
    value, kept, none = completeness(rep, att, keep)
    ablations = ablation_checks(rep, att, config.checks)
    ablations["agrees"] = agrees(ablations["measured"], ablations["attributed"], config.atol, config.rtol)
    edges = edge_checks(rep, att, keep, config.edge_checks)
    for row in edges:
        for check in row:
            check["agrees"] = bool(agrees(np.float64(check["measured"]), np.float64(check["attributed"]),
                                          config.atol, config.rtol))
    return {"keep": keep, "completeness": value, "output_kept": kept, "output_none": none,
            "n_features": sum(k.sum(axis=1) for k in keep), "ablations": ablations, "edges": edges}


def graph_document(rep: Replacement, att: Attribution, measured: Mapping[str, Any], row: int, shape: TaskShape,
                   labels: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One input's graph: input cells, kept features, error nodes and the output, their edges and checks."""
    keep = measured["keep"]
    names = cell_names(shape)
    x = att.inputs[row]
    nodes = [{"id": f"input/{i}", "layer": "input", "feature": i, "activation": _num(x[i]),
              "label": f"{names[i]} = {int(x[i])}", "influence": _num(att.input_effects[row, i])} for i in range(len(x))]
    for layer, name in enumerate(LAYERS):
        kept = np.flatnonzero(keep[layer][row])
        kept = kept[np.argsort(-np.abs(att.effects[layer][row, kept]), kind="stable")]
        for j in kept:
            fid = feature_id(layer, int(j))
            nodes.append({"id": fid, "layer": name, "feature": int(j), "activation": _num(att.features[layer][row, j]),
                          "label": labels.get(fid, {}).get("label", ""), "influence": _num(att.effects[layer][row, j])})
        nodes.append({"id": f"error/{name}", "layer": name, "feature": None,
                      "activation": _num(np.linalg.norm(att.errors[layer][row])), "label": "error",
                      "influence": _num(att.error_effects[row, layer])})
    nodes.append({"id": "output", "layer": "output", "feature": None, "activation": _num(att.output[row]),
                  "label": "prediction", "influence": _num(att.output[row])})
    edges = [{"source": s, "target": t, "weight": _num(w)} for s, t, w in graph_edges(rep, att, row, keep)]
    ab = measured["ablations"]
    checks = [{"node": feature_id(int(ab["layer"][row, c]), int(ab["feature"][row, c])), "kind": "ablation",
               "attributed": _num(ab["attributed"][row, c]), "measured": _num(ab["measured"][row, c]),
               "agrees": bool(ab["agrees"][row, c])} for c in range(ab["layer"].shape[1]) if ab["valid"][row, c]]
    checks += [{"node": e["target"], "edge": [e["source"], e["target"]], "kind": "edge",
                "attributed": _num(e["attributed"]), "measured": _num(e["measured"]), "agrees": e["agrees"]}
               for e in measured["edges"][row]]
    return {
        "input": [int(v) for v in x], "target": float(pointer_targets(x[None], shape)[0]),
        "output": _num(att.output[row]), "completeness": _num(measured["completeness"][row]),
        "n_features": int(measured["n_features"][row]), "output_kept": _num(measured["output_kept"][row]),
        "output_none": _num(measured["output_none"][row]), "bias": _num(att.bias[row]),
        "nodes": nodes, "edges": edges, "checks": checks,
    }


MIN_GRAPHS = 0.01  # a feature kept in fewer of the held-out graphs is not in the global view


def global_view(att: Attribution, measured: Mapping[str, Any], scores: Mapping[str, np.ndarray], top: int,
                labels: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The features kept in at least MIN_GRAPHS of att's graphs, grouped by the variable they mediate
    (labels.assign_variable): per variable (and for null, none found) the `top` most frequent, most frequent first."""
    keep = np.concatenate(measured["keep"], axis=1)
    frequency = keep.mean(axis=0)
    offsets = att.offsets
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for i in np.argsort(-frequency, kind="stable"):
        if frequency[i] < MIN_GRAPHS:
            break
        layer = int(np.searchsorted(offsets, i, side="right") - 1)
        fid = feature_id(layer, int(i) - int(offsets[layer]))
        variable, score = assign_variable(dict(scores), int(i))
        group = groups.setdefault(variable, [])
        if len(group) < top:
            group.append({"id": fid, "layer": LAYERS[layer], "graphs": _num(frequency[i]),
                          "label": labels.get(fid, {}).get("label", ""), "score": _num(score),
                          "scores": {v: _num(s[i]) for v, s in scores.items()}})
    names = [v for v in scores if v in groups] + ([None] if None in groups else [])
    return {"graphs": len(att), "min_graphs": MIN_GRAPHS,
            "groups": [{"variable": v, "features": groups[v]} for v in names]}


def compare_with_causal_map(view: Mapping[str, Any], causal: Mapping[str, Any] | None,
                            variables: Sequence[str] = ("A", "B", "D", "T")) -> list[dict[str, Any]]:
    """Per variable: the transcoder layer holding most of the global view's features of it (by how often they are
    kept), the activations it reads and writes, and the causal map's best hook for it (causal.json's
    variables[V].best.hook, among the hooks that map analysed: `causal_hooks`). They agree when the hook is the
    activation the features read or the one they write (a feature of transcoder layer3 is computed from layer2
    and writes layer3); None without a causal map or without features of the variable."""
    out = []
    for v in variables:
        weight: dict[str, float] = {}
        for group in view["groups"]:
            if group["variable"] == v:
                for f in group["features"]:
                    weight[f["layer"]] = weight.get(f["layer"], 0.0) + (f["graphs"] or 0.0)
        layer = max(weight, key=weight.get) if weight else None
        hook, hooks = None, None
        if causal is not None and v in causal.get("variables", {}):
            hook = causal["variables"][v]["best"]["hook"]
            hooks = sorted(causal.get("hooks", {}))
        sides = None if layer is None else [READS[layer], layer]
        out.append({"variable": v, "circuit_layer": layer, "reads_writes": sides, "features": sum(
            len(g["features"]) for g in view["groups"] if g["variable"] == v), "causal_hook": hook,
            "causal_hooks": hooks, "agrees": None if layer is None or hook is None else hook in sides})
    return out


def replacement_section(rep: Replacement, config: CircuitConfig, quality: Sequence[Mapping[str, float]],
                        test: Mapping[str, Any]) -> dict[str, Any]:
    layers = []
    for layer, name in enumerate(LAYERS):
        tc = rep.transcoders[layer]
        layers.append({"name": name, "reads": READS[name], "writes": name, "d_in": tc.input_dim, "d_out": tc.output_dim,
                       "architecture": tc.arch.name, "dict_size": tc.dict_size, "skip": tc.skip,
                       "fvu": _num(quality[layer]["fvu"]), "l0": _num(quality[layer]["l0"])})
    return {"layers": layers, "test": {"rows": int(test["rows"]), **{
        k: {"mse": _num(test[k]["mse"]), "exact_match": _num(test[k]["exact_match"])}
        for k in ("mlp", "replacement", "replacement_with_errors")}}}


def summary(measured: Mapping[str, Any], config: CircuitConfig) -> dict[str, Any]:
    """The share of graphs that reach completeness 0.9 with at most max_feature_nodes features, and the checks'
    agreement, over the graphs of `measured`."""
    ab = measured["ablations"]
    edges = [e for row in measured["edges"] for e in row]
    return {
        "graphs": len(measured["completeness"]),
        "completeness_mean": _num(np.mean(measured["completeness"])),
        "complete_share": _num(np.mean((measured["completeness"] >= 0.9)
                                       & (measured["n_features"] <= config.max_feature_nodes))),
        "features_mean": _num(np.mean(measured["n_features"])),
        "ablations": int(ab["valid"].sum()), "ablations_agree": _num(ab["agrees"][ab["valid"]].mean()
                                                                      if ab["valid"].any() else float("nan")),
        "ablations_same_sign": _num(np.mean(np.sign(ab["measured"]) == np.sign(ab["attributed"]), where=ab["valid"])
                                    if ab["valid"].any() else float("nan")),
        "edges": len(edges), "edges_agree": _num(np.mean([e["agrees"] for e in edges]) if edges else float("nan")),
        "edges_same_sign": _num(np.mean([np.sign(e["measured"]) == np.sign(e["attributed"]) for e in edges])
                                if edges else float("nan")),
        "ablations_agree_by_layer": {name: _num(ab["agrees"][ab["valid"] & (ab["layer"] == i)].mean())
                                     for i, name in enumerate(LAYERS) if (ab["valid"] & (ab["layer"] == i)).any()},
        "edges_agree_by_target": {name: _num(np.mean([e["agrees"] for e in edges if e["target"].startswith(name + "/")]))
                                  for name in LAYERS if any(e["target"].startswith(name + "/") for e in edges)},
        "tolerance": {"atol": config.atol, "rtol": config.rtol},
    }
