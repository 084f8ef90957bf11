"""Run configuration as data. The defaults are the seed recipes (../shared/spec/upstream.md).

Every field is a CLI flag named `--{section}-{field}` (dashes for underscores), e.g. `mlp.epochs` is
`--mlp-epochs`; `RunConfig.seed` is `--seed`. A few fields also have the short names the seed uses
(see `FLAG_ALIASES`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jax_impl import saes
from jax_impl.checks import FLOAT32, check_seed, json_type_name, non_finite_field, section_from_dict
from jax_impl.errors import UserError
from jax_impl.evaluation.causal.config import CausalConfig
from jax_impl.evaluation.circuit.config import CircuitConfig
from jax_impl.jobs.record_kinds import read_record
from jax_impl.models.mlp import DEFAULT_HOOK, HOOK_WIDTHS, HOOKS
from jax_impl.saes import NAMES as SAE_VARIANTS  # the architecture registry's names
from jax_impl.task.pointer import DataConfig, TaskShape, check_task_shape
from jax_impl.task.variables import TaskVariables
from jax_impl.training.mlp_trainer import MLP_DATA, MLPConfig, mlp_training_bytes
from jax_impl.training.sae_trainer import SAETrainConfig, training_bytes

RECIPES = ("seed", "strong")  # see strong_recipe() and docs/run.md


@dataclass(frozen=True)
class SAEConfig:
    """What `monosem run`'s SAE stage trains: the trainer's fields here, the architecture's own in `architecture`
    (an instance of `jax_impl.saes.<variant>.Config`, e.g. topk's `k`; None = that architecture's defaults)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    dict_size: int = 2048
    log_every: int = 10
    variant: str = "relu-l1"  # one of SAE_VARIANTS
    architecture: Any = None

    def __post_init__(self) -> None:
        if self.architecture is None and self.variant in SAE_VARIANTS:
            object.__setattr__(self, "architecture", saes.get(self.variant).config())

    def train_config(self):
        return SAETrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, log_every=self.log_every)

    @classmethod
    def from_dict(cls, d: Any, where: str = "sae") -> SAEConfig:
        """From `to_dict()`'s form; also from manifests written before the architecture had its own config
        (flat `k`, `aux_coeff`, `l1_coeff`, `resample_every` beside the trainer's fields). ValueError naming the
        key for an unknown key, an unknown variant or a value of another type than the field's."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} holds {json_type_name(d)}, expected an object")
        variant = d.get("variant", cls.variant)
        if variant not in SAE_VARIANTS:
            raise ValueError(f"{where}.variant holds {variant!r:.40}, expected one of {', '.join(SAE_VARIANTS)}")
        arch_config = saes.get(variant).config
        if "architecture" in d:
            arch_values, flat = d["architecture"], {}
        else:  # the flat form: the old fields, some of which belong to this variant
            flat = {k: v for k, v in d.items() if k in _FLAT_ARCHITECTURE_FIELDS}
            arch_values = {k: v for k, v in flat.items() if k in {f.name for f in dataclasses.fields(arch_config)}}
        trainer = {k: v for k, v in d.items() if k != "architecture" and k not in flat}
        base = section_from_dict(cls, trainer, where)
        return dataclasses.replace(base, architecture=section_from_dict(arch_config, arch_values, f"{where}.architecture"))


# The architecture fields that SAEConfig held itself before each architecture had its own config.
_FLAT_ARCHITECTURE_FIELDS = ("k", "aux_coeff", "l1_coeff", "resample_every")


@dataclass(frozen=True)
class RunConfig:
    """Everything `monosem run` / run_pipeline does, as data: the PRNG seed, the hook the SAE decomposes and one
    section per stage (data, mlp, sae, causal, circuit). The defaults are the seed recipes; strong_recipe() the
    strong one. Each field is a flag (module docstring); validate() names the field or flag that cannot work.
    circuit_stage: run the circuit stage (transcoders and attribution graphs of the probe's inputs; `--no-circuit`
    leaves it out)."""

    seed: int = 0
    recipe: str = "seed"  # which defaults the other fields started from (one of RECIPES)
    hook: str = DEFAULT_HOOK  # the MLP activation harvested and decomposed (one of HOOKS)
    data: DataConfig = field(default_factory=DataConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    causal: CausalConfig = field(default_factory=CausalConfig.quick)  # the pipeline's causal stage
    circuit: CircuitConfig = field(default_factory=CircuitConfig)  # the pipeline's circuit stage
    circuit_stage: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config `to_dict` wrote (fields it lacks take their defaults: older manifests). ValueError naming
        the key for an unknown key or a value of another type than the field's (an int for a float is fine)."""
        if not isinstance(d, dict):
            raise ValueError(f"config holds {json_type_name(d)}, expected an object")
        known = {"seed", "recipe", "hook", "data", "mlp", "sae", "causal", "circuit", "circuit_stage"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown} (expected {sorted(known)})")
        sections = {name: section_from_dict(kind, d.get(name), f"config.{name}")
                    for name, kind in (("data", DataConfig), ("mlp", MLPConfig))}
        sections["sae"] = SAEConfig.from_dict(d.get("sae"), "config.sae")
        # manifests written before the causal stage existed have none: the stage's defaults
        sections["causal"] = (section_from_dict(CausalConfig, d["causal"], "config.causal") if "causal" in d
                              else CausalConfig.quick())
        # manifests written before the circuit stage existed have none: the stage's defaults (as for causal)
        sections["circuit"] = (section_from_dict(CircuitConfig, d["circuit"], "config.circuit") if "circuit" in d
                               else CircuitConfig())
        circuit_stage = d.get("circuit_stage", True)
        if not isinstance(circuit_stage, bool):
            raise ValueError(f"config.circuit_stage holds {json_type_name(circuit_stage)}, expected true or false")
        seed = d.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"config.seed holds {json_type_name(seed)}, expected an integer")
        recipe = d.get("recipe", "seed")  # manifests written before the strong recipe existed have none
        if not isinstance(recipe, str):
            raise ValueError(f"config.recipe holds {json_type_name(recipe)}, expected a string")
        hook = d.get("hook", DEFAULT_HOOK)  # manifests written before the hook points existed have none
        if not isinstance(hook, str):
            raise ValueError(f"config.hook holds {json_type_name(hook)}, expected a string")
        return cls(seed=seed, recipe=recipe, hook=hook, circuit_stage=circuit_stage, **sections)

    @classmethod
    def from_record(cls, path: Path | str) -> RunConfig:
        """The config a run directory's manifest.json (path) records, validated as a run about to train validates
        it: what `monosem run --config` reruns (jax_impl.jobs.records). UserError `PATH: key config.X ...` naming
        the first key that cannot work, or saying which command takes a file of another kind."""
        doc = read_record(path, "run")
        try:
            config = cls.from_dict(doc["config"].object())
        except ValueError as e:
            raise UserError(f"{path}: key {e}") from None
        try:
            return config.validate()
        except UserError as e:
            # validate names the flag that sets a value; a file's reader names its key (the flag stays: it overrides)
            keys = _flag_keys()
            flag = next((m for m in re.findall(r"--[a-z0-9-]+", str(e)) if m in keys), None)
            key = keys.get(flag or "")
            if str(e).startswith(f"--sae-variant {config.sae.variant}:"):  # the architecture's own check
                key = "config.sae.architecture"
            raise UserError(f"{path}: {f'key {key}: ' if key else ''}{e}") from None

    def validate(self) -> RunConfig:
        """Raise UserError naming the flag when a value cannot work; return self. (Whether the sizes fit in this
        machine's memory is memory_bytes's question, asked by the command that trains: a config read back from a
        run directory is valid on any machine.)"""
        check_seed(self.seed)
        for section in ("data", "mlp", "sae"):
            found = non_finite_field(getattr(self, section))
            if found is not None:
                raise UserError(f"{flag_name(section, found[0])} must be a finite number, got {found[1]}")
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, str) or f.name == "architecture":
                    continue  # the choices and the architecture's own fields are checked below
                if value <= 0:
                    raise UserError(f"{flag_name(section, f.name)} must be positive, got {value}")
        d, m, s = self.data, self.mlp, self.sae
        check_task_shape(d.x_dim, d.y_dim, "--data-x-dim", "--data-y-dim")
        if m.batch_size > d.n_train:
            raise UserError(f"--mlp-batch-size {m.batch_size} is larger than the training split (--n-train {d.n_train})")
        if s.batch_size > d.n_train:
            raise UserError(f"--sae-batch-size {s.batch_size} is larger than the training split (--n-train {d.n_train})")
        # BatchNorm in training mode cannot normalise a batch of one row (torch raises too).
        if m.batch_size == 1 or d.n_train % m.batch_size == 1:
            raise UserError(
                f"--mlp-batch-size {m.batch_size} with --n-train {d.n_train} makes a training batch of 1 row, "
                "which BatchNorm cannot normalise; choose a batch size >= 2 that does not leave a remainder of 1"
            )
        if not 0 < m.pct_start < 1:
            raise UserError(f"--mlp-pct-start must be in (0, 1), got {m.pct_start}")
        for flag, value, choices in (
            ("--recipe", self.recipe, RECIPES), ("--hook", self.hook, HOOKS), ("--mlp-data", m.data, MLP_DATA),
            ("--sae-variant", s.variant, SAE_VARIANTS),
        ):
            if value not in choices:
                raise UserError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        self.causal.validate()
        self.circuit.validate()
        self.causal.variable_names(TaskVariables(TaskShape(d.x_dim, d.y_dim)).names)
        arch_config_type = saes.get(s.variant).config
        if not isinstance(s.architecture, arch_config_type):
            raise UserError(f"sae.architecture must be a {arch_config_type.__module__}.Config for --sae-variant "
                            f"{s.variant}, got {type(s.architecture).__name__}")
        try:
            s.architecture.validate(s.dict_size)
        except ValueError as e:
            raise UserError(f"--sae-variant {s.variant}: {e} (--dict-size {s.dict_size})") from None
        return self


    def memory_bytes(self) -> int:
        """A lower bound of the memory `monosem run` holds at once (jax_impl.checks.check_memory): every split's
        rows (inputs as int32, and their float32 copy on the device), their activations at the three hooks
        (harvested), the MLP's parameters with their gradient and AdamW's moments, and the SAE stage's training
        (sae_trainer.training_bytes) on the harvested rows, and the causal stage's (CausalConfig.memory_bytes)."""

        d = self.data
        rows, width = d.n_train + d.n_val + d.n_test, d.x_dim * d.y_dim
        hook_width = HOOK_WIDTHS[self.hook] if self.hook in HOOK_WIDTHS else max(HOOK_WIDTHS.values())
        data = FLOAT32 * rows * (2 * width + sum(HOOK_WIDTHS.values()))
        mlp = mlp_training_bytes(width, self.mlp.batch_size, self.mlp.epochs * -(-d.n_train // self.mlp.batch_size))
        causal = self.causal.memory_bytes(width, max(HOOK_WIDTHS.values()))
        return data + mlp + training_bytes(hook_width, self.sae.dict_size, self.sae.batch_size, rows) + causal

    def memory_flags(self) -> str:
        """The flags memory_bytes grows with, as a one-line message names them."""
        d = self.data
        return (f"--n-train {d.n_train}, --n-val {d.n_val}, --n-test {d.n_test}, --data-x-dim {d.x_dim} x --data-y-dim "
                f"{d.y_dim}, --mlp-epochs {self.mlp.epochs}, --dict-size {self.sae.dict_size} and the --causal-* sizes")


def strong_recipe() -> RunConfig:
    """The `--recipe strong` defaults: online-data MLP, TopK SAE (chosen by scripts/sweep_strong.py, then
    scripts/strong_sweep.sh for the second version; measurements in CHANGELOG.md)."""
    return RunConfig(
        recipe="strong",
        mlp=MLPConfig(data="online", batch_size=512, epochs=500),
        # Second version (issue 12): 200 SAE epochs instead of 100, the only change the sweep of
        # scripts/strong_sweep.sh supports (spliced MSE within 0.01 of clean; CHANGELOG.md).
        sae=SAEConfig(variant="topk", dict_size=128, architecture=saes.topk.Config(k=32), epochs=200),
    )


# Short flag names from the seed/issue, kept beside the systematic ones.
FLAG_ALIASES: dict[tuple[str, str], str] = {
    ("data", "n_train"): "--n-train",
    ("data", "n_val"): "--n-val",
    ("data", "n_test"): "--n-test",
    ("sae", "l1_coeff"): "--l1-coeff",  # an architecture field (relu-l1, anthropic): --sae-l1-coeff too
    ("sae", "groups"): "--matryoshka-groups",
    ("sae", "dict_size"): "--dict-size",
}


def _flag_keys() -> dict[str, str]:
    """Every flag of a RunConfig field -> its key in a manifest (config.SECTION.FIELD), for messages."""
    config = RunConfig()
    keys = {"--seed": "config.seed", "--recipe": "config.recipe", "--hook": "config.hook",
            "--no-circuit": "config.circuit_stage"}
    for section in ("data", "mlp", "sae", "causal", "circuit"):
        for f in dataclasses.fields(getattr(config, section)):
            keys[f"--{section}-{f.name}".replace("_", "-")] = f"config.{section}.{f.name}"
    for (section, name), alias in FLAG_ALIASES.items():
        keys.setdefault(alias, f"config.{section}.{name}")
    for arch in saes.REGISTRY.values():
        for f in dataclasses.fields(arch.config):
            keys.setdefault(f"--sae-{f.name}".replace("_", "-"), f"config.sae.architecture.{f.name}")
    keys["--matryoshka-groups"] = "config.sae.architecture.groups"
    keys["--l1-coeff"] = "config.sae.architecture.l1_coeff"
    return keys


def flag_name(section: str, name: str) -> str:
    """The flag a user types for a config field (the short alias when there is one)."""
    return FLAG_ALIASES.get((section, name), f"--{section}-{name}".replace("_", "-"))
