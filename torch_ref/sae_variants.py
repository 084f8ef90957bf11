"""PyTorch classes for the SAE variants of jax_impl/sae_variants.py, strict-loadable from the bridge's files.

Keys (checked by `load_state_dict(strict=True)`), in torch's state_dict order:
  anthropic: b_dec, encoder.{weight,bias}, decoder.weight
  topk:      b_dec, k, encoder.{weight,bias}, decoder.weight     (k: int64 scalar buffer)
  relu-l1:   encoder.{weight,bias}, decoder.{weight,bias}        (torch_ref.models.SparseAutoencoder)
so `variant_of` can tell a file's variant from its keys alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from torch_ref.models import SparseAutoencoder

_RELU_L1_KEYS = {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
_ANTHROPIC_KEYS = {"b_dec", "encoder.weight", "encoder.bias", "decoder.weight"}
_TOPK_KEYS = _ANTHROPIC_KEYS | {"k"}


class TiedBiasSAE(nn.Module):
    """The `anthropic` SAE: features = ReLU(encoder(x - b_dec)); reconstruction = decoder(features) + b_dec."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048) -> None:
        super().__init__()
        self.b_dec = nn.Parameter(torch.zeros(input_dim))
        self.encoder = nn.Linear(input_dim, dict_size)
        self.decoder = nn.Linear(dict_size, input_dim, bias=False)  # columns: unit-norm feature directions

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> features (N, F), non-negative."""
        return torch.relu(self.encoder(x - self.b_dec))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) float32 -> (reconstruction (N, D), features (N, F)) float32."""
        features = self.encode(x)
        return self.decoder(features) + self.b_dec, features


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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(x - self.b_dec)
        values, indices = pre.topk(self.k_value, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def variant_of(state_dict: Mapping[str, object]) -> str:
    """`relu-l1`, `topk` or `anthropic`, from the keys; ValueError naming the keys otherwise."""
    keys = set(state_dict)
    for variant, expected in (("relu-l1", _RELU_L1_KEYS), ("topk", _TOPK_KEYS), ("anthropic", _ANTHROPIC_KEYS)):
        if keys == expected:
            return variant
    raise ValueError(f"not an SAE state_dict of a known variant: keys {sorted(keys)}")


def sae_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Strictly load an SAE of any variant (told apart by its keys) into a fresh module, in eval mode."""
    variant = variant_of(state_dict)
    dict_size, input_dim = state_dict["encoder.weight"].shape
    if variant == "relu-l1":
        sae: nn.Module = SparseAutoencoder(input_dim=input_dim, dict_size=dict_size)
    elif variant == "topk":
        sae = TopKSAE(input_dim=input_dim, dict_size=dict_size, k=int(state_dict["k"]))
    else:
        sae = TiedBiasSAE(input_dim=input_dim, dict_size=dict_size)
    sae.load_state_dict(dict(state_dict), strict=True)
    return sae.eval()


def anthropic_loss(sae: TiedBiasSAE, x: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """MSE(reconstruction, x) + l1_coeff * batch mean of sum_j |f_j| (as jax_impl.sae_variants.anthropic_loss)."""
    reconstruction, features = sae(x)
    return torch.mean((reconstruction - x) ** 2) + l1_coeff * features.abs().sum(dim=-1).mean()


def topk_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float) -> torch.Tensor:
    """MSE + aux_coeff * AuxK over the dead (F,) bool latents (as jax_impl.sae_variants.topk_loss)."""
    pre = sae.encoder(x - sae.b_dec)
    values, indices = pre.topk(sae.k_value, dim=-1)
    reconstruction = sae.decoder(torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))) + sae.b_dec
    mse = torch.mean((reconstruction - x) ** 2)
    if not bool(dead.any()):
        return mse
    residual = (x - reconstruction).detach()
    dead_values, dead_indices = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1)
    dead_values = torch.where(torch.isfinite(dead_values), dead_values, torch.zeros_like(dead_values))  # no ReLU
    dead_features = torch.zeros_like(pre).scatter(-1, dead_indices, dead_values)
    return mse + aux_coeff * torch.mean((sae.decoder(dead_features) - residual) ** 2)
