"""The SAE family: one module per architecture, and this registry.

Adding an architecture is one new module that defines `ARCHITECTURE` (a `base.Architecture`) and one line
in `_MODULES`; the trainer, bridge, atlas, pipeline, export and CLI ask `get(name)` and never branch on a name.
The torch side (monosem_torch_ref.saes) has a class per name with the same state_dict keys. Every architecture also
trains as a transcoder (`create(..., output_dim=D_out)`, optionally `skip=True`): see base.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.saes import anthropic, base, batchtopk, jumprelu, matryoshka, relu_l1, topk
from jax_impl.saes.base import SAE, Architecture, Batch

_MODULES = (relu_l1, topk, anthropic, batchtopk, matryoshka, jumprelu)
REGISTRY: dict[str, Architecture] = {m.ARCHITECTURE.name: m.ARCHITECTURE for m in _MODULES}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Architecture:
    """The architecture called `name`; ValueError listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r}; expected one of {', '.join(NAMES)}") from None


def architecture_of_keys(keys: Iterable[str]) -> Architecture | None:
    """The architecture whose state_dict has exactly these keys (each architecture's key set is distinct; a
    transcoder's marker and skip keys aside)."""
    keys = set(keys) - {base.TRANSCODER_KEY, base.SKIP_KEY}
    for arch in REGISTRY.values():
        if keys == set(arch.config_keys()):
            return arch
    return None


def create(name: str, input_dim: int, dict_size: int, cfg=None, *, key: jax.Array, output_dim: int | None = None,
           skip: bool = False) -> SAE:
    """A freshly initialised SAE of architecture `name` (cfg: its config; None = the defaults).

    output_dim: make it a transcoder whose decoder predicts an activation of this width (it may equal
    input_dim); skip: add the transcoder's linear skip connection w_skip (input_dim, output_dim), zero at first.
    """
    arch = get(name)
    cfg = arch.config() if cfg is None else cfg
    cfg.validate(dict_size)
    if skip and output_dim is None:
        raise ValueError("skip: a skip connection needs a transcoder (give output_dim)")
    if output_dim is not None and output_dim < 1:
        raise ValueError(f"output_dim must be >= 1, got {output_dim}")
    if arch.resolve is not None:
        cfg = arch.resolve(cfg, dict_size)
    if output_dim is None:  # the SAE's own call: its draws stay those of every earlier release
        params, buffers = arch.init(key, input_dim, dict_size, cfg)
    else:
        params, buffers = arch.init(key, input_dim, dict_size, cfg, output_dim)
    if skip:
        params = params | {"w_skip": jnp.zeros((input_dim, output_dim), jnp.float32)}
    return SAE(arch, cfg, params, buffers, transcoder=output_dim is not None)


__all__ = ["NAMES", "REGISTRY", "SAE", "Architecture", "Batch", "architecture_of_keys", "create", "get", "nnx"]
