"""Run configuration as data. The defaults are the seed recipes (../shared/spec/upstream.md).

Every field is a CLI flag named `--{section}-{field}` (dashes for underscores), e.g. `mlp.epochs` is
`--mlp-epochs`; `RunConfig.seed` is `--seed`. A few fields also have the short names the seed uses
(see `FLAG_ALIASES`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from jax_impl import saes
from jax_impl.causal.config import CausalConfig
from jax_impl.causal.variables import TaskVariables
from jax_impl.checks import FLOAT32, non_finite_field
from jax_impl.errors import UserError
from jax_impl.models import DEFAULT_HOOK, HOOK_WIDTHS, HOOKS, LAYER1_WIDTH, LAYER2_WIDTH, LAYER3_WIDTH
from jax_impl.saes import NAMES as SAE_VARIANTS  # the architecture registry's names
from jax_impl.task import TaskShape

RECIPES = ("seed", "strong")  # see strong_recipe() and docs/strong_recipe.md
MLP_DATA = ("split", "online")  # train on the fixed split (seed) or on fresh rows every step (jax_impl.online)


@dataclass(frozen=True)
class DataConfig:
    n_train: int = 8000
    n_val: int = 1000
    n_test: int = 1000
    x_dim: int = 5  # entries per column: x_dim - 1 values and one pointer
    y_dim: int = 2  # columns; the target uses the first and the last


@dataclass(frozen=True)
class MLPConfig:
    epochs: int = 500
    batch_size: int = 64
    max_lr: float = 1e-2
    weight_decay: float = 1e-5
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    log_every: int = 50
    data: str = "split"  # one of MLP_DATA


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
        from jax_impl.sae_training import SAETrainConfig

        return SAETrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, log_every=self.log_every)

    @classmethod
    def from_dict(cls, d: Any, where: str = "sae") -> SAEConfig:
        """From `to_dict()`'s form; also from manifests written before the architecture had its own config
        (flat `k`, `aux_coeff`, `l1_coeff`, `resample_every` beside the trainer's fields). ValueError naming the
        key for an unknown key, an unknown variant or a value of another type than the field's."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} holds {_json_type(d)}, expected an object")
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
    seed: int = 0
    recipe: str = "seed"  # which defaults the other fields started from (one of RECIPES)
    hook: str = DEFAULT_HOOK  # the MLP activation harvested and decomposed (one of HOOKS)
    data: DataConfig = field(default_factory=DataConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    causal: CausalConfig = field(default_factory=CausalConfig.quick)  # the pipeline's causal stage

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config `to_dict` wrote (fields it lacks take their defaults: older manifests). ValueError naming
        the key for an unknown key or a value of another type than the field's (an int for a float is fine)."""
        if not isinstance(d, dict):
            raise ValueError(f"config holds {_json_type(d)}, expected an object")
        known = {"seed", "recipe", "hook", "data", "mlp", "sae", "causal"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown} (expected {sorted(known)})")
        sections = {name: section_from_dict(kind, d.get(name), f"config.{name}")
                    for name, kind in (("data", DataConfig), ("mlp", MLPConfig))}
        sections["sae"] = SAEConfig.from_dict(d.get("sae"), "config.sae")
        # manifests written before the causal stage existed have none: the stage's defaults
        sections["causal"] = (section_from_dict(CausalConfig, d["causal"], "config.causal") if "causal" in d
                              else CausalConfig.quick())
        seed = d.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"config.seed holds {_json_type(seed)}, expected an integer")
        recipe = d.get("recipe", "seed")  # manifests written before the strong recipe existed have none
        if not isinstance(recipe, str):
            raise ValueError(f"config.recipe holds {_json_type(recipe)}, expected a string")
        hook = d.get("hook", DEFAULT_HOOK)  # manifests written before the hook points existed have none
        if not isinstance(hook, str):
            raise ValueError(f"config.hook holds {_json_type(hook)}, expected a string")
        return cls(seed=seed, recipe=recipe, hook=hook, **sections)

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
        (sae_training.training_bytes) on the harvested rows, and the causal stage's (CausalConfig.memory_bytes)."""
        from jax_impl.sae_training import training_bytes  # not at the top: sae_training imports this module

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


def mlp_training_bytes(input_dim: int, batch_size: int, total_steps: int, configurations: int = 1) -> int:
    """A lower bound of the memory training `configurations` MLPs at once holds beside their data: each one's
    parameters with their gradient and AdamW's two moments (4x), and a batch's activations at its three layers;
    and the OneCycle schedule's tables, computed for every step up front (float64 steps, lr, beta1: 3 x 8 bytes)."""
    params = input_dim * LAYER1_WIDTH + LAYER1_WIDTH * LAYER2_WIDTH + LAYER2_WIDTH * LAYER3_WIDTH + LAYER3_WIDTH
    per_configuration = FLOAT32 * (4 * params + batch_size * (LAYER1_WIDTH + LAYER2_WIDTH + LAYER3_WIDTH))
    return configurations * per_configuration + 3 * 8 * total_steps


def check_task_shape(x_dim: int, y_dim: int, x_flag: str = "--x-dim", y_flag: str = "--y-dim") -> None:
    """UserError naming the flag when (x_dim, y_dim) is no task shape (jax_impl.task.TaskShape): every column needs a
    value and a pointer, and there must be a column."""
    if not x_dim >= 2:
        raise UserError(f"{x_flag} must be at least 2 (one value and one pointer per column), got {x_dim}")
    if not y_dim >= 1:
        raise UserError(f"{y_flag} must be at least 1 (columns), got {y_dim}")


MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed


def check_seed(seed: int, flag: str = "--seed") -> None:
    """UserError naming the flag when `seed` cannot seed jax.random.key."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} must be in 0..{MAX_SEED} (a PRNG seed), got {seed}")


@dataclass(frozen=True)
class CheckpointPolicy:
    """When training saves its state (jax_impl.checkpoints): every `epochs` epochs, or at the end of the first
    epoch that finishes `seconds` or more after the previous checkpoint; both None: never (an interrupt by
    SIGINT/SIGTERM still saves one). Not part of RunConfig: it changes no result, so a resumed run may use
    another one."""

    epochs: int | None = None
    seconds: float | None = 60.0

    @classmethod
    def parse(cls, text: str, flag: str = "--checkpoint-every") -> CheckpointPolicy:
        """`5` (epochs), `60s` / `2.5m` (seconds, minutes) or `off`; UserError naming the flag otherwise."""
        text = text.strip().lower()
        if text == "off":
            return cls(epochs=None, seconds=None)
        try:
            if text.endswith(("s", "m")):
                number = float(text[:-1])
                policy = cls(epochs=None, seconds=number * (60 if text.endswith("m") else 1))
            else:
                policy = cls(epochs=int(text), seconds=None)
        except ValueError:
            policy = None
        if policy is None or not ((policy.epochs or 0) >= 1 or math.isfinite(policy.seconds or 0) and (policy.seconds or 0) > 0):
            raise UserError(
                f"{flag} {text!r}: expected a number of epochs (e.g. 5), seconds or minutes (e.g. 60s, 2m), or off"
            )
        return policy

    def describe(self) -> str:
        if self.epochs is not None:
            return f"every {self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return f"every {self.seconds:g} s" if self.seconds is not None else "off"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def section_from_dict(kind: type, d: Any, where: str) -> Any:
    """One section dataclass (kind) from its dict d, every field given of its default's type; ValueError naming `where`
    (the key path, e.g. config.sae) otherwise. Used by every reader of a config from a file (manifest, SAELens
    metadata, synthetic config)."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds {_json_type(d)}, expected an object with keys {list(fields)}")
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown} (expected some of {list(fields)})")
    values = {}
    for name, f in fields.items():
        if name not in d:
            continue  # a field added after the file was written: its default
        want, value = type(f.default), d[name]
        if want is tuple and isinstance(value, list):  # JSON has no tuples (e.g. matryoshka's groups: ints)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{where}.{name} holds {value!r:.40}, expected a list of integers")
            value = tuple(value)
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ValueError(f"{where}.{name} holds {_json_type(value)} {value!r:.40}, expected {_json_type(want())}")
        values[name] = value
    return kind(**values)


def strong_recipe() -> RunConfig:
    """The `--recipe strong` defaults: online-data MLP, TopK SAE (chosen by scripts/sweep_strong.py, then
    scripts/strong_sweep.sh for the second version; measurements in docs/strong_recipe.md)."""
    return RunConfig(
        recipe="strong",
        mlp=MLPConfig(data="online", batch_size=512, epochs=500),
        # Second version (issue 12): 200 SAE epochs instead of 100, the only change the sweep of
        # scripts/strong_sweep.sh supports (spliced MSE within 0.01 of clean; docs/strong_recipe.md).
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


def flag_name(section: str, name: str) -> str:
    """The flag a user types for a config field (the short alias when there is one)."""
    return FLAG_ALIASES.get((section, name), f"--{section}-{name}".replace("_", "-"))
