"""`monosem causal`: the causal map of a run directory's MLP at its hooks, written as causal/causal.json and an
offline page causal/causal.html.

Each hook's SAE is, in order: the one the caller names for it (`--sae [HOOK=]PATH`), the run's own SAE at the
run's hook, an SAE this command trained earlier at that hook with the same recipe (causal/saes/HOOK/), or a new
one trained now with the run's recipe (architecture, dictionary size, epochs, flags) on the hook's activations
of the train split, written there as the family's usual files: sae.pth, sae.safetensors, saelens/,
sae.torchscript.pt, sae_config.json, metrics.json, committed as one artifact set (jax_impl.files.artifact_set), as
are causal.json and causal.html. Every pair is drawn outside the train split (the rows the SAEs train on).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_impl import saes
from jax_impl.data.harvest import harvest_activations
from jax_impl.errors import UserError
from jax_impl.evaluation import inference
from jax_impl.evaluation.causal.config import CausalConfig
from jax_impl.evaluation.causal.interventions import Site
from jax_impl.evaluation.causal.study import PairSet, best_hooks, causal_map_of_site
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.files import jsonfile
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic, write_text_atomic
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.rundir import (
    KEY_SAE_INIT,
    KEY_SAE_SHUFFLE,
    METRICS_FILE,
    SAE_CONFIG_FILE,
    SAE_FILE,
    SAELENS_NAME,
    Run,
)
from jax_impl.models.mlp import HOOK_WIDTHS, HOOKS
from jax_impl.precision import highest_precision
from jax_impl.reports.causal_page import render_page
from jax_impl.task.variables import TaskVariables
from jax_impl.training import sae_trainer

Log = Callable[[str], None]

CAUSAL_DIR = Path("causal")
CAUSAL_JSON = CAUSAL_DIR / "causal.json"
CAUSAL_HTML = CAUSAL_DIR / "causal.html"
CAUSAL_SAES_DIR = CAUSAL_DIR / "saes"
FORMAT = "monosem-causal-map/1"
MAX_FEATURE_ID = 2**31 - 1  # a feature id read from a causal map (an index of an SAE's dictionary)


def _sae_record(run: Run, hook: str) -> dict[str, Any]:
    """What identifies an SAE trained here: the recipe's SAE config, the hook and the run's seed."""
    return {"hook": hook, "seed": run.config.seed, "sae": dataclasses.asdict(run.config.sae),
            "train_rows": len(run.splits["train"])}


def hook_sae(run: Run, hook: str, log: Log = print) -> tuple[saes.SAE, Path]:
    """The SAE for `hook` that no caller named: the run's own at its hook, else causal/saes/HOOK/ (trained now
    with the run's recipe when missing or trained with another). -> (SAE, its path)."""
    if hook == run.hook:
        return run.sae, run.sae_path
    folder = run.out_dir / CAUSAL_SAES_DIR / hook
    record = _sae_record(run, hook)
    config_path = folder / SAE_CONFIG_FILE
    if (folder / SAE_FILE).exists() and config_path.exists():
        # A file that cannot be read or is not an object (JSONFileError) is one of another training: the SAE is
        # trained again and the folder rewritten, as for another recipe.
        try:
            recorded = jsonfile.read(config_path).object()
        except UserError:
            recorded = {}
        if recorded.get("causal") == json.loads(json.dumps(record)):
            return saelens.load_sae(folder / SAE_FILE, input_dim=HOOK_WIDTHS[hook]), folder / SAE_FILE
    cfg = run.config.sae
    log(f"Training a {cfg.variant} SAE ({cfg.dict_size} features) at {hook} with the run's recipe -> {folder}")
    activations = harvest_activations(run.mlp, run.splits["train"].inputs, hook)
    stream = 16 + HOOKS.index(hook)  # per hook, apart from the run's own SAE streams
    sae = saes.create(cfg.variant, activations.shape[1], cfg.dict_size, cfg.architecture,
                      key=jax.random.fold_in(run.key(KEY_SAE_INIT), stream))
    started = time.perf_counter()
    result = sae_trainer.fit(sae, activations, cfg.train_config(),
                              key=jax.random.fold_in(run.key(KEY_SAE_SHUFFLE), stream), log=lambda _: None)
    metrics = inference.evaluate(run.mlp, run.splits["test"], result.model, hook)
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    write_hook_sae(result.model, folder, hook, record, metrics, activations)
    return result.model, folder / SAE_FILE


