"""`monosem circuit`: the run's MLP replaced by transcoders, and attribution graphs of inputs through them,
written as circuit/circuit.json of the run (or --out DIR/circuit.json); format monosem-circuit/1, docs/circuit.md.

The transcoders (one per replaced map: input -> layer1, layer1 -> layer2, layer2 -> layer3) are trained on the
MLP's activations of the run's train split, or read back from circuit/transcoders/LAYER/ where a training with
the same settings left them (the run's seed and the CircuitConfig's training fields, recorded in each folder's
sae_config.json), and written there as sae.pth (+ sae.safetensors), sae_config.json and metrics.json, one
artifact set per layer. Every held-out row (labels, the global view's graphs, the pairs) is drawn outside the
train split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_impl.errors import UserError
from jax_impl.evaluation.circuit.attribution import attribute
from jax_impl.evaluation.circuit.config import LAYERS, CircuitConfig
from jax_impl.evaluation.circuit.document import (
    FORMAT,
    compare_with_causal_map,
    global_view,
    graph_document,
    measure_graphs,
    replacement_section,
    summary,
)
from jax_impl.evaluation.circuit.labels import VARIABLES, assign_variable, concept_labels, feature_variables
from jax_impl.evaluation.circuit.replacement import (
    Replacement,
    layer_quality,
    replacement_metrics,
    train_transcoders,
)
from jax_impl.files import jsonfile
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic, write_text_atomic
from jax_impl.interop import bridge
from jax_impl.jobs.causal import CAUSAL_JSON
from jax_impl.jobs.rundir import METRICS_FILE, SAE_CONFIG_FILE, SAE_FILE, Run, load_run, stream_key
from jax_impl.precision import highest_precision
from jax_impl.reports import circuit_page
from jax_impl.saes import SAE
from jax_impl.task.pointer import first_invalid_input
from jax_impl.task.variables import PairSampler, TaskVariables

Log = Callable[[str], None]

CIRCUIT_DIR = Path(circuit_page.CIRCUIT_DIR)
TRANSCODERS_DIR = "transcoders"
KEY_CIRCUIT = 32  # the run seed's PRNG stream of the circuit (apart from the pipeline's streams)


def check_inputs(inputs: Any, run: Run, name: str = "inputs") -> np.ndarray:
    """inputs: one row or rows of the run's task -> (N, D) int32; UserError naming `name` otherwise."""
    try:
        rows = np.asarray(inputs)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected rows of {run.shape.input_dim} integers") from None
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != run.shape.input_dim or len(rows) == 0:
        raise UserError(f"{name}: expected rows of {run.shape.input_dim} integers, got shape {rows.shape}")
    if rows.dtype.kind not in "iu" and not (rows.dtype.kind == "f" and np.all(np.isfinite(rows))
                                            and np.all(rows == np.round(rows))):
        raise UserError(f"{name}: expected integers, got {rows.dtype}")
    rows = rows.astype(np.int64)
    bad = first_invalid_input(rows, run.shape)
    if bad is not None:
        raise UserError(f"{name}: row {bad[0]}: {bad[1]}")
    return rows.astype(np.int32)


def _record(run: Run, config: CircuitConfig, layer: str, train_rows: int) -> dict[str, Any]:
    return {"layer": layer, "run_seed": run.config.seed, "train_rows": train_rows, **config.training_record()}


def _train_inputs(run: Run, config: CircuitConfig) -> np.ndarray:
    train = run.splits["train"].inputs
    if config.train_rows <= len(train):
        return train if config.train_rows == 0 else train[:config.train_rows]
    held_out = np.concatenate([run.splits["val"].inputs, run.splits["test"].inputs])
    sampler = PairSampler(TaskVariables(run.shape), config.seed + 1, exclude=held_out)
    return np.concatenate([train, sampler.fresh_rows(config.train_rows - len(train))])


