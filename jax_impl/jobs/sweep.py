"""`monosem sweep`: train a grid of SAE (or MLP) configurations, those of one shape together in one vmapped program.

The grid (jax_impl.jobs.sweep_grid) expands into configurations; those that share every static field form a
*group*, which trains as one vmapped program (jax_impl.training.vmapped); different shapes are different groups,
run one after the other. Each configuration is initialised and shuffled from its seed with the keys a standalone
`monosem train-sae` (SAE) or `monosem run` (MLP) derives from it (jax_impl.jobs.rundir's streams), so its folder
holds what that command writes, up to float rounding (docs/sweeps.md: measured and tested).

Outputs under `out_dir` (held with the folder lock, like train-sae): one subfolder per configuration with
train-sae's files (an SAE folder: sae.pth, sae.safetensors, saelens/, sae_config.json, metrics.json) or the MLP's
(mlp/perfect_mlp.pth and .safetensors, mlp_config.json, metrics.json), each folder committed as one artifact set
(jax_impl.files.artifact_set); sweep.csv and sweep.json (one row per configuration; jax_impl.reports.sweep_page) and
sweep.html (the L0-vs-EV Pareto front, or the MLP seeds' spread).
While a group trains, checkpoints/group-NNN/ holds its training state (jax_impl.training.checkpoints; removed once the
group's folders are written), which `resume` continues from; SIGINT/SIGTERM end the sweep after the current
epoch with a checkpoint (jax_impl.training.interrupts). A configuration that diverges (training.loop.divergence, a
state that ends NaN, metrics that overflow) gets a row whose `status` says why and no folder; the others are written
(the command line then exits 1 with one line).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl import saes
from jax_impl.checks import check_memory
from jax_impl.data.activations import ActivationFile, PairedActivations
from jax_impl.errors import TrainingDiverged, UserError
from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas import document as atlas
from jax_impl.evaluation.metrics import reconstruction_metrics
from jax_impl.files import jsonfile
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.interop import bridge
from jax_impl.jobs.record_kinds import SWEEP_FORMAT
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import (
    ACTIVATIONS_PATH,
    CHECKPOINTS_DIR,
    KEY_MLP_INIT,
    KEY_MLP_SHUFFLE,
    METRICS_FILE,
    MLP_PATH,
    SAE_CONFIG_FILE,
    SAE_FILE,
    SAELENS_NAME,
    Run,
    load_run,
    stream_key,
)
from jax_impl.jobs.sweep_grid import STAGES, MLPConfiguration, SAEConfiguration, mlp_configurations, sae_configurations
from jax_impl.jobs.train_sae import (
    LAST_FILES,
    TrainSAEConfig,
    check_metrics,
    config_record,
    data_record,
    init_and_shuffle_keys,
    open_training_data,
    stage_artifacts,
    training_density,
)
from jax_impl.precision import highest_precision
from jax_impl.reports.sweep_page import write_report
from jax_impl.task.pointer import SPLITS
from jax_impl.task.splits import split_filename
from jax_impl.training.checkpoints import CheckpointPolicy, TrainingCheckpoints, data_mismatch
from jax_impl.training.curves import CurveConfig, Curves, remove_curves
from jax_impl.training.loop import Log
from jax_impl.training.mlp_trainer import mlp_training_bytes
from jax_impl.training.sae_trainer import SAETrainConfig, training_bytes
from jax_impl.training.vmapped import Progress, Trained, fit_mlp_group, fit_sae_group, group_by, sae_group_key

MLP_CONFIG_FILE = "mlp_config.json"
GROUP_DONE_FILE = "done.json"  # checkpoints/group-NNN/done.json: a finished group's diverged rows (see _group_done)


def sae_defaults(run_config: RunConfig | None) -> TrainSAEConfig:
    """The SAE settings of a sweep where neither its grid nor its arguments set them: the run's SAE settings and
    seed (a sweep on a run directory), else train-sae's defaults."""
    if run_config is None:
        return TrainSAEConfig()
    s = run_config.sae
    return TrainSAEConfig(variant=s.variant, dict_size=s.dict_size, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                          log_every=s.log_every, seed=run_config.seed, architecture=s.architecture)


