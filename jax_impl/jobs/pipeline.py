"""`monosem run`: the seed's pipeline as named stages over one run directory.

data -> mlp -> harvest -> sae -> atlas -> causal -> circuit -> probe -> reports -> export (`STAGES`; the circuit
stage is optional: `--no-circuit`).
Every stage writes its artifacts and the `manifest.json` that records it as one artifact set
(jax_impl.files.artifact_set: staged in the run directory, then committed together), so a failed or killed stage
leaves the files and manifest of the stages before it as they were, and `--resume` restarts at the first
stage not recorded. The training
stages (mlp, sae) also checkpoint their state inside the stage (RUN_DIR/checkpoints/STAGE,
jax_impl.training.checkpoints), and `--resume` continues such a stage from its newest valid checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jax_impl import saes
from jax_impl.data.harvest import harvest_activations
from jax_impl.errors import UserError
from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas import document as atlas
from jax_impl.evaluation.dashboard import ArrayRows, DashboardConfig
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic, write_text_atomic
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.causal import CAUSAL_HTML, CAUSAL_JSON, causal_map, read_causal, write_causal
from jax_impl.jobs.circuit import CIRCUIT_DIR, circuit, stage_files
from jax_impl.jobs.dashboard import DASHBOARD_DIR, DASHBOARD_PAGE, LabelTable, build_dashboard, stage_dashboard
from jax_impl.jobs.export import EXPORT_FILES, export_models
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import (
    ACTIVATIONS_PATH,
    CHECKPOINTS_DIR,
    KEY_DATA,
    KEY_MLP_INIT,
    KEY_MLP_SHUFFLE,
    KEY_SAE_INIT,
    KEY_SAE_SHUFFLE,
    MANIFEST,
    MLP_PATH,
    PROBE_PATH,
    SAE_PATH,
    SAELENS_DIR,
    WRITTEN_FOLDERS,
    Run,
    dataset_path,
    read_manifest,
)
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.reports import circuit_page, circuit_trace
from jax_impl.reports.atlas_page import write_atlas
from jax_impl.reports.dashboard_page import INDEX_JS
from jax_impl.task.pointer import SPLITS, Split, TaskShape, generate_splits
from jax_impl.task.splits import split_filename, write_split
from jax_impl.training import sae_trainer
from jax_impl.training.checkpoints import CheckpointPolicy, TrainingCheckpoints
from jax_impl.training.curves import CurveConfig, Curves
from jax_impl.training.mlp_trainer import fit_mlp
from jax_impl.training.online import fit_mlp_online

Log = Callable[[str], None]


# --- stages: each writes its files under `out` (run_pipeline: the staging folder of the stage's artifact set;
# by default the run's own folder) and returns the metrics it wants recorded in the manifest -----------------


def stage_data(run: Run, out: Path | None = None) -> dict:
    d = run.config.data
    sizes = {"train": d.n_train, "val": d.n_val, "test": d.n_test}
    splits = generate_splits(run.key(KEY_DATA), sizes, run.shape)
    for name, split in splits.items():
        path = dataset_path(run.run_dir if out is None else out, name)
        run.log(f"Generating {len(split)} rows for {path.name}...")
        write_split(path, split)
    run.splits = splits
    return {"rows": sizes}


def stage_curves(run: Run, folder: Path, curves: CurveConfig | None) -> Curves | None:
    """A training stage's curves, RUN_DIR/FOLDER/metrics.jsonl (the stage's folder: mlp/, sae/): written as it
    trains, straight into the run directory (not into the stage's artifact set, which exists once it is done)."""
    if curves is None:
        return None
    return Curves(run.run_dir / folder, curves, name=f"{run.run_dir.name}/{folder}",
                  meta={"stage": str(folder), "seed": run.config.seed})


def stage_mlp(run: Run, out: Path | None = None, checkpoints: TrainingCheckpoints | None = None,
              curves: CurveConfig | None = None) -> dict:
    train, val, test = (run.splits[s] for s in SPLITS)
    model = InterpretabilityMLP(run.shape.input_dim, rngs=nnx.Rngs(run.key(KEY_MLP_INIT)))
    curve = stage_curves(run, MLP_PATH.parent, curves)
    if run.config.mlp.data == "online":  # fresh rows every step; the train split is only harvested
        result = fit_mlp_online(
            model, run.config.mlp, run.shape, n_train=len(train),
            key=run.key(KEY_MLP_SHUFFLE), val=(val.inputs, val.targets), log=run.log, checkpoints=checkpoints,
            curves=curve,
        )
    else:
        result = fit_mlp(
            model, train.inputs, train.targets, run.config.mlp,
            key=run.key(KEY_MLP_SHUFFLE), val=(val.inputs, val.targets), log=run.log, checkpoints=checkpoints,
            curves=curve,
        )
    bridge.save_mlp(result.model, (run.run_dir if out is None else out) / MLP_PATH)
    run.mlp = result.model
    return {s: inference.evaluate(result.model, run.splits[s]) for s in SPLITS} | {
        "final_train_loss": float(result.epoch_losses[-1])
    }


def stage_harvest(run: Run, out: Path | None = None) -> dict:
    activations = harvest_activations(run.mlp, run.splits["train"].inputs, run.hook)
    bridge.save_activations(activations, (run.run_dir if out is None else out) / ACTIVATIONS_PATH)
    run.log(f"Saved activations of shape: {list(activations.shape)}")
    run.activations = activations
    return {"shape": list(activations.shape), "hook": run.hook}


def stage_sae(run: Run, out: Path | None = None, checkpoints: TrainingCheckpoints | None = None,
              curves: CurveConfig | None = None) -> dict:
    cfg = run.config.sae
    run.log(f"Loaded activations: {list(run.activations.shape)}")
    sae = saes.create(
        cfg.variant, run.activations.shape[1], cfg.dict_size, cfg.architecture, key=run.key(KEY_SAE_INIT)
    )
    result = sae_trainer.fit(
        sae, run.activations, cfg.train_config(), key=run.key(KEY_SAE_SHUFFLE), log=run.log, checkpoints=checkpoints,
        curves=stage_curves(run, SAE_PATH.parent, curves),
    )
    out = run.run_dir if out is None else out
    bridge.save_sae(result.model, out / SAE_PATH)
    saelens.save_saelens(result.model, out / SAELENS_DIR, hook_name=run.hook, activations=run.activations)
    run.sae = result.model
    return {
        "variant": cfg.variant,
        "final_loss": float(result.epoch_losses[-1]),
        "test": inference.evaluate(run.mlp, run.splits["test"], result.model, run.hook),
    }


def probe_inputs(shape: TaskShape, test: Split) -> np.ndarray:
    """The seed's five probe inputs for the 5x2 task; the first five test rows for other shapes."""
    if shape == TaskShape():
        return np.asarray(inference.SEED_PROBE_INPUTS)
    return test.inputs[:5]


def stage_atlas(run: Run, out: Path | None = None) -> dict:
    """Label every SAE feature on all rows and test the labels causally (a few seconds); beside it the feature
    dashboard of the SAE over its training activations (RUN_DIR/dashboard/, jax_impl.jobs.dashboard), each row
    labelled by its input and target, which the atlas page links."""
    rows = run.rows()
    # The source names no path: the same run in another directory writes the same bytes.
    doc = atlas.atlas_from_models(run.mlp, run.sae, rows, run.shape, source="the run's train, val and test splits",
                                  hook=run.hook)
    out = run.out_dir if out is None else out
    train = run.splits["train"]
    labels = LabelTable(("input", "target"), [(" ".join(map(str, x)), f"{t:g}")
                                              for x, t in zip(train.inputs.tolist(), train.targets.tolist(), strict=True)])
    stats, index, cells = build_dashboard(
        run.sae, ArrayRows(run.activations), labels, DashboardConfig(), log=run.log,
        sae_record={"name": SAE_PATH.as_posix(), "architecture": run.sae.arch.name, "kind": "SAE",
                    "input_dim": run.sae.input_dim, "dict_size": run.sae.dict_size},
        activations_record={"file": ACTIVATIONS_PATH.as_posix(), "rows": len(run.activations),
                            "width": run.sae.input_dim})
    stage_dashboard(out / DASHBOARD_DIR, stats, index, cells)
    write_atlas(doc, out, dashboard=DASHBOARD_PAGE)
    run.log(atlas.format_summary(doc))
    return {"metrics": doc["metrics"], "summary": doc["summary"],
            "dashboard": {"page": DASHBOARD_PAGE, "pages": index["pages"], "dead": index["dead"]}}


def stage_causal(run: Run, out: Path | None = None) -> dict:
    """The causal map at the run's hook with its own SAE (config.causal: by default CausalConfig.quick();
    `monosem causal` does every hook)."""
    doc = causal_map(run, hooks=[run.hook], config=run.config.causal, log=run.log, write=False)
    write_causal(doc, run.out_dir if out is None else out)
    best = {v: {k: d["best"][k] for k in ("hook", "das_iia", "iia", "isolation")} | {"features": len(d["best"]["features"])}
            for v, d in doc["variables"].items()}
    circuit = doc["circuit"] and {k: doc["circuit"][k] for k in ("hook", "variables", "size", "share")}
    return {"variables": best, "circuit": circuit}


def stage_circuit(run: Run, out: Path | None = None) -> dict:
    """Transcoders replacing the MLP's layers and the attribution graphs of the probe's inputs (config.circuit;
    `monosem circuit` does any inputs), written to circuit/ with the transcoders in circuit/transcoders/."""
    root = (run.out_dir if out is None else out) / CIRCUIT_DIR
    doc = circuit(run, probe_inputs(run.shape, run.splits["test"]), out=root, config=run.config.circuit, log=run.log,
                  write=False)
    stage_files(doc, root)
    test, summary = doc["replacement"]["test"], doc["global"]["summary"]
    return {"exact_match": {k: test[k]["exact_match"] for k in ("mlp", "replacement", "replacement_with_errors")},
            "complete_share": summary["complete_share"], "features_mean": summary["features_mean"],
            "edges_agree": summary["edges_agree"], "ablations_agree": summary["ablations_agree"]}


def probe_text(run: Run, rows: np.ndarray) -> str:
    """The seed's probe report for each input row of rows (N, D), with the atlas's concept labels when it exists."""
    atlas_json = run.out_dir / atlas.ATLAS_JSON
    labels = atlas.feature_labels(atlas_json) if atlas_json.exists() and run.atlas_matches_sae else None
    reports = inference.probe(run.mlp, run.sae, rows, run.shape, run.hook)
    return "\n".join(inference.format_probe(report, labels) for report in reports)


def stage_probe(run: Run, out: Path | None = None) -> dict:
    text = probe_text(run, probe_inputs(run.shape, run.splits["test"]))
    run.log(text)
    write_text_atomic((run.run_dir if out is None else out) / PROBE_PATH, text + "\n")
    return {}


def stage_reports(run: Run, out: Path | None = None) -> dict:
    """The circuit trace workbook and the three HTML reports, over the train + val + test rows."""
    out = run.out_dir if out is None else out
    rows = run.rows()
    predictions, layer2 = inference.mlp_forward(run.mlp, rows.inputs, run.hook)  # the hook's activation
    _, features = inference.sae_forward(run.sae, layer2)
    causal_json = run.out_dir / CAUSAL_JSON
    causal = read_causal(causal_json) if causal_json.exists() else None
    paths = circuit_trace.write_reports(
        out, rows.inputs, rows.targets, predictions, layer2, features,
        x_dim=run.shape.x_dim, y_dim=run.shape.y_dim, log=run.log, causal=causal,
        link_circuit=(run.out_dir / circuit_page.CIRCUIT_JSON).is_file(),
    )
    return {"rows": len(rows), "files": [str(p.relative_to(out)) for p in paths.values()]}


def stage_export(run: Run, out: Path | None = None) -> dict:
    out = run.run_dir if out is None else out
    paths = export_models(run.mlp, run.sae, out)
    return {"files": [str(p.relative_to(out)) for p in paths.values()]}


@dataclass(frozen=True)
class Stage:
    """fn(run, out) -> metrics, its files written under `out`; a training stage's fn also takes `checkpoints`
    (its TrainingCheckpoints) and `curves` (its CurveConfig: stage_curves). enabled(config): whether a run of that
    config has this stage (an optional one, left out by a flag, counts as done and writes nothing)."""

    name: str
    title: str
    fn: Callable[..., dict]
    outputs: tuple[Path, ...]
    trains: bool = False
    enabled: Callable[[RunConfig], bool] = lambda config: True


STAGES: list[Stage] = [
    Stage("data", "Generating Dataset", stage_data, tuple(Path("dataset") / split_filename(s) for s in SPLITS)),
    Stage("mlp", "Training MLP", stage_mlp, (MLP_PATH, bridge.safetensors_twin(MLP_PATH)), trains=True),
    Stage("harvest", "Harvesting Activations", stage_harvest, (ACTIVATIONS_PATH, bridge.safetensors_twin(ACTIVATIONS_PATH))),
    Stage("sae", "Training Sparse Autoencoder (SAE)", stage_sae, (
        SAE_PATH, bridge.safetensors_twin(SAE_PATH), SAELENS_DIR / saelens.WEIGHTS_FILE, SAELENS_DIR / saelens.CFG_FILE,
        SAELENS_DIR / saelens.SPARSITY_FILE,
    ), trains=True),
    Stage("atlas", "Building Feature Atlas and Dashboard", stage_atlas, (
        Path(atlas.ATLAS_JSON), Path(atlas.ATLAS_HTML), Path(DASHBOARD_PAGE), Path(DASHBOARD_DIR) / INDEX_JS,
    )),
    Stage("causal", "Mapping Variables to Features by Interventions", stage_causal, (CAUSAL_JSON, CAUSAL_HTML)),
    Stage("circuit", "Tracing Attribution Graphs through Transcoders", stage_circuit,
          (Path(circuit_page.CIRCUIT_JSON), Path(circuit_page.CIRCUIT_HTML)), enabled=lambda c: c.circuit_stage),
    Stage("probe", "Running Feature Probe", stage_probe, (PROBE_PATH,)),
    Stage("reports", "Generating Feature Reports", stage_reports, tuple(Path(f) for f in circuit_trace.REPORT_FILES.values())),
    Stage("export", "Exporting TorchScript and torch.export programs", stage_export, tuple(EXPORT_FILES.values())),
]


# --- manifest, lock, orchestration ----------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("monosemanticity-mlp", "jax", "jaxlib", "flax", "optax", "numpy", "torch", "openpyxl", "plotly"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    versions["jax_backend"] = jax.default_backend()
    versions["jax_devices"] = [str(d) for d in jax.devices()]
    return versions


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second process in the same run directory (jax_impl.files.locks)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file; --run-dir must be a folder (new or from an earlier run)")
    with folder_lock(run_dir, flag="--run-dir", what="run directory"):
        yield


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def _completed_stages(manifest: dict | None, config: RunConfig, run_dir: Path, resume: bool) -> set[str]:
    if not resume:
        return set()
    if manifest is None:
        raise UserError(f"{run_dir}: nothing to resume (no {MANIFEST}); run without --resume")
    recorded = manifest.get("config", {})
    if isinstance(recorded, dict) and "causal" not in recorded:  # written before the causal stage: its defaults
        recorded = {**recorded, "causal": RunConfig().to_dict()["causal"]}
    if isinstance(recorded, dict) and "circuit" not in recorded:  # written before the circuit stage: its defaults
        recorded = {**recorded, "circuit": RunConfig().to_dict()["circuit"], "circuit_stage": True}
    # as JSON has it (tuples are lists there)
    diffs = _config_differences(recorded, json.loads(json.dumps(config.to_dict())))
    if diffs:
        raise UserError(
            f"{run_dir / MANIFEST}: cannot resume with a different config ({'; '.join(diffs)}); "
            "pass the flags of the original run, or start over without --resume"
        )
    done = set()
    for stage in STAGES:
        if not stage.enabled(config):
            continue  # left out of this run: nothing to find
        if stage.name not in manifest.get("stages", {}) or not all((run_dir / p).exists() for p in stage.outputs):
            break  # later stages depend on this one, so they rerun too
        done.add(stage.name)
    return done


def format_summary(stage_seconds: dict[str, float], started: datetime, finished: datetime) -> str:
    rule = "-" * 54
    lines = ["", "=" * 54, "Pipeline Complete.", "=" * 54, "", rule, "Execution Summary:"]
    # Only this run's own seconds: a speed-up is a ratio of two programs timed on one machine, which is what
    # `make bench` measures (docs/performance.md), not a comparison with seconds from elsewhere.
    lines.append(f"{'stage':<10}{'seconds':>10}")
    for name, seconds in stage_seconds.items():
        lines.append(f"{name:<10}{seconds:>10.1f}")
    lines.append(f"{'total':<10}{sum(stage_seconds.values()):>10.1f}")
    lines.append("Speed against the PyTorch reference on this machine: make bench")
    duration = int(round((finished - started).total_seconds()))
    lines += [
        f"Started:  {started:%H:%M:%S}",
        f"Finished: {finished:%H:%M:%S}",
        f"Duration: {duration // 60} m {duration % 60} s",
        rule,
    ]
    return "\n".join(lines)


def _stage_checkpoints(run_dir: Path, stage: Stage, config: RunConfig, policy: CheckpointPolicy, resume: bool,
                       log: Log) -> TrainingCheckpoints:
    return TrainingCheckpoints(
        run_dir / CHECKPOINTS_DIR / stage.name, {"stage": stage.name, "config": config.to_dict()}, policy,
        resume=resume, log=log,
    )


def _remove_checkpoints(run_dir: Path, keep: str | None) -> None:
    """Remove the checkpoint folders of every training stage but `keep` (and the checkpoints folder once empty);
    nothing else in it, and nothing through a symlink (a linked folder is not ours to empty)."""
    folder = run_dir / CHECKPOINTS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return
    for stage in STAGES:
        child = folder / stage.name
        if stage.trains and stage.name != keep and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty


def run_stage(run: Run, stage: Stage, manifest: dict, checkpoints: TrainingCheckpoints | None = None,
              curves: CurveConfig | None = None) -> dict:
    """Run one stage and commit its files together with the manifest that records it, as one artifact set
    (jax_impl.files.artifact_set; the caller holds the run directory's lock). Returns the new manifest; on any
    failure the run directory holds its previous files and manifest."""
    with artifact_set(run.run_dir, last=(MANIFEST,)) as staging:
        t0 = time.perf_counter()
        metrics = (stage.fn(run, staging, checkpoints=checkpoints, curves=curves) if stage.trains
                   else stage.fn(run, staging))
        seconds = time.perf_counter() - t0
        recorded = {"seconds": round(seconds, 3), "completed_at": datetime.now().isoformat()}
        manifest = {**manifest, "stages": {**manifest["stages"], stage.name: recorded},
                    "metrics": {**manifest["metrics"], stage.name: metrics}}
        write_json_atomic(staging / MANIFEST, manifest)
    return manifest


@highest_precision
def run_pipeline(
    config: RunConfig, run_dir: Path | str, *, resume: bool = False, log: Log = print,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    curves: CurveConfig | None = CurveConfig(),
) -> dict:
    """Run (or resume) every stage of `config` (data, mlp, harvest, sae, atlas, causal, circuit, probe, reports, export)
    into `run_dir`; returns the final manifest (config, versions, each stage's metrics). log: where progress goes.

    The training stages save their state to RUN_DIR/checkpoints/STAGE every `checkpoint_every`; with `resume`
    the first unfinished stage continues from its newest valid checkpoint. A stage's checkpoints are removed
    once it is recorded as completed. curves: each training stage's curves in its folder (stage_curves; None: none),
    not part of the manifest (they change no result)."""
    config.validate()
    run_dir = Path(run_dir)
    started = datetime.now()
    with run_dir_lock(run_dir):
        remove_stale_temporaries(run_dir, WRITTEN_FOLDERS)
        previous = read_manifest(run_dir)
        done = _completed_stages(previous, config, run_dir, resume)
        first_pending = next((stage.name for stage in STAGES if stage.name not in done and stage.enabled(config)), None)
        # Only the first stage to run can continue from a checkpoint: every later one starts afresh.
        _remove_checkpoints(run_dir, keep=first_pending if resume else None)
        manifest = {
            "config": config.to_dict(),
            "seed": config.seed,
            "versions": package_versions(),
            "stages": {k: v for k, v in (previous or {}).get("stages", {}).items() if k in done},
            "metrics": {k: v for k, v in (previous or {}).get("metrics", {}).items() if k in done},
        }
        run = Run(run_dir, config, log)
        for i, stage in enumerate(STAGES, start=1):
            if stage.name in done:
                log(f"[{i}/{len(STAGES)}] {stage.title}: already completed, skipped (--resume)")
                continue
            if not stage.enabled(config):
                log(f"[{i}/{len(STAGES)}] {stage.title}: left out (--no-{stage.name})")
                continue
            log(f"[{i}/{len(STAGES)}] {stage.title}...")
            checkpoints = _stage_checkpoints(run_dir, stage, config, checkpoint_every, resume, log) if stage.trains else None
            manifest = run_stage(run, stage, manifest, checkpoints, curves)
            if checkpoints is not None:  # recorded as completed: its checkpoints are no longer needed
                _remove_checkpoints(run_dir, keep=None)
        seconds = {name: s["seconds"] for name, s in manifest["stages"].items()}
        log(format_summary(seconds, started, datetime.now()))
    sys.stdout.flush()
    return manifest