def write_hook_sae(sae: saes.SAE, folder: Path, hook: str, record: dict[str, Any], metrics: dict[str, Any],
                   activations: np.ndarray | None = None) -> None:
    """The family's files for an SAE at a hook, one artifact set; the config (which marks the set complete)
    moved into place last. The caller holds the output folder's lock. activations: (N, d) float32, the SAE's
    training rows, on which its SAELens folder's feature densities are measured."""
    from jax_impl.jobs.export import export_sae  # torch-only work, imported when an SAE is written

    with artifact_set(folder, last=(METRICS_FILE, SAE_CONFIG_FILE)) as staging:
        bridge.save_sae(sae, staging / SAE_FILE)
        saelens.save_saelens(sae, staging / SAELENS_NAME, hook_name=hook, activations=activations)
        export_sae(sae, staging / "sae.torchscript.pt")
        write_json_atomic(staging / METRICS_FILE, metrics)
        write_json_atomic(staging / SAE_CONFIG_FILE, {"causal": record, "architecture": sae.arch.name,
                                                      "config": dataclasses.asdict(sae.cfg), "input_dim": sae.input_dim,
                                                      "dict_size": sae.dict_size})


def parse_sae_flags(values: Sequence[str], default_hook: str) -> dict[str, Path]:
    """`--sae [HOOK=]PATH` values -> {hook: path}; a value without HOOK= is for the run's hook."""
    out: dict[str, Path] = {}
    for value in values:
        hook, sep, path = value.partition("=")
        if not sep or hook not in HOOKS:
            hook, path = default_hook, value
        if hook in out:
            raise UserError(f"--sae {value!r}: a second SAE for {hook}")
        out[hook] = Path(path)
    return out


def check_hooks(hooks: Sequence[str] | None, sae_paths: Mapping[str, Path | str] | None) -> tuple[list[str], dict[str, Path]]:
    """The hooks to analyse (default all) and the SAEs named for them; UserError naming the flag otherwise."""
    hooks = list(HOOKS if hooks is None else hooks)
    for hook in hooks:
        if hook not in HOOKS:
            raise UserError(f"--hooks: unknown hook {hook!r}; expected some of {', '.join(HOOKS)}")
    sae_paths = {h: Path(p) for h, p in (sae_paths or {}).items()}
    for hook in sae_paths:
        if hook not in hooks:
            raise UserError(f"--sae for {hook}, which is not among --hooks {','.join(hooks)}")
    return hooks, sae_paths


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


@highest_precision
def causal_map(
    run: Run, *, hooks: Sequence[str] | None = None, sae_paths: Mapping[str, Path | str] | None = None,
    config: CausalConfig = CausalConfig(), log: Log = print, write: bool = True,
) -> dict[str, Any]:
    """The causal map of the run's MLP at `hooks` (default all three): the causal.json document, also written with
    its page under run.out_dir/causal/ when `write`. sae_paths: {hook: an SAE file or SAELens folder} (default:
    the run's own SAE at its hook, at another hook one trained with the run's recipe into causal/saes/HOOK/);
    config: the pairs, DAS and circuit settings."""
    config.validate()
    hooks, sae_paths = check_hooks(hooks, sae_paths)
    variables = TaskVariables(run.shape)
    pairs = PairSet.draw(variables, config, exclude=run.splits["train"].inputs)
    by_hook, sae_of_hook = {}, {}
    for hook in hooks:
        if hook in sae_paths:
            sae, path = saelens.load_sae(sae_paths[hook], input_dim=HOOK_WIDTHS[hook]), sae_paths[hook]
        else:
            sae, path = hook_sae(run, hook, log)
        sae_of_hook[hook] = _relative(path, run.run_dir)
        t0 = time.perf_counter()
        doc = causal_map_of_site(Site.from_mlp(run.mlp, hook), Dictionary.from_sae(sae), variables, pairs, config)
        doc["sae"] = sae_of_hook[hook]
        by_hook[hook] = doc
        # Timings go to the log, not into the document: the same run and settings give the same bytes.
        log(f"Causal map at {hook}: {time.perf_counter() - t0:.1f} s")
    document = build_document(by_hook, variables, pairs, config)
    if write:
        write_causal(document, run.out_dir)
    log(format_summary(document))
    return document


