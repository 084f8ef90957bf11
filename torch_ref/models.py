"""The upstream PyTorch MLP and SAE, with exactly the upstream state_dict keys.

Keys (checked by `load_state_dict(strict=True)`):
  MLP: layers.{input,hidden1,hidden2,output}.{weight,bias},
       layers.{bn1,bn2}.{weight,bias,running_mean,running_var,num_batches_tracked}
  SAE: encoder.{weight,bias}, decoder.{weight,bias}
"""

from __future__ import annotations

import torch
from torch import nn


class InterpretabilityMLP(nn.Module):
    """Linear(10,256)-BN-ReLU -> Linear(256,512)-BN-ReLU (= layer2) -> Linear(512,256)-ReLU -> Linear(256,1).

    Unlike upstream, `forward` returns the hidden activation too instead of stashing it in a dict,
    so the module can be scripted/exported. The three ReLUs are separate modules (they hold no
    state, so the state_dict is unchanged) so that `act2` can carry a forward hook for harvesting.
    """

    def __init__(self, input_dim: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {
                "input": nn.Linear(input_dim, 256),
                "bn1": nn.BatchNorm1d(256),
                "hidden1": nn.Linear(256, 512),
                "bn2": nn.BatchNorm1d(512),
                "hidden2": nn.Linear(512, 256),
                "output": nn.Linear(256, 1),
            }
        )
        self.act1 = nn.ReLU()
        self.act2 = nn.ReLU()
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) float32 -> (prediction (N, 1), layer2 (N, 512)) float32."""
        h = self.act1(self.layers["bn1"](self.layers["input"](x)))
        layer2 = self.act2(self.layers["bn2"](self.layers["hidden1"](h)))
        prediction = self.layers["output"](self.act3(self.layers["hidden2"](layer2)))
        return prediction, layer2

    @torch.jit.unused
    def hook_activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, D) -> the three post-ReLU hook points: layer1 (N, 256), layer2 (N, 512), layer3 (N, 256)."""
        layer1 = self.act1(self.layers["bn1"](self.layers["input"](x)))
        layer2 = self.act2(self.layers["bn2"](self.layers["hidden1"](layer1)))
        return {"layer1": layer1, "layer2": layer2, "layer3": self.act3(self.layers["hidden2"](layer2))}

    @torch.jit.unused
    def readout_from(self, h: torch.Tensor, hook: str) -> torch.Tensor:
        """The activation at `hook` (N, width) -> prediction (N, 1)."""
        if hook == "layer1":
            h = self.act2(self.layers["bn2"](self.layers["hidden1"](h)))
        if hook in ("layer1", "layer2"):
            h = self.act3(self.layers["hidden2"](h))
        return self.layers["output"](h)


class SparseAutoencoder(nn.Module):
    """features = ReLU(encoder(x)); reconstruction = decoder(features)."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048) -> None:
        super().__init__()
        self.encoder = nn.Linear(input_dim, dict_size)
        self.decoder = nn.Linear(dict_size, input_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 512) float32 -> (reconstruction (N, 512), features (N, 2048)) float32."""
        features = torch.relu(self.encoder(x))
        return self.decoder(features), features


def mlp_from_state_dict(state_dict: dict[str, torch.Tensor]) -> InterpretabilityMLP:
    """Strictly load an upstream-keyed state_dict into a fresh MLP, in eval mode."""
    model = InterpretabilityMLP(input_dim=state_dict["layers.input.weight"].shape[1])
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def sae_from_state_dict(state_dict: dict[str, torch.Tensor]) -> SparseAutoencoder:
    """Strictly load an `encoder.*`/`decoder.*` state_dict into a fresh SAE."""
    dict_size, input_dim = state_dict["encoder.weight"].shape
    sae = SparseAutoencoder(input_dim=input_dim, dict_size=dict_size)
    sae.load_state_dict(state_dict, strict=True)
    return sae.eval()
