"""`monosem sweep`: train a grid of SAE (or MLP) configurations, those of one shape together in one vmapped program.

Configurations that share every static field (SAE: architecture, dict_size, epochs, batch_size and the
architecture's ints, tuples and `static_floats`; MLP: everything but the seed) form a *group*. A group
trains as one jitted epoch `jax.vmap`ped over its configurations: the carries are stacked along a leading
configuration axis, every configuration draws its own batches from the one shared copy of the rows, and the
float hyperparameters (lr, l1_coeff, aux_coeff, ...) travel in the carry as traced values, so one compiled
program serves every seed and every value of them. Different shapes are different groups, run one after the
other. Each configuration's initialisation and batch order come from its seed exactly as in a standalone
`monosem train-sae` (SAE) or `monosem run` (MLP), so its folder holds what that command writes, up to float
rounding: a vmapped matmul may sum in another order than the single one (tests/test_sweep.py; measured in CHANGELOG.md).

Outputs under `out_dir` (held with the folder lock, like train-sae): one subfolder per configuration with
train-sae's files (SAE: sae.pth, sae.safetensors, saelens/, sae_config.json, metrics.json) or the MLP's
(mlp/perfect_mlp.pth and .safetensors, mlp_config.json, metrics.json), each folder committed as one artifact set
(jax_impl.files.artifact_set); sweep.csv and sweep.json (one row per configuration; jax_impl.reports.sweep_page) and
sweep.html (the L0-vs-EV Pareto front, or the MLP seeds' spread).
While a group trains, checkpoints/group-NNN/ holds its training state (jax_impl.training.checkpoints; removed once the
group's folders are written), which `resume` continues from; SIGINT/SIGTERM end the sweep after the current
epoch with a checkpoint (jax_impl.training.interrupts). A configuration that diverges (training.loop.divergence, a state that ends
NaN, metrics that overflow) gets a row whose `status` says why and no folder; the others are written (the command
line then exits 1 with one line).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas import document as atlas
from jax_impl.interop import bridge
from jax_impl.precision import highest_precision
from jax_impl.training import interrupts
from jax_impl.files import jsonfile
from jax_impl import saes
from jax_impl.data.activations import ActivationFile, open_activations
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic
from jax_impl.training.checkpoints import TrainingCheckpoints, data_mismatch
from jax_impl.checks import check_dict_size, check_memory
from jax_impl.checks import MAX_SEED
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.mlp_trainer import mlp_training_bytes
from jax_impl.errors import TrainingDiverged, UserError
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.training.online import make_online_epoch_fn
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, KEY_MLP_INIT, KEY_MLP_SHUFFLE, MLP_PATH, Run, load_run
from jax_impl.training.sae_trainer import SAETrainConfig, make_sae_step, steps_in, training_bytes
from jax_impl.jobs.sweep_grid import (
    STAGES, MLPConfiguration, SAEConfiguration, mlp_configurations, sae_configurations,
)
from jax_impl.reports.sweep_page import write_report
from jax_impl.task.pointer import SPLITS, Split, TaskShape
from jax_impl.task.splits import split_filename
from jax_impl.training.loop import (
    Log,
    divergence,
    make_batched_epoch,
    make_train_step,
    non_finite_parameters,
    resume_progress,
    save_or_stop,
    steps_per_epoch,
)
from jax_impl.training.mlp_trainer import evaluation_mse, mlp_loss, mlp_optimizer
from jax_impl.training.sae_trainer import sae_optimizer
from jax_impl.jobs.train_sae import (
    CHECKPOINTS_DIR, CONFIG_FILE, DEFAULT_CHUNK_ROWS, LAST_FILES, SAE_FILE, SAELENS_DIR, KEY_INIT, KEY_SHUFFLE,
    activations_record, check_metrics, config_record, stage_artifacts, train_flag,
)
from jax_impl.evaluation.metrics import reconstruction_metrics

CONFIG_AXIS = "configurations"  # the vmapped axis's name (sae_training.make_sae_step's group-wide predicates)
MLP_CONFIG_FILE = "mlp_config.json"
METRICS_FILE = "metrics.json"
GROUP_DONE_FILE = "done.json"  # checkpoints/group-NNN/done.json: a finished group's diverged rows (see _group_done)
# train-sae's command-line defaults: a sweep on a bare activation file starts from what train-sae would do.
SAE_DEFAULTS = {"variant": "topk", "dict_size": 2048, "train": SAETrainConfig(epochs=20, batch_size=256, log_every=1)}


@dataclass
class Trained:
    """One configuration after training: its model (None if it diverged), last epoch's mean loss, seconds
    (its group's wall time shared equally), and why it stopped if it diverged."""

    model: Any
    final_loss: float
    seconds: float
    diverged: str | None = None
    epoch_seconds: np.ndarray | None = None  # (epochs,) wall seconds of each of its group's epochs (the first compiles)


# --------------------------------------------------------------------------- shared helpers


def stack(trees: Sequence[Any]) -> Any:
    """Same-structured pytrees -> one pytree whose leaves have a leading configuration axis (C, ...)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree: Any, i: int) -> Any:
    """Configuration i's slice of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def _set_member(tree: Any, i: int, value: Any) -> Any:
    return jax.tree.map(lambda leaf, v: leaf.at[i].set(v), tree, value)


# The permutation a standalone trainer draws for epoch e (sae_training.fit, train._fit): same key, same bits.
_draw = jax.jit(lambda key, e, n: jax.random.permutation(jax.random.fold_in(key, e), n), static_argnums=2)


class Progress:
    """One progress bar over every configuration-epoch of the sweep (terminals only, like train.run_epochs),
    and the log lines above it."""

    def __init__(self, total: int, log: Log):
        interactive = sys.stdout.isatty() and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="sweep", unit="config-epoch", disable=not interactive, dynamic_ncols=True)
        self.emit = tqdm.write if interactive else log

    def advance(self, n: int, line: str | None = None, **postfix: str) -> None:
        if line:
            self.emit(line)
        if postfix:
            self.bar.set_postfix(**postfix)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _check_losses(losses: np.ndarray, diverged: list[str | None], stage: str, e: int, names: Sequence[str],
                  first: np.ndarray) -> None:
    """Record why each configuration diverged (training.loop.divergence: a NaN/inf or exploding loss; losses (C, S), first
    (C,) each one's first step's loss) the first time it does."""
    for i, row in enumerate(losses):
        if diverged[i] is None:
            diverged[i] = divergence(row, f"{stage} ({names[i]})", e, float(first[i]))


