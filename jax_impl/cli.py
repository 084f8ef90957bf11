"""`monosem`: a thin command line over the Python API (the public names in jax_impl/__init__.py and the modules
they come from). Every command runs at the highest matmul precision (jax_impl.precision)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jax_impl import __version__
from jax_impl.checks import check_memory, check_seed
from jax_impl.errors import Interrupted, UserError
from jax_impl.jobs.run_config import RECIPES, SAE_VARIANTS, RunConfig, flag_name, strong_recipe
from jax_impl.models.mlp import HOOK_WIDTHS, HOOKS
from jax_impl.precision import matmul_precision
from jax_impl.task.pointer import check_task_shape
from jax_impl.training.checkpoints import CheckpointPolicy

DEFAULT_RUN_DIR = Path("runs/default")
_CONFIG_SECTIONS = ("data", "mlp", "sae", "causal", "circuit")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    group = parser.add_argument_group("configuration (defaults: the seed recipes)")
    # Every default None: a flag not given takes the value of --config's file, else of the recipe.
    group.add_argument("--seed", type=int, default=None, help=f"PRNG seed (default {defaults.seed})")
    group.add_argument("--recipe", choices=RECIPES, default=None,
                       help="defaults for the flags below: the seed's, or the strong recipe's "
                       "(online-data MLP, TopK SAE; docs/run.md) (default seed)")
    group.add_argument("--hook", choices=HOOKS, default=None,
                       help="the MLP activation the SAE decomposes: layer1 (after bn1, 256), layer2 (after bn2, 512; "
                       "the seed's) or layer3 (after hidden2, 256) (default: the recipe's, layer2)")
    group.add_argument("--no-circuit", dest="circuit_stage", action="store_false", default=None,
                       help="leave out the circuit stage (transcoders replacing the MLP's layers and attribution "
                       "graphs of the probe's inputs, circuit/; docs/circuit.md)")
    for section in _CONFIG_SECTIONS:
        _add_section_flags(group, section, getattr(defaults, section))
    group = parser.add_argument_group("SAE architecture flags (each applies to the --sae-variant architectures named)")
    for name, (kind, default, owners) in _architecture_fields().items():
        names = dict.fromkeys([flag_name("sae", name), f"--sae-{name}".replace("_", "-")])
        group.add_argument(*names, dest=f"arch.{name}", default=None, **_arch_flag_kwargs(kind, default, owners))


def _add_section_flags(group, section: str, values: Any) -> None:
    """A flag `--{section}-{field}` (and its alias) for each field of a config dataclass; default None: a flag not
    given takes the value of the chosen --recipe (or command). Tuples of ints are written N,N,..."""
    for f in dataclasses.fields(values):
        if f.name == "architecture":
            continue  # its fields are the architecture flags
        default = getattr(values, f.name)
        systematic = f"--{section}-{f.name}".replace("_", "-")
        names = dict.fromkeys([flag_name(section, f.name), systematic])  # alias first, no duplicates
        listed = isinstance(default, tuple)
        group.add_argument(
            *names, dest=f"{section}.{f.name}", type=_parse_int_list if listed else type(default), default=None,
            metavar="N,N,..." if listed else type(default).__name__.upper(),
            help=f"default {','.join(map(str, default)) if listed else default}",
        )


def _config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """`run`'s RunConfig: the flags given, on top of `base` (the config of --config's file) or else of the recipe's
    defaults; validated."""
    if base is not None and args.recipe is not None:
        raise UserError(f"--recipe {args.recipe} with --config {args.config}: the file holds a whole config (of the "
                        f"{base.recipe} recipe); give the flags of the values to change instead")
    defaults = base if base is not None else strong_recipe() if args.recipe == "strong" else RunConfig()
    seed = defaults.seed if args.seed is None else args.seed
    check_seed(seed)
    sections = {}
    for section in _CONFIG_SECTIONS:
        given = {f.name: getattr(args, f"{section}.{f.name}", None) for f in dataclasses.fields(getattr(defaults, section))}
        sections[section] = dataclasses.replace(
            getattr(defaults, section), **{name: value for name, value in given.items() if value is not None}
        )
    sae = sections["sae"]
    if sae.variant in SAE_VARIANTS:
        # The recipe's architecture config when the variant is the recipe's own, else the variant's defaults,
        # with the architecture flags given on top (a flag of another architecture is an error).
        base = defaults.sae.architecture if sae.variant == defaults.sae.variant else None
        arch_config = _architecture_config(args, sae.variant, base, flag=lambda name: flag_name("sae", name),
                                           variant_flag="--sae-variant")
        sections["sae"] = dataclasses.replace(sae, architecture=arch_config)
    hook = defaults.hook if args.hook is None else args.hook
    circuit_stage = defaults.circuit_stage if args.circuit_stage is None else args.circuit_stage
    return RunConfig(seed=seed, recipe=defaults.recipe, hook=hook, circuit_stage=circuit_stage, **sections).validate()


# --- commands -----------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    base = None if args.config is None else RunConfig.from_record(args.config)
    config = _config_from_args(args, base)  # a bad flag is reported before the slow imports (jax, torch)
    check_memory(config.memory_bytes(), config.memory_flags(), "the run")
    policy = CheckpointPolicy.parse(args.checkpoint_every)
    curves = _curve_config(args)
    from jax_impl.jobs.pipeline import run_pipeline
    from jax_impl.training import interrupts

    with interrupts.handled():
        run_pipeline(config, args.run_dir, resume=args.resume, checkpoint_every=policy, curves=curves)
    return 0


def _run_config(run_dir: Path) -> RunConfig:
    from jax_impl.jobs.rundir import run_config

    return run_config(run_dir)


def _run_with_sae(args: argparse.Namespace, writes: bool):
    """The run of --run-dir, with --sae in place of its own SAE; where the command writes files, --sae needs
    --out so that the run's own atlas and reports are never overwritten with another SAE's."""
    from jax_impl.jobs.rundir import Run

    sae, out = getattr(args, "sae", None), getattr(args, "out", None)
    if writes and sae is not None and out is None:
        raise UserError(f"--sae {sae}: give --out DIR for the files (the run's own, of its own SAE, stay as they are)")
    if sae is not None and not sae.exists():
        raise UserError(f"--sae {sae}: no such file or folder")
    return Run(args.run_dir, _run_config(args.run_dir), sae_path=sae, out_dir=out)


def cmd_probe(args: argparse.Namespace) -> int:

    from jax_impl.jobs.pipeline import probe_inputs, probe_text
    from jax_impl.task.pointer import parse_input_rows

    run = _run_with_sae(args, writes=False)
    if args.input:
        rows = parse_input_rows(args.input, run.shape)
    else:
        rows = probe_inputs(run.shape, run.splits["test"])
    print(probe_text(run, rows))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jax_impl.evaluation import inference
    from jax_impl.files.atomic import atomic_path
    from jax_impl.interop import bridge, saelens
    from jax_impl.task.pointer import TaskShape
    from jax_impl.task.splits import read_split

    check_task_shape(args.x_dim, args.y_dim)
    shape = TaskShape(args.x_dim, args.y_dim)
    mlp = bridge.load_mlp(args.mlp)
    if mlp.input.in_features != shape.input_dim:
        raise UserError(
            f"{args.mlp}: the MLP takes {mlp.input.in_features} inputs but --x-dim {args.x_dim} x --y-dim {args.y_dim} "
            f"rows have {shape.input_dim}"
        )
    sae = saelens.load_sae(args.sae, input_dim=HOOK_WIDTHS[args.hook]) if args.sae else None
    split = read_split(args.data, shape)
    metrics = inference.evaluate(mlp, split, sae, args.hook)
    if sae is not None:
        from jax_impl.evaluation.inference import model_splice_metrics

        metrics.update(model_splice_metrics(mlp, sae, split, args.hook))
    if args.predictions:
        prediction, _ = inference.mlp_forward(mlp, split.inputs)
        with atomic_path(args.predictions) as tmp:
            tmp.write_text("prediction\n" + "".join(f"{v:.9g}\n" for v in prediction.tolist()), encoding="utf-8")
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:<20} {v:.6f}" if isinstance(v, float) else f"{k:<20} {v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jax_impl.jobs.export import export_run

    for path in export_run(args.run_dir).values():
        print(f"wrote {path}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from jax_impl.jobs.parity import compare_run, format_table

    rows = compare_run(args.run_dir)
    print(format_table(rows))
    return 0 if all(row.ok for row in rows) else 1


@contextlib.contextmanager
def _output_set(out_dir: Path, flag: str) -> Iterator[Path]:
    """Hold out_dir's lock (jax_impl.files.locks) and yield a staging folder whose files are committed into out_dir
    as one artifact set (jax_impl.files.artifact_set): a failure leaves out_dir's previous files as they were."""
    from jax_impl.files.artifact_set import artifact_set
    from jax_impl.files.locks import folder_lock, remove_stale_temporaries
    from jax_impl.jobs.rundir import WRITTEN_FOLDERS

    with folder_lock(out_dir, flag=flag, what="output folder"):
        remove_stale_temporaries(out_dir, WRITTEN_FOLDERS)
        with artifact_set(out_dir) as staging:
            yield staging


