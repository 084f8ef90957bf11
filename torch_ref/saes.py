"""PyTorch classes for every SAE architecture of jax_impl.saes, strict-loadable from the bridge's files, and
their training losses (for the parity tests). Imports no JAX: a process without jax_impl can use it.

Keys (checked by `load_state_dict(strict=True)`), in torch's state_dict order:
  relu-l1:    encoder.{weight,bias}, decoder.{weight,bias}                 (monosem_torch_ref.models.SparseAutoencoder)
  anthropic:  b_dec, encoder.{weight,bias}, decoder.weight
  topk:       b_dec, k, encoder.{weight,bias}, decoder.weight              (k: int64 scalar buffer)
  batchtopk:  b_dec, k, threshold, encoder.{weight,bias}, decoder.weight   (threshold: float32 scalar buffer)
  matryoshka: b_dec, k, threshold, group_ends, encoder.*, decoder.weight   (group_ends: int64 (G,) buffer)
  jumprelu:   b_dec, threshold, encoder.{weight,bias}, decoder.weight      (threshold: float32 (F,) parameter)
so `architecture_of` can tell a file's architecture from its keys alone.

Transcoders: every class takes `output_dim=D_out` (and `skip=True`), the option jax_impl.saes.create has. Its
encoder reads x (N, D_in) with no pre-encoder bias, its decoder (and b_dec) predicts the target (N, D_out), and a
skip transcoder adds x @ skip.weight.T, skip.weight (D_out, D_in) zero at first:

    prediction = decoder(activate(encoder(x))) (+ b_dec) + skip(x)

Its state_dict is the architecture's keys, then TRANSCODER_KEY ("transcoder", int64 scalar 1) and, with a skip
connection, SKIP_KEY ("skip.weight"), in that order: jax_impl.saes.base.numpy_state's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from monosem_torch_ref.models import SparseAutoencoder

TRANSCODER_KEY = "transcoder"  # the same names as jax_impl.saes.base's (which this module may not import)
SKIP_KEY = "skip.weight"


def _transcoder_keys_last(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """torch saves a module's own buffers before its children's tensors; the transcoder's marker and skip weight
    go after the architecture's keys instead, where numpy_state puts them (so the two files list the same keys in
    the same order)."""
    for key in (TRANSCODER_KEY, SKIP_KEY):
        if prefix + key in state_dict:
            state_dict[prefix + key] = state_dict.pop(prefix + key)


class _Transcoding(nn.Module):
    """The transcoder option every class below shares: the marker buffer, the optional skip Linear, the order
    of their keys, and decode's skip term. An SAE (output_dim None) gets none of them and computes as before."""

    def _init_transcoder(self, input_dim: int, output_dim: Optional[int], skip: bool) -> None:
        if skip and output_dim is None:
            raise ValueError("skip: a skip connection needs a transcoder (give output_dim)")
        self.is_transcoder = output_dim is not None  # a Python constant: TorchScript and torch.export fold it
        if self.is_transcoder:
            self.register_buffer(TRANSCODER_KEY, torch.tensor(1, dtype=torch.int64))
            self.register_state_dict_post_hook(_transcoder_keys_last)
        self.skip: Optional[nn.Linear] = None
        if skip:
            self.skip = nn.Linear(input_dim, output_dim, bias=False)
            nn.init.zeros_(self.skip.weight)  # Paulo et al.: the skip starts at zero, as jax_impl.saes.create's

    def with_skip(self, out: torch.Tensor, x: Optional[torch.Tensor]) -> torch.Tensor:
        """out (N, D_out) plus the skip term of x (N, D_in); out itself without a skip connection."""
        if self.skip is not None:
            if x is None:
                raise ValueError("a skip transcoder's decode needs its input x")
            return out + self.skip(x)
        return out


class ReluL1SAE(SparseAutoencoder, _Transcoding):
    """The `relu-l1` SAE (the seed's SparseAutoencoder) with the family's interface and the transcoder option:
    features = ReLU(encoder(x)); reconstruction = decoder(features) (decoder.bias is b_dec)."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, *, output_dim: Optional[int] = None,
                 skip: bool = False) -> None:
        super().__init__(input_dim, dict_size)
        if output_dim is not None:
            self.decoder = nn.Linear(dict_size, output_dim)
        self._init_transcoder(input_dim, output_dim, skip)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, features: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.with_skip(self.decoder(features), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D_in) float32 -> (reconstruction or prediction (N, D_out), features (N, F)) float32."""
        features = self.encode(x)
        return self.decode(features, x), features