def _check_state(carry: Any, diverged: list[str | None], stage: str, epochs: int, names: Sequence[str]) -> None:
    """Record the configurations whose trained state holds NaN/inf (train.non_finite_parameters) as diverged."""
    for i, name in enumerate(names):
        if diverged[i] is None:
            bad = non_finite_parameters(member(carry, i))
            if bad:
                diverged[i] = (f"{stage} ({name}) training diverged: after epoch {epochs} its state holds NaN or infinite "
                               f"values ({', '.join(bad[:3])}); no weights were written. Try a smaller learning rate.")


def _loss_range(losses: np.ndarray, diverged: Sequence[str | None]) -> str:
    means = [float(row.mean()) for row, d in zip(losses, diverged, strict=True) if d is None]
    if not means:
        return "every configuration diverged"
    return f"Loss: {min(means):.6f} .. {max(means):.6f}" if len(means) > 1 else f"Loss: {means[0]:.6f}"


def _group_epochs(epochs: int, stage: str, label: str, names: Sequence[str], carry: Any,
                  run_epoch: Callable[[Any, int], tuple[Any, jax.Array]],
                  end_of_epoch: Callable[[Any, int, np.ndarray, list[str | None]], tuple[Any, str | None]],
                  progress: Progress, checkpoints: TrainingCheckpoints | None
                  ) -> tuple[Any, np.ndarray, list[str | None], np.ndarray]:
    """A group's host loop (train.run_epochs for C stacked configurations, which may diverge one by one):
    `run_epoch(carry, e) -> (carry, losses (C, S))`, `end_of_epoch(carry, e, losses, diverged) -> (carry, line)`.

    Epoch e depends on nothing but the carry and e (every PRNG stream is fold_in(key, e)), so a checkpoint of
    (stacked carry, epochs done, every epoch's losses (E, C * S), lines, epoch seconds) resumes bit-identically;
    the diverged list is not saved but replayed from the losses (the same checks give the same messages).
    SIGINT/SIGTERM (jax_impl.training.interrupts): the epoch finishes, a checkpoint is saved, `Interrupted` names it.
    Returns (carry, the last epoch's losses (C, S), why each configuration diverged or None, epoch seconds).
    """
    c = len(names)
    diverged: list[str | None] = [None] * c
    carry, first, all_losses, lines, epoch_seconds = resume_progress(checkpoints, carry)
    for e, flat in enumerate(all_losses):  # replayed from a checkpoint's losses
        _check_losses(flat.reshape(c, -1), diverged, stage, e, names, all_losses[0].reshape(c, -1)[:, 0])
    if first:
        progress.advance(first * c)
    with interrupts.deferred():
        for e in range(first, epochs):
            started = time.perf_counter()
            carry, losses = run_epoch(carry, e)
            losses = np.asarray(losses)  # (C, S): the one host sync of the epoch
            _check_losses(losses, diverged, stage, e, names, (all_losses[0].reshape(c, -1) if all_losses else losses)[:, 0])
            carry, line = end_of_epoch(carry, e, losses, diverged)
            all_losses.append(losses.reshape(-1))
            if line:
                lines.append(line)
            progress.advance(c, line)
            epoch_seconds.append(time.perf_counter() - started)
            save_or_stop(checkpoints, carry, e + 1, epochs, all_losses, lines, epoch_seconds, label)
    _check_state(carry, diverged, stage, epochs, names)
    return carry, all_losses[-1].reshape(c, -1), diverged, np.asarray(epoch_seconds)


