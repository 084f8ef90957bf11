"""The one training loop: a jitted epoch (`lax.scan` over the optimizer steps of one permutation of the rows),
the host loop around it (progress bar, divergence check, checkpoints, interrupts) and what every trainer shares.

One epoch is one jitted call: the rows stay on device, the epoch's permutation gathers the batches,
and `jax.lax.scan` runs the optimizer steps. The only host sync is one per epoch, for the progress bar,
the divergence check and the periodic log line.

Batches follow torch's DataLoader(shuffle=True, drop_last=False): consecutive slices of the permuted
rows, the last one possibly shorter (compiled as its own step inside the same jitted epoch).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm  # not tqdm.auto: the bar shows on terminals only, and Jupyter would warn about widgets

from jax_impl.errors import Interrupted, TrainingDiverged
from jax_impl.training import interrupts
from jax_impl.training.checkpoints import Progress, TrainingCheckpoints
from jax_impl.training.curves import Curves, split_output

Log = Callable[[str], None]


Carry = Any  # a trainer's loop state: a pytree of arrays (parameters, optimizer state, buffers, counters)


@dataclass
class TrainResult:
    """`step_losses` (epochs, steps_per_epoch) float32: the loss of every optimizer step, in order.

    `epoch_seconds` (epochs,): wall time of each epoch as the host loop saw it (the first includes tracing
    and compilation); benchmarks/bench.py reads it.
    """

    model: nnx.Module
    step_losses: np.ndarray
    log_lines: list[str]
    epoch_seconds: np.ndarray | None = None

    @property
    def epoch_losses(self) -> np.ndarray:
        return self.step_losses.mean(axis=1)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return -(-n_rows // batch_size)


@partial(jax.jit, static_argnums=2)
def epoch_permutation(key: jax.Array, epoch: int, n: int) -> jax.Array:
    """Epoch `epoch`'s order of n rows, (n,) int32: a permutation drawn from fold_in(key, epoch) alone, so that a
    resumed training draws the same one. Every trainer draws its orders here (a streamed SAE epoch: each chunk's,
    from the epoch's key and the chunk's index), a sweep's configurations too: the same key gives the same bits."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


# XLA:CPU's default copy insertion copies every loop-carried weight once per scan step (11 copy kernels per
# MLP step); region analysis proves the updates can happen in place and drops them: about 7% less CPU time
# per MLP epoch, 4% per SAE epoch, bitwise-identical results (CHANGELOG.md). Other backends ignore it.
EPOCH_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn):
    """One optimizer step `step(carry, batch) -> (carry, loss)`, traceable inside a scan.

    carry = (params, rest, opt_state) from `nnx.split(model, nnx.Param, ...)`; `loss_fn(model, *batch)`.
    """

    def step(carry, batch):
        params, rest, opt_state = carry

        def loss_of(p, r):
            # copy=True: fresh Variables owned by this trace, so BatchNorm may update its statistics.
            model = nnx.merge(graphdef, p, r, copy=True)
            loss = loss_fn(model, *batch)
            return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), rest, opt_state), loss

    return step


# A training has exploded when an epoch's mean loss exceeds this many times its first step's loss (the initial
# model's, on the first batch: the scale of the data and of the loss, measured before any update). Measured on
# every training of the tests that train (105 of them: every architecture, the MLP with its OneCycle warm-up,
# sweeps, the quick benchmarks): no epoch's mean went above 1.12 times it. Heavy-tailed activations can make one
# batch's loss 10x an epoch's mean, which 1000 leaves a margin of 100 over. Learning rates 10^4 times the useful
# one (SAE lr 10) reach 10^5..10^8 times it within the first epoch; larger ones overflow to inf or NaN. lr 1
# stays at 15..260 times it: a poor training (explained variance -0.6..-11), which this rule does not call
# exploded. No floor on the final explained variance either: a legitimate one-epoch test run
# (tests/jobs/test_train_sae.py) ends at -16, worse than lr 1's, so no floor both catches those and spares it.
EXPLOSION_FACTOR = 1e3


