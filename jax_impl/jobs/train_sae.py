"""`monosem train-sae`: train any SAE architecture of the family on any (N, d) float32 activations.

Reads a `.pt` (one tensor, weights_only), a `.npy` (memory-mapped and streamed in shuffled chunks, so peak
memory is set by `chunk_rows`, not the file) or a `.safetensors` file (one tensor), and writes into `out_dir`:

  sae.pth           the SAE's torch state_dict (torch_ref.saes loads it strictly)
  sae.safetensors   the same tensors, loadable without an unpickler
  saelens/          the SAE in SAELens's format (cfg.json + sae_weights.safetensors; sae_lens.SAE.load_from_disk)
  sae_config.json   architecture, its config, the training config, widths, seed, the activation file
  metrics.json      explained variance, L0, dead fraction and MSE over every row, training seconds
  checkpoints/      the training state while it runs (jax_impl.training.checkpoints); removed once the files above exist

committed together as one artifact set (jax_impl.files.artifact_set: staged in out_dir, then renamed into place, the
JSONs last), so a failure at any point leaves the previous set whole. `resume=True` (`--resume`) continues
from the newest valid checkpoint in checkpoints/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jax_impl.interop import bridge, saelens
from jax_impl.precision import highest_precision
from jax_impl.training import sae_trainer
from jax_impl import saes
from jax_impl.data.activations import ActivationFile, check_finite_rows, fingerprint, open_activations
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic
from jax_impl.training import distributed
from jax_impl.training.checkpoints import TrainingCheckpoints
from jax_impl.checks import check_dict_size, check_memory
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.devices import data_mesh
from jax_impl.training.distributed import Cluster
from jax_impl.errors import TrainingDiverged, UserError
from jax_impl.evaluation.metrics import metrics_from_sums, reconstruction_metrics, reconstruction_sums
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.training.sae_trainer import SAETrainConfig, training_bytes
from jax_impl.training.loop import Log

SAE_FILE = "sae.pth"
SAELENS_DIR = "saelens"
CONFIG_FILE = "sae_config.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS_DIR = "checkpoints"
# The folders of out_dir that train-sae writes into (jax_impl.files.locks sweeps only these, and out_dir itself).
WRITTEN_FOLDERS = (SAELENS_DIR, CHECKPOINTS_DIR)
DEFAULT_CHUNK_ROWS = 1 << 18  # 262,144 rows: 512 MiB of float32 at d = 512

_KEY_INIT, _KEY_SHUFFLE = range(2)
KEY_INIT, KEY_SHUFFLE = _KEY_INIT, _KEY_SHUFFLE  # the seed's PRNG streams, public for jax_impl.jobs.sweep


@highest_precision
def train_sae(
    activations: Path | str,
    out_dir: Path | str,
    *,
    variant: str = "topk",
    dict_size: int = 2048,
    arch_config: Any = None,
    train: SAETrainConfig = SAETrainConfig(),
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    devices: int | str | None = None,
    cluster: Cluster | None = None,
    resume: bool = False,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    log: Log = print,
) -> dict[str, Any]:
    """Train a `variant` SAE of `dict_size` features on the (N, d) float32 rows of `activations`; write
    SAE_FILE, CONFIG_FILE and METRICS_FILE into out_dir. Returns the metrics.

    devices: data parallel over this many local devices, or "all" (jax_impl.training.devices; None: one device).
    cluster: this process's part of a multi-process run (jax_impl.training.distributed; start every process with the
    same arguments but its process_id); process 0 writes out_dir, the others only train.
    arch_config: the architecture's config (None: its defaults). Bad input raises UserError naming the file
    or the setting; nothing but out_dir's lock file (jax_impl.files.locks: a second process writing into the same
    out_dir is refused) and the training's checkpoints (out_dir/checkpoints, every `checkpoint_every`) is
    written before the activations are validated and the training has finished. resume: continue from the
    newest valid checkpoint there (one written by a training with the same settings and data shape);
    without it, old checkpoints in out_dir are removed and training starts at the first epoch.
    """
    try:
        arch = saes.get(variant)
    except ValueError as e:
        raise UserError(f"--variant: {e}") from None
    cfg = arch.config() if arch_config is None else arch_config
    try:
        check_dict_size(dict_size, "--dict-size")
        train.validate(flag=train_flag)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        cfg.validate(dict_size)
    except ValueError as e:
        raise UserError(f"--variant {variant}: {e}") from None
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    if cluster is not None:
        if resume:
            raise UserError("--resume with --coordinator: a multi-process run keeps no checkpoints; start it over")
        if devices is not None:
            raise UserError("--devices with --coordinator: a multi-process run uses every device of every process")
        if arch.epoch_hook is not None:
            raise UserError(f"--variant {variant}: its epoch hook (e.g. resampling) reads rows from every shard on one "
                            "host, which a multi-process run does not have; train it without --coordinator")
        return _train_distributed(Path(activations), Path(out_dir), variant, cfg, dict_size, train, seed, chunk_rows,
                                  cluster.validate(), log)
    source = open_activations(activations)
    if train.batch_size > min(source.n_rows, chunk_rows):
        raise UserError(
            f"--batch-size {train.batch_size} is larger than {'the file' if source.n_rows <= chunk_rows else 'a chunk'} "
            f"({min(source.n_rows, chunk_rows)} rows of {source.path})"
        )
    check_memory(training_bytes(source.width, dict_size, train.batch_size, min(source.n_rows, chunk_rows)),
                 _memory_flags(dict_size, train, source), "training")
    mesh = data_mesh(devices, batch_size=train.batch_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out must be a folder")
    with folder_lock(out_dir, flag="--out", what="output folder"):
        remove_stale_temporaries(out_dir, WRITTEN_FOLDERS)
        checkpoints = TrainingCheckpoints(out_dir / CHECKPOINTS_DIR, {
            "architecture": variant, "config": dataclasses.asdict(cfg), "training": dataclasses.asdict(train),
            "dict_size": dict_size, "seed": seed, "chunk_rows": chunk_rows, "devices": 1 if mesh is None else mesh.size,
            "activations": activations_record(source),
        }, checkpoint_every, resume=resume, log=log)
        metrics = _train_and_write(source, out_dir, variant, cfg, dict_size, train, seed, chunk_rows, mesh, log, checkpoints)
        checkpoints.clear()  # every file is written: nothing left to resume
        return metrics


def train_flag(name: str) -> str:
    """train-sae's flag for a field of SAETrainConfig (`batch_size` -> `--batch-size`)."""
    return "--" + name.replace("_", "-")