class TiedBiasSAE(_Transcoding):
    """The `anthropic` SAE: features = ReLU(encoder(x - b_dec)); reconstruction = decoder(features) + b_dec.
    As a transcoder (output_dim given) b_dec lives in the output's space and is not subtracted from x."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, *, output_dim: Optional[int] = None,
                 skip: bool = False) -> None:
        super().__init__()
        out = input_dim if output_dim is None else output_dim
        self.b_dec = nn.Parameter(torch.zeros(out))
        self.encoder = nn.Linear(input_dim, dict_size)
        self.decoder = nn.Linear(dict_size, out, bias=False)  # columns: unit-norm feature directions
        self._init_transcoder(input_dim, output_dim, skip)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) if self.is_transcoder else self.encoder(x - self.b_dec)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D_in) -> features (N, F), non-negative (inference: no batch statistics)."""
        return self.activate(self.pre_activation(x))

    def decode(self, features: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """features (N, F) -> (N, D_out); x (N, D_in): the input, needed for a skip transcoder's term."""
        return self.with_skip(self.decoder(features) + self.b_dec, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D_in) float32 -> (reconstruction or prediction (N, D_out), features (N, F)) float32."""
        features = self.encode(x)
        return self.decode(features, x), features


class TopKSAE(TiedBiasSAE):
    """The `topk` SAE: only each row's k largest pre-activations (ReLU'd) are kept."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32, *, output_dim: Optional[int] = None,
                 skip: bool = False) -> None:
        super().__init__(input_dim, dict_size, output_dim=output_dim, skip=skip)
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

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32, *, output_dim: Optional[int] = None,
                 skip: bool = False) -> None:
        super().__init__(input_dim, dict_size, k, output_dim=output_dim, skip=skip)
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

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, k: int = 32, group_ends: tuple[int, ...] = (), *,
                 output_dim: Optional[int] = None, skip: bool = False) -> None:
        super().__init__(input_dim, dict_size, k, output_dim=output_dim, skip=skip)
        self.register_buffer("group_ends", torch.tensor(list(group_ends) or [dict_size], dtype=torch.int64))


class JumpReLUSAE(TiedBiasSAE):
    """The `jumprelu` SAE: features = pre where pre > threshold (one trained threshold per feature), else 0."""

    def __init__(self, input_dim: int = 512, dict_size: int = 2048, *, output_dim: Optional[int] = None,
                 skip: bool = False) -> None:
        super().__init__(input_dim, dict_size, output_dim=output_dim, skip=skip)
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
    """The architecture name, from the keys (a transcoder's marker and skip key aside); ValueError naming the
    keys otherwise."""
    keys = set(state_dict)
    if SKIP_KEY in keys and TRANSCODER_KEY not in keys:
        raise ValueError(f"key {SKIP_KEY!r} without {TRANSCODER_KEY!r}: a skip connection needs a transcoder")
    keys -= {TRANSCODER_KEY, SKIP_KEY}
    for name, expected in _KEYS.items():
        if keys == expected:
            return name
    raise ValueError(f"not an SAE state_dict of a known architecture: keys {sorted(keys)}")


def is_transcoder(state_dict: Mapping[str, object]) -> bool:
    """Whether the state_dict is a transcoder's: its TRANSCODER_KEY holds 1 (ValueError for any other value)."""
    if TRANSCODER_KEY not in state_dict:
        return False
    marker = state_dict[TRANSCODER_KEY]
    if not isinstance(marker, torch.Tensor) or marker.shape != () or marker.dtype != torch.int64 or int(marker) != 1:
        raise ValueError(f"key {TRANSCODER_KEY!r} must be the int64 scalar 1, got {marker!r}")
    return True


def sae_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Strictly load an SAE or transcoder of any architecture (told apart by its keys) into a fresh module, in
    eval mode. A transcoder's output width is read off decoder.weight (D_out, F)."""
    name = architecture_of(state_dict)
    dict_size, input_dim = state_dict["encoder.weight"].shape
    options = {"output_dim": int(state_dict["decoder.weight"].shape[0]), "skip": SKIP_KEY in state_dict} \
        if is_transcoder(state_dict) else {}
    k = int(state_dict["k"]) if "k" in state_dict else None
    sae: nn.Module
    if name == "relu-l1":
        sae = ReluL1SAE(input_dim, dict_size, **options)
    elif name == "anthropic":
        sae = TiedBiasSAE(input_dim, dict_size, **options)
    elif name == "topk":
        sae = TopKSAE(input_dim, dict_size, k=k, **options)
    elif name == "batchtopk":
        sae = BatchTopKSAE(input_dim, dict_size, k=k, **options)
    elif name == "matryoshka":
        sae = MatryoshkaSAE(input_dim, dict_size, k=k, group_ends=tuple(state_dict["group_ends"].tolist()), **options)
    else:
        sae = JumpReLUSAE(input_dim, dict_size, **options)
    sae.load_state_dict(dict(state_dict), strict=True)
    return sae.eval()


