"""Training a group of same-shape configurations together: one jitted epoch `jax.vmap`ped over them.

Configurations that share every static field (SAE: architecture, dict_size, epochs, batch_size, log_every and
the architecture's ints, tuples and `static_floats`, sae_group_key; MLP: the recipe, only the seed differs) form
a *group*. A group trains as one jitted epoch vmapped over its configurations: the carries are stacked along a
leading configuration axis, every configuration draws its own batches from the one shared copy of the rows, and
the float hyperparameters (lr, l1_coeff, aux_coeff, ...) travel in the carry as traced values, so one compiled
program serves every seed and every value of them. Each configuration is initialised and shuffled from the keys
its caller gives it, and its batch order is epoch_permutation's: with the keys a standalone trainer would get
(jax_impl.jobs.sweep passes train-sae's and the run's), it trains what that trainer trains, up to float
rounding (a vmapped matmul may sum in another order than the single one; docs/sweeps.md: measured and tested).

The host loop (_group_epochs) is the one of training.loop.run_epochs for C configurations that may diverge one by
one: a configuration whose loss explodes or whose state ends NaN is recorded (Trained.diverged), the others go on.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jax_impl import saes
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import Split, TaskShape
from jax_impl.training import interrupts
from jax_impl.training.checkpoints import TrainingCheckpoints
from jax_impl.training.curves import Curves, split_output
from jax_impl.training.loop import (
    Log,
    divergence,
    epoch_permutation,
    make_batched_epoch,
    make_train_step,
    non_finite_parameters,
    resume_progress,
    save_or_stop,
    steps_per_epoch,
)
from jax_impl.training.mlp_trainer import MLPConfig, evaluation_mse, mlp_loss, mlp_optimizer, mlp_schedule
from jax_impl.training.online import make_online_epoch_fn
from jax_impl.training.sae_trainer import SAETrainConfig, as_batch, make_sae_step, sae_optimizer, steps_in

CONFIG_AXIS = "configurations"  # the vmapped axis's name (sae_trainer.make_sae_step's group-wide predicates)

# (init key, shuffle key) of one configuration: where its initial weights and its batch orders are drawn from.
Keys = tuple[jax.Array, jax.Array]


class SAEMember(Protocol):
    """What fit_sae_group reads of each configuration it trains (a sweep's: sweep_grid.SAEConfiguration)."""

    @property
    def name(self) -> str: ...  # how lines and messages name it

    @property
    def variant(self) -> str: ...

    @property
    def dict_size(self) -> int: ...

    @property
    def cfg(self) -> Any: ...  # the architecture's config

    @property
    def train(self) -> SAETrainConfig: ...


class MLPMember(Protocol):
    """What fit_mlp_group reads of each configuration it trains (a sweep's: sweep_grid.MLPConfiguration)."""

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> MLPConfig: ...


@dataclass
class Trained:
    """One configuration after training: its model (None if it diverged), last epoch's mean loss, seconds
    (its group's wall time shared equally), and why it stopped if it diverged."""

    model: Any
    final_loss: float
    seconds: float
    diverged: str | None = None
    epoch_seconds: np.ndarray | None = None  # (epochs,) wall seconds of each of its group's epochs (the first compiles)


def stack(trees: Sequence[Any]) -> Any:
    """Same-structured pytrees -> one pytree whose leaves have a leading configuration axis (C, ...)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree: Any, i: int) -> Any:
    """Configuration i's slice of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def _set_member(tree: Any, i: int, value: Any) -> Any:
    return jax.tree.map(lambda leaf, v: leaf.at[i].set(v), tree, value)


class Progress:
    """One progress bar over every configuration-epoch of the groups trained (terminals only, like
    training.loop.run_epochs), and the log lines above it."""

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
    """Record why each configuration diverged (training.loop.divergence: a NaN/inf or exploding loss; losses (C, S),
    first (C,) each one's first step's loss) the first time it does."""
    for i, row in enumerate(losses):
        if diverged[i] is None:
            diverged[i] = divergence(row, f"{stage} ({names[i]})", e, float(first[i]))


def _check_state(carry: Any, diverged: list[str | None], stage: str, epochs: int, names: Sequence[str]) -> None:
    """Record the configurations whose trained state holds NaN/inf (training.loop.non_finite_parameters) as diverged."""
    for i, name in enumerate(names):
        if diverged[i] is None:
            bad = non_finite_parameters(member(carry, i))
            if bad:
                diverged[i] = (f"{stage} ({name}) training diverged: after epoch {epochs} its state holds NaN or "
                               f"infinite values ({', '.join(bad[:3])}); no weights were written. Try a smaller "
                               "learning rate.")


def _loss_range(losses: np.ndarray, diverged: Sequence[str | None]) -> str:
    means = [float(row.mean()) for row, d in zip(losses, diverged, strict=True) if d is None]
    if not means:
        return "every configuration diverged"
    return f"Loss: {min(means):.6f} .. {max(means):.6f}" if len(means) > 1 else f"Loss: {means[0]:.6f}"


def _group_epochs(epochs: int, stage: str, label: str, names: Sequence[str], carry: Any,
                  run_epoch: Callable[[Any, int], tuple[Any, jax.Array]],
                  end_of_epoch: Callable[[Any, int, np.ndarray, list[str | None]], tuple[Any, str | None]],
                  progress: Progress, checkpoints: TrainingCheckpoints | None,
                  curves: Sequence[Curves] | None = None) -> tuple[Any, np.ndarray, list[str | None], np.ndarray]:
    """A group's host loop (training.loop.run_epochs for C stacked configurations, which may diverge one by one):
    `run_epoch(carry, e) -> (carry, losses (C, S))`, `end_of_epoch(carry, e, losses, diverged) -> (carry, line)`.

    Epoch e depends on nothing but the carry and e (every PRNG stream is fold_in(key, e)), so a checkpoint of
    (stacked carry, epochs done, every epoch's losses (E, C * S), lines, epoch seconds) resumes bit-identically;
    the diverged list is not saved but replayed from the losses (the same checks give the same messages).
    SIGINT/SIGTERM (jax_impl.training.interrupts): the epoch finishes, a checkpoint is saved, `Interrupted` names it.
    curves: each configuration's (jax_impl.training.curves), written from run_epoch's output when it is a dict of
    step scalars (C, S) each ("loss" among them), else from the losses; a configuration's stop after the epoch it
    diverged in. Returns (carry, the last epoch's losses (C, S), why each configuration diverged or None, epoch seconds).
    """
    c = len(names)
    diverged: list[str | None] = [None] * c
    carry, first, all_losses, lines, epoch_seconds = resume_progress(checkpoints, carry)
    for e, flat in enumerate(all_losses):  # replayed from a checkpoint's losses
        _check_losses(flat.reshape(c, -1), diverged, stage, e, names, all_losses[0].reshape(c, -1)[:, 0])
    if first:
        progress.advance(first * c)
    for curve in curves or ():
        curve.start(first)
    try:
        with interrupts.deferred():
            for e in range(first, epochs):
                started = time.perf_counter()
                carry, out = run_epoch(carry, e)
                losses, scalars = split_output(jax.device_get(out))  # (C, S) each: the one host sync of the epoch
                firsts = (all_losses[0].reshape(c, -1) if all_losses else losses)[:, 0]
                was_live = [d is None for d in diverged]
                _check_losses(losses, diverged, stage, e, names, firsts)
                for i, curve in enumerate(curves or ()):
                    if was_live[i]:  # the epoch it diverged in is the last its curves show
                        curve.epoch(e, {k: v[i] for k, v in (scalars or {"loss": losses}).items()},
                                    time.perf_counter() - started)
                carry, line = end_of_epoch(carry, e, losses, diverged)
                all_losses.append(losses.reshape(-1))
                if line:
                    lines.append(line)
                progress.advance(c, line)
                epoch_seconds.append(time.perf_counter() - started)
                save_or_stop(checkpoints, carry, e + 1, epochs, all_losses, lines, epoch_seconds, label)
    finally:
        for curve in curves or ():
            curve.close()
    _check_state(carry, diverged, stage, epochs, names)
    return carry, all_losses[-1].reshape(c, -1), diverged, np.asarray(epoch_seconds)


# --------------------------------------------------------------------------- SAE groups


def traced_fields(arch: saes.Architecture) -> tuple[str, ...]:
    """The architecture's config floats a group passes as traced values (all but `static_floats`)."""
    return tuple(
        f.name for f in dataclasses.fields(arch.config)
        if isinstance(f.default, float) and f.name not in arch.static_floats
    )


def sae_group_key(c: SAEMember) -> tuple:
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


def fit_sae_group(members: Sequence[SAEMember], keys: Sequence[Keys], rows: np.ndarray, progress: Progress,
                  checkpoints: TrainingCheckpoints | None = None, label: str = "SAE", *, split: int | None = None,
                  skip: bool = False, curves: Sequence[Curves] | None = None) -> list[Trained]:
    """Train configurations of one group (sae_group_key) together: one vmapped jitted epoch over rows (N, D) float32.
    split: train transcoders, whose rows hold their input (N, split) and target (N, D - split) side by side
    (sae_trainer.fit's); skip: with their linear skip connection.

    Each one is initialised from its init key and shuffled from its shuffle key (keys[i]), and sees the same
    sequence of batches and epoch hooks as sae_trainer.fit would give it alone with those keys.
    checkpoints: resume from / save the group's stacked state (_group_epochs); label: the group in the line an
    interrupt ends with. curves: each configuration's training curves (jax_impl.training.curves), as fit's.
    """
    first = members[0]
    arch, train = saes.get(first.variant), first.train
    traced = traced_fields(arch)
    n, width = rows.shape
    x = jnp.asarray(rows, jnp.float32)
    shape = {} if split is None else {"output_dim": width - split, "skip": skip}  # a transcoder's
    models = [saes.create(c.variant, width if split is None else split, c.dict_size, c.cfg, key=init_key, **shape)
              for c, (init_key, _) in zip(members, keys, strict=True)]
    tx = sae_optimizer(train)  # Adam's state does not depend on the learning rate: one init serves every lr
    # sae_trainer.fit's centring, in-memory rows (a transcoder's b_dec: the target's mean)
    mean = jnp.mean(x, axis=0)[0 if split is None else split:] if arch.tied_bias else None
    states = []
    for c, sae in zip(members, models, strict=True):
        p = sae.params() | ({"b_dec": mean} if arch.tied_bias else {})
        # The float32 a standalone step computes with; a value beyond its range becomes inf there too (and the
        # configuration diverges, recorded), so no RuntimeWarning about the cast (found by tests/cli/test_fuzz.py).
        with np.errstate(over="ignore"):
            hyper = {"lr": jnp.float32(c.train.lr)} | {f: jnp.float32(getattr(sae.cfg, f)) for f in traced}
        states.append(((p, sae.buffers(), tx.init(p), jnp.zeros((sae.dict_size,), jnp.int32)), hyper))
    carry = stack(states)
    dead_after = steps_in(n, train.batch_size, arch.keep_partial_batch)  # as fit: silent for an epoch of batches
    curves = list(curves) if curves and all(curve.config.on for curve in curves) else None
    for curve, c in zip(curves or (), members, strict=True):
        curve.lr = c.train.lr

    def step(carry, batch):
        state, hyper = carry
        cfg = dataclasses.replace(models[0].cfg, **{f: hyper[f] for f in traced})
        tx = sae_optimizer(dataclasses.replace(train, lr=hyper["lr"]))
        step = make_sae_step(arch, cfg, tx, dead_after, axis_name=CONFIG_AXIS, split=split, curves=curves is not None)
        state, out = step(state, *batch)
        return (state, hyper), out

    # vmap of the jitted epoch: one compiled program (the epoch's donation and compiler options kept) for all.
    epoch = jax.vmap(make_batched_epoch(step, train.batch_size, arch.keep_partial_batch), in_axes=(0, None, 0),
                     axis_name=CONFIG_AXIS)
    shuffle_keys = [shuffle_key for _, shuffle_key in keys]
    names = [c.name for c in members]

    def run_epoch(carry, e):
        return epoch(carry, (x,), jnp.stack([epoch_permutation(k, e, n) for k in shuffle_keys]))

    def end_of_epoch(carry, e, losses, diverged):
        notes = []
        if arch.epoch_hook is not None:
            for i, c in enumerate(members):
                if diverged[i] is not None:
                    continue
                state = member(carry[0], i)
                hook_key = jax.random.fold_in(jax.random.fold_in(shuffle_keys[i], e), 1)
                p, opt_state, note = arch.epoch_hook(state[0], state[2], as_batch(arch, x, split), hook_key, e,
                                                     models[i].cfg, train.epochs)
                if note:
                    params, buffers, opt, fired = carry[0]
                    carry = ((_set_member(params, i, p), buffers, _set_member(opt, i, opt_state), fired), carry[1])
                    notes.append(f"{c.name}: {note}")
        line = None
        if (e + 1) % train.log_every == 0 or notes:
            line = (f"SAE Epoch [{e + 1}/{train.epochs}] | {len(members)} x {first.variant} | "
                    f"{_loss_range(losses, diverged)}")
            line += "".join(f" | {note}" for note in notes)
        return carry, line

    carry, losses, diverged, epoch_seconds = _group_epochs(train.epochs, "SAE", label, names, carry, run_epoch,
                                                           end_of_epoch, progress, checkpoints, curves)
    seconds = float(epoch_seconds.sum()) / len(members)  # every process's epochs, on a resumed group too
    out = []
    for i, sae in enumerate(models):
        state = member(carry[0], i)
        model = saes.SAE(arch, sae.cfg, state[0], state[1], transcoder=sae.transcoder) if diverged[i] is None else None
        out.append(Trained(model, float(losses[i].mean()), seconds, diverged[i], epoch_seconds))
    return out


def fit_mlp_group(members: Sequence[MLPMember], keys: Sequence[Keys], train: Split, val: Split, shape: TaskShape,
                  progress: Progress, checkpoints: TrainingCheckpoints | None = None,
                  label: str = "MLP", curves: Sequence[Curves] | None = None) -> list[Trained]:
    """Train MLP configurations of one recipe (the same cfg; seeds) together: one vmapped jitted epoch, each one
    initialised from its init key and shuffled from its shuffle key (keys[i]) as mlp_trainer.fit_mlp (or
    online.fit_mlp_online) would with those keys, on a train split (val: the periodic log line's validation MSE).
    checkpoints, label, curves: as fit_sae_group."""
    cfg = members[0].cfg
    n = len(train)
    n_steps = steps_per_epoch(n, cfg.batch_size)
    tx = mlp_optimizer(cfg, cfg.epochs * n_steps)
    curves = list(curves) if curves and all(curve.config.on for curve in curves) else None
    for curve in curves or ():
        curve.lr = mlp_schedule(cfg, cfg.epochs * n_steps)[0]
    models = [InterpretabilityMLP(shape.input_dim, rngs=nnx.Rngs(init_key)) for init_key, _ in keys]
    graphdef, states = None, []
    for model in models:
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        states.append((params, rest, tx.init(params)))
    carry = stack(states)
    shuffle_keys = [shuffle_key for _, shuffle_key in keys]
    if cfg.data == "online":  # fresh rows every step (jax_impl.training.online): the epoch takes its own key
        epoch = jax.vmap(make_online_epoch_fn(graphdef, tx, cfg.batch_size, n_steps, shape))

        def run_epoch(carry, e):
            return epoch(carry, jnp.stack([jax.random.fold_in(k, e) for k in shuffle_keys]))
    else:
        arrays = (jnp.asarray(train.inputs, jnp.float32), jnp.asarray(train.targets, jnp.float32).reshape(-1, 1))
        epoch = jax.vmap(make_batched_epoch(make_train_step(graphdef, tx, mlp_loss), cfg.batch_size),
                         in_axes=(0, None, 0))

        def run_epoch(carry, e):
            return epoch(carry, arrays, jnp.stack([epoch_permutation(k, e, n) for k in shuffle_keys]))

    names = [c.name for c in members]

    def end_of_epoch(carry, e, losses, diverged):
        if (e + 1) % cfg.log_every:
            return carry, None
        vals = [evaluation_mse(nnx.merge(graphdef, *member(carry[:2], i)), val.inputs, val.targets)
                for i in range(len(members)) if diverged[i] is None]
        shown = f"Val MSE: {min(vals):.6f} .. {max(vals):.6f}" if vals else "every configuration diverged"
        return carry, f"MLP Epoch {e + 1} | {len(members)} seeds | {shown}"

    carry, losses, diverged, epoch_seconds = _group_epochs(cfg.epochs, "MLP", label, names, carry, run_epoch,
                                                           end_of_epoch, progress, checkpoints, curves)
    seconds = float(epoch_seconds.sum()) / len(members)
    out = []
    for i in range(len(members)):
        model = None
        if diverged[i] is None:
            model = nnx.merge(graphdef, *member(carry[:2], i))
            model.eval()
        out.append(Trained(model, float(losses[i].mean()), seconds, diverged[i], epoch_seconds))
    return out
