"""A sweep's grid: `key=v1,v2` specs checked against what a stage can vary, and expanded into configurations.

SAE stage keys: `seed`, `dict_size`, `epochs`, `batch_size`, `lr`, and every field of the chosen
architectures' configs (jax_impl.saes; e.g. `k`, `l1_coeff`, `groups` written `16:48:128`). MLP stage keys:
`seed` and the fields of `config.MLPConfig` (but `log_every`). Integer keys take ranges `a..b` (inclusive).

The configurations are the product of the grid in the order the keys were given (the last key varies
fastest); with several architectures, each gets the product of the keys that apply to it. Every mistake
is a `UserError` naming the key and what was expected, raised before anything trains.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jax_impl import saes
from jax_impl.checks import check_dict_size, check_seed
from jax_impl.errors import UserError
from jax_impl.jobs.run_config import RunConfig
from jax_impl.training.mlp_trainer import MLP_DATA, MLPConfig
from jax_impl.training.sae_trainer import SAETrainConfig

STAGES = ("sae", "mlp")
# The SAE stage's keys beside the architecture fields: (type, where the value goes).
SAE_KEYS: dict[str, type] = {"seed": int, "dict_size": int, "epochs": int, "batch_size": int, "lr": float}
MLP_SKIPPED = ("log_every",)  # not a hyperparameter: how often a line is printed
# Far beyond any sweep one host trains, and small enough that expanding a mistyped range (seed=0..10**12) or
# a product of long lists cannot exhaust memory before the mistake is reported.
MAX_CONFIGURATIONS = 10_000


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """The CLI's `--grid key=v1,v2` strings -> {key: [raw value strings]}, in the order given."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. --grid k=16,32,64)")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2,...")
        if not values.strip():
            raise UserError(f"--grid {key}=: no values; give at least one, e.g. --grid {key}=V1,V2")
        grid[key] = [v.strip() for v in values.split(",")]
    return grid


def _type_name(kind: type) -> str:
    return {int: "integers", float: "numbers", tuple: "integer lists like 16:48:128", str: "words"}[kind]


def typed_values(key: str, raw: Sequence[Any], kind: type, choices: Sequence[str] = ()) -> list[Any]:
    """raw values (strings from the CLI, or Python values) -> values of `kind`; `a..b` ranges for ints.

    UserError on an empty list, an empty value or a value that is not of the key's type.
    """
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raw = [raw]
    if len(raw) == 0:
        raise UserError(f"--grid {key}=: no values; give at least one, e.g. --grid {key}={_example(kind)}")
    values: list[Any] = []
    for v in raw:
        bad = UserError(f"--grid {key}={_show(raw)}: expected {_type_name(kind)} ({key} is {kind.__name__}), got {v!r}")
        if isinstance(v, str):
            text = v.strip()
            if not text:
                raise UserError(f"--grid {key}={_show(raw)}: an empty value; expected {_type_name(kind)}")
            try:
                if kind is int and ".." in text:
                    lo, hi = (int(t) for t in text.split(".."))
                    if lo > hi:
                        raise UserError(f"--grid {key}={text}: an empty range (a..b needs a <= b)")
                    if hi - lo >= MAX_CONFIGURATIONS:
                        raise UserError(f"--grid {key}={text}: {hi - lo + 1} values, more than a sweep takes "
                                        f"({MAX_CONFIGURATIONS} configurations at most)")
                    values.extend(range(lo, hi + 1))
                    continue
                if kind is tuple:
                    values.append(tuple(int(t) for t in text.split(":")))
                elif kind is int:
                    values.append(int(text))
                elif kind is float:
                    values.append(float(text))
                else:
                    values.append(text)
            except ValueError:
                raise bad from None
        elif kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
            values.append(float(v))
        elif kind is int and isinstance(v, int) and not isinstance(v, bool):
            values.append(v)
        elif kind is tuple and isinstance(v, (tuple, list)) and all(isinstance(t, int) for t in v):
            values.append(tuple(v))
        elif kind is str and isinstance(v, str):
            values.append(v)
        else:
            raise bad
    if choices:
        for v in values:
            if v not in choices:
                raise UserError(f"--grid {key}={v}: expected one of {', '.join(choices)}")
    if len(set(values)) != len(values):
        raise UserError(f"--grid {key}={_show(raw)}: a value appears twice")
    return values


def _check_count(counts: Sequence[int]) -> None:
    total = 1
    for n in counts:
        total *= n
        if total > MAX_CONFIGURATIONS:
            raise UserError(f"--grid: more than {MAX_CONFIGURATIONS} configurations (the product of the keys' value "
                            "counts); split the sweep")


def _show(raw: Sequence[Any]) -> str:
    return ",".join(str(v) for v in raw)


def _example(kind: type) -> str:
    return {int: "0..3", float: "1e-4,1e-3", tuple: "16:48:128", str: "split,online"}[kind]


def _arch_fields(arch: saes.Architecture) -> dict[str, type]:
    return {f.name: type(f.default) for f in dataclasses.fields(arch.config)}


def _owners(key: str) -> list[str]:
    return [a.name for a in saes.REGISTRY.values() if key in _arch_fields(a)]


