"""monosemanticity-mlp: a pointer-arithmetic MLP and its sparse-autoencoder decomposition in JAX/Flax NNX.

The public API, for a notebook or a script (`import jax_impl as mm`; docs/run.md, docs/train-sae.md):

- a run: `RunConfig` (sections `DataConfig`, `MLPConfig`, `SAEConfig`, `CausalConfig`; `strong_recipe()`),
  `run_pipeline(config, run_dir)`, `load_run(run_dir)` -> `Run`, `CheckpointPolicy`;
- an SAE on any activations: `train_sae(activations, out_dir, TrainSAEConfig(...))`, the family `saes`
  (`saes.create`, `saes.NAMES`, `saes.topk.Config`, ...; `output_dim=` makes a transcoder) and its model class
  `SAE`; `open_activations(path)` (a file, a folder or glob of shards, a SAELens cache),
  `pair_activations(inputs, targets)` (a transcoder's training rows);
- a sweep: `run_sweep(out_dir, grid, ...)` (its training settings: `SAETrainConfig`);
- reading the models: `evaluate`, `probe`, `build_atlas`, `atlas_from_models`, `feature_labels`, `causal_map`,
  `circuit` (transcoders and attribution graphs; its settings `CircuitConfig`);
- a feature dashboard of any SAE over any activations: `dashboard(sae, activations, out_dir, labels=...)` (its
  settings `DashboardConfig`; labels in memory `LabelTable`);
- files: `load_mlp`, `save_mlp`, `load_sae`, `save_sae`, `save_saelens`, `read_split`, `export_models`,
  `export_run`; errors `UserError` (bad input, one line) and `Interrupted`.

Each name is imported on first use, so `import jax_impl` is fast and imports neither JAX nor torch; it changes no
JAX setting either: the functions that compute set the matmul precision they need for their own call
(jax_impl.precision).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it (tool.setuptools.dynamic)

# The public names by the module that defines them (their home, not a re-export), imported on first use.
_LAZY: dict[str, tuple[str, ...]] = {
    "jax_impl.jobs.run_config": ("RunConfig", "SAEConfig", "strong_recipe"),
    "jax_impl.task.pointer": ("DataConfig",),
    "jax_impl.task.splits": ("read_split",),
    "jax_impl.training.mlp_trainer": ("MLPConfig",),
    "jax_impl.evaluation.causal.config": ("CausalConfig",),
    "jax_impl.training.checkpoints": ("CheckpointPolicy",),
    "jax_impl.jobs.pipeline": ("run_pipeline",),
    "jax_impl.jobs.rundir": ("Run", "load_run"),
    "jax_impl.jobs.train_sae": ("TrainSAEConfig", "train_sae"),
    "jax_impl.training.sae_trainer": ("SAETrainConfig",),
    "jax_impl.saes.base": ("SAE",),
    "jax_impl.data.activation_sets": ("open_activations",),
    "jax_impl.data.activations": ("pair_activations",),
    "jax_impl.jobs.sweep": ("run_sweep",),
    "jax_impl.evaluation.inference": ("evaluate", "probe"),
    "jax_impl.evaluation.atlas.document": ("build_atlas", "atlas_from_models", "feature_labels"),
    "jax_impl.jobs.causal": ("causal_map",),
    "jax_impl.evaluation.circuit.config": ("CircuitConfig",),
    "jax_impl.jobs.circuit": ("circuit",),
    "jax_impl.jobs.dashboard": ("dashboard", "LabelTable"),
    "jax_impl.evaluation.dashboard": ("DashboardConfig",),
    "jax_impl.jobs.export": ("export_models", "export_run"),
    "jax_impl.interop.bridge": ("load_mlp", "save_mlp", "save_sae"),
    "jax_impl.interop.saelens": ("load_sae", "save_saelens"),
    "jax_impl.errors": ("UserError", "Interrupted"),
}
_SUBPACKAGES = ("saes",)  # public as a whole: the architecture registry and one module per architecture
_HOME = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [*_HOME, *_SUBPACKAGES]

if TYPE_CHECKING:  # what type checkers and editors see; tests/test_public_api.py keeps it equal to _LAZY
    from jax_impl import saes as saes
    from jax_impl.data.activation_sets import open_activations as open_activations
    from jax_impl.data.activations import pair_activations as pair_activations
    from jax_impl.errors import Interrupted as Interrupted
    from jax_impl.errors import UserError as UserError
    from jax_impl.evaluation.atlas.document import atlas_from_models as atlas_from_models
    from jax_impl.evaluation.atlas.document import build_atlas as build_atlas
    from jax_impl.evaluation.atlas.document import feature_labels as feature_labels
    from jax_impl.evaluation.causal.config import CausalConfig as CausalConfig
    from jax_impl.evaluation.circuit.config import CircuitConfig as CircuitConfig
    from jax_impl.evaluation.dashboard import DashboardConfig as DashboardConfig
    from jax_impl.evaluation.inference import evaluate as evaluate
    from jax_impl.evaluation.inference import probe as probe
    from jax_impl.interop.bridge import load_mlp as load_mlp
    from jax_impl.interop.bridge import save_mlp as save_mlp
    from jax_impl.interop.bridge import save_sae as save_sae
    from jax_impl.interop.saelens import load_sae as load_sae
    from jax_impl.interop.saelens import save_saelens as save_saelens
    from jax_impl.jobs.causal import causal_map as causal_map
    from jax_impl.jobs.circuit import circuit as circuit
    from jax_impl.jobs.dashboard import LabelTable as LabelTable
    from jax_impl.jobs.dashboard import dashboard as dashboard
    from jax_impl.jobs.export import export_models as export_models
    from jax_impl.jobs.export import export_run as export_run
    from jax_impl.jobs.pipeline import run_pipeline as run_pipeline
    from jax_impl.jobs.run_config import RunConfig as RunConfig
    from jax_impl.jobs.run_config import SAEConfig as SAEConfig
    from jax_impl.jobs.run_config import strong_recipe as strong_recipe
    from jax_impl.jobs.rundir import Run as Run
    from jax_impl.jobs.rundir import load_run as load_run
    from jax_impl.jobs.sweep import run_sweep as run_sweep
    from jax_impl.jobs.train_sae import TrainSAEConfig as TrainSAEConfig
    from jax_impl.jobs.train_sae import train_sae as train_sae
    from jax_impl.saes.base import SAE as SAE
    from jax_impl.task.pointer import DataConfig as DataConfig
    from jax_impl.task.splits import read_split as read_split
    from jax_impl.training.checkpoints import CheckpointPolicy as CheckpointPolicy
    from jax_impl.training.mlp_trainer import MLPConfig as MLPConfig
    from jax_impl.training.sae_trainer import SAETrainConfig as SAETrainConfig


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])  # what tab completion offers: the API, not this module's helpers
