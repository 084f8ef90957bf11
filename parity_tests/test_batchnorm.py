"""BatchNorm running statistics after several training-mode batches, JAX vs torch.BatchNorm1d."""

from __future__ import annotations

import torch
from flax import nnx

from jax_impl.interop import bridge
from monosem_torch_ref.models import InterpretabilityMLP
from parity_tests.helpers import assert_close, task_rows, ulps

# Unequal batch sizes, the last one odd: torch stores the *unbiased* variance, n / (n - 1) times the
# one it normalises with, so a wrong n would show as a ~1-6% error in running_var.
BATCH_SIZES = (64, 64, 48, 17, 2)


@torch.no_grad()
def test_running_statistics_after_training_batches():
    torch.manual_seed(10)
    reference = InterpretabilityMLP().train()
    model = bridge.mlp_from_state_dict(reference.state_dict())
    model.train()
    forward = nnx.jit(lambda m, x: m(x))  # one compiled graph per batch size, not one per eager op
    for i, n in enumerate(BATCH_SIZES):
        x, _ = task_rows(n, seed=200 + i)
        reference(torch.from_numpy(x))
        forward(model, x)

    ours = bridge.mlp_to_state_dict(model)
    for bn in ("bn1", "bn2"):
        stats = {name: getattr(reference.layers[bn], name) for name in ("running_mean", "running_var")}
        # An exponential average of batch means/variances: each is a reduction over <= 64 rows of
        # values rounded like the forward pass, so a few ulps of the statistic's largest value; 16 ulps.
        for name, value in stats.items():
            assert_close(f"{bn}.{name} after {len(BATCH_SIZES)} batches", ours[f"layers.{bn}.{name}"], value, ulps(value, 16))
        tracked = ours[f"layers.{bn}.num_batches_tracked"]
        assert tracked.dtype == torch.int64
        assert int(tracked) == int(reference.layers[bn].num_batches_tracked) == len(BATCH_SIZES)