def divergence(losses: np.ndarray, stage: str, epoch: int, first_loss: float | None = None) -> str | None:
    """Why a training diverged in `epoch` (0-based; losses (steps,): its step losses), or None: a NaN/inf loss, or
    an epoch's mean loss above EXPLOSION_FACTOR x `first_loss` (the training's first step's loss; None: this is
    the first epoch and its first step is the reference). The reason names the stage, epoch and step (1-based)."""
    losses = np.asarray(losses)
    hint = "no weights were written. Try a smaller learning rate."
    if not np.all(np.isfinite(losses)):
        step = int(np.flatnonzero(~np.isfinite(losses))[0])
        return f"{stage} training diverged at epoch {epoch + 1}, step {step + 1} (loss {losses[step]}); {hint}"
    reference = float(losses[0]) if first_loss is None else first_loss
    limit = EXPLOSION_FACTOR * reference
    if reference > 0 and float(losses.mean(dtype=np.float64)) > limit:
        step = int(np.flatnonzero(losses > limit)[0])
        return (f"{stage} training diverged at epoch {epoch + 1}, step {step + 1} (loss {losses[step]:.4g}, more than "
                f"{EXPLOSION_FACTOR:g} times the first step's {reference:.4g}; the epoch's mean "
                f"{float(losses.mean(dtype=np.float64)):.4g}); {hint}")
    return None


def raise_if_diverged(losses: np.ndarray, stage: str, epoch: int, first_loss: float | None = None) -> None:
    """TrainingDiverged with `divergence`'s reason, if there is one."""
    reason = divergence(losses, stage, epoch, first_loss)
    if reason is not None:
        raise TrainingDiverged(reason)


def first_step_loss(step_losses: list[np.ndarray]) -> float | None:
    """The reference of `divergence`: the first step's loss of the epochs done so far (None before the first)."""
    return float(step_losses[0][0]) if step_losses and len(step_losses[0]) else None


def non_finite_parameters(tree: Any) -> list[str]:
    """Key paths of the leaves of a trained pytree (parameters, buffers) that hold a NaN or infinite value: a model
    can go bad with a finite loss (a NaN threshold silences every feature), and our own loaders refuse such
    weights. One host transfer, after training."""
    leaves = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
              if jnp.issubdtype(getattr(leaf, "dtype", np.dtype(object)), jnp.inexact)]
    finite = jax.device_get([jnp.all(jnp.isfinite(leaf)) for _, leaf in leaves])  # dispatched together, one fetch
    return [name for (name, _), ok in zip(leaves, finite, strict=True) if not ok]


def make_batched_epoch(step, batch_size: int, keep_partial_batch: bool = True):
    """A jitted `epoch(carry, arrays, permutation (n,)) -> (carry, step_losses (S,))` for any
    `step(carry, batch) -> (carry, loss)`, batch = the tuple of `arrays` gathered at a batch of indices (a step
    whose output is a dict of scalars, the training curves' (sae_trainer.curve_scalars): a dict of (S,) arrays).

    Consecutive slices of the permutation are the batches (torch's DataLoader order), scanned; the last,
    shorter batch is one more step when keep_partial_batch (DataLoader's drop_last=False), else dropped.
    The carry is donated.
    """

    @partial(jax.jit, donate_argnums=0, compiler_options=EPOCH_COMPILER_OPTIONS)
    def epoch(carry, arrays, permutation):
        n_full = permutation.shape[0] // batch_size
        full = permutation[: n_full * batch_size].reshape(n_full, batch_size)
        carry, losses = jax.lax.scan(lambda c, idx: step(c, tuple(a[idx] for a in arrays)), carry, full)
        tail = permutation[n_full * batch_size :]
        if keep_partial_batch and tail.shape[0]:
            carry, last = step(carry, tuple(a[tail] for a in arrays))
            losses = jax.tree.map(lambda scanned, one: jnp.concatenate([scanned, one[None]]), losses, last)
        return carry, losses

    return epoch