# --------------------------------------------------------------------------- SAE groups


def traced_fields(arch: saes.Architecture) -> tuple[str, ...]:
    """The architecture's config floats a group passes as traced values (all but `static_floats`)."""
    return tuple(
        f.name for f in dataclasses.fields(arch.config)
        if isinstance(f.default, float) and f.name not in arch.static_floats
    )


def sae_group_key(c: SAEConfiguration) -> tuple:
    """What must be equal for configurations to share one compiled program."""
    arch = saes.get(c.variant)
    cfg = arch.resolve(c.cfg, c.dict_size) if arch.resolve is not None else c.cfg
    traced = set(traced_fields(arch))
    static = tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in traced)
    return (c.variant, c.dict_size, c.train.epochs, c.train.batch_size, c.train.log_every, static)


def group_by(items: Sequence[Any], key: Callable[[Any], Any]) -> list[list[Any]]:
    """Items grouped by key, groups in the order of their first item."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def fit_sae_group(members: Sequence[SAEConfiguration], rows: np.ndarray, progress: Progress,
                  checkpoints: TrainingCheckpoints | None = None, label: str = "SAE") -> list[Trained]:
    """Train configurations of one group together: one vmapped jitted epoch over rows (N, D) float32.

    Each one is initialised and shuffled from its seed as train_sae does (PRNG streams KEY_INIT, KEY_SHUFFLE),
    and sees the same sequence of batches and epoch hooks as sae_training.fit would give it alone.
    checkpoints: resume from / save the group's stacked state (_group_epochs); label: the group in the line an
    interrupt ends with.
    """
    first = members[0]
    arch, train = saes.get(first.variant), first.train
    traced = traced_fields(arch)
    n, width = rows.shape
    x = jnp.asarray(rows, jnp.float32)
    models = [saes.create(c.variant, width, c.dict_size, c.cfg, key=jax.random.fold_in(jax.random.key(c.seed), KEY_INIT))
              for c in members]
    tx = sae_optimizer(train)  # Adam's state does not depend on the learning rate: one init serves every lr
    mean = jnp.mean(x, axis=0) if arch.tied_bias else None  # sae_training.fit's centring, in-memory rows
    states = []
    for c, sae in zip(members, models, strict=True):
        p = sae.params() | ({"b_dec": mean} if arch.tied_bias else {})
        # The float32 a standalone step computes with; a value beyond its range becomes inf there too (and the
        # configuration diverges, recorded), so no RuntimeWarning about the cast (found by tests/test_fuzz.py).
        with np.errstate(over="ignore"):
            hyper = {"lr": jnp.float32(c.train.lr)} | {f: jnp.float32(getattr(sae.cfg, f)) for f in traced}
        states.append(((p, sae.buffers(), tx.init(p), jnp.zeros((sae.dict_size,), jnp.int32)), hyper))
    carry = stack(states)
    dead_after = steps_in(n, train.batch_size, arch.keep_partial_batch)  # as fit: silent for an epoch of batches

    def step(carry, batch):
        state, hyper = carry
        cfg = dataclasses.replace(models[0].cfg, **{f: hyper[f] for f in traced})
        tx = sae_optimizer(dataclasses.replace(train, lr=hyper["lr"]))
        state, loss = make_sae_step(arch, cfg, tx, dead_after, axis_name=CONFIG_AXIS)(state, *batch)
        return (state, hyper), loss

    # vmap of the jitted epoch: one compiled program (the epoch's donation and compiler options kept) for all.
    epoch = jax.vmap(make_batched_epoch(step, train.batch_size, arch.keep_partial_batch), in_axes=(0, None, 0),
                     axis_name=CONFIG_AXIS)
    keys = [jax.random.fold_in(jax.random.key(c.seed), KEY_SHUFFLE) for c in members]
    names = [c.name for c in members]

    def run_epoch(carry, e):
        return epoch(carry, (x,), jnp.stack([_draw(k, e, n) for k in keys]))

    def end_of_epoch(carry, e, losses, diverged):
        notes = []
        if arch.epoch_hook is not None:
            for i, c in enumerate(members):
                if diverged[i] is not None:
                    continue
                state = member(carry[0], i)
                hook_key = jax.random.fold_in(jax.random.fold_in(keys[i], e), 1)
                p, opt_state, note = arch.epoch_hook(state[0], state[2], x, hook_key, e, models[i].cfg, train.epochs)
                if note:
                    params, buffers, opt, fired = carry[0]
                    carry = ((_set_member(params, i, p), buffers, _set_member(opt, i, opt_state), fired), carry[1])
                    notes.append(f"{c.name}: {note}")
        line = None
        if (e + 1) % train.log_every == 0 or notes:
            line = f"SAE Epoch [{e + 1}/{train.epochs}] | {len(members)} x {first.variant} | {_loss_range(losses, diverged)}"
            line += "".join(f" | {note}" for note in notes)
        return carry, line

    carry, losses, diverged, epoch_seconds = _group_epochs(train.epochs, "SAE", label, names, carry, run_epoch,
                                                           end_of_epoch, progress, checkpoints)
    seconds = float(epoch_seconds.sum()) / len(members)  # every process's epochs, on a resumed group too
    out = []
    for i, sae in enumerate(models):
        state = member(carry[0], i)
        model = saes.SAE(arch, sae.cfg, state[0], state[1]) if diverged[i] is None else None
        out.append(Trained(model, float(losses[i].mean()), seconds, diverged[i], epoch_seconds))
    return out


# --------------------------------------------------------------------------- MLP groups


def fit_mlp_group(members: Sequence[MLPConfiguration], train: Split, val: Split, shape: TaskShape,
                  progress: Progress, checkpoints: TrainingCheckpoints | None = None, label: str = "MLP") -> list[Trained]:
    """Train MLP configurations of one recipe (seeds) together: one vmapped jitted epoch, each seed
    initialised and shuffled as `monosem run --seed S` would (KEY_MLP_INIT, KEY_MLP_SHUFFLE) on a run's
    train split (val: the periodic log line's validation MSE). checkpoints, label: as fit_sae_group."""
    cfg = members[0].cfg
    n = len(train)
    n_steps = steps_per_epoch(n, cfg.batch_size)
    tx = mlp_optimizer(cfg, cfg.epochs * n_steps)
    models = [InterpretabilityMLP(shape.input_dim, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(c.seed), KEY_MLP_INIT)))
              for c in members]
    graphdef, states = None, []
    for model in models:
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        states.append((params, rest, tx.init(params)))
    carry = stack(states)
    keys = [jax.random.fold_in(jax.random.key(c.seed), KEY_MLP_SHUFFLE) for c in members]
    if cfg.data == "online":  # fresh rows every step (jax_impl.training.online): the epoch takes its own key
        epoch = jax.vmap(make_online_epoch_fn(graphdef, tx, cfg.batch_size, n_steps, shape))

        def run_epoch(carry, e):
            return epoch(carry, jnp.stack([jax.random.fold_in(k, e) for k in keys]))
    else:
        arrays = (jnp.asarray(train.inputs, jnp.float32), jnp.asarray(train.targets, jnp.float32).reshape(-1, 1))
        epoch = jax.vmap(make_batched_epoch(make_train_step(graphdef, tx, mlp_loss), cfg.batch_size), in_axes=(0, None, 0))

        def run_epoch(carry, e):
            return epoch(carry, arrays, jnp.stack([_draw(k, e, n) for k in keys]))

    names = [c.name for c in members]

    def end_of_epoch(carry, e, losses, diverged):
        if (e + 1) % cfg.log_every:
            return carry, None
        vals = [evaluation_mse(nnx.merge(graphdef, *member(carry[:2], i)), val.inputs, val.targets)
                for i in range(len(members)) if diverged[i] is None]
        shown = f"Val MSE: {min(vals):.6f} .. {max(vals):.6f}" if vals else "every configuration diverged"
        return carry, f"MLP Epoch {e + 1} | {len(members)} seeds | {shown}"

    carry, losses, diverged, epoch_seconds = _group_epochs(cfg.epochs, "MLP", label, names, carry, run_epoch,
                                                           end_of_epoch, progress, checkpoints)
    seconds = float(epoch_seconds.sum()) / len(members)
    out = []
    for i in range(len(members)):
        model = None
        if diverged[i] is None:
            model = nnx.merge(graphdef, *member(carry[:2], i))
            model.eval()
        out.append(Trained(model, float(losses[i].mean()), seconds, diverged[i], epoch_seconds))
    return out


