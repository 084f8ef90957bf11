"""One trainer for every SAE architecture: a jitted `lax.scan` over the batches of a chunk of rows, fed by
the architecture's loss and hooks (jax_impl.saes); it knows no architecture by name.

Rows come from an in-memory (N, D) array (one chunk: the whole epoch is one jitted call) or from an
`activations.ActivationFile` streamed in shuffled chunks of `chunk_rows` rows (one chunk = one scanned
program), so peak memory is set by the chunk, not the file. Within a chunk the rows are permuted on device
and cut into consecutive batches (torch's DataLoader order); the last, shorter batch is trained on only
where the architecture says so (`keep_partial_batch`, the seed's relu-l1).

Per step: loss and gradients, the decoder's parallel-gradient removal (unit-decoder architectures), Adam,
decoder renormalisation, the architecture's post-update clip, and the count of steps since each latent fired
(latents silent for an epoch's worth of steps are `dead` for AuxK). Per epoch: the architecture's host hook
(e.g. resampling) on a sample of rows.

A transcoder trains on rows that hold its input and its target side by side, (N, D_in + D_out) (in memory,
or a paired file: jax_impl.data.activations.pair_activations), so that shuffling, chunking, sharding and
checkpoints treat them as one row; the step splits each batch at D_in (`split`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jax_impl.checks import FLOAT32, require_finite
from jax_impl.data.activations import ActivationFile, sample_rows
from jax_impl.data.streaming import stream_chunks
from jax_impl.precision import highest_precision
from jax_impl.saes import SAE
from jax_impl.saes.base import Architecture, Batch, TrainContext, project_out_parallel, renormalise_decoder
from jax_impl.training.checkpoints import TrainingCheckpoints
from jax_impl.training.curves import Curves
from jax_impl.training.devices import place_rows, replicate, shard_batch
from jax_impl.training.loop import Log, TrainResult, epoch_permutation, make_batched_epoch, run_epochs

HOOK_SAMPLE_ROWS = 65536  # rows an epoch hook (resampling) sees when the activations are streamed


@dataclass(frozen=True)
class SAETrainConfig:
    """What every architecture's training shares: `epochs` over the rows, `batch_size` rows a step, Adam's `lr`,
    a line every `log_every` epochs."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    log_every: int = 10

    def validate(self, flag: Callable[[str], str] = str) -> SAETrainConfig:
        """ValueError naming the field (as flag(name) spells it, e.g. `--batch-size`) that cannot work; self."""
        require_finite(self, flag)
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"{flag('lr')} must be > 0, got {self.lr}")
        return self


def training_bytes(width: int, dict_size: int, batch_size: int, rows_held: int, configurations: int = 1) -> int:
    """A lower bound of the memory SAE training holds at once (jax_impl.checks.check_memory): per configuration
    the parameters (encoder, decoder, biases), their gradient and Adam's two moments (4x), and a batch's
    pre-activations and features (2 x batch x dict_size); the rows held in memory (rows_held x width), once."""
    params = 2 * width * dict_size + dict_size + width
    per_configuration = 4 * params + 2 * batch_size * dict_size
    return FLOAT32 * (configurations * per_configuration + rows_held * width)


def as_batch(arch: Architecture, rows: jax.Array, split: int | None) -> Batch:
    """The Batch a loss sees of rows (B, D): an SAE's (split None), or a transcoder's, whose rows hold the input
    (B, split) and the target (B, D - split) side by side."""
    return arch.batch(rows) if split is None else arch.batch(rows[:, :split], rows[:, split:])


def make_sae_step(arch: Architecture, cfg: Any, tx: optax.GradientTransformation, dead_after: int,
                  mesh: Mesh | None = None, axis_name: str | None = None, split: int | None = None,
                  curves: bool = False):
    """`step(carry, x (B, D)) -> (carry, loss)`; carry = (params, buffers, opt_state, since_fired (F,) int32).

    mesh: split each batch over its devices (jax_impl.training.devices), the carry replicated. axis_name: the step runs
    under `jax.vmap(..., axis_name=axis_name)` over a sweep's configurations (jax_impl.training.vmapped).
    split: a transcoder's input width (as_batch). curves: the step's output is a dict of () float32 scalars instead,
    "loss" and curve_scalars' (the training curves: jax_impl.training.curves), scanned out with the losses."""

    def step(carry, x):
        x = as_batch(arch, shard_batch(x, mesh), split)
        p, b, opt_state, since_fired = carry
        dead = since_fired >= dead_after
        # Under a sweep's vmap: one dead count for the whole group (a pmax over the configurations is unbatched),
        # so that AuxK's lax.switch stays a switch instead of a select over every branch (base.aux_k_loss).
        group_dead = None if axis_name is None else jax.lax.pmax(jnp.sum(dead, dtype=jnp.int32), axis_name)
        ctx = TrainContext(dead=dead, group_dead=group_dead)
        (loss, (features, b, terms)), grads = jax.value_and_grad(arch.loss, has_aux=True)(p, b, x, ctx, cfg)
        if arch.unit_decoder:
            grads = project_out_parallel(grads, p)
        updates, opt_state = tx.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        if arch.unit_decoder:
            p = renormalise_decoder(p)
        if arch.post_update is not None:
            p = arch.post_update(p)
        since_fired = jnp.where(jnp.any(features > 0, axis=0), 0, since_fired + 1)
        if curves:
            return (p, b, opt_state, since_fired), curve_scalars(loss, terms, features, x.target, since_fired, dead_after)
        return (p, b, opt_state, since_fired), loss

    return step


