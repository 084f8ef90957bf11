"""Every flag of every subcommand is checked before anything is trained or written (issue 24, item 5).

The cases are generated from the parser (its argparse actions), so a new flag is covered without a new test: every
float flag with nan, inf and -inf, every integer (or integer list) flag with -1 and, unless 0 is one of its
meaningful values (ZERO_ALLOWED: seeds, a process number, counts of optional things), with 0. Each goes through
`jax_impl.cli.main` in-process and must come back as exit code 2 with one line on stderr that names the flag (or
the config field it sets), before training: the trainers and writers are replaced by a tripwire, and no output
folder may appear. Beside those, sizes whose memory cannot fit (an estimate, before anything is allocated), an
explicit --dict-size 0 for every architecture, and every key of a sweep's grid.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from jax_impl import cli, saes
from jax_impl.cli import build_parser, main
from jax_impl.errors import UserError
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.sweep_grid import SAE_KEYS, mlp_configurations, mlp_keys, sae_configurations
from jax_impl.training.sae_trainer import SAETrainConfig

# Where 0 is a meaningful value of an integer flag (by argparse dest): it must still refuse -1.
ZERO_ALLOWED = {"seed", "causal.seed", "synthetic.seed", "process_id", "shuffle_buffer", "synthetic.parents",
                "synthetic.children_per_parent", "synthetic.correlation_rank", "circuit.train_rows", "circuit.checks",
                "circuit.edge_checks", "circuit.skip", "circuit.chained", "circuit.finetune_epochs", "circuit.seed",
                "dashboard.neighbours", "dashboard.chunk_rows",
                "curves.curve_every"}
CLUSTER = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _base(command: str, tmp: Path, acts: Path) -> list[str]:
    """Each subcommand's required arguments: real activations where the command reads them before its flags are
    all checked, paths that do not exist elsewhere (the flag must be refused before they are looked at)."""
    missing = str(tmp / "missing")
    return {
        "run": ["--run-dir", str(tmp / "out")],
        "probe": ["--run-dir", missing], "export": ["--run-dir", missing], "parity": ["--run-dir", missing],
        "report": ["--run-dir", missing], "atlas": ["--run-dir", missing], "causal": ["--run-dir", missing],
        "circuit": ["--run-dir", missing, "--input", "8,9,5,1,3,2,9,4,7,1"],
        "evaluate": ["--mlp", missing, "--data", missing],
        "train-sae": ["--activations", str(acts), "--out", str(tmp / "out"), "--batch-size", "16"],
        "sweep": ["--activations", str(acts), "--out", str(tmp / "out"), "--batch-size", "16"],
        "synthetic": ["--out", str(tmp / "out")],
        "synthetic-score": ["--data", missing, "--sae", missing],
        "dashboard": ["--sae", missing, "--activations", missing, "--out", str(tmp / "out")],
    }[command]


def _bad_values(action: argparse.Action) -> list[str]:
    if action.type is float:
        return ["nan", "inf", "-inf"]
    if action.type is int or action.type is cli._parse_int_list:
        return ["-1"] if action.dest in ZERO_ALLOWED else ["0", "-1"]
    return []


def _cases() -> list[tuple[str, str, str, str]]:
    """(command, flag, value, dest) for every numeric flag of every subcommand."""
    cases = []
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if action.option_strings:
                cases += [(command, action.option_strings[0], value, action.dest) for value in _bad_values(action)]
    return cases


CASES = _cases()


def test_the_cases_cover_every_subcommand_with_numeric_flags():
    """A new subcommand gets its required arguments in _base (a KeyError there fails its cases loudly)."""
    commands = {c for c, *_ in CASES}
    assert {"run", "evaluate", "atlas", "causal", "train-sae", "sweep", "synthetic"} <= commands
    assert len(CASES) > 150


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    return path


@pytest.fixture
def tripwire(monkeypatch):
    """Whatever would train or write fails the test instead."""
    def reached(*args, **kwargs):
        raise AssertionError("a bad flag reached training")

    import jax_impl.data.synthetic
    import jax_impl.jobs.pipeline
    import jax_impl.jobs.sweep
    import jax_impl.training.distributed
    import jax_impl.training.sae_trainer
    for module, name in ((jax_impl.training.sae_trainer, "fit"), (jax_impl.jobs.pipeline, "run_pipeline"),
                         (jax_impl.jobs.sweep, "_locked"), (jax_impl.data.synthetic, "write_synthetic"),
                         (jax_impl.training.distributed, "start")):
        monkeypatch.setattr(module, name, reached)


def _owner_flags(command: str, dest: str) -> list[str]:
    """An architecture flag is tried on an architecture that has it (else it is refused as foreign, untested)."""
    if not dest.startswith("arch."):
        return []
    owner = cli._architecture_fields()[dest.removeprefix("arch.")][2][0]
    return ["--variant" if command == "train-sae" else "--sae-variant", owner]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("monosem: error: "), err
    return err.strip()


@pytest.fixture
def one_parser(monkeypatch):
    """main() builds its parser anew each call (a few hundred flags: most of a case's time); one serves all."""
    parser = build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


@pytest.mark.parametrize("command", sorted({c for c, *_ in CASES}))
def test_a_bad_number_is_one_line_exit_2_before_training(command, acts, tmp_path, tripwire, one_parser, capsys):
    failures = []
    for _, flag, value, dest in (case for case in CASES if case[0] == command):
        extra = CLUSTER if dest in ("num_processes", "process_id", "peer_timeout") else []
        argv = [command, *_base(command, tmp_path, acts), *_owner_flags(command, dest), *extra, f"{flag}={value}"]
        code = main(argv)
        err = capsys.readouterr().err
        field = dest.rpartition(".")[2]
        named = any(n in err for n in _option_strings(command, dest)) or re.search(rf"\b{field}\b", err)
        if code != 2 or err.count("\n") != 1 or not err.startswith("monosem: error: ") or not named:
            failures.append(f"{' '.join(argv[:1] + argv[-1:])}: exit {code}, {err!r}")
        if (tmp_path / "out").exists():
            failures.append(f"{' '.join(argv[:1] + argv[-1:])}: wrote {tmp_path / 'out'}")
    assert not failures, "\n".join(failures)


def _option_strings(command: str, dest: str) -> list[str]:
    return next(a.option_strings for a in _subcommands()[command]._actions if a.dest == dest)


@pytest.mark.parametrize("hooks", ["", ",,", " , "])
def test_causal_hooks_naming_none_are_refused_not_taken_for_all(hooks, tmp_path, capsys):
    assert main(["causal", "--run-dir", str(tmp_path / "missing"), "--hooks", hooks]) == 2
    assert one_line_error(capsys) == f"monosem: error: --hooks {hooks!r}: no hook named; expected some of layer1, layer2, layer3"


@pytest.mark.parametrize("variant", saes.NAMES)
def test_dict_size_0_is_refused_for_every_architecture(variant, acts, tmp_path, tripwire, one_parser, capsys):
    with pytest.raises(ValueError, match="dict_size must be >= 1, got 0"):
        saes.get(variant).config().validate(0)
    assert main(["train-sae", *_base("train-sae", tmp_path, acts), "--variant", variant, "--dict-size", "0"]) == 2
    assert one_line_error(capsys) == "monosem: error: --dict-size must be >= 1, got 0"
    assert main(["sweep", *_base("sweep", tmp_path, acts), "--variant", variant, "--dict-size", "0"]) == 2
    assert one_line_error(capsys) == "monosem: error: --dict-size must be >= 1, got 0"  # not 2048: an explicit 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, flags", [
    (["train-sae", "--dict-size", str(10**12)], "--dict-size 1000000000000 and --batch-size 16"),
    (["train-sae", "--dict-size", str(10**400)], "--dict-size 1" + "0" * 400),
    (["sweep", "--grid", "seed=0..999", "--dict-size", str(10**8)], "--dict-size 100000000 (or --grid dict_size) for 1000"),
    (["run", "--n-train", str(10**13)], "--n-train 10000000000000"),
    (["run", "--dict-size", str(10**12)], "--dict-size 1000000000000"),
    (["run", "--mlp-epochs", str(10**12)], "--mlp-epochs 1000000000000"),  # OneCycle's tables: one entry per step
    (["synthetic", "--rows", str(10**14)], "--rows 100000000000000"),
])
def test_sizes_whose_memory_cannot_fit_are_refused_before_allocation(argv, flags, acts, tmp_path, tripwire, one_parser,
                                                                    capsys):
    assert main([argv[0], *_base(argv[0], tmp_path, acts), *argv[1:]]) == 2
    line = one_line_error(capsys)
    assert flags in line and "of memory, more than the" in line, line
    assert not (tmp_path / "out").exists()


