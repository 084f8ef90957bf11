"""The causal map: for each task variable and hook, how well each intervention moves the output the way the
high-level model says (jax_impl.task.variables, jax_impl.evaluation.causal.interventions), which named features carry it,
and the sparse circuit their union makes.

`causal_map_of_site` analyses one hook of any network (`Site`) with any dictionary; `causal_map` does it for a
run directory's MLP at several hooks, training an SAE with the run's recipe where a hook has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jax_impl.evaluation.atlas.scores import score_features
from jax_impl.evaluation.causal.config import CausalConfig
from jax_impl.evaluation.causal.interventions import (
    Site,
    ablation_effects,
    encode,
    fit_subspaces,
    iia,
    mean_ablation_outputs,
    outputs,
    select_features,
    set_outputs,
    subspace_outputs,
)
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.files import jsonfile
from jax_impl.precision import highest_precision
from jax_impl.task.concepts import task_concepts
from jax_impl.task.pointer import TaskShape
from jax_impl.task.variables import KIND_NAMES, MINIMAL, Pairs, PairSampler, TaskVariables


def circuit_cuts(variables: TaskVariables) -> dict[str, list[str]]:
    """Sets of variables that each determine the output on their own: the cuts a sparse circuit is built on."""
    return {"T": ["T"], "D": ["D"], "A,B": ["A", "B"], "P1,P2,cells": ["P1", "P2", *variables.cells]}


@dataclass(frozen=True)
class PairSet:
    """The pairs every hook is measured on: per variable, fit / eval / isolation pairs."""

    fit: dict[str, Pairs]
    eval: dict[str, Pairs]
    isolation: dict[str, Pairs]
    circuit_rows: np.ndarray  # (N, D) int32 rows the sparse circuit is checked on

    @classmethod
    def draw(cls, variables: TaskVariables, config: CausalConfig, exclude: np.ndarray | None = None,
             names: Sequence[str] | None = None) -> PairSet:
        sampler = PairSampler(variables, config.seed, exclude)
        names = config.variable_names(variables.names) if names is None else list(names)
        fit = {v: sampler.pairs(v, config.fit_pairs) for v in names}
        ev = {v: sampler.pairs(v, config.eval_pairs) for v in names}
        iso = {v: sampler.isolation_pairs(v, config.isolation_pairs) for v in names}
        return cls(fit, ev, iso, sampler.fresh_rows(config.circuit_rows))


def _iia_by_kind(out: np.ndarray, pairs: Pairs) -> dict[str, float | None]:
    return {KIND_NAMES[k]: jsonfile.number(iia(out[pairs.kind == k], pairs.answer[pairs.kind == k])) if np.any(pairs.kind == k)
            else None for k in range(len(KIND_NAMES))}


class _Activations:
    """The hook's activation of every row a site analysis needs, computed in one forward pass."""

    def __init__(self, site: Site, pair_sets: list[Pairs], extra: np.ndarray):
        rows = [extra] + [a for p in pair_sets for a in (p.base, p.source)]
        h = site.activation(np.concatenate(rows))
        self._h, self._offsets, start = h, {}, len(extra)
        self.extra = h[: len(extra)]
        for p in pair_sets:
            n = len(p)
            self._offsets[id(p)] = (start, start + n)
            start += 2 * n

    def of(self, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
        s, e = self._offsets[id(pairs)]
        n = e - s
        return self._h[s:e], self._h[e:e + n]


@highest_precision
def causal_map_of_site(
    site: Site, dictionary: Dictionary | None, variables: TaskVariables, pairs: PairSet,
    config: CausalConfig = CausalConfig(), *, label_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every intervention for every variable of `pairs` at one hook.

    dictionary: the SAE read at this hook (None: no named-feature patches); label_rows (N, D): rows the chosen
    features' concept labels and top inputs come from (default: the circuit rows). Returns
    {"variables": {name: {"whole", "whole_by_kind", "das": {rank: iia}, "das_best": {"rank", "iia"},
    "features": {...} or None}}, "circuit": {...} or None, "features": {id: {"label", "f1", "top"}}}."""
    names = list(pairs.eval)
    acts = _Activations(site, [p for v in names for p in (pairs.fit[v], pairs.eval[v], pairs.isolation[v])],
                        pairs.circuit_rows)
    readout = site.readout
    result: dict[str, Any] = {v: {} for v in names}
    for v in names:
        _, h_src = acts.of(pairs.eval[v])
        out = outputs(readout, h_src)
        result[v]["whole"] = jsonfile.number(iia(out, pairs.eval[v].answer))
        result[v]["whole_by_kind"] = _iia_by_kind(out, pairs.eval[v])

    # Distributed alignment search: every variable at once, one program per rank.
    fit_h = np.stack([acts.of(pairs.fit[v])[0] for v in names])
    fit_src = np.stack([acts.of(pairs.fit[v])[1] for v in names])
    fit_answer = np.stack([pairs.fit[v].answer for v in names])
    eval_h = np.stack([acts.of(pairs.eval[v])[0] for v in names])
    eval_src = np.stack([acts.of(pairs.eval[v])[1] for v in names])
    init_rows = np.stack([(pairs.fit[v].kind == MINIMAL) if np.any(pairs.fit[v].kind == MINIMAL)
                          else np.ones(len(pairs.fit[v]), bool) for v in names])
    key = jax.random.key(config.seed)
    for rank in config.ranks:
        if rank > site.width:
            continue
        rotation = fit_subspaces(readout, fit_h, fit_src, fit_answer, rank, jax.random.fold_in(key, rank), config.das,
                                 init_rows=init_rows)
        out = subspace_outputs(readout, eval_h, eval_src, rotation)
        for i, v in enumerate(names):
            result[v].setdefault("das", {})[str(rank)] = jsonfile.number(iia(out[i], pairs.eval[v].answer))
    for v in names:
        bounded = {int(r): x for r, x in result[v]["das"].items() if int(r) <= 16}
        best_rank = max(bounded, key=lambda r: (bounded[r], -r))
        result[v]["das_best"] = {"rank": best_rank, "iia": bounded[best_rank]}

    site_doc: dict[str, Any] = {"variables": result, "circuit": None, "features": {}}
    if dictionary is None:
        return site_doc
    w_dec = np.asarray(dictionary.w_dec)
    u = w_dec @ np.asarray(readout.w1)
    rng = np.random.default_rng([config.seed, 1])
    f_rows = encode(dictionary, acts.extra)
    live = np.flatnonzero(f_rows.max(axis=0) > 0)
    for v in names:
        h, h_src = acts.of(pairs.fit[v])
        f, f_src = encode(dictionary, h), encode(dictionary, h_src)
        z = h @ np.asarray(readout.w1) + np.asarray(readout.b1)
        sets = select_features(readout, z, f_src - f, u, pairs.fit[v].answer, max_size=config.max_features,
                               shortlist=config.shortlist)
        if not sets:
            result[v]["features"] = None
            continue
        fit_curve = [iia(o, pairs.fit[v].answer) for o in set_outputs(readout, h, f, f_src, w_dec, sets)]
        reached = [k for k, x in enumerate(fit_curve, start=1) if x >= config.min_iia]
        size = reached[0] if reached else int(np.argmax(fit_curve)) + 1
        chosen = sets[size - 1]
        eh, eh_src = acts.of(pairs.eval[v])
        ef, ef_src = encode(dictionary, eh), encode(dictionary, eh_src)
        curve = [iia(o, pairs.eval[v].answer) for o in set_outputs(readout, eh, ef, ef_src, w_dec, sets)]
        pool = live if len(live) else np.arange(w_dec.shape[0])
        random_sets = [sorted(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist())
                       for k in range(1, len(sets) + 1) for _ in range(config.random_draws)]
        random_out = set_outputs(readout, eh, ef, ef_src, w_dec, random_sets)
        random_curve = [float(np.mean([iia(random_out[(k - 1) * config.random_draws + d], pairs.eval[v].answer)
                                       for d in range(config.random_draws)])) for k in range(1, len(sets) + 1)]
        ih, ih_src = acts.of(pairs.isolation[v])
        i_f, i_fsrc = encode(dictionary, ih), encode(dictionary, ih_src)
        patched = set_outputs(readout, ih, i_f, i_fsrc, w_dec, [chosen])[0]
        isolation = iia(patched, np.round(outputs(readout, ih))) if len(pairs.isolation[v]) else None
        chosen_out = set_outputs(readout, eh, ef, ef_src, w_dec, [chosen])[0]
        # Each chosen feature alone: the mean |change of the output| it makes on the eval pairs (the edge weight
        # from the variable to the feature in the causal view).
        alone = set_outputs(readout, eh, ef, ef_src, w_dec, [[c] for c in chosen])
        base_out = outputs(readout, eh)
        result[v]["features"] = {
            "sets": [[int(c) for c in s] for s in sets],
            "iia_by_size": [jsonfile.number(x) for x in curve],
            "fit_iia_by_size": [jsonfile.number(x) for x in fit_curve],
            "random_iia_by_size": [jsonfile.number(x) for x in random_curve],
            "chosen": [int(c) for c in chosen],
            "iia": jsonfile.number(curve[size - 1]),
            "iia_by_kind": _iia_by_kind(chosen_out, pairs.eval[v]),
            "isolation": jsonfile.number(isolation),
            "effects": [jsonfile.number(float(np.mean(np.abs(a - base_out)))) for a in alone],
        }
    site_doc["circuit"] = _circuit(readout, dictionary, result, acts.extra, f_rows, variables)
    used = sorted({c for v in names if result[v].get("features") for c in result[v]["features"]["chosen"]}
                  | set(site_doc["circuit"]["best"]["features"] if site_doc["circuit"] else []))
    rows = pairs.circuit_rows if label_rows is None else label_rows
    f_label = f_rows if label_rows is None else encode(dictionary, site.activation(label_rows))
    site_doc["features"] = feature_labels(f_label, rows, used, variables.shape)
    return site_doc


def _circuit(readout, dictionary: Dictionary, result: dict, h: np.ndarray, f: np.ndarray,
             variables: TaskVariables) -> dict[str, Any] | None:
    """The sparse circuit at this hook for each cut: the union of the cut's chosen features, every other feature
    mean-ablated, on the circuit rows; the share of rows whose rounded output is the model's."""
    w_dec = np.asarray(dictionary.w_dec)
    clean = np.round(outputs(readout, h))
    f_mean = f.mean(axis=0)
    error_mean = (h - f @ w_dec).mean(axis=0)
    cuts = {}
    for name, members in circuit_cuts(variables).items():
        if not all(m in result and result[m].get("features") for m in members):
            continue
        keep = sorted({c for m in members for c in result[m]["features"]["chosen"]})
        out = mean_ablation_outputs(readout, h, f, f_mean, w_dec, keep)
        out_no_error = mean_ablation_outputs(readout, h, f, f_mean, w_dec, keep, keep_error=False, error_mean=error_mean)
        # The output's dependence on each kept feature inside the circuit: mean |change| when it too is mean-ablated.
        h_circuit = np.asarray(h) - ((f - f_mean) * np.isin(np.arange(f.shape[1]), keep, invert=True)) @ w_dec
        effects = [jsonfile.number(float(e)) for e in ablation_effects(readout, h_circuit, f, f_mean, w_dec, keep)]
        cuts[name] = {"variables": members, "features": keep, "size": len(keep),
                      "share": jsonfile.number(float(np.mean(np.round(out) == clean))),
                      "share_without_error": jsonfile.number(float(np.mean(np.round(out_no_error) == clean))),
                      "effects": effects}
    if not cuts:
        return None
    best = min(cuts.values(), key=lambda c: (c["share"] < 0.95, c["size"] if c["share"] >= 0.95 else -c["share"]))
    return {"rows": int(len(h)), "cuts": cuts, "best": best}


def feature_labels(f: np.ndarray, rows: np.ndarray, ids: Sequence[int], shape: TaskShape,
                   top: int = 5) -> dict[str, Any]:
    """The atlas's concept label (best F1) and the top inputs of each feature in ids: {str(id): {...}}."""
    if not ids:
        return {}
    concepts = task_concepts(rows, shape.x_dim, shape.y_dim)
    acts = f[:, list(ids)]
    scores = score_features(acts, concepts.mask)
    out = {}
    for i, fid in enumerate(ids):
        best = int(np.argmax(scores.f1[i]))
        order = np.argsort(-acts[:, i], kind="stable")[:top]
        out[str(int(fid))] = {
            "label": concepts.names[best], "f1": jsonfile.number(scores.f1[i, best]),
            "density": jsonfile.number(float(np.mean(acts[:, i] > 0)), 5),
            "top": [{"input": rows[r].tolist(), "act": jsonfile.number(acts[r, i])} for r in order if acts[r, i] > 0],
        }
    return out


def best_hooks(by_hook: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per variable, the hook where it is mediated: the highest DAS IIA at rank <= 16 (ties within 0.005: the
    higher named-feature IIA, then the earlier hook)."""
    out = {}
    for v in names:
        options = []
        for order, (hook, doc) in enumerate(by_hook.items()):
            r = doc["variables"][v]
            features = r.get("features") or {}
            options.append((r["das_best"]["iia"] or 0.0, features.get("iia") or 0.0, -order, hook))
        top = max(o[0] for o in options)
        hook = max((o for o in options if o[0] >= top - 0.005), key=lambda o: (o[1], o[2]))[3]
        r = by_hook[hook]["variables"][v]
        features = r.get("features") or {}
        out[v] = {"hook": hook, "das_iia": r["das_best"]["iia"], "das_rank": r["das_best"]["rank"],
                  "features": features.get("chosen", []), "iia": features.get("iia"),
                  "isolation": features.get("isolation"), "whole": r["whole"]}
    return out