# --------------------------------------------------------------------------- the sweep


def _source_of(activations: Path | str | None, run_dir: Path | str | None) -> tuple[Path, Run | None]:
    if (activations is None) == (run_dir is None):
        raise UserError("give exactly one of --activations FILE and --run-dir DIR")
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
    variants: Sequence[str] | None = None,
    dict_size: int | None = None,
    train: SAETrainConfig | None = None,
    seed: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    atlas_scores: bool = True,
    resume: bool = False,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    log: Log = print,
) -> dict[str, Any]:
    """Train every configuration of `grid` ({key: values}; values typed or strings as on the command line) and
    write out_dir (see the module docstring). Returns the sweep.json document.

    stage "sae": on `activations` (a file train-sae reads) or on a run directory's harvested activations,
    whose SAE settings are then the defaults; variants, dict_size, train, seed: the values of keys the grid
    does not set (defaults: the run's, else train-sae's). With a run directory and atlas_scores, each SAE is
    also scored by the atlas (monosemantic share etc.) with the run's MLP on all its rows.
    stage "mlp": several MLPs of the run directory's recipe at once (e.g. grid {"seed": range(8)}).
    Bad input raises UserError before anything is written but the folder lock.

    Each group's training state is checkpointed in out_dir/checkpoints/group-NNN/ every `checkpoint_every`
    (and on SIGINT/SIGTERM, which end the sweep after the current epoch with `errors.Interrupted`); a group's
    checkpoints are removed once its folders are written. resume: groups whose folders are complete are read
    back, not retrained; an interrupted group continues from its newest valid checkpoint; the sweep.csv/json
    written are those of an uninterrupted sweep but for the timing columns (docs/sweeps.md). Without resume,
    old checkpoints in out_dir are removed first.
    """
    if stage not in STAGES:
        raise UserError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    grid = dict(grid or {})
    if stage == "mlp":
        if run_dir is None or activations is not None:
            raise UserError("--stage mlp trains the MLP of a run directory: give --run-dir DIR (not --activations)")
        given = [flag for flag, value in (("--variant", variants), ("--dict-size", dict_size), ("--epochs/--batch-size/--lr", train),
                                          ("--seed", seed)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: SAE settings; with --stage mlp use --grid KEY=... (e.g. --grid seed=0..7)")
        run = load_run(run_dir, log=lambda line: None)
        configurations = mlp_configurations(grid, run.config)
        run.splits  # noqa: B018  (read and validate the splits before the lock: a bad run directory writes nothing)
        for members in group_by(configurations, lambda c: c.cfg):  # a group's configurations train at once
            cfg = members[0].cfg
            steps = cfg.epochs * -(-len(run.splits["train"]) // cfg.batch_size)
            check_memory(mlp_training_bytes(run.shape.input_dim, cfg.batch_size, steps, len(members)),
                         f"--grid: {len(members)} MLP configuration(s) of {cfg.epochs} epochs trained at once "
                         f"({members[0].name}, ...)", "the sweep")
        return _locked(out_dir, resume, configurations, lambda: _mlp_sweep(configurations, run, out_dir, grid,
                                                           _Resume(resume, checkpoint_every), log))
    # The flags first (an explicit 0 is refused, never taken for "not given"), then the run directory's defaults.
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    try:
        if dict_size is not None:
            check_dict_size(dict_size, "--dict-size")
        if train is not None:
            train.validate(flag=train_flag)
    except ValueError as e:
        raise UserError(str(e)) from None
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be in 0..{MAX_SEED}, got {seed}")
    path, run = _source_of(activations, run_dir)
    arch_defaults: dict[str, dict[str, Any]] = {}
    if run is not None:
        sae_cfg = run.config.sae
        arch_defaults = {sae_cfg.variant: dataclasses.asdict(sae_cfg.architecture)}
        variants = [sae_cfg.variant] if variants is None else variants
        dict_size = sae_cfg.dict_size if dict_size is None else dict_size
        train = sae_cfg.train_config() if train is None else train
        seed = run.config.seed if seed is None else seed
    variants = list([SAE_DEFAULTS["variant"]] if variants is None else variants)
    dict_size = SAE_DEFAULTS["dict_size"] if dict_size is None else dict_size
    train = SAE_DEFAULTS["train"] if train is None else train
    seed = 0 if seed is None else seed
    configurations = sae_configurations(grid, variants=variants, dict_size=dict_size, train=train, seed=seed,
                                        arch_defaults=arch_defaults)
    source = open_activations(path)
    if source.n_rows > chunk_rows:
        raise UserError(
            f"{source.path}: {source.n_rows} rows, more than --chunk-rows {chunk_rows}; a sweep holds the rows in memory "
            "once for all its configurations: raise --chunk-rows, or stream with train-sae one configuration at a time"
        )
    for c in configurations:
        if c.train.batch_size > source.n_rows:
            raise UserError(f"--grid: configuration {c.name}: batch size {c.train.batch_size} is larger than the file "
                            f"({source.n_rows} rows of {source.path})")
    for members in group_by(configurations, sae_group_key):  # a group's configurations train at once
        c = members[0]
        check_memory(training_bytes(source.width, c.dict_size, c.train.batch_size, source.n_rows, len(members)),
                     f"--dict-size {c.dict_size} (or --grid dict_size) for {len(members)} configuration(s) trained at once "
                     f"({c.name}, ...) with --batch-size {c.train.batch_size} on {source.n_rows} x {source.width} "
                     "activations", "the sweep")
    if run is not None and atlas_scores:
        run.mlp  # noqa: B018  (load the run's MLP and splits before the lock: a bad run directory writes nothing)
        run.splits  # noqa: B018
    return _locked(out_dir, resume, configurations, lambda: _sae_sweep(configurations, source, run if atlas_scores else None, out_dir,
                                                       grid, chunk_rows, _Resume(resume, checkpoint_every), log))


def _locked(out_dir: Path | str, resume: bool, configurations: Sequence[SAEConfiguration | MLPConfiguration],
            work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out must be a folder")
    with folder_lock(out_dir, flag="--out", what="output folder"):
        # What a killed sweep left, only where a sweep writes: each configuration's folder (train-sae's or the
        # MLP's files) and the groups' checkpoints.
        written = [CHECKPOINTS_DIR, f"{CHECKPOINTS_DIR}/group-*"]
        for name in (glob.escape(c.name) for c in configurations):  # a name is a name, not a pattern
            written += [name, f"{name}/{SAELENS_DIR}", f"{name}/{MLP_PATH.parent}"]
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
        write_json_atomic(checkpoints.folder / GROUP_DONE_FILE, {"identity": checkpoints.identity, "diverged": diverged})


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

    return {k: [plain(v) for v in vs] if isinstance(vs, (list, tuple, range)) else [plain(vs)] for k, vs in grid.items()}


def _sae_sweep(configurations: list[SAEConfiguration], source: ActivationFile, run: Run | None, out_dir: Path,
               grid: Mapping[str, Sequence[Any]], chunk_rows: int, resume: _Resume, log: Log) -> dict[str, Any]:
    out_dir = Path(out_dir)
    groups = group_by(configurations, sae_group_key)
    log(f"Sweep: {len(configurations)} SAE configuration(s) in {len(groups)} program(s) on {source.n_rows} x {source.width} "
        f"activations from {source.path}")
    rows = source.rows(0, source.n_rows)
    progress = Progress(sum(len(g) * g[0].train.epochs for g in groups), log)
    table, group_records = [], []
    try:
        for g, members in enumerate(groups):
            started = time.perf_counter()
            checkpoints = resume.checkpoints(out_dir, g, _sae_identity(members, source, chunk_rows), log)
            finished = None
            if resume.resume:
                finished = _finished_rows(members, checkpoints,
                                          lambda c: _read_sae_row(c, g, source, run, out_dir / c.name, chunk_rows))
            if finished is not None:
                log(f"Sweep group {g + 1}/{len(groups)}: every configuration is written; read back, not trained again")
                progress.advance(len(members) * members[0].train.epochs)
                table += finished
                seconds = sum(row["seconds"] for row in finished)  # its training time, from the run that did it
            else:
                trained = fit_sae_group(members, rows, progress, checkpoints,
                                        label=f"SAE (sweep group {g + 1}/{len(groups)})")
                written = [_write_sae(c, t, g, source, run, out_dir / c.name, chunk_rows)
                           for c, t in zip(members, trained, strict=True)]
                _group_done(checkpoints, written)
                table += written
                seconds = time.perf_counter() - started
            group_records.append({"group": g, "configurations": [c.name for c in members], "seconds": round(seconds, 3)})
    finally:
        progress.close()
    order = {c.name: c.index for c in configurations}
    table.sort(key=lambda row: order[row["name"]])  # configuration order (groups train in another)
    doc = {"format": "monosem-sweep/1", "stage": "sae", "source": str(source.path),
           "run_dir": None if run is None else str(run.run_dir), "grid": _grid_record(grid),
           "groups": group_records, "configurations": table}
    return write_report(out_dir, doc, log)


def _sae_identity(members: Sequence[SAEConfiguration], source: ActivationFile, chunk_rows: int) -> dict[str, Any]:
    """What a group's checkpoint must match to be resumed: its configurations and the data's shape."""
    return {"stage": "sae", "chunk_rows": chunk_rows, "activations": activations_record(source),
            "configurations": [{"name": c.name, "variant": c.variant, "dict_size": c.dict_size, "seed": c.seed,
                                "config": dataclasses.asdict(c.cfg), "training": dataclasses.asdict(c.train)}
                               for c in members]}


def _write_sae(c: SAEConfiguration, t: Trained, group: int, source: ActivationFile, run: Run | None, folder: Path,
               chunk_rows: int) -> dict[str, Any]:
    if t.model is None:
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
        stage_artifacts(t.model, staging, record, metrics)
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
                  chunk_rows: int) -> dict[str, Any] | None:
    """A written configuration's table row from its metrics.json, sae_config.json (and feature_atlas.json), as
    _write_sae returned it; None when the folder is not complete."""
    metrics, record = _read_json(folder / METRICS_FILE), _read_json(folder / CONFIG_FILE)
    if metrics is None or record is None or not (folder / SAE_FILE).is_file():
        return None
    arch = saes.get(c.variant)
    cfg = arch.resolve(c.cfg, c.dict_size) if arch.resolve is not None else c.cfg
    _same_settings(folder, record.object(), {
        "architecture": c.variant, "config": dataclasses.asdict(cfg), "training": dataclasses.asdict(c.train),
        "dict_size": c.dict_size, "seed": c.seed, "chunk_rows": chunk_rows, "activations": activations_record(source),
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
               resume: _Resume, log: Log) -> dict[str, Any]:
    out_dir = Path(out_dir)
    groups = group_by(configurations, lambda c: c.cfg)
    log(f"Sweep: {len(configurations)} MLP configuration(s) in {len(groups)} program(s) on the splits of {run.run_dir}")
    splits = splits_record(run)
    progress = Progress(sum(len(g) * g[0].cfg.epochs for g in groups), log)
    table, group_records = [], []
    try:
        for g, members in enumerate(groups):
            started = time.perf_counter()
            identity = {"stage": "mlp", "data": dataclasses.asdict(run.config.data), "train_rows": len(run.splits["train"]),
                        "splits": splits,
                        "configurations": [{"name": c.name, "seed": c.seed, "mlp": dataclasses.asdict(c.cfg)}
                                           for c in members]}
            checkpoints = resume.checkpoints(out_dir, g, identity, log)
            finished = None
            if resume.resume:
                finished = _finished_rows(members, checkpoints,
                                          lambda c: _read_mlp_row(c, g, run, out_dir / c.name, splits))
            if finished is not None:
                log(f"Sweep group {g + 1}/{len(groups)}: every configuration is written; read back, not trained again")
                progress.advance(len(members) * members[0].cfg.epochs)
                table += finished
                seconds = sum(row["seconds"] for row in finished)
            else:
                trained = fit_mlp_group(members, run.splits["train"], run.splits["val"], run.shape, progress, checkpoints,
                                        label=f"MLP (sweep group {g + 1}/{len(groups)})")
                written = [_write_mlp(c, t, g, run, out_dir / c.name, splits) for c, t in zip(members, trained, strict=True)]
                _group_done(checkpoints, written)
                table += written
                seconds = time.perf_counter() - started
            group_records.append({"group": g, "configurations": [c.name for c in members], "seconds": round(seconds, 3)})
    finally:
        progress.close()
    order = {c.name: c.index for c in configurations}
    table.sort(key=lambda row: order[row["name"]])  # configuration order (groups train in another)
    doc = {"format": "monosem-sweep/1", "stage": "mlp", "source": str(run.run_dir), "run_dir": str(run.run_dir),
           "grid": _grid_record(grid), "groups": group_records, "configurations": table}
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


def _read_mlp_row(c: MLPConfiguration, group: int, run: Run, folder: Path, splits: dict[str, Any]) -> dict[str, Any] | None:
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