def _memory_flags(dict_size: int, train: SAETrainConfig, source: ActivationFile) -> str:
    return f"--dict-size {dict_size} and --batch-size {train.batch_size} on {source.width}-wide activations"


def _train_and_write(source: ActivationFile, out_dir: Path, variant: str, cfg: Any, dict_size: int,
                     train: SAETrainConfig, seed: int, chunk_rows: int, mesh: Mesh | None, log: Log,
                     checkpoints: TrainingCheckpoints) -> dict[str, Any]:
    """train_sae's work once the inputs are checked and out_dir's lock is held."""
    root = jax.random.key(seed)
    sae = saes.create(variant, source.width, dict_size, cfg, key=jax.random.fold_in(root, _KEY_INIT))
    log(f"Training a {variant} SAE ({dict_size} features) on {source.n_rows} x {source.width} activations from {source.path}")
    in_memory = source.n_rows <= chunk_rows
    rows = source.rows(0, source.n_rows) if in_memory else source
    started = time.perf_counter()
    try:
        result = sae_trainer.fit(
            sae, rows, train, key=jax.random.fold_in(root, _KEY_SHUFFLE), chunk_rows=None if in_memory else chunk_rows,
            log=log, mesh=mesh, checkpoints=checkpoints,
        )
    except TrainingDiverged as e:  # here the data is the user's: name the file (huge values diverge too)
        raise TrainingDiverged(f"{source.path}: {e}") from None
    seconds = time.perf_counter() - started
    metrics = reconstruction_metrics(result.model, source, chunk_rows) | {
        "final_loss": float(result.epoch_losses[-1]), "train_seconds": round(seconds, 3),
    }
    check_metrics(metrics, source)
    record = config_record(result.model, variant, train, source, seed=seed, chunk_rows=chunk_rows,
                           devices=1 if mesh is None else mesh.size)
    write_artifacts(result.model, out_dir, record, metrics)
    ev = metrics["explained_variance"]
    log(
        f"explained variance {'n/a' if ev is None else f'{ev:.4f}'} | L0 {metrics['l0']:.1f} | "
        f"dead {metrics['dead_fraction']:.1%} | MSE {metrics['mse']:.6g} | {seconds:.1f} s -> {out_dir / SAE_FILE}"
    )
    return metrics


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
    """What CONFIG_FILE records about a trained SAE: architecture, its config, the training, the data."""
    return {
        "architecture": variant,
        "config": dataclasses.asdict(sae.cfg),
        "training": dataclasses.asdict(train),
        "input_dim": source.width,
        "dict_size": sae.dict_size,
        "seed": seed,
        "chunk_rows": chunk_rows,
        "devices": devices,
        "activations": activations_record(source),
    }


def activations_record(source: ActivationFile) -> dict[str, Any]:
    """What a training's identity (checkpoints, CONFIG_FILE) records of its activations: the file's name (not its
    path: a moved file is the same data), shape, and the fingerprint of its content."""
    return {"file": source.path.name, "rows": source.n_rows, "width": source.width, "fingerprint": fingerprint(source)}


# Moved into place last, in this order: a folder with metrics.json holds a complete set (jax_impl.jobs.sweep reads so).
LAST_FILES = (CONFIG_FILE, METRICS_FILE)


