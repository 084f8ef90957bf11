"""Run configuration as data. The defaults are the seed recipes (../shared/spec/upstream.md).

Every field is a CLI flag named `--{section}-{field}` (dashes for underscores), e.g. `mlp.epochs` is
`--mlp-epochs`; `RunConfig.seed` is `--seed`. A few fields also have the short names the seed uses
(see `FLAG_ALIASES`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from jax_impl import saes
from jax_impl.errors import UserError
from jax_impl.models import DEFAULT_HOOK, HOOKS
from jax_impl.saes import NAMES as SAE_VARIANTS  # the architecture registry's names

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
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """From `to_dict()`'s form; also from manifests written before the architecture had its own config
        (flat `k`, `aux_coeff`, `l1_coeff`, `resample_every` beside the trainer's fields)."""
        own = {f.name for f in dataclasses.fields(cls)}
        variant = d.get("variant", cls.variant)
        arch_values = d.get("architecture")
        if arch_values is None:  # the flat form: the fields the variant's config has
            names = {f.name for f in dataclasses.fields(saes.get(variant).config)}
            arch_values = {k: v for k, v in d.items() if k in names}
        return cls(**{k: v for k, v in d.items() if k in own - {"architecture"}},
                   architecture=saes.get(variant).config_from_file(arch_values))


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    recipe: str = "seed"  # which defaults the other fields started from (one of RECIPES)
    hook: str = DEFAULT_HOOK  # the MLP activation harvested and decomposed (one of HOOKS)
    data: DataConfig = field(default_factory=DataConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(
            seed=d["seed"],
            recipe=d.get("recipe", "seed"),  # manifests written before the strong recipe existed
            hook=d.get("hook", DEFAULT_HOOK),  # manifests written before the hook points existed
            data=DataConfig(**d["data"]),
            mlp=MLPConfig(**d["mlp"]),
            sae=SAEConfig.from_dict(d["sae"]),
        )

    def validate(self) -> RunConfig:
        """Raise UserError naming the flag when a value cannot work; return self."""
        for section in ("data", "mlp", "sae"):
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, str) or f.name == "architecture":
                    continue  # the choices and the architecture's own fields are checked below
                if value <= 0:
                    raise UserError(f"{flag_name(section, f.name)} must be positive, got {value}")
        d, m, s = self.data, self.mlp, self.sae
        if d.x_dim < 2:
            raise UserError(f"--data-x-dim must be at least 2 (one value and one pointer per column), got {d.x_dim}")
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
        arch_config_type = saes.get(s.variant).config
        if not isinstance(s.architecture, arch_config_type):
            raise UserError(f"sae.architecture must be a {arch_config_type.__module__}.Config for --sae-variant "
                            f"{s.variant}, got {type(s.architecture).__name__}")
        try:
            s.architecture.validate(s.dict_size)
        except ValueError as e:
            raise UserError(f"--sae-variant {s.variant}: {e} (--dict-size {s.dict_size})") from None
        return self


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