def _source_of(activations: Path | str | None, run_dir: Path | str | None,
               flag: Callable[[str], str]) -> tuple[Path, Run | None]:
    if (activations is None) == (run_dir is None):
        raise UserError(f"give exactly one of {flag('activations')} and {flag('run_dir')}")
    if run_dir is None:
        return Path(activations), None
    run = load_run(run_dir, log=lambda line: None)
    path = Path(run_dir) / ACTIVATIONS_PATH
    return path, run


@highest_precision
def run_sweep(
    out_dir: Path | str,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    stage: str = "sae",
    activations: Path | str | None = None,
    run_dir: Path | str | None = None,
    target: Path | str | None = None,
    skip: bool = False,
    variants: Sequence[str] | None = None,
    dict_size: int | None = None,
    train: SAETrainConfig | None = None,
    seed: int | None = None,
    chunk_rows: int = TrainSAEConfig.chunk_rows,
    atlas_scores: bool = True,
    resume: bool = False,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    curves: CurveConfig = CurveConfig(),
    log: Log = print,
    flag: Callable[[str], str] = str,
) -> dict[str, Any]:
    """Train every configuration of `grid` ({key: values}; values typed or strings as on the command line) and
    write out_dir (see the module docstring). Returns the sweep.json document.

    stage "sae": on `activations` (a file train-sae reads) or on a run directory's harvested activations,
    whose SAE settings are then the defaults; variants, dict_size, train, seed: the values of keys the grid
    does not set (None: sae_defaults, the run's, else train-sae's). With a run directory and atlas_scores, each
    SAE is also scored by the atlas (monosemantic share etc.) with the run's MLP on all its rows.
    stage "mlp": several MLPs of the run directory's recipe at once (e.g. grid {"seed": range(8)}).
    Bad input raises UserError before anything is written but the folder lock; a message names an argument as
    flag(name) spells it (its name; the command line passes its flags' names).

    Each group's training state is checkpointed in out_dir/checkpoints/group-NNN/ every `checkpoint_every`
    (and on SIGINT/SIGTERM, which end the sweep after the current epoch with `errors.Interrupted`); a group's
    checkpoints are removed once its folders are written. resume: groups whose folders are complete are read
    back, not retrained; an interrupted group continues from its newest valid checkpoint; the sweep.csv/json
    written are those of an uninterrupted sweep but for the timing columns (docs/sweeps.md). Without resume,
    old checkpoints in out_dir are removed first. curves: each configuration's training curves in its folder
    (CONFIGURATION/metrics.jsonl, one run per configuration in --log's backends; jax_impl.training.curves).
    """
    curves.validate(flag)
    if stage not in STAGES:
        raise UserError(f"{flag('stage')} must be one of {', '.join(STAGES)}, got {stage!r}")
    grid = dict(grid or {})
    if stage == "mlp":
        if run_dir is None or activations is not None:
            raise UserError(f"{flag('stage')} mlp trains the MLP of a run directory: give {flag('run_dir')} (not "
                            f"{flag('activations')})")
        given = [flag(name) for name, value in (("variants", variants), ("dict_size", dict_size), ("train", train),
                                                ("seed", seed), ("target", target), ("skip", skip or None))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: SAE settings; with {flag('stage')} mlp use {flag('grid')} KEY=... "
                            f"(e.g. {flag('grid')} seed=0..7)")
        run = load_run(run_dir, log=lambda line: None)
        configurations = mlp_configurations(grid, run.config)
        run.splits  # noqa: B018  (read and validate the splits before the lock: a bad run directory writes nothing)
        for members in group_by(configurations, lambda c: c.cfg):  # a group's configurations train at once
            cfg = members[0].cfg
            steps = cfg.epochs * -(-len(run.splits["train"]) // cfg.batch_size)
            check_memory(mlp_training_bytes(run.shape.input_dim, cfg.batch_size, steps, len(members)),
                         f"{flag('grid')}: {len(members)} MLP configuration(s) of {cfg.epochs} epochs trained at once "
                         f"({members[0].name}, ...)", "the sweep")
        settings = settings_record(stage=stage, run_dir=run_dir)
        return _locked(out_dir, resume, configurations, flag, lambda: _mlp_sweep(
            configurations, run, out_dir, grid, _Resume(resume, checkpoint_every), log, settings, curves))
    # The values given first (an explicit 0 is refused, never taken for "not given"), then the run directory's
    # defaults.
    given = {"dict_size": dict_size, "seed": seed, "chunk_rows": chunk_rows}
    given = {k: v for k, v in given.items() if v is not None} | ({} if train is None else dataclasses.asdict(train))
    dataclasses.replace(TrainSAEConfig(), **given).validate_settings(flag)
    path, run = _source_of(activations, run_dir, flag)
    if target is not None and run is not None:
        raise UserError(f"{flag('target')} trains transcoders on {flag('activations')} and that file: give "
                        f"{flag('activations')} (not {flag('run_dir')}, whose atlas scores are an SAE's)")
    if skip and target is None:
        raise UserError(f"{flag('skip')} is a transcoder's skip connection: it needs {flag('target')}")
    defaults = dataclasses.replace(sae_defaults(None if run is None else run.config), **given)
    configurations = sae_configurations(
        grid, variants=[defaults.variant] if variants is None else list(variants), dict_size=defaults.dict_size,
        train=defaults.train_config(), seed=defaults.seed,
        arch_defaults={defaults.variant: dataclasses.asdict(defaults.architecture)},
    )
    source = open_training_data(path, target)
    if source.n_rows > chunk_rows:
        raise UserError(
            f"{source.path}: {source.n_rows} rows, more than {flag('chunk_rows')} {chunk_rows}; a sweep holds the rows "
            f"in memory once for all its configurations: raise {flag('chunk_rows')}, or stream with train-sae one "
            "configuration at a time"
        )
    for c in configurations:
        if c.train.batch_size > source.n_rows:
            raise UserError(f"{flag('grid')}: configuration {c.name}: batch size {c.train.batch_size} is larger than "
                            f"the file ({source.n_rows} rows of {source.path})")
    for members in group_by(configurations, sae_group_key):  # a group's configurations train at once
        c = members[0]
        check_memory(training_bytes(source.width, c.dict_size, c.train.batch_size, source.n_rows, len(members)),
                     f"{flag('dict_size')} {c.dict_size} (or {flag('grid')} dict_size) for {len(members)} "
                     f"configuration(s) trained at once ({c.name}, ...) with {flag('batch_size')} {c.train.batch_size} "
                     f"on {source.n_rows} x {source.width} activations", "the sweep")
    if run is not None and atlas_scores:
        run.mlp  # noqa: B018  (load the run's MLP and splits before the lock: a bad run directory writes nothing)
        run.splits  # noqa: B018
    settings = settings_record(
        stage=stage, activations=activations, run_dir=run_dir, target=target, skip=skip, variants=variants,
        dict_size=dict_size, train=train, seed=seed, chunk_rows=chunk_rows, atlas_scores=atlas_scores)
    return _locked(out_dir, resume, configurations, flag, lambda: _sae_sweep(
        configurations, source, run if atlas_scores else None, out_dir, grid, chunk_rows,
        _Resume(resume, checkpoint_every), log, skip, settings, curves))


def settings_record(*, stage: str, activations: Path | str | None = None,
                    run_dir: Path | str | None = None, target: Path | str | None = None, skip: bool = False,
                    variants: Sequence[str] | None = None, dict_size: int | None = None,
                    train: SAETrainConfig | None = None, seed: int | None = None,
                    chunk_rows: int = TrainSAEConfig.chunk_rows, atlas_scores: bool = True) -> dict[str, Any]:
    """run_sweep's arguments but the grid (sweep.json's `grid`) as sweep.json's `settings` records them (paths as
    given; None: not given), so that `monosem sweep --config sweep.json` (jax_impl.jobs.records) reruns the sweep."""
    def path(p: Path | str | None) -> str | None:
        return None if p is None else str(p)

    return {"stage": stage, "activations": path(activations), "run_dir": path(run_dir), "target": path(target),
            "skip": bool(skip), "variants": None if variants is None else list(variants), "dict_size": dict_size,
            "train": None if train is None else dataclasses.asdict(train), "seed": seed, "chunk_rows": chunk_rows,
            "atlas_scores": bool(atlas_scores)}


def _locked(out_dir: Path | str, resume: bool, configurations: Sequence[SAEConfiguration | MLPConfiguration],
            flag: Callable[[str], str], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; {flag('out_dir')} must be a folder")
    with folder_lock(out_dir, flag=flag("out_dir"), what="output folder"):
        # What a killed sweep left, only where a sweep writes: each configuration's folder (train-sae's or the
        # MLP's files) and the groups' checkpoints.
        written = [str(CHECKPOINTS_DIR), f"{CHECKPOINTS_DIR}/group-*"]
        for name in (glob.escape(c.name) for c in configurations):  # a name is a name, not a pattern
            written += [name, f"{name}/{SAELENS_NAME}", f"{name}/{MLP_PATH.parent}"]
        remove_stale_temporaries(out_dir, written)
        if not resume:  # as train-sae: a fresh start forgets an earlier sweep's training state
            shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)
        doc = work()
        shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)  # every group is written: nothing to resume
        return doc


