"""`matryoshka` (Bussmann et al. 2025, on BatchTopK): nested prefixes of the dictionary must each reconstruct
the input on their own, loss = sum over prefixes of MSE(prefix reconstruction, x) + aux_coeff * AuxK, so the
first latents learn general features and later ones refine them instead of absorbing them. Inference by the
BatchTopK threshold. `groups` are the prefix ends, e.g. (16, 48, 128) for a 128-latent dictionary; the last
must be the dictionary size (saved as the int64 buffer `group_ends`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jax_impl.checks import check_dict_size, require_finite
from jax_impl.saes import batchtopk, topk
from jax_impl.saes.base import (
    Architecture,
    Batch,
    KeyMapEntry,
    Params,
    SaeLensFormat,
    TrainContext,
    aux_k_loss,
    mse,
    with_skip,
)


@dataclass(frozen=True)
class Config:
    groups: tuple[int, ...] = ()  # prefix ends; () = dict_size / 8, / 4, / 2, and all of it
    k: int = 32
    aux_coeff: float = 1 / 32
    threshold_lr: float = 0.01

    def validate(self, dict_size: int) -> None:
        require_finite(self)  # NaN passes every comparison below, inf every lower bound
        check_dict_size(dict_size)
        batchtopk.Config(self.k, self.aux_coeff, self.threshold_lr).validate(dict_size)
        ends = group_ends(self, dict_size)
        if list(ends) != sorted(set(ends)) or ends[0] < 1 or ends[-1] != dict_size:
            raise ValueError(
                f"groups must be increasing prefix ends from >= 1 up to the dictionary size {dict_size}, got {list(ends)}"
            )


def group_ends(cfg: Config, dict_size: int) -> tuple[int, ...]:
    if cfg.groups:
        return tuple(int(g) for g in cfg.groups)
    return tuple(sorted({max(1, dict_size // 8), max(1, dict_size // 4), max(1, dict_size // 2), dict_size}))


def resolve(cfg: Config, dict_size: int) -> Config:
    """The config with its prefix ends written out (what the state_dict's `group_ends` records)."""
    return dataclasses.replace(cfg, groups=group_ends(cfg, dict_size))


def init(key: jax.Array, input_dim: int, dict_size: int, cfg: Config, output_dim: int | None = None) -> tuple[Params, dict]:
    return batchtopk.init(key, input_dim, dict_size, cfg, output_dim)


def loss(p: Params, buffers: dict, batch: Batch, ctx: TrainContext, cfg: Config):
    target = batch.target
    pre, features, buffers = batchtopk.batch_features(p, buffers, batch, cfg)
    total, start, partial = 0.0, 0, jnp.broadcast_to(with_skip(p, batch.x, p["b_dec"]), target.shape)
    for end in group_ends(cfg, pre.shape[-1]):
        partial = partial + features[:, start:end] @ p["w_dec"][start:end]  # the prefix's reconstruction
        error = mse(partial, target)  # the last prefix's: the whole dictionary's reconstruction
        total = total + error
        start = end
    aux = aux_k_loss(p, pre, target, partial, ctx.dead, topk.aux_k(cfg, pre.shape[-1]), group_dead=ctx.group_dead)
    return total + cfg.aux_coeff * aux, (features, buffers, {"mse": error, "prefix_mse": total, "aux": aux})


ARCHITECTURE = Architecture(
    name="matryoshka",
    summary="Bussmann et al. 2025: BatchTopK whose nested dictionary prefixes each reconstruct the input",
    config=Config,
    init=init,
    activate=batchtopk.activate,
    loss=loss,
    key_map=(*batchtopk.KEY_MAP[:3], KeyMapEntry("group_ends", "groups", source="config", dtype="int64"),
             *batchtopk.KEY_MAP[3:]),
    resolve=resolve,
    unit_decoder=False,  # as batchtopk's: ground-truth MCC 0.784/0.756/0.701 -> 0.829/0.809/0.761 at k = 3/5/8
    saelens=SaeLensFormat("jumprelu", reads=("matryoshka_batchtopk",)),
)