def cmd_report(args: argparse.Namespace) -> int:
    from jax_impl.jobs.pipeline import stage_reports

    run = _run_with_sae(args, writes=True)
    with _output_set(run.out_dir, "--out" if args.out else "--run-dir") as staging:
        stage_reports(run, staging)
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from jax_impl.evaluation.atlas.document import atlas_from_models, format_summary
    from jax_impl.reports.atlas_page import write_atlas
    from jax_impl.task.pointer import SPLITS

    if not 0 < args.min_f1 <= 1:  # not NaN either: every comparison with NaN is false
        raise UserError(f"--min-f1 must be in (0, 1], got {args.min_f1}")
    if not 0 < args.steer_scale < math.inf:
        raise UserError(f"--steer-scale must be a finite number > 0, got {args.steer_scale}")
    if not math.isfinite(args.min_gain):
        raise UserError(f"--min-gain must be a finite number, got {args.min_gain}")
    run = _run_with_sae(args, writes=True)
    names = SPLITS if args.split == "all" else (args.split,)
    doc = atlas_from_models(
        run.mlp, run.sae, run.rows(names), run.shape,
        source=("the run's train, val and test splits" if args.split == "all" else f"the run's {args.split} split")
        + (f" with the SAE {args.sae.name}" if args.sae else ""),  # no path: the bytes do not depend on where it runs
        hook=run.hook, min_f1=args.min_f1, min_gain=args.min_gain, steer_scale=args.steer_scale,
    )
    print(format_summary(doc))
    from jax_impl.jobs.dashboard import DASHBOARD_PAGE

    dashboard = DASHBOARD_PAGE if (run.out_dir / DASHBOARD_PAGE).is_file() else None  # the run's, when there
    with _output_set(run.out_dir, "--out" if args.out else "--run-dir") as staging:
        written = write_atlas(doc, staging, dashboard=dashboard)
    for path in written:
        print(f"Saved {run.out_dir / path.relative_to(staging)}")
    return 0


