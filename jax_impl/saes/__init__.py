"""The SAE family: one module per architecture, and this registry.

Adding an architecture is one new module that defines `ARCHITECTURE` (a `base.Architecture`) and one line
in `_MODULES`; the trainer, bridge, atlas, pipeline, export and CLI ask `get(name)` and never branch on a name.
The torch side (torch_ref.saes) has a class per name with the same state_dict keys.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
from flax import nnx

from jax_impl.saes import anthropic, batchtopk, jumprelu, matryoshka, relu_l1, topk
from jax_impl.saes.base import SAE, Architecture

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
    """The architecture whose state_dict has exactly these keys (each architecture's key set is distinct)."""
    keys = set(keys)
    for arch in REGISTRY.values():
        if keys == set(arch.config_keys()):
            return arch
    return None


def create(name: str, input_dim: int, dict_size: int, cfg=None, *, key: jax.Array) -> SAE:
    """A freshly initialised SAE of architecture `name` (cfg: its config; None = the defaults)."""
    arch = get(name)
    cfg = arch.config() if cfg is None else cfg
    cfg.validate(dict_size)
    if arch.resolve is not None:
        cfg = arch.resolve(cfg, dict_size)
    params, buffers = arch.init(key, input_dim, dict_size, cfg)
    return SAE(arch, cfg, params, buffers)


__all__ = ["NAMES", "REGISTRY", "SAE", "Architecture", "architecture_of_keys", "create", "get", "nnx"]
