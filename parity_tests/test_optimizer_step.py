"""Optimizer steps of both seed recipes: AdamW + OneCycle (lr and beta1 scheduled) and Adam, JAX vs torch.

Both optimizers are fed torch's gradients (through the bridge), so that what is compared is the
optimizer arithmetic alone; the gradients themselves are compared in test_gradients.py. (Fed their own
gradients, Adam's scale invariance turns a rounding-level gradient difference on a near-zero entry into
an lr-sized step difference, which would hide the optimizer's own precision.)
"""

from __future__ import annotations

import optax
import pytest
import torch
from flax import nnx

from jax_impl.interop import bridge
from jax_impl.jobs.run_config import SAEConfig
from jax_impl.training.mlp_trainer import MLPConfig, mlp_optimizer
from jax_impl.training.sae_trainer import sae_optimizer
from monosem_torch_ref import train as torch_train
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder
from parity_tests.helpers import EPS32, assert_close, randomize_batch_stats, task_rows, ulps
from parity_tests.seed_sae import seed_sae_as_family, seed_sae_from_state_dict

# Three steps, not one: on the first step Adam's bias correction cancels beta1 exactly
# (m_hat = g whatever beta1 is), so only from the second step on does the scheduled beta1 matter.
STEPS = 3
# A 10-step OneCycle: its warm-up ends at step 2, so lr and beta1 change on every one of the 3 steps.
SCHEDULE_STEPS = 10


# Same gradients in, so a parameter may differ only by the rounding of p - update (an ulp of |p| per
# step) and of the update itself (a few ulps of lr): 4 ulps of the tensor's largest |p| per step plus
# 16 ulps of the summed lr.
def param_tol(reference: torch.Tensor, lr_sum: float) -> float:
    return STEPS * ulps(reference, 4, floor=0.0) + 16 * EPS32 * lr_sum


def torch_grads_as_jax(module: torch.nn.Module, from_state_dict) -> nnx.State:
    """torch's `.grad` of every parameter, laid out as the JAX model's Param state by the bridge."""
    grads = {k: v.clone() for k, v in module.state_dict().items()}
    grads.update({k: p.grad.detach().clone() for k, p in module.named_parameters()})
    return nnx.state(from_state_dict(grads), nnx.Param)


def test_mlp_recipe_steps_match_torch(weight_decay):
    torch.manual_seed(7)
    reference = InterpretabilityMLP().train()
    randomize_batch_stats(reference, 7)
    model = bridge.mlp_from_state_dict(reference.state_dict())
    model.train()
    cfg = MLPConfig(weight_decay=weight_decay)

    optimizer, scheduler = torch_train.mlp_optimizer(reference, SCHEDULE_STEPS, 1, weight_decay=weight_decay)
    tx = mlp_optimizer(cfg, SCHEDULE_STEPS)
    opt_state = tx.init(nnx.state(model, nnx.Param))

    lr_sum = 0.0
    for step in range(STEPS):
        x, y = task_rows(64, seed=100 + step)
        group = optimizer.param_groups[0]
        lr, beta1 = group["lr"], group["betas"][0]
        lr_sum += lr
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(torch.from_numpy(x))[0], torch.from_numpy(y)).backward()
        optimizer.step()
        scheduler.step()

        grads = torch_grads_as_jax(reference, bridge.mlp_from_state_dict)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))

        # The schedule the update used: the float32 tables hold torch's float64 values rounded (half an ulp).
        assert_close(f"AdamW wd={weight_decay}: lr used by step {step}", opt_state.hyperparams["learning_rate"], lr, lr * EPS32 / 2)
        assert_close(f"AdamW wd={weight_decay}: beta1 used by step {step}", opt_state.hyperparams["b1"], beta1, beta1 * EPS32 / 2)

    ours = bridge.mlp_to_state_dict(model)
    for key, value in reference.named_parameters():
        assert_close(f"AdamW wd={weight_decay}, {STEPS} steps: {key}", ours[key], value, param_tol(value, lr_sum))


@pytest.fixture(params=[1e-5, 0.1], ids=["seed-wd", "visible-wd"])
def weight_decay(request) -> float:
    """The seed's 1e-5 decays a weight by lr * 1e-5 * |p| ~ 1e-7 |p| per step, below a float32 ulp of p;
    0.1 makes the decoupled decay visible, so that its formula is tested too."""
    return request.param


def test_sae_recipe_steps_match_torch():
    torch.manual_seed(8)
    reference = SparseAutoencoder(512, 2048)
    model = seed_sae_from_state_dict(reference.state_dict())
    cfg = SAEConfig()
    optimizer = torch.optim.Adam(reference.parameters(), lr=cfg.lr)
    tx = sae_optimizer(cfg)
    opt_state = tx.init(nnx.state(model, nnx.Param))
    generator = torch.Generator().manual_seed(9)
    for _ in range(STEPS):
        x = torch.relu(torch.randn(128, 512, generator=generator) * 2.0)
        optimizer.zero_grad()
        torch_train.sae_loss(*reference(x), x, cfg.architecture.l1_coeff).backward()
        optimizer.step()
        grads = torch_grads_as_jax(reference, seed_sae_from_state_dict)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))

    ours = bridge.sae_to_state_dict(seed_sae_as_family(model))
    for key, value in reference.named_parameters():
        assert_close(f"Adam, {STEPS} steps: {key}", ours[key], value, param_tol(value, STEPS * cfg.lr))
