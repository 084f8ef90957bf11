"""Reference training loops for the two seed recipes, written as a PyTorch user would write them.

The one departure from upstream: the batch order is an explicit `(epochs, N)` permutation
table instead of `shuffle=True`, and the model arrives already initialised, so the JAX
trainer can be fed the very same batches from the very same start.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder


class EpochOrderSampler(Sampler[int]):
    """Yields `permutations[e]` on the e-th pass (a DataLoader iterates its sampler once per epoch)."""

    def __init__(self, permutations: np.ndarray) -> None:
        self.permutations = np.asarray(permutations)
        self._epoch = 0

    def __len__(self) -> int:
        return self.permutations.shape[1]

    def __iter__(self) -> Iterator[int]:
        order = self.permutations[self._epoch]
        self._epoch += 1
        return iter(order.tolist())


def mlp_optimizer(
    model: nn.Module,
    steps_per_epoch: int,
    epochs: int,
    *,
    lr: float = 1e-3,
    max_lr: float = 1e-2,
    weight_decay: float = 1e-5,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """Seed MLP recipe: AdamW + OneCycleLR with torch defaults (cosine, pct 0.3, beta1 cycling)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, steps_per_epoch=steps_per_epoch, epochs=epochs
    )
    return optimizer, scheduler


def sae_loss(
    reconstruction: torch.Tensor, features: torch.Tensor, x: torch.Tensor, l1_coeff: float
) -> torch.Tensor:
    """MSE(reconstruction, x) + l1_coeff * mean over the batch of sum_j |features_j|."""
    return nn.functional.mse_loss(reconstruction, x) + l1_coeff * features.abs().sum(dim=1).mean()


def train_mlp(
    model: InterpretabilityMLP,
    X: torch.Tensor,
    y: torch.Tensor,
    permutations: np.ndarray,
    *,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_lr: float = 1e-2,
    weight_decay: float = 1e-5,
) -> np.ndarray:
    """Train in place; X (N, D) float32, y (N, 1) float32, permutations (E, N) int.

    The OneCycle schedule spans exactly the E epochs given. Returns the per-step losses
    (E, ceil(N / batch_size)) float64.
    """
    epochs = len(permutations)
    loader = DataLoader(
        TensorDataset(X, y), batch_size=batch_size, sampler=EpochOrderSampler(permutations)
    )
    optimizer, scheduler = mlp_optimizer(
        model, len(loader), epochs, lr=lr, max_lr=max_lr, weight_decay=weight_decay
    )
    losses = np.zeros((epochs, len(loader)))
    model.train()
    for epoch in range(epochs):
        for step, (batch_x, batch_y) in enumerate(loader):
            optimizer.zero_grad()
            prediction, _ = model(batch_x)
            loss = nn.functional.mse_loss(prediction, batch_y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[epoch, step] = loss.item()
    return losses


def train_sae(
    sae: SparseAutoencoder,
    activations: torch.Tensor,
    permutations: np.ndarray,
    *,
    batch_size: int = 128,
    lr: float = 1e-3,
    l1_coeff: float = 1e-4,
) -> np.ndarray:
    """Train in place with Adam + L1; activations (N, 512) float32, permutations (E, N) int.

    Returns the per-step losses (E, ceil(N / batch_size)) float64.
    """
    loader = DataLoader(
        TensorDataset(activations), batch_size=batch_size, sampler=EpochOrderSampler(permutations)
    )
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = np.zeros((len(permutations), len(loader)))
    for epoch in range(len(permutations)):
        for step, (batch,) in enumerate(loader):
            optimizer.zero_grad()
            loss = sae_loss(*sae(batch), batch, l1_coeff)
            loss.backward()
            optimizer.step()
            losses[epoch, step] = loss.item()
    return losses


@torch.no_grad()
def harvest_layer2(model: InterpretabilityMLP, X: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Eval-mode `layer2` activations captured by a forward hook on `act2`; (N, D) -> (N, 512) float32, row order kept."""
    captured: list[torch.Tensor] = []
    handle = model.act2.register_forward_hook(lambda _m, _inp, out: captured.append(out.detach()))
    try:
        model.eval()
        for batch in X.split(batch_size):
            model(batch)
    finally:
        handle.remove()
    return torch.cat(captured)
