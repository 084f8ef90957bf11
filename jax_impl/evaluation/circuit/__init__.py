"""Transcoder circuits of the task MLP: its settings (`config`), the replacement model whose three hidden maps are
transcoders (`replacement`), exact attribution graphs per input with pruning, completeness and intervention
checks (`attribution`), the features' labels and causal variables (`labels`) and the circuit document
(`document`). `monosem circuit` over a run directory is jax_impl.jobs.circuit; docs/circuit.md.

The names below are the public API; those that need JAX are imported on first use, so that reading the settings
(the command line's flags) stays light.
"""

from __future__ import annotations

import importlib

from jax_impl.evaluation.circuit.config import CircuitConfig

_LAZY = {
    "Replacement": "replacement", "train_transcoders": "replacement", "replacement_metrics": "replacement",
    "Attribution": "attribution", "attribute": "attribution", "prune": "attribution", "completeness": "attribution",
    "graph_edges": "attribution",
}

__all__ = ["CircuitConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"jax_impl.evaluation.circuit.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