def cmd_causal(args: argparse.Namespace) -> int:
    from jax_impl.evaluation.causal.config import CausalConfig
    from jax_impl.files.locks import folder_lock, remove_stale_temporaries
    from jax_impl.jobs.causal import causal_map, check_hooks, parse_sae_flags
    from jax_impl.jobs.rundir import WRITTEN_FOLDERS, Run
    from jax_impl.task.pointer import TaskShape
    from jax_impl.task.variables import TaskVariables

    config = CausalConfig.quick() if args.quick else CausalConfig()
    given = {f.name: getattr(args, f"causal.{f.name}") for f in dataclasses.fields(CausalConfig)}
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None}).validate()
    hooks = None if args.hooks is None else [h.strip() for h in args.hooks.split(",") if h.strip()]
    if hooks == []:  # given but naming none: not "all hooks", which is what leaving --hooks out means
        raise UserError(f"--hooks {args.hooks!r}: no hook named; expected some of {', '.join(HOOKS)}")
    run_config = _run_config(args.run_dir)
    config.variable_names(TaskVariables(TaskShape(run_config.data.x_dim, run_config.data.y_dim)).names)
    check_memory(config.memory_bytes(run_config.data.x_dim * run_config.data.y_dim, max(HOOK_WIDTHS.values())),
                 config.memory_flags(), "the causal map")
    hooks, sae_paths = check_hooks(hooks, parse_sae_flags(args.sae or [], run_config.hook))
    for hook, path in sae_paths.items():
        if not path.exists():
            raise UserError(f"--sae {path}: no such file or folder (for {hook})")
    out_dir = args.out or args.run_dir
    run = Run(args.run_dir, run_config, out_dir=out_dir)
    with folder_lock(Path(out_dir), flag="--out" if args.out else "--run-dir", what="output folder"):
        remove_stale_temporaries(Path(out_dir), WRITTEN_FOLDERS)
        document = causal_map(run, hooks=hooks, sae_paths=sae_paths, config=config)
    print(f"Saved {Path(out_dir) / 'causal' / 'causal.json'} and causal.html")
    return 0 if document else 1


def cmd_circuit(args: argparse.Namespace) -> int:
    from jax_impl.evaluation.circuit.config import CircuitConfig

    given = {f.name: getattr(args, f"circuit.{f.name}") for f in dataclasses.fields(CircuitConfig)}
    config = dataclasses.replace(CircuitConfig(), **{k: v for k, v in given.items() if v is not None}).validate()
    run_config = _run_config(args.run_dir)  # a missing or unreadable run directory, before the slow imports
    from jax_impl.files.locks import folder_lock, remove_stale_temporaries
    from jax_impl.jobs.circuit import CIRCUIT_DIR, TRANSCODERS_DIR, circuit
    from jax_impl.jobs.rundir import Run
    from jax_impl.task.pointer import parse_input_rows

    run = Run(args.run_dir, run_config)
    rows = parse_input_rows(args.input, run.shape)
    root = Path(args.out) if args.out else Path(args.run_dir) / CIRCUIT_DIR
    with folder_lock(root, flag="--out" if args.out else "--run-dir", what="output folder"):
        remove_stale_temporaries(root, [f"{TRANSCODERS_DIR}/*"])
        circuit(run, rows, out=root, config=config)
    return 0


def _architecture_config(args: argparse.Namespace, variant: str, base: Any, flag, variant_flag: str) -> Any:
    """The architecture config of `variant` from `base` (None: its defaults) and the architecture flags given
    (`arch.NAME` in args); UserError naming the flags that belong to other architectures."""
    from jax_impl import saes

    arch = saes.get(variant)
    own = {f.name for f in dataclasses.fields(arch.config)}
    given = {name: getattr(args, f"arch.{name}") for name in _architecture_fields()}
    foreign = [flag(name) for name, value in given.items() if value is not None and name not in own]
    if foreign:
        raise UserError(f"{', '.join(foreign)} does not apply to {variant_flag} {variant} "
                        f"(its flags: {', '.join(flag(n) for n in sorted(own)) or 'none'})")
    return dataclasses.replace(arch.config() if base is None else base,
                               **{name: value for name, value in given.items() if value is not None})