@dataclass(frozen=True)
class _Resume:
    """How a sweep treats its groups' checkpoints (run_sweep's resume and checkpoint_every)."""

    resume: bool
    policy: CheckpointPolicy

    def checkpoints(self, out_dir: Path, g: int, identity: dict[str, Any], log: Log) -> TrainingCheckpoints:
        return TrainingCheckpoints(out_dir / CHECKPOINTS_DIR / f"group-{g:03d}", identity, self.policy,
                                   resume=self.resume, log=log)


def _group_done(checkpoints: TrainingCheckpoints, rows: Sequence[dict[str, Any]]) -> None:
    """A group's folders are written: drop its checkpoints and keep only the rows of its diverged configurations
    (they get no folder to read back on --resume) beside its identity."""
    checkpoints.clear()
    diverged = {row["name"]: row for row in rows if row.get("status") != "ok"}
    if diverged:
        checkpoints.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(checkpoints.folder / GROUP_DONE_FILE,
                          {"identity": checkpoints.identity, "diverged": diverged})


def _finished_rows(members: Sequence[Any], checkpoints: TrainingCheckpoints,
                   read_row: Callable[[Any], dict[str, Any] | None]) -> list[dict[str, Any]] | None:
    """On --resume, a group's table rows when every configuration's folder is complete (read_row: its row from
    its files, or None when they are not all there) or it diverged in the run that finished the group; else None
    (the group trains, from its newest checkpoint if any)."""
    diverged: dict[str, Any] = {}
    done = _read_json(checkpoints.folder / GROUP_DONE_FILE)
    if done is not None and done.get("identity", None).value == checkpoints.identity:  # else another sweep's
        diverged = {name: _diverged_row(name, row) for name, row in done["diverged"].items()}
    rows = []
    for c in members:
        row = diverged.get(c.name) or read_row(c)
        if row is None:
            return None
        rows.append(row)
    return rows