# --------------------------------------------------------------------------- training losses (parity tests)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a - b) ** 2)


def aux_k_loss(sae: TiedBiasSAE, pre, target, reconstruction, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """Gao et al.'s AuxK over the dead (F,) bool latents (no ReLU), 0 when none is dead: the dead latents'
    decoding (no b_dec, no skip term) fits the residual target - reconstruction (target: x for an SAE)."""
    if not bool(dead.any()):
        return pre.new_zeros(())
    residual = (target - reconstruction).detach()
    dead_values, dead_indices = pre.masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1)
    dead_values = torch.where(torch.isfinite(dead_values), dead_values, torch.zeros_like(dead_values))
    return _mse(sae.decoder(torch.zeros_like(pre).scatter(-1, dead_indices, dead_values)), residual)


# Every loss below takes the batch x (B, D_in) and, for a transcoder, the target (B, D_out) it predicts (None:
# an SAE's, x itself); decode(features, x) adds a skip transcoder's term.


def anthropic_loss(sae: TiedBiasSAE, x: torch.Tensor, l1_coeff: float, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    target = x if target is None else target
    reconstruction, features = sae(x)
    return _mse(reconstruction, target) + l1_coeff * features.abs().sum(dim=-1).mean()


def topk_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float,
              target: Optional[torch.Tensor] = None) -> torch.Tensor:
    target = x if target is None else target
    pre = sae.pre_activation(x)
    reconstruction = sae.decode(sae.activate(pre), x)
    return _mse(reconstruction, target) + aux_coeff * aux_k_loss(sae, pre, target, reconstruction, dead, aux_k)


def batchtopk_loss(sae: BatchTopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float,
                   target: Optional[torch.Tensor] = None) -> torch.Tensor:
    target = x if target is None else target
    pre = sae.pre_activation(x)
    reconstruction = sae.decode(sae.batch_activate(pre), x)
    return _mse(reconstruction, target) + aux_coeff * aux_k_loss(sae, pre, target, reconstruction, dead, aux_k)


def matryoshka_loss(sae: MatryoshkaSAE, x: torch.Tensor, dead: torch.Tensor, aux_k: int, aux_coeff: float,
                    target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over the prefixes of MSE(prefix prediction, target); every prefix's prediction starts from b_dec plus
    the skip term (a transcoder's linear part is no feature's)."""
    target = x if target is None else target
    pre = sae.pre_activation(x)
    features = sae.batch_activate(pre)
    total, start = target.new_zeros(()), 0
    partial = sae.with_skip(sae.b_dec.expand_as(target), x)
    weight = sae.decoder.weight  # (D_out, F)
    for end in sae.group_ends.tolist():
        partial = partial + features[:, start:end] @ weight[:, start:end].T
        total = total + _mse(partial, target)
        start = end
    return total + aux_coeff * aux_k_loss(sae, pre, target, partial, dead, aux_k)


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


def jumprelu_loss(sae: JumpReLUSAE, x: torch.Tensor, l0_coeff: float, bandwidth: float,
                  target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MSE + l0_coeff * mean active count, through Rajamanoharan et al.'s straight-through estimators."""
    target = x if target is None else target
    pre = sae.pre_activation(x)
    features = _JumpReLU.apply(pre, sae.threshold, bandwidth)
    l0 = _Heaviside.apply(pre, sae.threshold, bandwidth).sum(dim=-1).mean()
    return _mse(sae.decode(features, x), target) + l0_coeff * l0


def training_loss(name: str, sae: nn.Module, x: torch.Tensor, dead: torch.Tensor, cfg, aux_k: int,
                  target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The training loss of architecture `name` on a batch x (B, D_in) (a transcoder's: predicting target (B,
    D_out); None: x); `cfg` is any object with that architecture's fields (l1_coeff; aux_coeff; l0_coeff and
    bandwidth), dead (F,) bool for AuxK."""
    if name == "relu-l1":
        prediction, features = sae(x)
        return _mse(prediction, x if target is None else target) + cfg.l1_coeff * features.abs().sum(dim=-1).mean()
    if name == "anthropic":
        return anthropic_loss(sae, x, cfg.l1_coeff, target)
    if name == "jumprelu":
        return jumprelu_loss(sae, x, cfg.l0_coeff, cfg.bandwidth, target)
    loss = {"topk": topk_loss, "batchtopk": batchtopk_loss, "matryoshka": matryoshka_loss}[name]
    return loss(sae, x, dead, aux_k, cfg.aux_coeff, target)