def _arch_flag_kwargs(kind: type, default: Any, owners: list[str]) -> dict[str, Any]:
    return dict(
        type=_parse_int_list if kind is tuple else kind, metavar="N,N,..." if kind is tuple else kind.__name__.upper(),
        help=f"{', '.join(owners)} (default {default if default != () else 'dict_size/8, /4, /2, all'})",
    )


def _architecture_fields() -> dict[str, tuple[type, Any, list[str]]]:
    """Every architecture config field: name -> (type, default, architectures that have it)."""
    from jax_impl import saes

    fields: dict[str, tuple[type, Any, list[str]]] = {}
    for arch in saes.REGISTRY.values():
        for f in dataclasses.fields(arch.config):
            default = f.default
            kind, _, owners = fields.get(f.name, (type(default), default, []))
            fields[f.name] = (kind, default, [*owners, arch.name])
    return fields


def _add_sae_flag(p: argparse.ArgumentParser, writes: bool) -> None:
    p.add_argument("--sae", type=Path, metavar="PATH", help="use this SAE with the run's MLP instead of the run's own: "
                   "a .pth, a .safetensors or a SAELens folder (cfg.json + sae_weights.safetensors)")
    if writes:
        p.add_argument("--out", type=Path, metavar="DIR", help="where to write (default the run directory; "
                       "required with --sae)")


# train-sae's and sweep's flags, and the fields and arguments their library messages name (TrainSAEConfig.validate,
# train_sae, run_sweep: `dict_size must be >= 1`): `--` and the name with dashes, but these.
_FLAG_OF_NAME = {"groups": "--matryoshka-groups", "variants": "--variant", "out_dir": "--out",
                 "cluster": "--coordinator", "train": "--epochs/--batch-size/--lr/--log-every"}


def _flag(name: str) -> str:
    """The flag of a field or argument that a message of train-sae's or sweep's library names."""
    return _FLAG_OF_NAME.get(name, f"--{name.replace('_', '-')}")


# The TrainSAEConfig fields a sweep takes (where its grid does not set them); its own --variant and --chunk-rows differ.
_SWEEP_SAE_FIELDS = ("dict_size", "epochs", "batch_size", "lr", "log_every", "seed", "skip")


def _add_train_sae_flags(group, sweep: bool = False) -> None:
    """A flag for each field of TrainSAEConfig (but `architecture`: its fields are the architecture flags), its type,
    default and help from the field. sweep: those of the fields a sweep takes as the values its grid does not set
    (default None: the run's, else TrainSAEConfig's)."""
    from jax_impl.jobs.sweep_grid import SAE_KEYS
    from jax_impl.jobs.train_sae import TrainSAEConfig

    for f in dataclasses.fields(TrainSAEConfig):
        if f.name == "architecture" or (sweep and f.name not in _SWEEP_SAE_FIELDS):
            continue
        shown = f.metadata.get("shown_default", f.default)
        if isinstance(f.default, bool):  # a switch, off unless given (or --config's file sets it)
            group.add_argument(_flag(f.name), dest=f.name, action="store_true", default=None, help=f.metadata["help"])
            continue
        if sweep:
            where = f" where --grid does not set {f.name}" if f.name in SAE_KEYS else ""
            text = f"{f.metadata['help']}{where} (default: the run's, else {shown})"
        else:
            text = f"{f.metadata['help']} (default {shown})"
        # default None: a flag not given takes the value of --config's file, else the field's default
        group.add_argument(_flag(f.name), dest=f.name, type=f.metadata.get("type", type(f.default)),
                           choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"), default=None,
                           help=text)


def _add_curve_flags(p) -> None:
    """The training curves' flags (jax_impl.training.curves.CurveConfig's fields: type, default, help)."""
    from jax_impl.training.curves import CurveConfig

    group = p.add_argument_group("training curves (metrics.jsonl in the output folder; docs/curves.md)")
    for f in dataclasses.fields(CurveConfig):
        shown = f.metadata.get("shown_default", f.default)
        group.add_argument(_flag(f.name), dest=f"curves.{f.name}", type=f.metadata.get("type", type(f.default)),
                           metavar=f.metadata.get("metavar"), default=f.default, help=f"{f.metadata['help']} "
                           f"(default {shown})")


def _curve_config(args: argparse.Namespace):
    """The CurveConfig of the curve flags, checked (UserError naming the flag)."""
    from jax_impl.training.curves import CurveConfig

    given = {f.name: getattr(args, f"curves.{f.name}") for f in dataclasses.fields(CurveConfig)}
    return CurveConfig(**given).validate(_flag)