def _diverged_row(name: str, row: jsonfile.Node) -> dict[str, Any]:
    """A diverged configuration's table row as _group_done wrote it: its name, a status other than ok, seconds."""
    row["name"].string((name,))
    if row["status"].string() == "ok":
        row["status"].fail("the status of a configuration that diverged")
    row["seconds"].number(lo=0)
    return row.value


def _read_json(path: Path) -> jsonfile.Node | None:
    """A JSON file written by an earlier run of this sweep, or None when it is missing (the configuration then
    counts as not finished and is trained again); UserError naming the file (and then the key a reader asks for)
    when it is there but cannot be used."""
    if not path.exists():
        return None
    return jsonfile.read(path, hint=f"remove {path.parent} to train it again, or start over without --resume")


def _same_settings(folder: Path, written: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse to read back a configuration folder written with other settings (a --resume with other flags) or on
    other data (checkpoints.data_mismatch)."""
    expected = json.loads(json.dumps(expected))
    other_data = data_mismatch(written, expected, what="sweep")
    if other_data:
        raise UserError(f"{folder}: {other_data}")
    diffs = [k for k in expected if written.get(k) != expected[k]]
    if diffs:
        raise UserError(f"{folder}: written by a sweep with other settings ({', '.join(diffs)} differ); pass the flags "
                        "of the original sweep to --resume it, or start over without --resume")


def _grid_record(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The grid as given, JSON-ready (tuples and ranges as lists)."""
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, (tuple, range)) else v

    return {k: [plain(v) for v in vs] if isinstance(vs, (list, tuple, range)) else [plain(vs)]
            for k, vs in grid.items()}