def curve_scalars(loss: jax.Array, terms: dict[str, jax.Array], features: jax.Array, target: jax.Array,
                  since_fired: jax.Array, dead_after: int) -> dict[str, jax.Array]:
    """One step's points of the training curves, () float32 each: the loss and its terms (the architecture's, "mse"
    among them), the batch's mean L0 (features (B, F) > 0 per row), its explained variance (1 - the squared error
    over the squared deviation of target (B, D) from its batch mean; "mse" x B x D is the squared error) and the
    share of dead latents after the step (silent for `dead_after` steps). A few reductions of what the step holds
    (B x F and B x D elementwise), no extra matmul: they cost little beside the step's own."""
    deviation = jnp.sum(jnp.square(target - jnp.mean(target, axis=0)))
    error = terms["mse"] * target.size
    return {"loss": loss} | {name: value for name, value in terms.items()} | {
        "l0": jnp.mean(jnp.sum(features > 0, axis=1, dtype=jnp.float32)),
        "explained_variance": jnp.where(deviation > 0, 1 - error / jnp.where(deviation > 0, deviation, 1), jnp.nan),
        "dead_fraction": jnp.mean(since_fired >= dead_after, dtype=jnp.float32),
    }


def make_chunk_fn(step, batch_size: int, keep_partial_batch: bool):
    """A jitted `run(carry, rows (n, D), permutation (n,)) -> (carry, step losses (S,))` over one chunk."""
    epoch = make_batched_epoch(lambda carry, batch: step(carry, *batch), batch_size, keep_partial_batch)
    return lambda carry, rows, permutation: epoch(carry, (rows,), permutation)


