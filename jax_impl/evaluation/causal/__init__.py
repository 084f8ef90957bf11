"""Causal analysis of the task MLP: its settings (`config`), interchange interventions at a hook
(`interventions`: whole vector, DAS subspaces, named SAE features), the map over variables and hooks with its
sparse circuit (`study`) and hand-built networks with a known answer (`planted`). The task's variables and
counterfactual pairs are in jax_impl.task.variables; `monosem causal` over a run directory in jax_impl.jobs.causal.

The names below are the public API; those that need JAX are imported on first use, so that reading the
settings (the command line's flags) stays light.
"""

from __future__ import annotations

import importlib

from jax_impl.evaluation.causal.config import CausalConfig, DASConfig

_LAZY = {
    "Site": "interventions", "PairSet": "study", "causal_map_of_site": "study",
    "late_selection": "planted", "early_selection": "planted", "identity_dictionary": "planted",
}

__all__ = ["CausalConfig", "DASConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"jax_impl.evaluation.causal.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
