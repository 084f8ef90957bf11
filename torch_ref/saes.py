"""PyTorch classes for every SAE architecture of jax_impl.saes, strict-loadable from the bridge's files, and
their training losses (for the parity tests). Imports no JAX: a process without jax_impl can use it.

Keys (checked by `load_state_dict(strict=True)`), in torch's state_dict order:
  relu-l1:    encoder.{weight,bias}, decoder.{weight,bias}                 (torch_ref.models.SparseAutoencoder)
  anthropic:  b_dec, encoder.{weight,bias}, decoder.weight
  topk:       b_dec, k, encoder.{weight,bias}, decoder.weight              (k: int64 scalar buffer)
  batchtopk:  b_dec, k, threshold, encoder.{weight,bias}, decoder.weight   (threshold: float32 scalar buffer)
  matryoshka: b_dec, k, threshold, group_ends, encoder.*, decoder.weight   (group_ends: int64 (G,) buffer)
  jumprelu:   b_dec, threshold, encoder.{weight,bias}, decoder.weight      (threshold: float32 (F,) parameter)
so `architecture_of` can tell a file's architecture from its keys alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from torch_ref.models import SparseAutoencoder


class TiedBiasSAE(nn.Module):
    """The `anthropic` SAE: features = ReLU(encoder(x - b_dec)); reconstruction = decoder(features) + b_dec."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048) -> None:
        super().__init__()
        self.b_dec = nn.Parameter(torch.zeros(input_dim))
        self.encoder = nn.Linear(input_dim, dict_size)
        self.decoder = nn.Linear(dict_size, input_dim, bias=False)  # columns: unit-norm feature directions

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.b_dec)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> features (N, F), non-negative (inference: no batch statistics)."""
        return self.activate(self.pre_activation(x))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features) + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) float32 -> (reconstruction (N, D), features (N, F)) float32."""
        features = self.encode(x)
        return self.decode(features), features


class TopKSAE(TiedBiasSAE):
    """The `topk` SAE: only each row's k largest pre-activations (ReLU'd) are kept."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32) -> None:
        super().__init__(input_dim, dict_size)
        # Saved (so the file says which k it was trained with) but also kept as a Python int: a static
        # size is what torch.export and TorchScript need for topk.
        self.register_buffer("k", torch.tensor(k, dtype=torch.int64))
        self.k_value = k
        # A loaded file's k wins over the constructor's, so the two can never disagree.
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "k_value", int(module.k)))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k_value, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


class BatchTopKSAE(TopKSAE):
    """The `batchtopk` SAE: at inference, features = pre where pre > threshold (one scalar), else 0."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32) -> None:
        super().__init__(input_dim, dict_size, k)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.where(pre > self.threshold.clamp(min=0.0), pre, torch.zeros_like(pre))  # UNSET (< 0): ReLU

    def batch_activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Training: ReLU of the k x B largest pre-activations of the whole batch (B, F)."""
        flat = pre.reshape(-1)
        values, indices = flat.topk(self.k_value * pre.shape[0])
        return torch.zeros_like(flat).scatter(0, indices, torch.relu(values)).reshape(pre.shape)


class MatryoshkaSAE(BatchTopKSAE):
    """The `matryoshka` SAE: BatchTopK whose prefixes [0, group_ends[i]) each reconstruct the input."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32, group_ends: tuple[int, ...] = ()) -> None:
        super().__init__(input_dim, dict_size, k)
        self.register_buffer("group_ends", torch.tensor(list(group_ends) or [dict_size], dtype=torch.int64))


class JumpReLUSAE(TiedBiasSAE):
    """The `jumprelu` SAE: features = pre where pre > threshold (one trained threshold per feature), else 0."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048) -> None:
        super().__init__(input_dim, dict_size)
        self.threshold = nn.Parameter(torch.full((dict_size,), 1e-3))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))


_KEYS = {
    "relu-l1": {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"},
    "anthropic": {"b_dec", "encoder.weight", "encoder.bias", "decoder.weight"},
}
_KEYS["topk"] = _KEYS["anthropic"] | {"k"}
_KEYS["batchtopk"] = _KEYS["topk"] | {"threshold"}
_KEYS["matryoshka"] = _KEYS["batchtopk"] | {"group_ends"}
_KEYS["jumprelu"] = _KEYS["anthropic"] | {"threshold"}


def architecture_of(state_dict: Mapping[str, object]) -> str:
    """The architecture name, from the keys; ValueError naming the keys otherwise."""
    keys = set(state_dict)
    for name, expected in _KEYS.items():
        if keys == expected:
            return name
    raise ValueError(f"not an SAE state_dict of a known architecture: keys {sorted(keys)}")


def sae_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Strictly load an SAE of any architecture (told apart by its keys) into a fresh module, in eval mode."""
    name = architecture_of(state_dict)
    dict_size, input_dim = state_dict["encoder.weight"].shape
    k = int(state_dict["k"]) if "k" in state_dict else None
    sae: nn.Module
    if name == "relu-l1":
        sae = SparseAutoencoder(input_dim=input_dim, dict_size=dict_size)
    elif name == "anthropic":
        sae = TiedBiasSAE(input_dim, dict_size)
    elif name == "topk":
        sae = TopKSAE(input_dim, dict_size, k=k)
    elif name == "batchtopk":
        sae = BatchTopKSAE(input_dim, dict_size, k=k)
    elif name == "matryoshka":
        sae = MatryoshkaSAE(input_dim, dict_size, k=k, group_ends=tuple(state_dict["group_ends"].tolist()))
    else:
        sae = JumpReLUSAE(input_dim, dict_size)
    sae.load_state_dict(dict(state_dict), strict=True)
    return sae.eval()


