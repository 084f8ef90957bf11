"""Causal analysis of the task MLP: the task's variables and counterfactual pairs (`variables`), interchange
interventions at a hook (`interventions`: whole vector, DAS subspaces, named SAE features), the map over
variables and hooks with its sparse circuit (`study`), hand-built networks with a known answer (`planted`), and
`monosem causal` over a run directory (`runner`).

The names below are the public API; those that need JAX are imported on first use, so that reading the
settings (the command line's flags) stays light.
"""

from __future__ import annotations

import importlib

from jax_impl.causal.config import CausalConfig, DASConfig
from jax_impl.causal.variables import PairSampler, Pairs, TaskVariables

_LAZY = {
    "Site": "interventions", "PairSet": "study", "causal_map_of_site": "study", "causal_map": "runner",
    "late_selection": "planted", "early_selection": "planted", "identity_dictionary": "planted",
}

__all__ = ["CausalConfig", "DASConfig", "PairSampler", "Pairs", "TaskVariables", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"jax_impl.causal.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