def _make_epoch_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn, batch_size: int):
    """A jitted `epoch(carry, arrays, permutation) -> (carry, step_losses)`; carry = (params, rest, opt_state)."""
    return make_batched_epoch(make_train_step(graphdef, tx, loss_fn), batch_size)


def fit_module(
    model: nnx.Module,
    loss_fn,
    arrays: tuple[jax.Array, ...],
    tx: optax.GradientTransformation,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array | None,
    permutations: np.ndarray | None,
    stage: str,
    on_epoch_end: Callable[[nnx.Module, int, np.ndarray], str | None],
    log: Log,
    checkpoints: TrainingCheckpoints | None = None,
    curves: Curves | None = None,
) -> TrainResult:
    n = arrays[0].shape[0]
    if permutations is None:
        if key is None:
            raise ValueError("pass either a PRNG key or explicit permutations")
        permutation_of = lambda e: epoch_permutation(key, e, n)  # noqa: E731
    else:
        permutations = np.asarray(permutations)
        if permutations.shape != (epochs, n):
            raise ValueError(f"permutations must have shape {(epochs, n)}, got {permutations.shape}")
        permutation_of = lambda e: jnp.asarray(permutations[e])  # noqa: E731

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The epoch donates its carry; copy so the caller's model keeps its (initial) weights.
    params, rest = jax.tree.map(jnp.copy, (params, rest))
    epoch_fn = _make_epoch_fn(graphdef, tx, loss_fn, batch_size)

    def run_epoch(carry, e: int):
        return epoch_fn(carry, arrays, permutation_of(e))

    def end_of_epoch(carry, e: int, losses: np.ndarray):
        return carry, on_epoch_end(nnx.merge(graphdef, carry[0], carry[1]), e, losses)

    carry, step_losses, log_lines, epoch_seconds = run_epochs(
        epochs, stage, (params, rest, tx.init(params)), run_epoch, end_of_epoch, log, checkpoints, curves
    )
    model = nnx.merge(graphdef, carry[0], carry[1])
    model.eval()
    return TrainResult(model=model, step_losses=step_losses, log_lines=log_lines, epoch_seconds=epoch_seconds)