def _train_sae_config(args: argparse.Namespace, base: Any = None):
    """train-sae's TrainSAEConfig: the flags given on top of `base` (the config of --config's file; None: the
    defaults), checked (UserError naming the flag). The architecture's config is base's while the variant is."""
    from jax_impl.jobs.train_sae import TrainSAEConfig

    base = TrainSAEConfig() if base is None else base
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSAEConfig) if f.name != "architecture"}
    given = {name: value for name, value in given.items() if value is not None}
    variant = given.get("variant", base.variant)
    architecture = _architecture_config(args, variant, base.architecture if variant == base.variant else None,
                                        flag=_flag, variant_flag=_flag("variant"))
    return dataclasses.replace(base, **given, architecture=architecture).validate(_flag)


def _parse_int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 16,48,128, got {text!r}") from None


def cmd_train_sae(args: argparse.Namespace) -> int:
    from jax_impl.jobs.train_sae import train_sae

    record = None
    if args.config is not None:
        from jax_impl.jobs.records import train_sae_from_record

        record = train_sae_from_record(args.config)
    config = _train_sae_config(args, None if record is None else record.config)
    if record is not None:
        _check_recorded_data(args, record, config.skip)
    cluster = None
    given = [f for f, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                            ("--process-id", args.process_id)) if v is not None]
    if given:
        if len(given) != 3:
            raise UserError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes P and "
                            f"--process-id I (got only {', '.join(given)})")
        from jax_impl.training.distributed import Cluster

        cluster = Cluster(args.coordinator, args.num_processes, args.process_id, args.peer_timeout).validate()
    policy = CheckpointPolicy.parse(args.checkpoint_every)
    from jax_impl.training import interrupts

    with interrupts.handled():
        train_sae(args.activations, args.out, config, target=args.target, cluster=cluster, resume=args.resume,
                  checkpoint_every=policy, curves=_curve_config(args), flag=_flag)
    return 0