def _run_groups(configurations: Sequence[Any], groups: list[list[Any]], out_dir: Path, resume: _Resume, log: Log, *,
                epochs: Callable[[Any], int], identity: Callable[[list[Any]], dict[str, Any]],
                read_row: Callable[[Any, int], dict[str, Any] | None],
                train: Callable[[int, list[Any], Progress, TrainingCheckpoints, str], list[dict[str, Any]]],
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The groups one after the other, SAE or MLP alike: a group whose every configuration a resume finds written is
    read back (`read_row(c, g)`), any other is trained and written (`train(g, members, progress, checkpoints,
    label)` returns its table rows). Returns (the table in configuration order, one record per group)."""
    progress = Progress(sum(len(m) * epochs(m[0]) for m in groups), log)
    table, group_records = [], []
    try:
        for g, members in enumerate(groups):
            started = time.perf_counter()
            checkpoints = resume.checkpoints(out_dir, g, identity(members), log)
            finished = None
            if resume.resume:
                finished = _finished_rows(members, checkpoints, lambda c, g=g: read_row(c, g))
            if finished is not None:
                log(f"Sweep group {g + 1}/{len(groups)}: every configuration is written; read back, not trained again")
                progress.advance(len(members) * epochs(members[0]))
                table += finished
                seconds = sum(row["seconds"] for row in finished)  # its training time, from the run that did it
            else:
                written = train(g, members, progress, checkpoints, f"(sweep group {g + 1}/{len(groups)})")
                _group_done(checkpoints, written)
                table += written
                seconds = time.perf_counter() - started
            group_records.append({"group": g, "configurations": [c.name for c in members],
                                  "seconds": round(seconds, 3)})
    finally:
        progress.close()
    order = {c.name: c.index for c in configurations}
    table.sort(key=lambda row: order[row["name"]])  # configuration order (groups train in another)
    return table, group_records


def _sae_sweep(configurations: list[SAEConfiguration], source: ActivationFile, run: Run | None, out_dir: Path,
               grid: Mapping[str, Sequence[Any]], chunk_rows: int, resume: _Resume, log: Log,
               skip: bool = False, settings: dict[str, Any] | None = None,
               curves: CurveConfig = CurveConfig()) -> dict[str, Any]:
    out_dir = Path(out_dir)
    groups = group_by(configurations, sae_group_key)
    if isinstance(source, PairedActivations):
        log(f"Sweep: {len(configurations)} {'skip ' if skip else ''}transcoder configuration(s) in {len(groups)} "
            f"program(s) on {source.n_rows} x {source.inputs.width} activations from {source.inputs.path} predicting "
            f"{source.n_rows} x {source.targets.width} from {source.targets.path}")
        split = source.inputs.width
    else:
        log(f"Sweep: {len(configurations)} SAE configuration(s) in {len(groups)} program(s) on {source.n_rows} x "
            f"{source.width} activations from {source.path}")
        split = None
    rows = source.rows(0, source.n_rows)

    def train(g: int, members: list[SAEConfiguration], progress: Progress, checkpoints: TrainingCheckpoints,
              label: str) -> list[dict[str, Any]]:
        keys = [init_and_shuffle_keys(c.seed) for c in members]
        trained = fit_sae_group(members, keys, rows, progress, checkpoints, label=f"SAE {label}", split=split,
                                skip=skip, curves=[_curves(out_dir, c, curves) for c in members])
        return [_write_sae(c, t, g, source, run, out_dir / c.name, chunk_rows)
                for c, t in zip(members, trained, strict=True)]

    table, group_records = _run_groups(
        configurations, groups, out_dir, resume, log, epochs=lambda c: c.train.epochs,
        identity=lambda members: _sae_identity(members, source, chunk_rows, skip),
        read_row=lambda c, g: _read_sae_row(c, g, source, run, out_dir / c.name, chunk_rows, skip), train=train)
    doc = {"format": SWEEP_FORMAT, "stage": "sae", "source": str(source.path),
           "run_dir": None if run is None else str(run.run_dir), "grid": _grid_record(grid),
           "groups": group_records, "configurations": table}
    # what reruns it (`--config`): the arguments, and the data's names and fingerprints to check it against
    doc |= {"settings": settings, "data": data_record(source, skip=skip)}
    return write_report(out_dir, doc, log)


def _curves(out_dir: Path, c: SAEConfiguration | MLPConfiguration, curves: CurveConfig) -> Curves:
    """A configuration's training curves, in its folder (one run of its own in each backend)."""
    settings = {"seed": c.seed} | ({"variant": c.variant, "dict_size": c.dict_size,
                                   "training": dataclasses.asdict(c.train)} if isinstance(c, SAEConfiguration) else {})
    return Curves(out_dir / c.name, curves, name=c.name, meta=settings | {"config": dataclasses.asdict(c.cfg)})


def _sae_identity(members: Sequence[SAEConfiguration], source: ActivationFile, chunk_rows: int,
                  skip: bool = False) -> dict[str, Any]:
    """What a group's checkpoint must match to be resumed: its configurations and the data's shape."""
    return {"stage": "sae", "chunk_rows": chunk_rows, **data_record(source, skip=skip),
            "configurations": [{"name": c.name, "variant": c.variant, "dict_size": c.dict_size, "seed": c.seed,
                                "config": dataclasses.asdict(c.cfg), "training": dataclasses.asdict(c.train)}
                               for c in members]}


def _write_sae(c: SAEConfiguration, t: Trained, group: int, source: ActivationFile, run: Run | None, folder: Path,
               chunk_rows: int) -> dict[str, Any]:
    if t.model is None:
        remove_curves(folder)  # no folder for a diverged configuration, its curves included (the row says why)
        return {"name": c.name, "group": group, "variant": c.variant, **c.values, "status": t.diverged,
                "seconds": round(t.seconds, 3)}
    metrics = reconstruction_metrics(t.model, source, chunk_rows) | {
        "final_loss": t.final_loss, "train_seconds": round(t.seconds, 3),
    }
    try:
        check_metrics(metrics, source)
    except TrainingDiverged as e:  # a failed configuration, as one whose loss diverged
        return {"name": c.name, "group": group, "variant": c.variant, **c.values, "status": str(e),
                "seconds": round(t.seconds, 3)}
    record = config_record(t.model, c.variant, c.train, source, seed=c.seed, chunk_rows=chunk_rows, devices=1)
    # The folder's files, the atlas among them, are one set (metrics.json moved last: _read_sae_row).
    with artifact_set(folder, last=LAST_FILES) as staging:
        scores = _atlas_scores(run, t.model, folder.name, staging) if run is not None else None
        stage_artifacts(t.model, staging, record, metrics, training_density(t.model, source, chunk_rows))
    return _sae_row(c, group, metrics, record, scores)


def _sae_row(c: SAEConfiguration, group: int, metrics: Mapping[str, Any], record: dict[str, Any],
             scores: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": c.name, "group": group, "variant": c.variant, **c.values}
    row |= {k: metrics[k] for k in ("explained_variance", "l0", "dead_fraction", "mse", "final_loss")}
    row["seconds"] = metrics["train_seconds"]
    if scores is not None:
        row |= scores
    return row | {"status": "ok", "config": record}


def _read_sae_row(c: SAEConfiguration, group: int, source: ActivationFile, run: Run | None, folder: Path,
                  chunk_rows: int, skip: bool = False) -> dict[str, Any] | None:
    """A written configuration's table row from its metrics.json, sae_config.json (and feature_atlas.json), as
    _write_sae returned it; None when the folder is not complete."""
    metrics, record = _read_json(folder / METRICS_FILE), _read_json(folder / SAE_CONFIG_FILE)
    if metrics is None or record is None or not (folder / SAE_FILE).is_file():
        return None
    arch = saes.get(c.variant)
    cfg = arch.resolve(c.cfg, c.dict_size) if arch.resolve is not None else c.cfg
    _same_settings(folder, record.object(), {
        "architecture": c.variant, "config": dataclasses.asdict(cfg), "training": dataclasses.asdict(c.train),
        "dict_size": c.dict_size, "seed": c.seed, "chunk_rows": chunk_rows, **data_record(source, skip=skip),
    })
    scores = None
    if run is not None:
        doc = _read_json(folder / atlas.ATLAS_JSON)
        if doc is None:
            return None  # no atlas yet (or none possible: no feature fires; the group then trains again)
        scores = _atlas_row(doc)
    return _sae_row(c, group, _sae_metrics(metrics), record.value, scores)


def _sae_metrics(metrics: jsonfile.Node) -> dict[str, Any]:
    """The values of an SAE configuration's metrics.json that its table row takes, each checked."""
    return {"explained_variance": metrics["explained_variance"].number(null=True), "l0": metrics["l0"].number(lo=0),
            "dead_fraction": metrics["dead_fraction"].number(0, 1), "mse": metrics["mse"].number(lo=0),
            "final_loss": metrics["final_loss"].number(), "train_seconds": metrics["train_seconds"].number(lo=0)}


ATLAS_COLUMNS = ("monosemantic_share", "share_f1_0_9", "live", "monosemantic", "consistent_share_of_monosemantic")


def _atlas_scores(run: Run, sae: saes.SAE, name: str, folder: Path) -> dict[str, Any]:
    """The atlas's summary scores of sae (configuration `name`) with the run's MLP on all its rows; the document
    written into `folder` (its staging folder)."""
    try:
        doc = atlas.atlas_from_models(run.mlp, sae, run.rows(), run.shape, hook=run.hook,
                                      source=f"{run.run_dir} (all splits), sweep {name}")
    except UserError:  # no feature fires on any row: nothing to label
        return {k: None for k in ATLAS_COLUMNS} | {"live": 0}
    write_json_atomic(folder / atlas.ATLAS_JSON, doc)
    # as a --resume reads it back from the file
    return _atlas_row(jsonfile.Node(json.loads(json.dumps(doc)), str(folder / atlas.ATLAS_JSON)))


def _atlas_row(doc: jsonfile.Node) -> dict[str, Any]:
    """The atlas's summary scores a table row takes, each checked (a number, or null where there is none)."""
    return ({k: doc["summary"][k].number(null=True) for k in ATLAS_COLUMNS}
            | {"spliced_mse": doc["metrics"].get("spliced_mse", None).number(null=True)})


def _mlp_sweep(configurations: list[MLPConfiguration], run: Run, out_dir: Path, grid: Mapping[str, Sequence[Any]],
               resume: _Resume, log: Log, settings: dict[str, Any] | None = None,
               curves: CurveConfig = CurveConfig()) -> dict[str, Any]:
    out_dir = Path(out_dir)
    groups = group_by(configurations, lambda c: c.cfg)
    log(f"Sweep: {len(configurations)} MLP configuration(s) in {len(groups)} program(s) on the splits of {run.run_dir}")
    splits = splits_record(run)

    def identity(members: list[MLPConfiguration]) -> dict[str, Any]:
        return {"stage": "mlp", "data": dataclasses.asdict(run.config.data), "train_rows": len(run.splits["train"]),
                "splits": splits, "configurations": [{"name": c.name, "seed": c.seed, "mlp": dataclasses.asdict(c.cfg)}
                                                     for c in members]}

    def train(g: int, members: list[MLPConfiguration], progress: Progress, checkpoints: TrainingCheckpoints,
              label: str) -> list[dict[str, Any]]:
        # each seed's keys as `monosem run --seed S` derives them (Run.key)
        keys = [(stream_key(c.seed, KEY_MLP_INIT), stream_key(c.seed, KEY_MLP_SHUFFLE)) for c in members]
        trained = fit_mlp_group(members, keys, run.splits["train"], run.splits["val"], run.shape, progress,
                                checkpoints, label=f"MLP {label}", curves=[_curves(out_dir, c, curves) for c in members])
        return [_write_mlp(c, t, g, run, out_dir / c.name, splits) for c, t in zip(members, trained, strict=True)]

    table, group_records = _run_groups(
        configurations, groups, out_dir, resume, log, epochs=lambda c: c.cfg.epochs, identity=identity,
        read_row=lambda c, g: _read_mlp_row(c, g, run, out_dir / c.name, splits), train=train)
    doc = {"format": SWEEP_FORMAT, "stage": "mlp", "source": str(run.run_dir), "run_dir": str(run.run_dir),
           "grid": _grid_record(grid), "groups": group_records, "configurations": table,
           "settings": settings, "data": {"splits": splits}}  # what reruns it (`--config`), as for an SAE sweep
    return write_report(out_dir, doc, log)


def splits_record(run: Run) -> dict[str, dict[str, Any]]:
    """What an MLP sweep's identity (checkpoints, MLP_CONFIG_FILE) records of the run's splits, the data it reads
    from the run's files: per split its file's name, rows and the sha256 of its values (a fingerprint of the
    whole split: splits are small)."""
    record = {}
    for name in SPLITS:
        split = run.splits[name]
        digest = hashlib.sha256(np.ascontiguousarray(split.inputs, "<i8").tobytes())
        digest.update(np.ascontiguousarray(split.targets, "<f4").tobytes())
        record[name] = {"file": split_filename(name), "rows": len(split), "fingerprint": digest.hexdigest()}
    return record


def _write_mlp(c: MLPConfiguration, t: Trained, group: int, run: Run, folder: Path,
               splits: dict[str, Any]) -> dict[str, Any]:
    if t.model is None:
        remove_curves(folder)  # as _write_sae
        return {"name": c.name, "group": group, **c.values, "status": t.diverged, "seconds": round(t.seconds, 3)}
    metrics = {s: inference.evaluate(t.model, run.splits[s]) for s in SPLITS} | {
        "final_train_loss": t.final_loss, "train_seconds": round(t.seconds, 3),
    }
    record = _mlp_record(c, run, splits)
    # One set (jax_impl.files.artifact_set), metrics.json moved last: a folder with metrics.json is complete.
    with artifact_set(folder, last=(MLP_CONFIG_FILE, METRICS_FILE)) as staging:
        bridge.save_mlp(t.model, staging / MLP_PATH)
        write_json_atomic(staging / MLP_CONFIG_FILE, record)
        write_json_atomic(staging / METRICS_FILE, metrics)
    return _mlp_row(c, group, json.loads(json.dumps(metrics)), record)


def _mlp_record(c: MLPConfiguration, run: Run, splits: dict[str, Any]) -> dict[str, Any]:
    return {"mlp": dataclasses.asdict(c.cfg), "seed": c.seed, "run_dir": str(run.run_dir),
            "data": dataclasses.asdict(run.config.data), "splits": splits}


def _mlp_row(c: MLPConfiguration, group: int, metrics: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": c.name, "group": group, **c.values}
    for s in SPLITS:
        row |= {f"{s}_mse": metrics[s]["mse"], f"{s}_exact_match": metrics[s]["exact_match"]}
    return row | {"final_train_loss": metrics["final_train_loss"], "seconds": metrics["train_seconds"], "status": "ok",
                  "config": record}


def _read_mlp_row(c: MLPConfiguration, group: int, run: Run, folder: Path,
                  splits: dict[str, Any]) -> dict[str, Any] | None:
    """A written MLP configuration's table row from its metrics.json and mlp_config.json; None if not complete."""
    metrics, record = _read_json(folder / METRICS_FILE), _read_json(folder / MLP_CONFIG_FILE)
    if metrics is None or record is None or not (folder / MLP_PATH).is_file():
        return None
    _same_settings(folder, record.object(),
                   {k: v for k, v in _mlp_record(c, run, splits).items() if k != "run_dir"})
    checked = {s: {"mse": metrics[s]["mse"].number(lo=0), "exact_match": metrics[s]["exact_match"].number(0, 1)}
               for s in SPLITS}
    checked |= {"final_train_loss": metrics["final_train_loss"].number(),
                "train_seconds": metrics["train_seconds"].number(lo=0)}
    return _mlp_row(c, group, checked, record.value)