# --------------------------------------------------------------------------- training losses (parity tests)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a - b) ** 2)


def aux_k_loss(sae: TiedBiasSAE, pre, x, reconstruction, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """Gao et al.'s AuxK over the dead (F,) bool latents (no ReLU), 0 when none is dead."""
    if not bool(dead.any()):
        return pre.new_zeros(())
    residual = (x - reconstruction).detach()
    dead_values, dead_indices = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1)
    dead_values = torch.where(torch.isfinite(dead_values), dead_values, torch.zeros_like(dead_values))
    return _mse(sae.decoder(torch.zeros_like(pre).scatter(-1, dead_indices, dead_values)), residual)


def anthropic_loss(sae: TiedBiasSAE, x: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    reconstruction, features = sae(x)
    return _mse(reconstruction, x) + l1_coeff * features.abs().sum(dim=-1).mean()


def topk_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float) -> torch.Tensor:
    pre = sae.pre_activation(x)
    reconstruction = sae.decode(sae.activate(pre))
    return _mse(reconstruction, x) + aux_coeff * aux_k_loss(sae, pre, x, reconstruction, dead, aux_k)


def batchtopk_loss(sae: BatchTopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float) -> torch.Tensor:
    pre = sae.pre_activation(x)
    reconstruction = sae.decode(sae.batch_activate(pre))
    return _mse(reconstruction, x) + aux_coeff * aux_k_loss(sae, pre, x, reconstruction, dead, aux_k)


def matryoshka_loss(sae: MatryoshkaSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float) -> torch.Tensor:
    pre = sae.pre_activation(x)
    features = sae.batch_activate(pre)
    total, start, partial = x.new_zeros(()), 0, sae.b_dec.expand_as(x)
    weight = sae.decoder.weight  # (D, F)
    for end in sae.group_ends.tolist():
        partial = partial + features[:, start:end] @ weight[:, start:end].T
        total = total + _mse(partial, x)
        start = end
    return total + aux_coeff * aux_k_loss(sae, pre, x, partial, dead, aux_k)


def _rect(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(pre > threshold, pre, torch.zeros_like(pre))

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        d_threshold = -(threshold / ctx.bandwidth) * _rect((pre - threshold) / ctx.bandwidth) * g
        return torch.where(pre > threshold, g, torch.zeros_like(g)), d_threshold.sum(dim=0), None


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        d_threshold = -(1.0 / ctx.bandwidth) * _rect((pre - threshold) / ctx.bandwidth) * g
        return torch.zeros_like(pre), d_threshold.sum(dim=0), None


def jumprelu_loss(sae: JumpReLUSAE, x: torch.Tensor, l0_coeff: float, bandwidth: float) -> torch.Tensor:
    """MSE + l0_coeff * mean active count, through Rajamanoharan et al.'s straight-through estimators."""
    pre = sae.pre_activation(x)
    features = _JumpReLU.apply(pre, sae.threshold, bandwidth)
    l0 = _Heaviside.apply(pre, sae.threshold, bandwidth).sum(dim=-1).mean()
    return _mse(sae.decode(features), x) + l0_coeff * l0


def training_loss(name: str, sae: nn.Module, x: torch.Tensor, dead: torch.Tensor, cfg, aux_k: int) -> torch.Tensor:
    """The training loss of architecture `name` on a batch x (B, D); `cfg` is any object with that
    architecture's fields (l1_coeff; aux_coeff; l0_coeff and bandwidth), dead (F,) bool for AuxK."""
    if name == "relu-l1":
        reconstruction, features = sae(x)
        return _mse(reconstruction, x) + cfg.l1_coeff * features.abs().sum(dim=-1).mean()
    if name == "anthropic":
        return anthropic_loss(sae, x, cfg.l1_coeff)
    if name == "jumprelu":
        return jumprelu_loss(sae, x, cfg.l0_coeff, cfg.bandwidth)
    loss = {"topk": topk_loss, "batchtopk": batchtopk_loss, "matryoshka": matryoshka_loss}[name]
    return loss(sae, x, dead, aux_k, cfg.aux_coeff)
