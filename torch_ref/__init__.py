"""PyTorch reference for the JAX implementation: the upstream models, loader and training recipes."""

from monosem_torch_ref.models import (
    InterpretabilityMLP,
    SparseAutoencoder,
    mlp_from_state_dict,
    sae_from_state_dict,
)

__all__ = ["InterpretabilityMLP", "SparseAutoencoder", "mlp_from_state_dict", "sae_from_state_dict"]