def transcoders(run: Run, config: CircuitConfig, folder: Path, log: Log = print) -> list[SAE]:
    """The three transcoders: read back from folder/LAYER/ where trained with these settings, else trained now and
    written there. The caller holds the output folder's lock."""
    inputs = _train_inputs(run, config)
    records = {layer: _record(run, config, layer, len(inputs)) for layer in LAYERS}
    found = []
    for layer in LAYERS:
        path = folder / layer / SAE_CONFIG_FILE
        if not (folder / layer / SAE_FILE).exists() or not path.exists():
            break
        try:  # a file of another training or unreadable: trained again, as for other settings
            recorded = jsonfile.read(path).object()
        except UserError:
            break
        if recorded.get("circuit") != json.loads(json.dumps(records[layer])):
            break
        tc = _read_transcoder(folder / layer / SAE_FILE, recorded)
        if tc is None:
            break
        found.append(tc)
    if len(found) == len(LAYERS):
        log(f"Transcoders read back from {folder}")
        return found
    key = jax.random.fold_in(stream_key(run.config.seed, KEY_CIRCUIT), config.seed)
    trained, training = train_transcoders(run.mlp, inputs, config, key, log)
    for layer, tc, metrics in zip(LAYERS, trained, training):
        with artifact_set(folder / layer, last=(METRICS_FILE, SAE_CONFIG_FILE)) as staging:
            bridge.save_sae(tc, staging / SAE_FILE)
            write_json_atomic(staging / METRICS_FILE, metrics)
            write_json_atomic(staging / SAE_CONFIG_FILE, {
                "circuit": records[layer], "architecture": tc.arch.name, "config": dataclasses.asdict(tc.cfg),
                "input_dim": tc.input_dim, "output_dim": tc.output_dim, "dict_size": tc.dict_size, "skip": tc.skip})
    return trained


def _read_transcoder(path: Path, recorded: dict[str, Any]) -> SAE | None:
    """The transcoder this job wrote at path (sae.pth), None when it cannot be read or is not the recorded
    architecture, shapes and skip (then it is trained again)."""
    try:
        tc = bridge.load_sae(path, input_dim=int(recorded["input_dim"]))
    except (UserError, KeyError, TypeError, ValueError, OSError):
        return None
    same = (tc.transcoder and tc.arch.name == recorded.get("architecture") and tc.output_dim == recorded.get("output_dim")
            and tc.dict_size == recorded.get("dict_size") and tc.skip == bool(recorded.get("skip")))
    return tc if same else None


def _causal_document(run: Run, log: Log) -> dict | None:
    """What the global view is compared with from the run's causal map (jobs.causal.CAUSAL_JSON): each variable's
    best hook and the hooks the map analysed, checked; None without a map, or with one that cannot be read (then
    the comparison is n/a, said in one line)."""
    path = run.run_dir / CAUSAL_JSON
    if not path.exists():
        return None
    try:
        doc = jsonfile.read(path)
        variables = {name: {"best": {"hook": node["best"]["hook"].string()}} for name, node in doc["variables"].items()}
        hooks = dict.fromkeys(doc.get("hooks", {}).fields())
    except UserError as e:
        log(f"Circuit: the causal map is not compared ({e})")
        return None
    return {"variables": variables, "hooks": hooks}