def steps_in(n_rows: int, batch_size: int, keep_partial_batch: bool) -> int:
    return -(-n_rows // batch_size) if keep_partial_batch else n_rows // batch_size


def _column_mean(rows: np.ndarray | ActivationFile, chunk_rows: int, n: int) -> jax.Array:
    if isinstance(rows, ActivationFile):
        total = np.zeros(rows.width, np.float64)
        for start in range(0, rows.n_rows, chunk_rows):
            total += rows.rows(start, min(start + chunk_rows, rows.n_rows)).sum(axis=0, dtype=np.float64)
        return jnp.asarray(total / rows.n_rows, jnp.float32)
    return jnp.mean(rows if rows.shape[0] == n else rows[:n], axis=0)  # rows past n: padding (jax_impl.training.distributed)


@highest_precision
def fit(
    sae: SAE,
    rows: np.ndarray | jax.Array | ActivationFile,
    train: SAETrainConfig,
    *,
    key: jax.Array,
    permutations: np.ndarray | None = None,
    chunk_rows: int | None = None,
    log: Log = print,
    mesh: Mesh | None = None,
    n_rows: int | None = None,
    checkpoints: TrainingCheckpoints | None = None,
    curves: Curves | None = None,
    shuffle_buffer: int = 0,
    prefetch: int = 1,
    row_positions: np.ndarray | None = None,
) -> TrainResult:
    """Train `sae` (any architecture, SAE or transcoder; it is left untouched) on rows (N, D) float32 or a
    streamed file (a transcoder's: (N, D_in + D_out), its input and target side by side).

    key: the shuffling stream (epoch e's permutation is drawn from fold_in(key, e)); `permutations`
    (epochs, N) replaces it for parity tests (in-memory rows only). chunk_rows: stream an ActivationFile in
    chunks of this many rows (default: all rows in one chunk). mesh: data parallel over its devices
    (jax_impl.training.devices.data_mesh; None: one device). n_rows: train on rows[:n_rows] only (in-memory rows whose
    tail is padding: a multi-process global array, jax_impl.training.distributed). Logs `SAE Epoch [10/100] | Loss: 0.004299`
    every train.log_every epochs. checkpoints: save the carry (parameters, buffers, Adam state, dead-latent
    counters) and resume from it (jax_impl.training.checkpoints). curves: write the training curves (loss, its terms,
    L0, explained variance, dead share; jax_impl.training.curves), scanned out of the epoch beside the losses.
    row_positions: (n_rows,) where the rows to train on lie in `rows` (a multi-process global array whose processes
    hold shards of uneven lengths, each padded: jax_impl.jobs.train_sae; None: the first n_rows). shuffle_buffer:
    rows of a buffer that mixes a streamed file's blocks (jax_impl.data.streaming.stream_chunks; 0: the blocks as
    they are). prefetch: chunks read ahead by a thread while the device trains (timing only: the same bytes for any
    value). Returns TrainResult(model = the trained SAE in a new module).
    """
    arch, cfg = sae.arch, sae.cfg
    streamed = isinstance(rows, ActivationFile)
    split = sae.input_dim if sae.transcoder else None
    width = rows.width if streamed else rows.shape[1]
    expected = sae.input_dim + (sae.output_dim if sae.transcoder else 0)
    if width != expected:
        raise ValueError(f"rows have width {width}, expected {expected}" +
                         (f" (input {sae.input_dim} + target {sae.output_dim})" if sae.transcoder else ""))
    n = rows.n_rows if streamed else rows.shape[0] if n_rows is None else n_rows
    chunk_rows = n if chunk_rows is None else min(chunk_rows, n)
    if not streamed:
        rows = place_rows(rows, mesh)
    if steps_in(min(chunk_rows, n), train.batch_size, arch.keep_partial_batch) == 0:
        raise ValueError(f"batch size {train.batch_size} is larger than a chunk of {chunk_rows} rows")
    tx = sae_optimizer(train)
    # Copies: the chunk function donates its carry, and `sae` keeps its initial weights.
    p, b = jax.tree.map(jnp.copy, (sae.params(), sae.buffers()))
    if row_positions is not None:
        row_positions = replicate(jnp.asarray(row_positions, jnp.int32), mesh)
    if arch.tied_bias:  # centre (papers: geometric median); a transcoder's b_dec: the target's mean
        mean_of = rows if row_positions is None else rows[row_positions]
        p = p | {"b_dec": _column_mean(mean_of, chunk_rows, n)[0 if split is None else split:]}
    chunk_lengths = [min(chunk_rows, n - start) for start in range(0, n, chunk_rows)]
    n_steps = sum(steps_in(length, train.batch_size, arch.keep_partial_batch) for length in chunk_lengths)
    initial = replicate((p, b, tx.init(p), jnp.zeros((sae.dict_size,), jnp.int32)), mesh)
    with_curves = curves is not None and curves.config.on
    if with_curves:
        curves.lr = train.lr
    # dead: silent for a whole epoch of batches
    step = make_sae_step(arch, cfg, tx, dead_after=n_steps, mesh=mesh, split=split, curves=with_curves)
    run_chunk = make_chunk_fn(step, train.batch_size, arch.keep_partial_batch)
    if permutations is not None:
        permutations = np.asarray(permutations)
        if streamed or permutations.shape != (train.epochs, n):
            raise ValueError(f"permutations must have shape {(train.epochs, n)} and rows must be in memory")
    def run_epoch(carry, e: int):
        # Epoch e's order (and the streamed chunks' order) is drawn from fold_in(key, e) alone: resumable.
        if not streamed:
            order = jnp.asarray(permutations[e]) if permutations is not None else epoch_permutation(key, e, n)
            if row_positions is not None:
                order = row_positions[order]
            return run_chunk(carry, rows, replicate(order, mesh))
        epoch_key = jax.random.fold_in(key, e)
        rng = np.random.default_rng(np.asarray(jax.random.key_data(epoch_key)))
        losses = []
        # The read and the copy to the device of the next chunk overlap this chunk's training (prefetch).
        chunks = stream_chunks(rows, chunk_rows, rng, shuffle_buffer=shuffle_buffer, prefetch=prefetch,
                               transform=jnp.asarray)
        for i, chunk in enumerate(chunks):
            order = epoch_permutation(epoch_key, i, chunk.shape[0])
            carry, chunk_losses = run_chunk(carry, *replicate((chunk, order), mesh))
            losses.append(chunk_losses)
        return carry, jax.tree.map(lambda *parts: jnp.concatenate(parts), *losses)

    def on_epoch_end(carry, e: int, losses: np.ndarray):
        head = f"SAE Epoch [{e + 1}/{train.epochs}]"
        line = f"{head} | Loss: {losses.mean():.6f}" if (e + 1) % train.log_every == 0 else None
        if arch.epoch_hook is not None:
            hook_rows = rows if not streamed else jnp.asarray(
                sample_rows(rows, HOOK_SAMPLE_ROWS, np.random.default_rng(e)))
            hook_key = jax.random.fold_in(jax.random.fold_in(key, e), 1)
            p, opt_state, note = arch.epoch_hook(carry[0], carry[2], as_batch(arch, hook_rows, split), hook_key, e, cfg,
                                                 train.epochs)
            if note:
                carry = (p, carry[1], opt_state, carry[3])
                line = f"{line or head} | {note}"
        return carry, line

    carry, step_losses, log_lines, epoch_seconds = run_epochs(
        train.epochs, "SAE", initial, run_epoch, on_epoch_end, log, checkpoints, curves if with_curves else None
    )
    trained = SAE(arch, cfg, carry[0], carry[1], transcoder=sae.transcoder)
    return TrainResult(model=trained, step_losses=step_losses, log_lines=log_lines, epoch_seconds=epoch_seconds)


def sae_optimizer(cfg: SAETrainConfig) -> optax.GradientTransformation:
    """Adam at cfg.lr (any config with an `lr`: SAETrainConfig, the run's SAEConfig)."""
    return optax.adam(cfg.lr, b1=0.9, b2=0.999, eps=1e-8)
