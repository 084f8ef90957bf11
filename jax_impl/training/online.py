"""Online-data MLP training: fresh task rows for every optimizer step, drawn on device inside the scan.

The seed recipe cycles 500 times over one 8,000-row split and overfits it (train MSE 0.02, test 0.09-0.13).
The task has 16 * 10**8 possible inputs, so there is no reason to reuse rows: here every step draws its
own batch with `task.sample_pointer_task`, inside the jitted `lax.scan` of the epoch, so no data crosses
from the host. The fixed splits stay what they were for: validation during training, harvest and evaluation.

An "epoch" keeps the seed's meaning of "as many rows as the training split": ceil(n_train / batch_size)
steps, so `--mlp-epochs`, the OneCycle schedule and the `Epoch 50 | Val MSE` log keep their meaning.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.task.pointer import TaskShape, sample_pointer_task
from jax_impl.training.checkpoints import TrainingCheckpoints
from jax_impl.training.curves import Curves
from jax_impl.training.loop import Log, TrainResult, make_train_step, run_epochs, steps_per_epoch
from jax_impl.training.mlp_trainer import MLPConfig, evaluation_mse, mlp_curves, mlp_loss, mlp_optimizer


def _make_online_epoch_fn(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, batch_size: int, n_steps: int, shape: TaskShape
):
    """A jitted `epoch(carry, key) -> (carry, step_losses (n_steps,))`; carry = (params, rest, opt_state)."""

    train_step = make_train_step(graphdef, tx, mlp_loss)

    def step(carry, step_key):
        inputs, targets = sample_pointer_task(step_key, batch_size, shape)
        # (B, 1) targets: a (B,) target would broadcast to (B, B)
        return train_step(carry, (inputs.astype(jnp.float32), targets.astype(jnp.float32)[:, None]))

    @partial(jax.jit, donate_argnums=0)
    def epoch(carry, key):
        return jax.lax.scan(step, carry, jax.random.split(key, n_steps))

    return epoch


make_online_epoch_fn = _make_online_epoch_fn  # public: jax_impl.training.vmapped vmaps it over MLP seeds


@highest_precision
def fit_mlp_online(
    model: InterpretabilityMLP,
    cfg: MLPConfig,
    shape: TaskShape,
    *,
    n_train: int,
    key: jax.Array,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    log: Log = print,
    checkpoints: TrainingCheckpoints | None = None,
    curves: Curves | None = None,
) -> TrainResult:
    """Train the MLP on fresh rows: AdamW + OneCycle as the seed recipe, `cfg.epochs` epochs of
    ceil(n_train / cfg.batch_size) steps of `cfg.batch_size` new rows each (drawn from `key`).

    Logs `Epoch 50 | Val MSE: 0.000123` every `cfg.log_every` epochs when `val` (inputs (N, D), targets (N,))
    is given. checkpoints: save and resume the training state (jax_impl.training.checkpoints). curves: as fit_mlp's.
    Returns the trained model in eval mode; `step_losses` is (epochs, steps_per_epoch).
    """
    n_steps = steps_per_epoch(n_train, cfg.batch_size)
    tx = mlp_optimizer(cfg, cfg.epochs * n_steps)
    curves = mlp_curves(curves, cfg, cfg.epochs * n_steps)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The epoch donates its carry; copy so the caller's model keeps its (initial) weights.
    params, rest = jax.tree.map(jnp.copy, (params, rest))
    epoch_fn = _make_online_epoch_fn(graphdef, tx, cfg.batch_size, n_steps, shape)

    def run_epoch(carry, e: int):
        return epoch_fn(carry, jax.random.fold_in(key, e))  # epoch e's rows depend on e only: resumable

    def on_epoch_end(carry, e: int, losses: np.ndarray):
        if val is None or (e + 1) % cfg.log_every:
            return carry, None
        return carry, f"Epoch {e + 1} | Val MSE: {evaluation_mse(nnx.merge(graphdef, carry[0], carry[1]), *val):.6f}"

    carry, step_losses, log_lines, epoch_seconds = run_epochs(
        cfg.epochs, "MLP", (params, rest, tx.init(params)), run_epoch, on_epoch_end, log, checkpoints, curves
    )
    model = nnx.merge(graphdef, carry[0], carry[1])
    model.eval()
    return TrainResult(model=model, step_losses=step_losses, log_lines=log_lines, epoch_seconds=epoch_seconds)