@highest_precision
def circuit(run_dir: Path | str | Run, inputs: Any, out: Path | str | None = None,
            config: CircuitConfig | None = None, log: Log = print, write: bool = True) -> dict[str, Any]:
    """The circuit document (docs/circuit.md) of a run's MLP for inputs (one row of D integers or rows (N, D)):
    the replacement model's quality, one attribution graph per row, the features' labels and the global view;
    written to RUN/circuit/circuit.json (out: DIR/circuit.json) when `write`. Transcoders are cached under
    RUN/circuit/transcoders/ (out: DIR/transcoders/). config: default CircuitConfig()."""
    config = (config or CircuitConfig()).validate()
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    rows = check_inputs(inputs, run)
    root = Path(out) if out is not None else run.run_dir / CIRCUIT_DIR
    started = time.perf_counter()
    rep = Replacement.from_mlp(run.mlp, transcoders(run, config, root / TRANSCODERS_DIR, log))
    test = run.splits["test"]
    section = replacement_section(rep, config, layer_quality(run.mlp, rep, test.inputs),
                                  replacement_metrics(run.mlp, rep, test.inputs, test.targets))
    trained_at = time.perf_counter()

    train = run.splits["train"].inputs
    sampler = PairSampler(TaskVariables(run.shape), config.seed, exclude=train)
    held_out = sampler.fresh_rows(config.global_graphs)
    labels = concept_labels(rep, run.mlp, sampler.fresh_rows(config.label_rows), run.shape)
    att_global = attribute(rep, run.mlp, held_out)
    measured_global = measure_graphs(rep, att_global, config)
    scores = feature_variables(rep, run.mlp, run.shape, config.pairs, config.seed + 2, exclude=train,
                               variables=[v for v in VARIABLES if v in TaskVariables(run.shape).names])
    view = global_view(att_global, measured_global, scores, config.global_features, labels)
    view["summary"] = summary(measured_global, config)
    view["causal_map"] = compare_with_causal_map(view, _causal_document(run, log))

    att = attribute(rep, run.mlp, rows)
    measured = measure_graphs(rep, att, config)
    graphs = [graph_document(rep, att, measured, r, run.shape, labels) for r in range(len(rows))]
    frequency = np.concatenate(measured_global["keep"], axis=1).mean(axis=0)
    features = {}
    ids = [n["id"] for g in graphs for n in g["nodes"] if n["feature"] is not None and n["layer"] in LAYERS]
    ids += [f["id"] for group in view["groups"] for f in group["features"]]
    offsets = att.offsets
    for fid in dict.fromkeys(ids):
        layer_name, j = fid.split("/")
        layer = LAYERS.index(layer_name)
        index = int(offsets[layer]) + int(j)
        variable, _ = assign_variable(scores, index)
        info = labels.get(fid, {})
        features[fid] = {"layer": layer_name, "feature": int(j), "label": info.get("label", ""),
                         "f1": info.get("f1"), "variable": variable, "top_inputs": info.get("top_inputs", []),
                         "graphs": float(round(frequency[index], 4))}
    document = {"format": FORMAT, "share": config.share, "max_feature_nodes": config.max_feature_nodes,
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
                "replacement": section, "graphs": graphs, "features": features, "global": view}
    log(format_summary(document))
    log(f"Circuit: transcoders and replacement {trained_at - started:.1f} s, graphs and global view "
        f"{time.perf_counter() - trained_at:.1f} s")
    if write:
        path = write_circuit(document, root)
        log(f"Saved {path}")
    return document


def stage_files(document: dict[str, Any], folder: Path) -> None:
    """folder/circuit.html (jax_impl.reports.circuit_page) then folder/circuit.json, each written atomically."""
    write_text_atomic(folder / circuit_page.HTML_NAME, circuit_page.render_page(document))
    write_json_atomic(folder / circuit_page.JSON_NAME, document)


def write_circuit(document: dict[str, Any], root: Path) -> Path:
    """stage_files into root as one artifact set; the caller holds the output folder's lock. Returns the JSON's
    path."""
    with artifact_set(root, last=(circuit_page.JSON_NAME,)) as staging:
        stage_files(document, staging)
    return root / circuit_page.JSON_NAME


def format_summary(document: dict[str, Any]) -> str:
    t = document["replacement"]["test"]
    s = document["global"]["summary"]
    lines = [f"Replacement on {t['rows']} test rows: exact match MLP {t['mlp']['exact_match']:.4f}, replacement "
             f"{t['replacement']['exact_match']:.4f} (errors kept: {t['replacement_with_errors']['exact_match']:.4f})",
             f"Graphs of {s['graphs']} held-out inputs: {100 * s['complete_share']:.1f}% reach completeness 0.9 with "
             f"<= {document['max_feature_nodes']} features (mean {s['features_mean']:.1f} features, completeness "
             f"{s['completeness_mean']:.3f}); ablations agree {_pct(s['ablations_agree'])} of {s['ablations']}, "
             f"edges {_pct(s['edges_agree'])} of {s['edges']}"]
    for g in document["graphs"]:
        lines.append(f"  {g['input']} -> {g['output']:.3f} (target {g['target']:g}): {g['n_features']} features, "
                     f"completeness {g['completeness']:.3f}")
    for c in document["global"]["causal_map"]:
        lines.append(f"  {c['variable']}: circuit features at {c['circuit_layer']} ({c['features']}), causal map at "
                     f"{c['causal_hook']}: {'agrees' if c['agrees'] else 'differs' if c['agrees'] is False else 'n/a'}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