def _check_recorded_data(args: argparse.Namespace, record: Any, skip: bool) -> None:
    """train-sae --config: the data given against the data the record names (jax_impl.jobs.records.check_data; given
    explicitly, so a difference is one line, not an error). A transcoder's record needs --target again."""
    from jax_impl.jobs.records import check_data, current_data

    if record.transcoder and args.target is None:
        raise UserError(f"{args.config}: key target: records a transcoder predicting {record.data['target']['file']}; "
                        "give --target FILE too")
    current = current_data(activations=args.activations, target=args.target, skip=skip)
    check_data(record.data, current, where=args.config, prefix="", explicit=lambda part: True,
               flag_of=lambda part: f"--{part}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from jax_impl.jobs.sweep import run_sweep, sae_defaults
    from jax_impl.jobs.sweep_grid import parse_grid

    record = None
    if args.config is not None:
        from jax_impl.jobs.records import sweep_from_record

        record = sweep_from_record(args.config)
    # The flags given, each on top of the file's value (--grid key by key); the source as a whole.
    source_given = args.activations is not None or args.run_dir is not None
    if record is None and not source_given:
        raise UserError("give one of --activations FILE and --run-dir DIR (or --config, a sweep.json to rerun)")
    activations, run_dir = (args.activations, args.run_dir) if source_given else (record.activations, record.run_dir)

    def given_or_recorded(value: Any, name: str, default: Any = None) -> Any:
        return value if value is not None else default if record is None else getattr(record, name)

    stage = given_or_recorded(args.stage, "stage", "sae")
    grid = {**({} if record is None else record.grid), **parse_grid(args.grid or [])}
    target = given_or_recorded(args.target, "target")
    skip = bool(given_or_recorded(args.skip, "skip", False))
    atlas_scores = not args.no_atlas if args.no_atlas is not None else given_or_recorded(None, "atlas_scores", True)
    variants = [v.strip() for v in args.variant.split(",")] if args.variant else given_or_recorded(None, "variants")
    chunk_rows = given_or_recorded(args.chunk_rows, "chunk_rows", _default_chunk_rows())
    train = given_or_recorded(None, "train")
    given = {name: getattr(args, name) for name in ("epochs", "batch_size", "lr", "log_every")}
    if any(v is not None for v in given.values()):
        if stage == "mlp":
            raise UserError("--epochs/--batch-size/--lr/--log-every set the SAE's training; with --stage mlp use "
                            "--grid epochs=..., --grid batch_size=..., --grid max_lr=...")
        if train is None:
            train = sae_defaults(None if run_dir is None else _run_config(Path(run_dir))).train_config()
        train = dataclasses.replace(train, **{name: value for name, value in given.items() if value is not None})
    if record is not None:
        from jax_impl.jobs.records import check_data, current_data, recorded_paths

        recorded_paths(record, source=not source_given, target=args.target is None)
        current = current_data(activations=activations, target=target, skip=skip, run_dir=run_dir, stage=stage)
        check_data(record.data, current, where=args.config, prefix="data.",
                   explicit=lambda part: args.target is not None if part == "target" else source_given,
                   flag_of=lambda part: {"target": "--target", "activations": "--activations"}.get(part, "--run-dir"))
    policy = CheckpointPolicy.parse(args.checkpoint_every)
    from jax_impl.training import interrupts

    with interrupts.handled():
        doc = run_sweep(args.out, grid, stage=stage, activations=activations, run_dir=run_dir, target=target,
                        skip=skip, variants=variants, dict_size=given_or_recorded(args.dict_size, "dict_size"),
                        train=train, seed=given_or_recorded(args.seed, "seed"), chunk_rows=chunk_rows,
                        atlas_scores=atlas_scores, resume=args.resume, checkpoint_every=policy, curves=_curve_config(args),
                        flag=_flag)
    # A configuration that diverged is a result of the sweep (its row says why, it has no folder), not a reason to
    # lose the others: they are written. But the sweep did not train everything it was asked to: exit code 1, as
    # `parity` when a result is off, with one line (2 stays for input refused before anything ran).
    failed = [row for row in doc["configurations"] if row.get("status") != "ok"]
    if failed:
        print(f"monosem: {len(failed)} of {len(doc['configurations'])} configurations failed and have no folder; "
              f"the status column of {Path(args.out) / 'sweep.csv'} says why (first: {_one_line(failed[0]['status'])})",
              file=sys.stderr)
        return 1
    return 0


def _default_chunk_rows() -> int:
    from jax_impl.jobs.train_sae import TrainSAEConfig

    return TrainSAEConfig.chunk_rows


def _given_config(args: argparse.Namespace, section: str, kind: type) -> Any:
    """A config dataclass `kind` of the flags stored as `section.FIELD` that were given (None: not given: the
    field's default)."""
    given = {f.name: getattr(args, f"{section}.{f.name}") for f in dataclasses.fields(kind)}
    return kind(**{name: value for name, value in given.items() if value is not None})


def cmd_dashboard(args: argparse.Namespace) -> int:
    from jax_impl.evaluation.dashboard import DashboardConfig
    from jax_impl.jobs.dashboard import dashboard

    config = _given_config(args, "dashboard", DashboardConfig)
    try:
        config.validate()
    except ValueError as e:
        raise UserError(f"--{str(e).replace('_', '-')}") from None
    page = dashboard(args.sae, args.activations, args.out, labels=args.labels, config=config)
    print(f"Saved {page}")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from jax_impl.data.synthetic import SyntheticConfig, write_synthetic

    cfg = _given_config(args, "synthetic", SyntheticConfig)
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(f"monosem synthetic: {e}") from None
    check_memory(cfg.memory_bytes(), f"--rows {cfg.rows}, --dim {cfg.dim} and --n-features {cfg.n_features}",
                 "generating the data")
    out = write_synthetic(cfg, args.out)
    print(f"Wrote {cfg.rows} x {cfg.dim} activations with {cfg.n_features} planted features to {out} "
          f"(train: monosem train-sae --activations {out / 'activations.npy'}; score: monosem synthetic-score)")
    return 0


def cmd_synthetic_score(args: argparse.Namespace) -> int:
    from jax_impl.evaluation.groundtruth import score_file

    scores = score_file(args.sae, args.data)
    if args.json:
        print(json.dumps(scores))
        return 0
    for name, value in scores.items():
        print(f"{name:<20} {'n/a' if value is None else f'{value:.4f}'}")
    return 0


# --- parser -------------------------------------------------------------------------------------------------


def _add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", default="60s", metavar="N|Ns|off",
                   help="save the training state every N epochs, or at the first epoch end N seconds after the "
                   "last save (e.g. 60s, 5m), or off; the last two are kept (default 60s)")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no multi-line usage block), exit code 2 as usual."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="monosem",
        description="Train the pointer-task MLP in JAX, decompose its hidden layer with a sparse autoencoder, "
        "and write PyTorch-compatible artifacts.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"monosem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline into a run directory")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.add_argument("--resume", action="store_true", help="continue after the last completed stage, and inside an "
                   "unfinished training stage from its newest checkpoint")
    _add_checkpoint_flag(p)
    p.add_argument("--config", type=Path, metavar="FILE", help="rerun the run a manifest.json records (flags given "
                   "beside it override its values; docs/run.md)")
    _add_curve_flags(p)
    _add_config_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("probe", help="print which SAE features fire on given inputs")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.add_argument("--input", action="append", metavar="ROW", help="e.g. 8,9,5,1,3,2,9,4,7,1 (repeatable); "
                   "default: the seed's five probe inputs")
    _add_sae_flag(p, writes=False)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("evaluate", help="metrics of torch .pth models on an xlsx split")
    p.add_argument("--mlp", type=Path, required=True, help="InterpretabilityMLP state_dict (.pth)")
    p.add_argument("--data", type=Path, required=True, help="an upstream-format split (.xlsx)")
    p.add_argument("--sae", type=Path, help="an SAE (.pth, .safetensors or a SAELens folder): adds reconstruction metrics")
    p.add_argument("--hook", choices=HOOKS, default="layer2", help="the activation --sae reads (default layer2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--predictions", type=Path, metavar="CSV", help="write one prediction per row, in row order")
    p.add_argument("--x-dim", type=int, default=5, help="task shape: entries per column (default 5)")
    p.add_argument("--y-dim", type=int, default=2, help="task shape: columns (default 2)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write TorchScript and torch.export programs of a run's models")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="compare a run's models in JAX and PyTorch on all its rows (exit 1 if off)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("report", help="write the circuit trace workbook and the three offline HTML reports")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    _add_sae_flag(p, writes=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("atlas", help="label every SAE feature with a task concept, test the labels causally, "
                       "write feature_atlas.html/.json")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all", help="rows to use (default all)")
    p.add_argument("--min-f1", type=float, default=0.7, help="best-concept F1 for a monosemantic feature (default 0.7)")
    p.add_argument("--min-gain", type=float, default=0.5, help="steering gain for a causally consistent label (default 0.5)")
    p.add_argument("--steer-scale", type=float, default=1.0,
                   help="clamp value in units of the feature's mean activation on its concept (default 1)")
    _add_sae_flag(p, writes=True)
    p.set_defaults(func=cmd_atlas)

    from jax_impl.evaluation.causal.config import CausalConfig
    from jax_impl.jobs.train_sae import TrainSAEConfig  # its fields are train-sae's flags
    from jax_impl.saes import NAMES  # the registry: its names and its configs' fields are the flags below
    from jax_impl.training.distributed import DEFAULT_TIMEOUT_S

    p = sub.add_parser("causal", help="interchange interventions for every task variable at each hook: whole vector, "
                       "learned subspaces (DAS) and named SAE features; writes causal/causal.json and causal.html")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.add_argument("--hooks", metavar="H[,H...]", help=f"hooks to analyse, of {', '.join(HOOKS)} (default all)")
    p.add_argument("--sae", action="append", metavar="[HOOK=]PATH", help="the SAE for a hook (repeatable; without HOOK= "
                   "the run's hook): a .pth, a .safetensors or a SAELens folder. A hook without one uses the run's SAE "
                   "at the run's hook, else one trained with the run's recipe into causal/saes/HOOK/")
    p.add_argument("--out", type=Path, metavar="DIR", help="where causal/ goes (default the run directory)")
    p.add_argument("--quick", action="store_true", help="the pipeline stage's lighter settings (fewer pairs, ranks "
                   "1, 4, 16, shorter DAS training)")
    _add_section_flags(p.add_argument_group("measurement (defaults: the full map)"), "causal", CausalConfig())
    p.set_defaults(func=cmd_causal)

    from jax_impl.evaluation.circuit.config import CircuitConfig

    p = sub.add_parser("circuit", help="replace the run's MLP layers by transcoders and write attribution graphs of "
                       "inputs (circuit/circuit.json: nodes, edges, completeness, checks, global view)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help=f"default {DEFAULT_RUN_DIR}")
    p.add_argument("--input", action="append", required=True, metavar="V,V,...",
                   help="a task row to trace, e.g. 8,9,5,1,3,2,9,4,7,1 (repeatable)")
    p.add_argument("--out", type=Path, metavar="DIR", help="writes DIR/circuit.json and DIR/transcoders/ "
                   "(default the run's circuit/)")
    _add_section_flags(p.add_argument_group("transcoders and graphs (docs/circuit.md)"), "circuit", CircuitConfig())
    p.set_defaults(func=cmd_circuit)

    p = sub.add_parser("train-sae", help="train an SAE of any architecture on an (N, d) float32 activation file")
    p.add_argument("--activations", type=Path, required=True, metavar="PATH",
                   help=".pt (one tensor), .npy (memory-mapped, streamed in chunks) or .safetensors (one tensor); a "
                   "folder or quoted glob of .npy/.safetensors shards; a SAELens cached-activations folder")
    p.add_argument("--target", type=Path, metavar="FILE", help="train a transcoder: its encoder reads --activations, "
                   "its decoder predicts this file's rows (N, d_out), one per row of --activations (the same formats)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes sae.pth, sae_config.json, metrics.json")
    p.add_argument("--config", type=Path, metavar="FILE", help="rerun the training a sae_config.json records, on "
                   "--activations given again (flags given beside it override its values; docs/train-sae.md)")
    _add_train_sae_flags(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted training from its newest "
                   "checkpoint in --out (same flags and activations)")
    _add_checkpoint_flag(p)
    _add_curve_flags(p)
    group = p.add_argument_group("many hosts (JAX's multi-process runtime; start one process per host with the same "
                                 "flags but --process-id; process 0 writes --out; docs/devices.md)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address for the coordination service")
    group.add_argument("--num-processes", type=int, metavar="P", help="how many processes take part")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0..P-1")
    group.add_argument("--peer-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help="how long a peer may be missing or silent before every process stops with an error "
                       f"(default {DEFAULT_TIMEOUT_S:g})")
    group = p.add_argument_group("architecture flags (each applies to the architectures named)")
    for name, (kind, default, owners) in _architecture_fields().items():
        group.add_argument(_flag(name), dest=f"arch.{name}", default=None, **_arch_flag_kwargs(kind, default, owners))
    p.set_defaults(func=cmd_train_sae)

    p = sub.add_parser("sweep", help="train a grid of SAE (or MLP) configurations, those of one shape together in one "
                       "vmapped program; writes one folder per configuration, sweep.csv/.json and a Pareto plot")
    source = p.add_mutually_exclusive_group()  # one of them, or --config's
    source.add_argument("--activations", type=Path, metavar="PATH", help="an (N, d) float32 file, shards or a SAELens "
                        "cache, as for train-sae")
    source.add_argument("--run-dir", type=Path, metavar="DIR", help="a run directory: its activations and SAE settings "
                        "(and the atlas scores of every SAE), or with --stage mlp its MLP recipe and splits")
    p.add_argument("--target", type=Path, metavar="FILE", help="with --activations: train transcoders that predict "
                   "this file's rows (N, d_out), as train-sae --target")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the sweep's folder")
    p.add_argument("--config", type=Path, metavar="FILE", help="rerun the sweep a sweep.json records (flags given "
                   "beside it override its values, --grid key by key; docs/sweeps.md)")
    p.add_argument("--stage", choices=("sae", "mlp"), default=None, help="what to train (default sae)")
    p.add_argument("--variant", metavar="NAME[,NAME...]", help=f"SAE architecture(s): {', '.join(NAMES)} "
                   f"(default: the run's, else {TrainSAEConfig.variant})")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="a key and its values (repeatable; ints also a..b, groups as 16:48:128): seed, dict_size, "
                   "epochs, batch_size, lr or any field of the architecture (k, l1_coeff, aux_coeff, ...); "
                   "--stage mlp: seed and the MLP recipe's fields (max_lr, epochs, ...)")
    _add_train_sae_flags(p, sweep=True)
    p.add_argument("--chunk-rows", type=int, default=None, help="the most rows a sweep holds in "
                   f"memory (default {TrainSAEConfig.chunk_rows}; larger files: train-sae streams them)")
    p.add_argument("--no-atlas", action="store_true", default=None, help="with --run-dir: skip the atlas scores (faster)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out (same flags): finished "
                   "groups are read back, an interrupted one continues from its newest checkpoint")
    _add_checkpoint_flag(p)
    _add_curve_flags(p)
    p.set_defaults(func=cmd_sweep)

    from jax_impl.evaluation.dashboard import DashboardConfig

    p = sub.add_parser("dashboard", help="write an offline page of every feature of any SAE over activations: density, "
                       "histogram, top rows with your labels, decoder neighbours, search (docs/dashboard.md)")
    p.add_argument("--sae", type=Path, required=True, metavar="PATH",
                   help="a .pth, a .safetensors or a SAELens folder (e.g. train-sae's --out DIR/sae.pth)")
    p.add_argument("--activations", type=Path, required=True, metavar="FILE",
                   help="(N, d) float32 .npy, .safetensors or .pt/.pth, d the SAE's input width")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="a header row of column names (e.g. token,context), then one row per activation row")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="writes DIR/dashboard.html, DIR/dashboard_data/, DIR/dashboard.json")
    group = p.add_argument_group("the dashboard")
    for f in dataclasses.fields(DashboardConfig):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"dashboard.{f.name}", type=int, default=None,
                           metavar="N", help=f"{f.metadata['help']} (default {f.default})")
    p.set_defaults(func=cmd_dashboard)

    from jax_impl.data.synthetic import SyntheticConfig

    p = sub.add_parser("synthetic", help="write activations built from planted features (a ground truth to score SAEs on)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="writes activations.npy, ground_truth.npz, synthetic_config.json")
    group = p.add_argument_group("the planted problem")
    for f in dataclasses.fields(SyntheticConfig):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"synthetic.{f.name}", type=type(f.default),
                           default=None, metavar=type(f.default).__name__.upper(), help=f"default {f.default}")
    p.set_defaults(func=cmd_synthetic)

    p = sub.add_parser("synthetic-score", help="score an SAE against the features planted by `monosem synthetic`")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="a folder written by `monosem synthetic`")
    p.add_argument("--sae", type=Path, required=True, metavar="PATH",
                   help="a .pth, a .safetensors or a SAELens folder (e.g. train-sae's --out DIR/sae.pth)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_synthetic_score)
    return parser


# Every character str.splitlines() breaks at: a message naming a file or a key with one of them in it
# (from a hostile file, or a file name with a newline) must still be one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def _one_line(message: object) -> str:
    return str(message).translate(_LINE_BREAKS)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with matmul_precision():  # float32 matmuls at full precision for everything a command computes
            return args.func(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"monosem: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        # torch is optional (training on .npy / .safetensors runs without it); the commands that write or read
        # torch files, export programs or compare with the torch reference need it.
        print(f"monosem: error: monosem {args.command} needs PyTorch, which is not installed (pip install torch)",
              file=sys.stderr)
        return 2
    except MemoryError as e:  # past the estimates of jax_impl.checks.check_memory: numpy's own message names the size
        if args.debug:
            traceback.print_exc()
        print(f"monosem: error: out of memory ({_one_line(e) or 'MemoryError'}); lower the sizes given", file=sys.stderr)
        return 2
    except OSError as e:  # a path given cannot be used: a file where a folder goes, no permission, disk full
        if args.debug:
            traceback.print_exc()
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
        print(f"monosem: error: {_one_line(names + ': ' if names else '')}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM, handled by jax_impl.training.interrupts: what was saved, how to go on
        print(f"monosem: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("monosem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
