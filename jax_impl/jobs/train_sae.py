"""`monosem train-sae`: train any SAE architecture of the family on any (N, d) float32 activations.

Reads a `.pt` (one tensor, weights_only), a `.npy` (memory-mapped and streamed in shuffled chunks, so peak
memory is set by `chunk_rows`, not the file) or a `.safetensors` file (one tensor), or a folder or glob of shards or
a SAELens cache (jax_impl.data.activation_sets; streamed through a shuffle buffer, `shuffle_buffer`), and writes
into `out_dir` an SAE folder (its layout: jax_impl.jobs.rundir):

  sae.pth           the SAE's torch state_dict (monosem_torch_ref.saes loads it strictly)
  sae.safetensors   the same tensors, loadable without an unpickler
  saelens/          the SAE in SAELens's format (cfg.json + sae_weights.safetensors; sae_lens.SAE.load_from_disk)
  sae_config.json   architecture, its config, the training config, widths, seed, the activation file
  metrics.json      explained variance, L0, dead fraction and MSE over every row, training seconds
  checkpoints/      the training state while it runs (jax_impl.training.checkpoints); removed once the files above exist
  metrics.jsonl     the training curves, a point every `--curve-every` steps (jax_impl.training.curves; tensorboard/ and
                    wandb/ beside it with `--log`); written as the training goes, not part of the set below

With a target file (`--target`), the same folder holds a transcoder (every architecture; optionally with a
skip connection, `--skip`) whose encoder reads the activations and whose decoder predicts the target's rows: the
two files are read side by side (jax_impl.data.activations.pair_activations), its metrics measure the prediction
against the target, and sae_config.json and the checkpoints' identity record both files.

The files are committed together as one artifact set (jax_impl.files.artifact_set: staged in out_dir, then renamed
into place, the JSONs last), so a failure at any point leaves the previous set whole. `resume=True` (`--resume`) continues
from the newest valid checkpoint in checkpoints/. What it trains is a `TrainSAEConfig`, whose fields are the
command's flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jax_impl import saes
from jax_impl.checks import check_dict_size, check_memory, check_seed, section_from_dict
from jax_impl.data.activation_sets import check_finite_rows, open_activations, shard_assignment
from jax_impl.data.activations import ActivationFile, PairedActivations, fingerprint, pair_activations
from jax_impl.errors import TrainingDiverged, UserError
from jax_impl.evaluation.metrics import metrics_from_sums, reconstruction_metrics, reconstruction_sums
from jax_impl.files import jsonfile
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.record_kinds import read_record
from jax_impl.jobs.rundir import (
    CHECKPOINTS_DIR,
    KEY_TRAIN_SAE_INIT,
    KEY_TRAIN_SAE_SHUFFLE,
    METRICS_FILE,
    SAE_CONFIG_FILE,
    SAE_FILE,
    SAELENS_NAME,
    stream_key,
)
from jax_impl.precision import highest_precision
from jax_impl.training import distributed, sae_trainer
from jax_impl.training.checkpoints import CheckpointPolicy, TrainingCheckpoints
from jax_impl.training.curves import CURVES_FILE, CurveConfig, Curves
from jax_impl.training.devices import data_mesh
from jax_impl.training.distributed import Cluster
from jax_impl.training.loop import Log
from jax_impl.training.sae_trainer import SAETrainConfig, training_bytes

# The folders of out_dir that train-sae writes into (jax_impl.files.locks sweeps only these, and out_dir itself).
# The curves of the training in progress (metrics.jsonl, tensorboard/, wandb/: jax_impl.training.curves), moved into
# the artifact set when it commits: until then a folder's earlier set keeps its own curves, and --resume continues
# these.
LIVE_CURVES_DIR = "training"
_WRITTEN_FOLDERS = (SAELENS_NAME, str(CHECKPOINTS_DIR))


@dataclass(frozen=True)
class TrainSAEConfig:
    """What `monosem train-sae` trains; a sweep's values where neither its grid nor a run directory sets one.

    Every field but `architecture` is a flag of train-sae, `--` and its name with dashes (jax_impl.cli builds them
    from these fields: the type, the default and the help in the field's metadata). `architecture` is the
    variant's config, an instance of `jax_impl.saes.<variant>.Config` (None: that architecture's defaults), whose
    fields are the architecture flags.
    """

    variant: str = field(default="topk", metadata={"help": "SAE architecture", "choices": saes.NAMES})
    dict_size: int = field(default=2048, metadata={"help": "features"})
    epochs: int = field(default=20, metadata={"help": "passes over the rows"})
    batch_size: int = field(default=256, metadata={"help": "rows per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    log_every: int = field(default=1, metadata={"help": "epochs between log lines"})
    seed: int = field(default=0, metadata={"help": "PRNG seed for init and shuffling"})
    # 262,144 rows: 512 MiB of float32 at d = 512
    chunk_rows: int = field(default=1 << 18, metadata={"help": "rows per streamed chunk, one compiled program each"})
    shuffle_buffer: int = field(default=0, metadata={
        "help": "rows of a buffer that mixes the streamed chunks' rows across blocks and shards (0: each chunk is one "
        "contiguous block; data.streaming)", "metavar": "ROWS"})
    devices: int | str | None = field(default=None, metadata={
        "help": "data parallel: split each batch over N local devices (parameters replicated, gradients reduced by "
        "the compiler)", "type": str, "metavar": "N|all", "shown_default": "one device"})
    skip: bool = field(default=False, metadata={
        "help": "a transcoder (--target) with a linear skip connection from its input to its prediction, zero at "
        "first (Paulo et al. 2025)", "shown_default": "none"})
    architecture: Any = None

    def __post_init__(self) -> None:
        if self.architecture is None and self.variant in saes.NAMES:
            object.__setattr__(self, "architecture", saes.get(self.variant).config())

    def train_config(self) -> SAETrainConfig:
        return SAETrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, log_every=self.log_every)

    @classmethod
    def from_record(cls, record: Path | str | jsonfile.Node) -> TrainSAEConfig:
        """The config a train-sae folder's sae_config.json (its path, or the document read) records, validated: what
        `monosem train-sae --config` reruns (jax_impl.jobs.records also reads its data's names and fingerprints).
        UserError naming the file and the key for an unknown key or a value that cannot work."""
        doc = record if isinstance(record, jsonfile.Node) else read_record(record, "train-sae")
        path = doc.where
        doc.fields(_RECORD_KEYS)  # an unknown key is refused
        variant = doc["architecture"].string(saes.NAMES)
        try:
            arch_config = section_from_dict(saes.get(variant).config, doc["config"].object(), "config")
            train = section_from_dict(SAETrainConfig, doc["training"].object(), "training")
        except ValueError as e:
            raise UserError(f"{path}: key {e}") from None
        own = {f.name for f in dataclasses.fields(cls)}
        devices = doc.get("devices", 1).integer(1)
        config = cls(
            variant=variant, dict_size=doc["dict_size"].integer(1), seed=doc["seed"].integer(0),
            chunk_rows=doc.get("chunk_rows", cls.chunk_rows).integer(1),
            devices=None if devices == 1 else devices,  # one device: the plain program (data_mesh), as recorded
            skip=bool(doc.get("skip", False).boolean()), architecture=arch_config,
            shuffle_buffer=doc.get("shuffle_buffer", 0).integer(0),  # recorded only where a buffer was used
            **{k: v for k, v in dataclasses.asdict(train).items() if k in own},
        )
        if config.train_config() != train:  # a training field train-sae has no setting for: not rerun here
            other = [k for k in dataclasses.asdict(train) if k not in own]
            raise UserError(f"{path}: key training.{other[0]}: train-sae has no setting for it")
        try:
            config.validate(lambda name: f"key {_RECORD_KEY_OF_FIELD.get(name, name)}:")
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        return config

    def validate(self, flag: Callable[[str], str] = str) -> TrainSAEConfig:
        """UserError naming the first field whose value cannot work, as flag(name) spells it (the field's name; the
        command line passes its flags' names); self. Whether the devices exist is data_mesh's question, asked when
        training starts."""
        self.validate_settings(flag)
        arch = saes.get(self.variant)
        if not isinstance(self.architecture, arch.config):
            raise UserError(f"architecture must be a {arch.config.__module__}.Config for {flag('variant')} "
                            f"{self.variant}, got {type(self.architecture).__name__}")
        try:
            self.architecture.validate(self.dict_size)
        except ValueError as e:
            raise UserError(f"{flag('variant')} {self.variant}: {e}") from None
        return self

    def validate_settings(self, flag: Callable[[str], str] = str) -> TrainSAEConfig:
        """validate's checks of every field but the architecture's config (which a sweep's grid sets per
        configuration: jax_impl.jobs.sweep_grid checks it); self."""
        try:
            saes.get(self.variant)
        except ValueError as e:
            raise UserError(f"{flag('variant')}: {e}") from None
        try:
            check_dict_size(self.dict_size, flag("dict_size"))
            self.train_config().validate(flag=flag)
        except ValueError as e:
            raise UserError(str(e)) from None
        check_seed(self.seed, flag("seed"))
        if self.chunk_rows < 1:
            raise UserError(f"{flag('chunk_rows')} must be >= 1, got {self.chunk_rows}")
        if self.shuffle_buffer < 0:
            raise UserError(f"{flag('shuffle_buffer')} must be >= 0, got {self.shuffle_buffer}")
        return self


@highest_precision
def train_sae(
    activations: Path | str,
    out_dir: Path | str,
    config: TrainSAEConfig = TrainSAEConfig(),
    *,
    target: Path | str | None = None,
    cluster: Cluster | None = None,
    resume: bool = False,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    curves: CurveConfig = CurveConfig(),
    log: Log = print,
    flag: Callable[[str], str] = str,
) -> dict[str, Any]:
    """Train the SAE `config` describes on the (N, d) float32 rows of `activations`; write an SAE folder
    (SAE_FILE, SAE_CONFIG_FILE, METRICS_FILE, ...) into out_dir. Returns the metrics.

    target: train a transcoder instead, whose encoder reads `activations` (N, d_in) and whose decoder predicts the
    rows of this file (N, d_out) (the same checks; one row per row of activations), with a linear skip connection
    where config.skip. Its metrics measure the prediction against the target.

    config.devices: data parallel over this many local devices, or "all" (jax_impl.training.devices; None: one
    device). cluster: this process's part of a multi-process run (jax_impl.training.distributed; start every process
    with the same arguments but its process_id); process 0 writes out_dir, the others only train, and all take
    part in its checkpoints and `resume` (out_dir: one folder every process reaches under the same path).
    Bad input raises UserError naming the file, or the field or argument (as flag(name) spells it: the command
    line passes its flags' names); nothing but out_dir's lock file (jax_impl.files.locks: a second process writing
    into the same out_dir is refused), the training's checkpoints (out_dir/checkpoints, every
    `checkpoint_every`) and its curves (metrics.jsonl, as it trains) is written before the activations are validated
    and the training has finished. resume: continue from the newest valid checkpoint there (one written by a
    training with the same settings and data shape); without it, old checkpoints in out_dir are removed and training
    starts at the first epoch.
    curves: the training curves written to out_dir/metrics.jsonl as it trains (jax_impl.training.curves; a resumed
    training appends to them), by process 0 of a multi-process run.
    """
    config.validate(flag)
    curves.validate(flag)
    if config.skip and target is None:
        raise UserError(f"{flag('skip')} is a transcoder's skip connection: it needs {flag('target')}")
    train = config.train_config()
    if cluster is not None:
        if config.devices is not None:
            raise UserError(f"{flag('devices')} with {flag('cluster')}: a multi-process run uses every device of "
                            "every process")
        if saes.get(config.variant).epoch_hook is not None:
            raise UserError(f"{flag('variant')} {config.variant}: its epoch hook (e.g. resampling) reads rows from "
                            "every shard on one host, which a multi-process run does not have; train it without "
                            f"{flag('cluster')}")
        return _train_distributed(Path(activations), None if target is None else Path(target), Path(out_dir), config,
                                  cluster.validate(), log, flag, curves, resume=resume,
                                  checkpoint_every=checkpoint_every)
    source = open_training_data(activations, target)
    chunk_rows = config.chunk_rows
    if train.batch_size > min(source.n_rows, chunk_rows):
        raise UserError(
            f"{flag('batch_size')} {train.batch_size} is larger than "
            f"{'the file' if source.n_rows <= chunk_rows else 'a chunk'} ({min(source.n_rows, chunk_rows)} rows of "
            f"{source.path})"
        )
    check_memory(training_bytes(source.width, config.dict_size, train.batch_size,
                                min(source.n_rows, chunk_rows) + _buffer_rows(config, source)),
                 _memory_flags(config, source, flag), "training")
    mesh = data_mesh(config.devices, batch_size=train.batch_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; {flag('out_dir')} must be a folder")
    with folder_lock(out_dir, flag=flag("out_dir"), what="output folder"):
        remove_stale_temporaries(out_dir, _WRITTEN_FOLDERS)
        checkpoints = TrainingCheckpoints(out_dir / CHECKPOINTS_DIR, _identity(config, source, 1 if mesh is None else mesh.size),
                                          checkpoint_every, resume=resume, log=log)
        try:
            metrics = _train_and_write(source, out_dir, config, mesh, log, checkpoints, curves)
        except Exception:
            # An error (diverged, bad rows, a full disk): no curves are left of a training that wrote nothing. A
            # signal (Interrupted) or a kill leaves them for --resume to continue beside its checkpoint, and a
            # refused --resume leaves those of the training it was to continue.
            if not resume:
                shutil.rmtree(out_dir / LIVE_CURVES_DIR, ignore_errors=True)
            raise
        checkpoints.clear()  # every file is written: nothing left to resume
        return metrics


def _identity(config: TrainSAEConfig, source: ActivationFile, devices: int) -> dict[str, Any]:
    """What a train-sae checkpoint must match to be resumed (TrainingCheckpoints' identity)."""
    return {
        "architecture": config.variant, "config": dataclasses.asdict(config.architecture),
        "training": dataclasses.asdict(config.train_config()), "dict_size": config.dict_size, "seed": config.seed,
        "chunk_rows": config.chunk_rows, "devices": devices,
    } | _buffer_record(config, source) | data_record(source, skip=config.skip)


def _buffer_rows(config: TrainSAEConfig, source: ActivationFile) -> int:
    """The shuffle buffer's rows where the file is streamed (0 where it fits one chunk: held in memory, every epoch
    a full permutation, no buffer to mix)."""
    return config.shuffle_buffer if source.n_rows > config.chunk_rows else 0


def _buffer_record(config: TrainSAEConfig, source: ActivationFile) -> dict[str, Any]:
    # Recorded only where a buffer is used: a training without one records what it recorded before the buffer existed.
    rows = _buffer_rows(config, source)
    return {"shuffle_buffer": rows} if rows else {}


def open_training_data(activations: Path | str, target: Path | str | None, *,
                       check_finite: bool = True) -> ActivationFile:
    """An SAE's rows (the activation file), or a transcoder's: those of `activations` and `target` side by side
    (pair_activations). Every defect is a one-line UserError naming its file."""
    source = open_activations(activations, check_finite=check_finite)
    if target is None:
        return source
    return pair_activations(source, open_activations(target, check_finite=check_finite))


def create_model(variant: str, source: ActivationFile, dict_size: int, cfg: Any, *, key: jax.Array,
                 skip: bool = False) -> saes.SAE:
    """A fresh SAE for the rows of `source`, or a transcoder where they are paired (open_training_data): its input
    and output widths those of the two files."""
    if isinstance(source, PairedActivations):
        return saes.create(variant, source.inputs.width, dict_size, cfg, key=key, output_dim=source.targets.width,
                           skip=skip)
    return saes.create(variant, source.width, dict_size, cfg, key=key)


def describe_training(sae: saes.SAE, variant: str, source: ActivationFile) -> str:
    """The line a training starts with: what it trains on which rows."""
    if isinstance(source, PairedActivations):
        skip = " skip" if sae.skip else ""
        return (f"Training a {variant}{skip} transcoder ({sae.dict_size} features) on {source.n_rows} x "
                f"{source.inputs.width} activations from {source.inputs.path} to predict {source.n_rows} x "
                f"{source.targets.width} from {source.targets.path}")
    return (f"Training a {variant} SAE ({sae.dict_size} features) on {source.n_rows} x {source.width} activations "
            f"from {source.path}")


def _memory_flags(config: TrainSAEConfig, source: ActivationFile, flag: Callable[[str], str]) -> str:
    return (f"{flag('dict_size')} {config.dict_size} and {flag('batch_size')} {config.batch_size} on "
            f"{source.width}-wide activations")


def init_and_shuffle_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The keys train-sae initialises and shuffles an SAE with, from its seed (a sweep's configurations too)."""
    return stream_key(seed, KEY_TRAIN_SAE_INIT), stream_key(seed, KEY_TRAIN_SAE_SHUFFLE)


def _train_and_write(source: ActivationFile, out_dir: Path, config: TrainSAEConfig, mesh: Mesh | None, log: Log,
                     checkpoints: TrainingCheckpoints, curves: CurveConfig) -> dict[str, Any]:
    """train_sae's work once the inputs are checked and out_dir's lock is held."""
    variant, dict_size, train, chunk_rows = config.variant, config.dict_size, config.train_config(), config.chunk_rows
    init_key, shuffle_key = init_and_shuffle_keys(config.seed)
    sae = create_model(variant, source, dict_size, config.architecture, key=init_key, skip=config.skip)
    log(describe_training(sae, variant, source))
    in_memory = source.n_rows <= chunk_rows
    rows = source.rows(0, source.n_rows) if in_memory else source
    started = time.perf_counter()
    try:
        result = sae_trainer.fit(
            sae, rows, train, key=shuffle_key, chunk_rows=None if in_memory else chunk_rows,
            log=log, mesh=mesh, checkpoints=checkpoints, shuffle_buffer=_buffer_rows(config, source),
            curves=training_curves(out_dir / LIVE_CURVES_DIR, curves, config, name=out_dir.name),
        )
    except TrainingDiverged as e:  # here the data is the user's: name the file (huge values diverge too)
        raise TrainingDiverged(f"{source.path}: {e}") from None
    seconds = time.perf_counter() - started
    metrics = reconstruction_metrics(result.model, source, chunk_rows) | {
        "final_loss": float(result.epoch_losses[-1]), "train_seconds": round(seconds, 3),
    }
    check_metrics(metrics, source)
    record = config_record(result.model, variant, train, source, seed=config.seed, chunk_rows=chunk_rows,
                           devices=1 if mesh is None else mesh.size)
    write_artifacts(result.model, out_dir, record | _buffer_record(config, source), metrics,
                     training_density(result.model, source, chunk_rows))
    ev = metrics["explained_variance"]
    log(
        f"explained variance {'n/a' if ev is None else f'{ev:.4f}'} | L0 {metrics['l0']:.1f} | "
        f"dead {metrics['dead_fraction']:.1%} | MSE {metrics['mse']:.6g} | {seconds:.1f} s -> {out_dir / SAE_FILE}"
    )
    return metrics


def training_curves(folder: Path | None, curves: CurveConfig, config: TrainSAEConfig, name: str | None = None
                    ) -> Curves:
    """The curves of a training of `config` written into folder (None: computed alike but written nowhere, a
    multi-process run's other processes, whose program must be process 0's); name: the run's in the backends."""
    meta = {"variant": config.variant, "dict_size": config.dict_size, "seed": config.seed,
            "training": dataclasses.asdict(config.train_config()), "config": dataclasses.asdict(config.architecture)}
    return Curves(folder, curves, name=name or ("train" if folder is None else folder.name), meta=meta)


def check_metrics(metrics: dict[str, Any], source: ActivationFile) -> None:
    """TrainingDiverged naming the first metric that is NaN or infinite (a float32 sum that overflowed on huge
    values): such a result is no success, and JSON has no NaN. An undefined metric is None (explained_variance
    where every row is the same), which is fine."""
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainingDiverged(f"{source.path}: the trained SAE's {name} is {value} (float32 sums overflowed: "
                                   "activations this large need scaling down first); no weights were written")


def config_record(sae: saes.SAE, variant: str, train: SAETrainConfig, source: ActivationFile, *, seed: int,
                  chunk_rows: int, devices: int) -> dict[str, Any]:
    """What SAE_CONFIG_FILE records about a trained SAE: architecture, its config, the training, the data."""
    return {
        "architecture": variant,
        "config": dataclasses.asdict(sae.cfg),
        "training": dataclasses.asdict(train),
        "input_dim": sae.input_dim,
        "dict_size": sae.dict_size,
        "seed": seed,
        "chunk_rows": chunk_rows,
        "devices": devices,
    } | data_record(source, skip=sae.skip)


# sae_config.json's keys (config_record; `processes` where a multi-process run wrote it), and the key that holds
# a TrainSAEConfig field where it is not the field's name (TrainSAEConfig.from_record's messages).
_RECORD_KEYS = ("architecture", "config", "training", "input_dim", "dict_size", "seed", "chunk_rows", "devices",
                "activations", "transcoder", "output_dim", "skip", "target", "processes", "shuffle_buffer")
_RECORD_KEY_OF_FIELD = {"variant": "config", **{name: f"training.{name}" for name in SAETrainConfig.__dataclass_fields__}}


def data_record(source: ActivationFile, *, skip: bool = False) -> dict[str, Any]:
    """What a training's identity (checkpoints, SAE_CONFIG_FILE, a sweep's) records of its data: an SAE's
    activations (activations_record); a transcoder's (source paired: open_training_data) its input file as
    "activations", its target file as "target", and its shape (transcoder, output_dim, skip)."""
    if not isinstance(source, PairedActivations):
        return {"activations": activations_record(source)}
    return {"activations": activations_record(source.inputs), "transcoder": True,
            "output_dim": source.targets.width, "skip": skip, "target": activations_record(source.targets)}


def activations_record(source: ActivationFile) -> dict[str, Any]:
    """What a training's identity (checkpoints, SAE_CONFIG_FILE) records of its activations: the file's name (not its
    path: a moved file is the same data), shape, and the fingerprint of its content."""
    return {"file": source.path.name, "rows": source.n_rows, "width": source.width, "fingerprint": fingerprint(source)}


def input_chunks(source: ActivationFile, chunk_rows: int, first: int = 0, last: int | None = None
                 ) -> Iterator[np.ndarray]:
    """Rows [first, last) of the SAE's input, (<= chunk_rows, d_in) float32 each: a transcoder's input file of its
    pair, an SAE's file."""
    inputs = source.inputs if isinstance(source, PairedActivations) else source
    last = inputs.n_rows if last is None else last
    for start in range(first, last, chunk_rows):
        yield inputs.rows(start, min(start + chunk_rows, last))


def training_density(sae: saes.SAE, source: ActivationFile, chunk_rows: int) -> np.ndarray:
    """(F,) float64: the share of the training rows each feature of `sae` fires on (saelens.feature_density),
    read chunk by chunk."""
    return saelens.feature_density(sae, input_chunks(source, chunk_rows))


# Moved into place last, in this order: a folder with metrics.json holds a complete set (jax_impl.jobs.sweep reads so).
LAST_FILES = (SAE_CONFIG_FILE, METRICS_FILE)


def write_artifacts(sae: saes.SAE, out_dir: Path, record: dict[str, Any], metrics: dict[str, Any],
                    density: np.ndarray | None = None) -> None:
    """train-sae's files for a trained SAE into out_dir, committed as one set (jax_impl.files.artifact_set); the
    caller holds out_dir's lock."""
    live = out_dir / LIVE_CURVES_DIR
    curves = live.is_dir()
    with artifact_set(out_dir, last=LAST_FILES) as staging:
        stage_artifacts(sae, staging, record, metrics, density)
        if curves:  # this training's curves join its set
            shutil.copytree(live, staging, dirs_exist_ok=True)
    shutil.rmtree(live, ignore_errors=True)
    if not curves:  # trained without curves (--curve-every 0): an earlier set's are not this SAE's
        (out_dir / CURVES_FILE).unlink(missing_ok=True)


def stage_artifacts(sae: saes.SAE, folder: Path, record: dict[str, Any], metrics: dict[str, Any],
                    density: np.ndarray | None = None) -> None:
    """write_artifacts' files, written into `folder` (an artifact set's staging folder; jax_impl.jobs.sweep adds a
    configuration's atlas to the same set). density: (F,) the share of training rows each feature fires on
    (training_density), written as the SAELens folder's sparsity.safetensors."""
    bridge.save_sae(sae, folder / SAE_FILE)
    saelens.save_saelens(sae, folder / SAELENS_NAME, hook_name=None, density=density)
    write_json_atomic(folder / SAE_CONFIG_FILE, record)
    write_json_atomic(folder / METRICS_FILE, metrics)


def _process_rows(source: ActivationFile, cluster: Cluster) -> tuple[int, int, int, np.ndarray | None]:
    """(start, stop, shard_rows, positions): the rows [start, stop) this process reads, each process's part of the
    global array (shard_rows rows, padded), and where the set's rows lie in that array, (n_rows,) int32, or None
    where they are its first n_rows. A set of at least one shard per process is dealt out as whole shards
    (activation_sets.shard_assignment: no shard read by two processes), else every process reads an even row range
    (distributed.shard_range)."""
    ranges = [shard_assignment(source, cluster.num_processes, p) for p in range(cluster.num_processes)]
    if ranges[0] is None:
        return (*distributed.shard_range(source.n_rows, cluster), None)
    shard_rows = max(b - a for a, b in ranges)
    positions = np.concatenate([p * shard_rows + np.arange(b - a) for p, (a, b) in enumerate(ranges)]).astype(np.int32)
    first, last = ranges[cluster.process_id]
    return first, last, shard_rows, positions


def _train_distributed(path: Path, target: Path | None, out_dir: Path, config: TrainSAEConfig, cluster: Cluster,
                       log: Log, flag: Callable[[str], str], curves: CurveConfig, *,
                       resume: bool = False,
                       checkpoint_every: CheckpointPolicy = CheckpointPolicy()) -> dict[str, Any]:
    """train_sae as one process of a multi-process run (jax_impl.training.distributed): this process reads only its
    shard of the rows; the batches and gradients span every process's devices; process 0 alone writes out_dir.
    Every process takes part in the checkpoints in out_dir/checkpoints (a folder all of them reach: one machine's
    disk, or a shared file system), which orbax writes and restores collectively (TrainingCheckpoints)."""
    variant, dict_size, train, chunk_rows = config.variant, config.dict_size, config.train_config(), config.chunk_rows
    watchdog = distributed.start(cluster)  # before any other JAX computation
    writer = cluster.is_writer
    say = log if writer else (lambda line: None)
    with contextlib.ExitStack() as stack:
        try:
            source = open_training_data(path, target, check_finite=False)
            first, last, shard_rows, positions = _process_rows(source, cluster)
            for part in (source.inputs, source.targets) if isinstance(source, PairedActivations) else (source,):
                check_finite_rows(part, first, last)  # each file's own scan: a message names the file at fault
            mesh = distributed.global_mesh()
            if train.batch_size > source.n_rows or train.batch_size % mesh.size:
                raise UserError(f"{flag('batch_size')} {train.batch_size} must be at most the file's {source.n_rows} "
                                f"rows and divisible by the {mesh.size} devices of the {cluster.num_processes} "
                                "processes")
            if shard_rows > chunk_rows:
                raise UserError(f"{source.path}: shards of {shard_rows} rows, more than {flag('chunk_rows')} "
                                f"{chunk_rows}; a multi-process run holds its shard in memory: raise "
                                f"{flag('chunk_rows')} or add processes")
            check_memory(training_bytes(source.width, dict_size, train.batch_size, shard_rows),
                         _memory_flags(config, source, flag), "training")
            if writer:
                if out_dir.exists() and not out_dir.is_dir():
                    raise UserError(f"{out_dir}: is a file; {flag('out_dir')} must be a folder")
                stack.enter_context(folder_lock(out_dir, flag=flag("out_dir"), what="output folder"))
                remove_stale_temporaries(out_dir, _WRITTEN_FOLDERS)
            init_key, shuffle_key = init_and_shuffle_keys(config.seed)
            sae = create_model(variant, source, dict_size, config.architecture, key=init_key, skip=config.skip)
            say(f"{describe_training(sae, variant, source)}: {cluster.num_processes} processes, {mesh.size} devices, "
                f"this process's rows {first}..{last - 1}")
            rows = distributed.global_rows(source.rows(first, last), shard_rows, mesh)
            checkpoints = TrainingCheckpoints(
                out_dir / CHECKPOINTS_DIR, _identity(config, source, mesh.size) | {"processes": cluster.num_processes},
                checkpoint_every, resume=resume, log=say)
            started = time.perf_counter()
            result = sae_trainer.fit(sae, rows, train, key=shuffle_key, log=say, mesh=mesh, n_rows=source.n_rows,
                                     checkpoints=checkpoints, row_positions=positions,
                                     curves=training_curves(out_dir / LIVE_CURVES_DIR if writer else None, curves,
                                                            config, name=out_dir.name))
            seconds = time.perf_counter() - started
            model = saes.SAE(result.model.arch, result.model.cfg, *distributed.local_copy(
                (result.model.params(), result.model.buffers())), transcoder=result.model.transcoder)
            sums = reconstruction_sums(model, source, first, last, chunk_rows)
            gathered = {k: distributed.gather(np.asarray(v)) for k, v in sums.items()}  # (P, ...) each
            total = {"sse": float(gathered["sse"].sum()), "active": float(gathered["active"].sum()),
                     "fired": gathered["fired"].any(axis=0), "col_sum": gathered["col_sum"].sum(axis=0),
                     "col_sq": gathered["col_sq"].sum(axis=0)}
            metrics = metrics_from_sums(total, source.n_rows, model.output_dim) | {
                "final_loss": float(result.epoch_losses[-1]), "train_seconds": round(seconds, 3),
            }
            check_metrics(metrics, source)
            # every process counts its shard's firings; the writer's density is over all rows
            fired = saelens.feature_density(model, input_chunks(source, chunk_rows, first, last)) * (last - first)
            density = distributed.gather(fired).sum(axis=0) / source.n_rows
            if writer:
                record = config_record(model, variant, train, source, seed=config.seed, chunk_rows=chunk_rows,
                                       devices=mesh.size)
                write_artifacts(model, out_dir, record | {"processes": cluster.num_processes}, metrics, density)
            checkpoints.clear()  # every file is written: nothing left to resume (process 0 removes, all wait)
        except Exception as e:  # noqa: BLE001  (a peer lost mid-collective, or bad input: ends every process)
            distributed.failed(e)
        distributed.finish()
    watchdog.join(timeout=1)
    ev = metrics["explained_variance"]
    say(f"explained variance {'n/a' if ev is None else f'{ev:.4f}'} | L0 {metrics['l0']:.1f} | "
        f"dead {metrics['dead_fraction']:.1%} | MSE {metrics['mse']:.6g} | {seconds:.1f} s -> {out_dir / SAE_FILE}")
    return metrics