@dataclass(frozen=True)
class SAEConfiguration:
    """One SAE configuration of a sweep: what a standalone `train-sae` would be called with."""

    index: int
    name: str  # its subfolder of the sweep's output folder
    values: dict[str, Any]  # the grid's values for it (key -> value), the table's columns
    variant: str
    dict_size: int
    cfg: Any  # the architecture's config
    train: SAETrainConfig
    seed: int


@dataclass(frozen=True)
class MLPConfiguration:
    """One MLP configuration: the run's MLP recipe with these fields, init and shuffling from `seed`."""

    index: int
    name: str
    values: dict[str, Any]
    cfg: MLPConfig
    seed: int


def _folder_name(index: int, values: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return ":".join(str(t) for t in v) if isinstance(v, tuple) else str(v)

    parts = [show(v) if k == "variant" else f"{k}{show(v)}" for k, v in values.items()]
    return "-".join([f"{index:03d}", *parts]).replace("/", "_")


def sae_configurations(
    grid: Mapping[str, Sequence[Any]],
    *,
    variants: Sequence[str],
    dict_size: int,
    train: SAETrainConfig,
    seed: int,
    arch_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SAEConfiguration]:
    """Every SAE configuration of the grid (raw or typed values), checked. dict_size, train, seed: the values
    of keys the grid does not set; arch_defaults: per architecture, config fields that differ from its defaults."""
    if not variants:
        raise UserError("--variant: give at least one architecture")
    archs = []
    for v in variants:
        try:
            archs.append(saes.get(v))
        except ValueError as e:
            raise UserError(f"--variant: {e}") from None
    if len(set(variants)) != len(variants):
        raise UserError(f"--variant: an architecture appears twice ({', '.join(variants)})")
    kinds: dict[str, type] = dict(SAE_KEYS)
    for arch in archs:
        kinds.update(_arch_fields(arch))
    typed: dict[str, list[Any]] = {}
    for key, raw in grid.items():
        if key not in kinds:
            owners = _owners(key)
            if owners:
                raise UserError(
                    f"--grid {key}: not a field of --variant {', '.join(variants)} (it belongs to {', '.join(owners)}); "
                    f"keys here: {', '.join(kinds)}"
                )
            raise UserError(f"--grid {key}: unknown key; expected one of {', '.join(kinds)}")
        typed[key] = typed_values(key, raw, kinds[key])
    out: list[SAEConfiguration] = []
    _check_count([len(archs), *(len(v) for v in typed.values())])
    for arch in archs:
        fields = _arch_fields(arch)
        keys = [k for k in typed if k in SAE_KEYS or k in fields]
        for combo in itertools.product(*(typed[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            arch_values = dict((arch_defaults or {}).get(arch.name, {})) | {k: v for k, v in values.items() if k in fields}
            cfg = arch.config(**arch_values)
            size = values.get("dict_size", dict_size)
            config_train = dataclasses.replace(train, **{k: values[k] for k in ("epochs", "batch_size", "lr") if k in values})
            shown = ({"variant": arch.name} if len(archs) > 1 else {}) | values
            index = len(out)
            name = _folder_name(index, shown)
            try:
                cfg.validate(size)
                config_train.validate()
                check_dict_size(size)
                check_seed(values.get("seed", seed), "seed")
            except (ValueError, UserError) as e:
                raise UserError(f"--grid: configuration {name} ({arch.name}): {e}") from None
            out.append(SAEConfiguration(index, name, shown, arch.name, size, cfg, config_train, values.get("seed", seed)))
    return out


def mlp_keys() -> dict[str, type]:
    """The MLP stage's grid keys and their types."""
    return {"seed": int} | {
        f.name: type(f.default) for f in dataclasses.fields(MLPConfig) if f.name not in MLP_SKIPPED
    }


def mlp_configurations(grid: Mapping[str, Sequence[Any]], run_config: RunConfig) -> list[MLPConfiguration]:
    """Every MLP configuration of the grid over the run's recipe (run_config.mlp, its seed by default), checked
    with the run's own rules (RunConfig.validate) against its data sizes."""
    kinds = mlp_keys()
    typed: dict[str, list[Any]] = {}
    for key, raw in grid.items():
        if key not in kinds:
            hint = " (an SAE key: use --stage sae)" if key in SAE_KEYS or _owners(key) else ""
            raise UserError(f"--grid {key}: unknown key for --stage mlp{hint}; expected one of {', '.join(kinds)}")
        typed[key] = typed_values(key, raw, kinds[key], MLP_DATA if key == "data" else ())
    out: list[MLPConfiguration] = []
    keys = list(typed)
    _check_count([len(v) for v in typed.values()])
    for combo in itertools.product(*(typed[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        cfg = dataclasses.replace(run_config.mlp, **{k: v for k, v in values.items() if k != "seed"})
        seed = values.get("seed", run_config.seed)
        name = _folder_name(len(out), values)
        try:
            check_seed(seed, "seed")
            dataclasses.replace(run_config, mlp=cfg).validate()
        except UserError as e:
            raise UserError(f"--grid: configuration {name}: {e}") from None
        out.append(MLPConfiguration(len(out), name, values, cfg, seed))
    return out