def test_every_grid_key_refuses_non_finite_and_non_positive_values():
    """A sweep's grid is not an argparse flag: its keys (every architecture's fields and the trainer's) get the same
    checks through sweep_grid, which the sweep calls before anything is opened."""
    train = SAETrainConfig(epochs=1, batch_size=8)
    tried = 0
    for arch in saes.REGISTRY.values():
        kinds = dict(SAE_KEYS) | {f.name: type(f.default) for f in arch.config.__dataclass_fields__.values()}
        for key, kind in kinds.items():
            bad = ["nan", "inf"] if kind is float else ["-1"] + ([] if key == "seed" else ["0"]) if kind is int else []
            if kind is tuple:
                bad = ["0", "-1"]
            for value in bad:
                with pytest.raises(UserError, match=rf"^--grid: configuration .*{key}|{key}"):
                    sae_configurations({key: [value]}, variants=[arch.name], dict_size=64, train=train, seed=0)
                tried += 1
    for key, kind in mlp_keys().items():
        for value in (["nan", "inf"] if kind is float else ["-1"] + ([] if key == "seed" else ["0"]) if kind is int else []):
            with pytest.raises(UserError, match=r"^--grid: configuration "):
                mlp_configurations({key: [value]}, RunConfig())
            tried += 1
    assert tried > 40
