"""The MLP trainer: the seed's recipe (AdamW, OneCycle lr stepped per batch, MSE) on a fixed split, over the
one training loop (jax_impl.training.loop). Online-data training is in jax_impl.training.online."""

from __future__ import annotations

from dataclasses import dataclass

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl.checks import FLOAT32
from jax_impl.models.mlp import LAYER1_WIDTH, LAYER2_WIDTH, LAYER3_WIDTH, InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.training.checkpoints import TrainingCheckpoints
from jax_impl.training.curves import Curves
from jax_impl.training.loop import Log, TrainResult, fit_module, steps_per_epoch
from jax_impl.training.schedules import onecycle_tables


def mlp_loss(model: InterpretabilityMLP, x: jax.Array, y: jax.Array) -> jax.Array:
    """MSE of the prediction. x (B, D) float32, y (B, 1) float32 (not (B,): that would broadcast to (B, B))."""
    prediction, _ = model(x)
    chex.assert_equal_shape([prediction, y])
    return jnp.mean(jnp.square(prediction - y))


def mlp_optimizer(cfg: MLPConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW (decay on every parameter, like torch) with OneCycle lr and beta1 looked up per step."""
    lr, beta1 = mlp_schedule(cfg, total_steps)
    # The default float dtype: float32 normally, float64 under jax.enable_x64 (where the float64 parity
    # tests then match torch's float64 OneCycleLR exactly instead of to float32 rounding).
    lr, beta1 = jnp.asarray(lr), jnp.asarray(beta1)
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=lambda count: lr[count],
        b1=lambda count: beta1[count],
        b2=0.999,
        eps=1e-8,
        weight_decay=cfg.weight_decay,  # always explicit: torch's default is 1e-2, optax's 1e-4
    )


def mlp_schedule(cfg: MLPConfig, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's OneCycle lr and beta1 of each step, (total_steps,) float64 each (schedules.onecycle_tables)."""
    return onecycle_tables(
        total_steps, cfg.max_lr, pct_start=cfg.pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor
    )


@jax.jit
def _eval_mse(model: InterpretabilityMLP, x: jax.Array, y: jax.Array) -> jax.Array:
    prediction, _ = model(x)
    return jnp.mean(jnp.square(prediction - y))


def evaluation_mse(model: InterpretabilityMLP, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Eval-mode MSE over all rows. inputs (N, D), targets (N,)."""
    model.eval()
    x = jnp.asarray(inputs, jnp.float32)
    y = jnp.asarray(targets, jnp.float32).reshape(-1, 1)
    return float(_eval_mse(model, x, y))


@highest_precision
def fit_mlp(
    model: InterpretabilityMLP,
    inputs: np.ndarray,
    targets: np.ndarray,
    cfg: MLPConfig,
    *,
    key: jax.Array | None = None,
    permutations: np.ndarray | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    log: Log = print,
    checkpoints: TrainingCheckpoints | None = None,
    curves: Curves | None = None,
) -> TrainResult:
    """Train the MLP with the seed recipe: AdamW + OneCycle stepped per batch, MSE.

    inputs (N, D) int/float, targets (N,). Prints `Epoch 50 | Val MSE: 0.709485` every `cfg.log_every`
    epochs when `val` is given (the exact MSE over all val rows; upstream averaged per-batch MSEs).
    checkpoints: save and resume the training state (jax_impl.training.checkpoints). curves: write the training curves
    (the loss, the batch's MSE, and the OneCycle lr; jax_impl.training.curves). Returns the trained model in eval mode.
    """
    x = jnp.asarray(inputs, jnp.float32)
    y = jnp.asarray(targets, jnp.float32).reshape(-1, 1)
    total_steps = cfg.epochs * steps_per_epoch(len(x), cfg.batch_size)
    tx = mlp_optimizer(cfg, total_steps)
    curves = mlp_curves(curves, cfg, total_steps)

    def on_epoch_end(current: InterpretabilityMLP, e: int, losses: np.ndarray) -> str | None:
        if val is None or (e + 1) % cfg.log_every:
            return None
        return f"Epoch {e + 1} | Val MSE: {evaluation_mse(current, *val):.6f}"

    return fit_module(
        model, mlp_loss, (x, y), tx, epochs=cfg.epochs, batch_size=cfg.batch_size, key=key,
        permutations=permutations, stage="MLP", on_epoch_end=on_epoch_end, log=log, checkpoints=checkpoints,
        curves=curves,
    )


def mlp_curves(curves: Curves | None, cfg: MLPConfig, total_steps: int) -> Curves | None:
    """curves with the recipe's lr schedule, or None when there are none (or config.every is 0)."""
    if curves is None or not curves.config.on:
        return None
    curves.lr = mlp_schedule(cfg, total_steps)[0]
    return curves


MLP_DATA = ("split", "online")  # train on the fixed split (seed) or on fresh rows every step (jax_impl.training.online)


@dataclass(frozen=True)
class MLPConfig:
    """The MLP's training: `epochs` of `batch_size` rows, AdamW (weight_decay) under a one-cycle schedule
    (max_lr, pct_start, div_factor, final_div_factor, as torch's OneCycleLR), on the train split or on fresh
    task rows each step (`data`: one of MLP_DATA); a line every `log_every` epochs."""

    epochs: int = 500
    batch_size: int = 64
    max_lr: float = 1e-2
    weight_decay: float = 1e-5
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    log_every: int = 50
    data: str = "split"  # one of MLP_DATA


def mlp_training_bytes(input_dim: int, batch_size: int, total_steps: int, configurations: int = 1) -> int:
    """A lower bound of the memory training `configurations` MLPs at once holds beside their data: each one's
    parameters with their gradient and AdamW's two moments (4x), and a batch's activations at its three layers;
    and the OneCycle schedule's tables, computed for every step up front (float64 steps, lr, beta1: 3 x 8 bytes)."""
    params = input_dim * LAYER1_WIDTH + LAYER1_WIDTH * LAYER2_WIDTH + LAYER2_WIDTH * LAYER3_WIDTH + LAYER3_WIDTH
    per_configuration = FLOAT32 * (4 * params + batch_size * (LAYER1_WIDTH + LAYER2_WIDTH + LAYER3_WIDTH))
    return configurations * per_configuration + 3 * 8 * total_steps
