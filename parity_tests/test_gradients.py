"""Gradients of both training losses with respect to every parameter, JAX vs torch autograd."""

from __future__ import annotations

import numpy as np
import torch
from flax import nnx

from jax_impl.interop import bridge
from jax_impl.training.mlp_trainer import mlp_loss
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder
from monosem_torch_ref.train import sae_loss as torch_sae_loss
from parity_tests.helpers import assert_close, randomize_batch_stats, task_rows, ulps
from parity_tests.seed_sae import SAE_KEY_MAP, sae_loss, seed_sae_from_state_dict

# A gradient entry is a sum over the batch of products of activations and back-propagated errors, so
# summation order perturbs it by a few ulps of the largest entries of its tensor (gradients are small
# numbers: the unit is the tensor's own scale, not 1.0). 64 ulps of each tensor's largest entry leaves
# room for the deeper tensors (input.weight sees four layers of rounding).
GRAD_ULPS = 64

# The biases of `input` and `hidden1` feed straight into a train-mode BatchNorm, which subtracts the
# batch mean: their exact gradient is 0 and both frameworks return pure rounding noise (~1e-9). They are
# held to the scale of the weight gradient of the same layer, i.e. "zero up to rounding".
PRE_BATCHNORM_BIASES = {"layers.input.bias": "layers.input.weight", "layers.hidden1.bias": "layers.hidden1.weight"}


def grads_by_torch_key(grads: nnx.State, key_map: dict[str, tuple[str, str, bool]]) -> dict[str, np.ndarray]:
    """Lay JAX gradients out like torch's `.grad` tensors, through the bridge's own key map."""
    out = {}
    for key, (module, name, transpose) in key_map.items():
        if module in grads and name in grads[module]:
            value = np.asarray(grads[module][name][...])
            out[key] = value.T if transpose else value
    return out


def test_mlp_loss_gradients():
    torch.manual_seed(4)
    reference = InterpretabilityMLP().train()
    randomize_batch_stats(reference, 4)
    model = bridge.mlp_from_state_dict(reference.state_dict())
    model.train()
    x, y = task_rows(64, seed=4)

    loss = torch.nn.functional.mse_loss(reference(torch.from_numpy(x))[0], torch.from_numpy(y))
    loss.backward()
    jax_loss, grads = nnx.jit(nnx.value_and_grad(mlp_loss))(model, x, y)
    assert_close("MLP loss", jax_loss, loss, ulps(loss, 8))

    ours = grads_by_torch_key(grads, bridge.MLP_KEY_MAP)
    torch_grads = {k: p.grad for k, p in reference.named_parameters()}
    assert ours.keys() == torch_grads.keys()
    for key, expected in torch_grads.items():
        scale = torch_grads[PRE_BATCHNORM_BIASES.get(key, key)]
        assert_close(f"dMSE/d {key}", ours[key], expected, ulps(scale, GRAD_ULPS, floor=0.0))


def test_sae_loss_gradients():
    torch.manual_seed(5)
    reference = SparseAutoencoder(512, 2048)
    model = seed_sae_from_state_dict(reference.state_dict())
    x = torch.relu(torch.randn(128, 512, generator=torch.Generator().manual_seed(6)) * 2.0)
    l1_coeff = 1e-4

    loss = torch_sae_loss(*reference(x), x, l1_coeff)
    loss.backward()
    jax_loss, grads = nnx.jit(nnx.value_and_grad(sae_loss), static_argnums=2)(model, x.numpy(), l1_coeff)
    assert_close("SAE loss", jax_loss, loss, ulps(loss, 8))

    ours = grads_by_torch_key(grads, SAE_KEY_MAP)
    for key, param in reference.named_parameters():
        assert_close(f"dSAE/d {key}", ours[key], param.grad, ulps(param.grad, GRAD_ULPS, floor=0.0))