def write_artifacts(sae: saes.SAE, out_dir: Path, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """train-sae's files for a trained SAE into out_dir, committed as one set (jax_impl.files.artifact_set); the
    caller holds out_dir's lock."""
    with artifact_set(out_dir, last=LAST_FILES) as staging:
        stage_artifacts(sae, staging, record, metrics)


def stage_artifacts(sae: saes.SAE, folder: Path, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """write_artifacts' files, written into `folder` (an artifact set's staging folder; jax_impl.jobs.sweep adds a
    configuration's atlas to the same set)."""
    bridge.save_sae(sae, folder / SAE_FILE)
    saelens.save_saelens(sae, folder / SAELENS_DIR, hook_name=None)
    write_json_atomic(folder / CONFIG_FILE, record)
    write_json_atomic(folder / METRICS_FILE, metrics)


def _train_distributed(path: Path, out_dir: Path, variant: str, cfg: Any, dict_size: int, train: SAETrainConfig,
                       seed: int, chunk_rows: int, cluster: Cluster, log: Log) -> dict[str, Any]:
    """train_sae as one process of a multi-process run (jax_impl.training.distributed): this process reads only its shard
    of the rows; the batches and gradients span every process's devices; process 0 alone writes out_dir."""
    watchdog = distributed.start(cluster)  # before any other JAX computation
    writer = cluster.is_writer
    say = log if writer else (lambda line: None)
    with contextlib.ExitStack() as stack:
        try:
            source = open_activations(path, check_finite=False)
            first, last, shard_rows = distributed.shard_range(source.n_rows, cluster)
            check_finite_rows(source, first, last)
            mesh = distributed.global_mesh()
            if train.batch_size > source.n_rows or train.batch_size % mesh.size:
                raise UserError(f"--batch-size {train.batch_size} must be at most the file's {source.n_rows} rows and "
                                f"divisible by the {mesh.size} devices of the {cluster.num_processes} processes")
            if shard_rows > chunk_rows:
                raise UserError(f"{source.path}: shards of {shard_rows} rows, more than --chunk-rows {chunk_rows}; a "
                                "multi-process run holds its shard in memory: raise --chunk-rows or add processes")
            check_memory(training_bytes(source.width, dict_size, train.batch_size, shard_rows),
                         _memory_flags(dict_size, train, source), "training")
            if writer:
                if out_dir.exists() and not out_dir.is_dir():
                    raise UserError(f"{out_dir}: is a file; --out must be a folder")
                stack.enter_context(folder_lock(out_dir, flag="--out", what="output folder"))
                remove_stale_temporaries(out_dir, WRITTEN_FOLDERS)
            root = jax.random.key(seed)
            sae = saes.create(variant, source.width, dict_size, cfg, key=jax.random.fold_in(root, _KEY_INIT))
            say(f"Training a {variant} SAE ({dict_size} features) on {source.n_rows} x {source.width} activations from "
                f"{source.path}: {cluster.num_processes} processes, {mesh.size} devices, this process's rows {first}..{last - 1}")
            rows = distributed.global_rows(source.rows(first, last), shard_rows, mesh)
            started = time.perf_counter()
            result = sae_trainer.fit(sae, rows, train, key=jax.random.fold_in(root, _KEY_SHUFFLE), log=say, mesh=mesh,
                                      n_rows=source.n_rows)
            seconds = time.perf_counter() - started
            model = saes.SAE(result.model.arch, result.model.cfg, *distributed.local_copy(
                (result.model.params(), result.model.buffers())))
            sums = reconstruction_sums(model, source, first, last, chunk_rows)
            gathered = {k: distributed.gather(np.asarray(v)) for k, v in sums.items()}  # (P, ...) each
            total = {"sse": float(gathered["sse"].sum()), "active": float(gathered["active"].sum()),
                     "fired": gathered["fired"].any(axis=0), "col_sum": gathered["col_sum"].sum(axis=0),
                     "col_sq": gathered["col_sq"].sum(axis=0)}
            metrics = metrics_from_sums(total, source.n_rows, source.width) | {
                "final_loss": float(result.epoch_losses[-1]), "train_seconds": round(seconds, 3),
            }
            check_metrics(metrics, source)
            if writer:
                record = config_record(model, variant, train, source, seed=seed, chunk_rows=chunk_rows, devices=mesh.size)
                write_artifacts(model, out_dir, record | {"processes": cluster.num_processes}, metrics)
        except Exception as e:  # noqa: BLE001  (a peer lost mid-collective, or bad input: ends every process)
            distributed.failed(e)
        distributed.finish()
    watchdog.join(timeout=1)
    ev = metrics["explained_variance"]
    say(f"explained variance {'n/a' if ev is None else f'{ev:.4f}'} | L0 {metrics['l0']:.1f} | "
        f"dead {metrics['dead_fraction']:.1%} | MSE {metrics['mse']:.6g} | {seconds:.1f} s -> {out_dir / SAE_FILE}")
    return metrics