def build_document(by_hook: dict[str, dict[str, Any]], variables: TaskVariables, pairs: PairSet,
                   config: CausalConfig) -> dict[str, Any]:
    names = list(pairs.eval)
    best = best_hooks(by_hook, names)
    out_vars = {}
    for v in names:
        b = best[v]
        out_vars[v] = {
            "best": {"hook": b["hook"], "sae": by_hook[b["hook"]]["sae"], "features": b["features"], "iia": b["iia"],
                     "das_iia": b["das_iia"], "das_rank": b["das_rank"], "isolation": b["isolation"],
                     "whole": b["whole"]},
            "by_hook": {h: doc["variables"][v] for h, doc in by_hook.items()},
        }
    circuits = {h: doc["circuit"] for h, doc in by_hook.items() if doc["circuit"]}
    circuit = None
    if circuits:
        hook = min(circuits, key=lambda h: (circuits[h]["best"]["share"] < 0.95, circuits[h]["best"]["size"]
                                            if circuits[h]["best"]["share"] >= 0.95 else -circuits[h]["best"]["share"]))
        circuit = {"hook": hook, **circuits[hook]["best"], "rows": circuits[hook]["rows"]}
    return {
        "format": FORMAT,
        "shape": {"x_dim": variables.shape.x_dim, "y_dim": variables.shape.y_dim},
        "settings": dataclasses.asdict(config),
        "pairs": {"fit": config.fit_pairs, "eval": config.eval_pairs, "isolation": config.isolation_pairs},
        "hooks": {h: {"sae": doc["sae"], "circuit": doc["circuit"], "features": doc["features"]}
                  for h, doc in by_hook.items()},
        "variables": out_vars,
        "circuit": circuit,
        "lookup": lookup_sentence(out_vars),
    }


def lookup_sentence(variables: Mapping[str, Any]) -> str:
    """One sentence a reader can check: where the pointers are still patchable and where the selected values are."""
    def where(v: str) -> str:
        b = variables[v]["best"]
        return f"{v} at {b['hook']} (DAS IIA {b['das_iia']:.2f}, {len(b['features'])} features IIA {b['iia'] or 0:.2f})"
    parts = [where(v) for v in ("P1", "P2", "A", "B", "T") if v in variables] or [where(v) for v in variables]
    return "Each variable is best patched: " + "; ".join(parts) + "."


def format_summary(document: Mapping[str, Any]) -> str:
    lines = [f"Causal map ({document['pairs']['eval']} held-out pairs per variable): variable, hook where mediated, "
             "DAS IIA (rank), named features -> IIA, isolation"]
    for v, doc in document["variables"].items():
        b = doc["best"]
        iia = "n/a" if b["iia"] is None else f"{b['iia']:.3f}"
        iso = "n/a" if b["isolation"] is None else f"{b['isolation']:.3f}"
        lines.append(f"  {v:<5} {b['hook']:<7} DAS {b['das_iia']:.3f} (r={b['das_rank']:>2})  "
                     f"{len(b['features']):>2} features -> {iia}  isolation {iso}")
    c = document.get("circuit")
    if c:
        lines.append(f"Sparse circuit at {c['hook']} ({'+'.join(c['variables'])}, {c['size']} features, the rest "
                     f"mean-ablated): reproduces the model's rounded output on {100 * c['share']:.1f}% of "
                     f"{c['rows']} held-out rows ({100 * c['share_without_error']:.1f}% with the SAE error mean-ablated too)")
    return "\n".join(lines)


def write_causal(document: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """out_dir/causal/causal.json and its page, one artifact set; the caller holds out_dir's lock."""
    with artifact_set(out_dir, last=(CAUSAL_JSON.as_posix(),)) as staging:
        write_json_atomic(staging / CAUSAL_JSON, document)
        write_text_atomic(staging / CAUSAL_HTML, render_page(document))
    return Path(out_dir) / CAUSAL_JSON, Path(out_dir) / CAUSAL_HTML


def read_causal(path: Path) -> dict[str, Any]:
    """A causal.json (write_causal's) for the reports, with every part they take checked (the sparse circuit, the
    labels of its hook's features, its variables' chosen features and effects there: reports.causal_sankey_view);
    UserError naming the file and the key otherwise."""
    doc = jsonfile.read(path, hint="rerun `monosem causal` or remove it")
    circuit = doc.get("circuit", None)
    if circuit.is_null:
        return doc.value
    hook = circuit["hook"].string()
    for feature in circuit["features"].elements():
        feature.integer(0, MAX_FEATURE_ID)
    for effect in circuit.get("effects", []).elements():
        effect.number(null=True)
    circuit["share"].number(0, 1)
    for variable in circuit["variables"].elements():
        chosen = doc["variables"][variable.string()]["by_hook"][hook].get("features", None)
        if not chosen.is_null:
            for feature in chosen.get("chosen", []).elements():
                feature.integer(0, MAX_FEATURE_ID)
            for effect in chosen.get("effects", []).elements():
                effect.number(null=True)
    for info in doc.get("hooks", {}).get(hook, {}).get("features", {}).fields().values():
        if info.get("label", None).string(null=True):
            info["f1"].number()
    return doc.value