def run_epochs(
    epochs: int,
    stage: str,
    carry: Carry,
    run_epoch: Callable[[Carry, int], tuple[Carry, jax.Array]],
    on_epoch_end: Callable[[Carry, int, np.ndarray], tuple[Carry, str | None]],
    log: Log,
    checkpoints: TrainingCheckpoints | None = None,
    curves: Curves | None = None,
) -> tuple[Carry, np.ndarray, list[str], np.ndarray]:
    """The host loop of every trainer: `run_epoch(carry, e) -> (carry, the epoch's step losses (steps,))`,
    fetched once per epoch; `on_epoch_end(carry, e, losses) -> (carry, a line to print or None)`.

    Epoch e must depend on nothing but the carry and e (PRNG streams are fold_in(key, e)): that is what makes
    a checkpoint of (carry, epochs done, losses and lines so far) enough to resume bit-identically.
    checkpoints: restore from the newest checkpoint first and save one when due (jax_impl.training.checkpoints).
    SIGINT/SIGTERM (jax_impl.training.interrupts) end the loop after the current epoch with a checkpoint and an
    `Interrupted` naming it. Stops on a NaN/inf or exploding loss (raise_if_diverged) and on parameters that
    end NaN/inf (non_finite_parameters). On a terminal, a progress bar with
    the running loss and the lines above it; otherwise just the lines, through `log`. curves: write each epoch's
    points (jax_impl.training.curves) from what run_epoch returned: its step losses, or a dict of step scalars
    ("loss" among them), fetched together. Returns (carry, step losses (epochs, steps), the lines, wall seconds of each epoch (epochs,)).
    """
    carry, first, all_losses, log_lines, epoch_seconds = resume_progress(checkpoints, carry)
    if curves is not None:
        curves.start(first)
    interactive = sys.stdout.isatty() and sys.stderr.isatty()
    bar = tqdm(range(first, epochs), desc=stage, unit="epoch", disable=not interactive, dynamic_ncols=True,
               initial=first, total=epochs)
    emit = tqdm.write if interactive else log
    with interrupts.deferred():
        try:
            for e in bar:
                started = time.perf_counter()
                carry, out = run_epoch(carry, e)
                losses, scalars = split_output(jax.device_get(out))  # the one host sync of the epoch
                if curves is not None:  # before the divergence check: a diverged epoch's curve shows how
                    curves.epoch(e, scalars or {"loss": losses}, time.perf_counter() - started)
                raise_if_diverged(losses, stage, e, first_step_loss(all_losses))
                all_losses.append(losses)
                bar.set_postfix(loss=f"{losses.mean():.6f}")
                carry, line = on_epoch_end(carry, e, losses)
                if line:
                    emit(line)
                    log_lines.append(line)
                epoch_seconds.append(time.perf_counter() - started)
                save_or_stop(checkpoints, carry, e + 1, epochs, all_losses, log_lines, epoch_seconds, stage)
        finally:
            bar.close()
            if curves is not None:
                curves.close()
    bad = non_finite_parameters(carry)
    if bad:
        raise TrainingDiverged(f"{stage} training diverged: after epoch {epochs} its state holds NaN or infinite values "
                               f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); no weights were written. Try a "
                               "smaller learning rate.")
    return carry, np.stack(all_losses), log_lines, np.asarray(epoch_seconds)


def resume_progress(checkpoints: TrainingCheckpoints | None, carry: Carry
                    ) -> tuple[Carry, int, list[np.ndarray], list[str], list[float]]:
    """Where a training loop starts: (carry, epochs done, each done epoch's losses, lines, epoch seconds), from
    the newest valid checkpoint when `checkpoints` holds one, else (carry, 0, [], [], [])."""
    restored = checkpoints.restore(carry) if checkpoints is not None else None
    if restored is None:
        return carry, 0, [], [], []
    return (restored.carry, restored.epoch, list(restored.step_losses), list(restored.log_lines),
            list(restored.epoch_seconds))


def save_or_stop(checkpoints: TrainingCheckpoints | None, carry: Carry, done: int, epochs: int,
                 step_losses: list[np.ndarray], log_lines: list[str], epoch_seconds: list[float], stage: str) -> None:
    """After `done` epochs (each one's losses, the lines, each one's seconds): save a checkpoint when one is due
    or a SIGINT/SIGTERM is pending, then on a pending signal raise `Interrupted` naming it."""
    signum = interrupts.pending()
    if checkpoints is not None and (signum is not None and checkpoints.save_on_signal or checkpoints.due(done, epochs)):
        checkpoints.save(Progress(carry, done, np.stack(step_losses), log_lines, np.asarray(epoch_seconds)))
    if signum is not None:
        raise Interrupted(signum, interrupted_message(signum, stage, done, epochs, checkpoints))


def interrupted_message(signum: int, stage: str, done: int, epochs: int, checkpoints: TrainingCheckpoints | None) -> str:
    """The one line an interrupted training loop ends with: the signal, where it stopped, what was saved, how to go on."""
    head = f"interrupted by {interrupts.signal_name(signum)} after {stage} epoch {done}/{epochs}"
    if checkpoints is None:
        return f"{head}; no checkpoint was saved (checkpointing is off)"
    if checkpoints.last_saved is None:  # a many-host run saves no checkpoint of its own on a signal
        return f"{head}; no checkpoint was saved yet (a multi-process run saves only the periodic ones)"
    return f"{head}; saved {checkpoints.last_saved}; to continue, {checkpoints.resume_hint}"
