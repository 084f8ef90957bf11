"""Hostile and broken inputs through the command line (issue 5, items 1, 2 and 4).

Every case goes through `jax_impl.cli.main` in-process and must come back as exit code 2 with one line
on stderr that names the file/row/column/key/flag; a few go through the real `monosem` executable to
prove the exit code, the single line, no traceback, and a traceback with `--debug`. The unit-level
versions of many cases are in test_task.py / test_bridge.py; here they are checked at the CLI.

No case here trains more than a couple of tiny epochs: the run directories are fabricated (a manifest,
tiny splits, randomly initialised models) so `--resume`, `probe`, `export`, `parity` and `atlas` reach
the file under test at once.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import openpyxl
import pytest
import torch
from flax import nnx

from jax_impl import saes
from jax_impl.cli import _config_from_args, build_parser, main
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, MANIFEST, MLP_PATH, SAE_PATH, SAELENS_DIR, dataset_path
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import TaskShape, generate_splits
from jax_impl.task.splits import write_split

REPO = Path(__file__).resolve().parents[2]
MONOSEM = Path(sys.executable).with_name("monosem")

# A configuration that validates and is cheap; fabricated run directories record it in their manifest.
FAB_ARGS = [
    "--seed", "1", "--n-train", "64", "--n-val", "16", "--n-test", "16",
    "--mlp-epochs", "2", "--mlp-batch-size", "16", "--sae-epochs", "2", "--sae-batch-size", "16", "--dict-size", "64",
    "--no-circuit",
]


def _config(extra=()):
    return _config_from_args(build_parser().parse_args(["run", *FAB_ARGS, *extra]))


def fabricate_run(run_dir: Path, stages=("data", "mlp", "harvest", "sae", "probe"), extra=()) -> Path:
    """A run directory as `monosem run` would leave it after `stages`, with random (untrained) models."""
    config = _config(extra)
    d = config.data
    sizes = {"train": d.n_train, "val": d.n_val, "test": d.n_test}
    for name, split in generate_splits(jax.random.key(0), sizes, TaskShape()).items():
        write_split(dataset_path(run_dir, name), split)
    bridge.save_mlp(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), run_dir / MLP_PATH)
    activations = np.random.default_rng(0).random((d.n_train, 512), dtype=np.float32)
    bridge.save_activations(activations, run_dir / ACTIVATIONS_PATH)
    bridge.save_sae(saes.create("relu-l1", 512, config.sae.dict_size, key=jax.random.key(1)), run_dir / SAE_PATH)
    # with its feature densities (sparsity.safetensors), as the sae stage writes it
    saelens.save_saelens(bridge.load_sae(run_dir / SAE_PATH), run_dir / SAELENS_DIR, activations=activations)
    (run_dir / "probe.txt").write_text("probe\n")
    manifest = {"config": config.to_dict(), "seed": config.seed, "stages": {s: {"seconds": 0.0} for s in stages},
                "metrics": {s: {} for s in stages}}
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    return run_dir


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A fabricated, complete run directory; treat as read-only (copy what you change)."""
    return fabricate_run(tmp_path_factory.mktemp("good_run"))


def one_line_error(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("monosem") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# --- 1. no code from files ----------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls open(marker, "w"): the file appearing is proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_code_bomb(path: Path, marker: Path, kind: str) -> None:
    """A .pth/.pt that looks like the real thing (state_dict keys / a tensor) and runs code when unpickled."""
    if kind == "activations":
        payload = [torch.zeros(2, 512), _RunsCode(marker)]
    else:
        keys = bridge.MLP_KEY_MAP if kind == "mlp" else saes.get("relu-l1").config_keys()
        payload = {k: torch.zeros(1) for k in keys}
        payload[next(iter(keys))] = _RunsCode(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def test_the_code_bomb_really_runs_code_when_loaded_unsafely(tmp_path):
    # Without this the refusal tests below could pass on a harmless file.
    marker = tmp_path / "pwned"
    write_code_bomb(tmp_path / "bomb.pth", marker, "mlp")
    torch.load(tmp_path / "bomb.pth", weights_only=False)  # unsafe on purpose
    assert marker.exists()


# (command line, which file of the run directory gets the bomb). RUN is replaced by the run directory.
COMMANDS_READING_TORCH_FILES = {
    "evaluate": [
        (["evaluate", "--mlp", "RUN/mlp/perfect_mlp.pth", "--data", "RUN/dataset/mlp_test.xlsx"], "mlp"),
        (["evaluate", "--mlp", "RUN/mlp/perfect_mlp.pth", "--data", "RUN/dataset/mlp_test.xlsx",
          "--sae", "RUN/sae/sae_model.pth"], "sae"),
    ],
    "probe": [(["probe", "--run-dir", "RUN"], "mlp"), (["probe", "--run-dir", "RUN"], "sae")],
    "export": [(["export", "--run-dir", "RUN"], "mlp"), (["export", "--run-dir", "RUN"], "sae")],
    "parity": [(["parity", "--run-dir", "RUN"], "mlp"), (["parity", "--run-dir", "RUN"], "sae")],
    "atlas": [(["atlas", "--run-dir", "RUN"], "mlp"), (["atlas", "--run-dir", "RUN"], "sae")],
    "report": [(["report", "--run-dir", "RUN"], "mlp"), (["report", "--run-dir", "RUN"], "sae")],
    "causal": [(["causal", "--run-dir", "RUN", "--hooks", "layer2"], "mlp"),
               (["causal", "--run-dir", "RUN", "--hooks", "layer2"], "sae")],
    "circuit": [(["circuit", "--run-dir", "RUN", "--input", "8,9,5,1,3,2,9,4,7,1"], "mlp")],
    "train-sae": [(["train-sae", "--activations", "RUN/mlp_activations.pt", "--out", "RUN/trained"], "activations")],
    # A sweep reads the activations (either way) and, with --run-dir, the MLP for the atlas scores.
    "sweep": [
        (["sweep", "--activations", "RUN/mlp_activations.pt", "--out", "RUN/swept"], "activations"),
        (["sweep", "--run-dir", "RUN", "--out", "RUN/swept"], "activations"),
        (["sweep", "--run-dir", "RUN", "--out", "RUN/swept"], "mlp"),
    ],
    # RUN/synthetic is written by `monosem synthetic` before the bomb is planted (see _SYNTHETIC_DIM).
    "synthetic-score": [(["synthetic-score", "--data", "RUN/synthetic", "--sae", "RUN/sae/sae_model.pth"], "sae")],
    "dashboard": [
        (["dashboard", "--sae", "RUN/sae/sae_model.pth", "--activations", "RUN/mlp_activations.pt", "--out", "RUN/dash"],
         kind) for kind in ("sae", "activations")],
    # --resume reloads the artifacts of the completed stages: the MLP for harvest, the activations for
    # the SAE, the SAE for the probe.
    "run": [
        (["run", "--run-dir", "RUN", "--resume", *FAB_ARGS], "mlp"),
        (["run", "--run-dir", "RUN", "--resume", *FAB_ARGS], "activations"),
        (["run", "--run-dir", "RUN", "--resume", *FAB_ARGS], "sae"),
    ],
}
_BOMBED_PATH = {"mlp": MLP_PATH, "sae": SAE_PATH, "activations": ACTIVATIONS_PATH}
# For --resume: the stages recorded as completed so that the next stage reads the bombed file.
_RESUME_STAGES = {"mlp": ("data", "mlp"), "activations": ("data", "mlp", "harvest"), "sae": ("data", "mlp", "harvest", "sae")}


def test_every_command_that_reads_torch_files_is_covered():
    """A new subcommand must be added to COMMANDS_READING_TORCH_FILES (or listed here as reading none)."""
    reads_none = {"synthetic"}  # writes planted activations from a config; reads no file
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS_READING_TORCH_FILES) | reads_none


@pytest.mark.parametrize(
    "argv,kind",
    [case for cases in COMMANDS_READING_TORCH_FILES.values() for case in cases],
    ids=[f"{name}-{kind}" for name, cases in COMMANDS_READING_TORCH_FILES.items() for _, kind in cases],
)
def test_pickled_code_is_refused_by_every_command(argv, kind, tmp_path, capsys):
    stages = _RESUME_STAGES[kind] if argv[0] == "run" else ("data", "mlp", "harvest", "sae", "probe")
    run_dir = fabricate_run(tmp_path / "run", stages=stages)
    if "RUN/synthetic" in argv:
        assert main(["synthetic", "--out", str(run_dir / "synthetic"), "--n-features", "8", "--dim", "512",
                     "--rows", "32", "--parents", "0"]) == 0
    marker = tmp_path / "marker"
    bombed = run_dir / _BOMBED_PATH[kind]
    write_code_bomb(bombed, marker, kind)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main([a.replace("RUN", str(run_dir)) for a in argv]) == 2
    one_line_error(capsys, str(bombed), "refused to load", "could run code")
    assert not marker.exists()
    # nothing was written or changed, nothing half-written left behind
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".monosem.lock"} == {
        p: b for p, b in before.items() if p.name != ".monosem.lock"  # (synthetic's folder holds one of its own)
    }


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_in_the_repository_passes_weights_only_true():
    """Static check over every .py file of the project (including tests and other agents' packages)."""
    offenders, checked, on_purpose = [], 0, 0
    for path in sorted(REPO.rglob("*.py")):
        if any(part.startswith(".") or part in {"node_modules", "build"} for part in path.relative_to(REPO).parts):
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            unsafe = (
                (name == "torch.load" and not _is_true(keywords.get("weights_only")))
                or name in {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"}
                or (name in {"np.load", "numpy.load"} and _is_true(keywords.get("allow_pickle")))
            )
            checked += name == "torch.load"
            if unsafe and lines[node.lineno - 1].endswith("# unsafe on purpose") and path == Path(__file__):
                on_purpose += 1  # the proof that the code bomb works, above
            elif unsafe:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:100]}")
    assert checked >= 5, "the scan found hardly any torch.load calls; is it looking in the right place?"
    assert on_purpose == 1
    assert offenders == []


# --- 2. bad inputs: xlsx --------------------------------------------------------------------------------------

GOOD_ROW = ("[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]", "[8]")


def _xlsx(path: Path, rows, header=("input_list", "output_list")) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    if header is not None:
        ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    wb.save(path)
    return path


def _xlsx_with_member(path: Path, member: str, data: bytes | None = None, *, damage: bool = False) -> Path:
    """A good workbook with one zip member replaced by `data`, or its compressed bytes damaged."""
    good = _xlsx(path.with_name("good.xlsx"), [GOOD_ROW] * 20)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename == member and data is not None else zin.read(item.filename))
    if damage:
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for i in range(start + info.compress_size // 4, start + info.compress_size // 2):
            raw[i] ^= 0x55
        path.write_bytes(bytes(raw))
    return path


_SHEET = "xl/worksheets/sheet1.xml"
# An XML entity-expansion ("billion laughs") sheet: 10**10 characters if a parser expanded it.
_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(9))
    + ']><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
    '<row r="1"><c r="A1" t="inlineStr"><is><t>&j;</t></is></c></row></sheetData></worksheet>'
).encode()

XLSX_CASES = {
    # id: (how to build it, fragments the one-line error must contain)
    "missing": (lambda p: p, ["file not found", "expected an .xlsx split"]),
    "not_xlsx": (lambda p: (p.write_text("input_list,output_list\n"), p)[1], ["not a readable .xlsx workbook"]),
    "torch_file_named_xlsx": (lambda p: (torch.save({"a": torch.zeros(1)}, p), p)[1], ["not a readable .xlsx workbook"]),
    "damaged_sheet_xml": (lambda p: _xlsx_with_member(p, _SHEET, b"<worksheet><sheetData><row"),
                          ["not a readable .xlsx workbook", "ParseError"]),
    # the standard library's parser says ParseError; where defusedxml is installed (sae-lens brings it) the
    # sheet is refused as EntitiesForbidden: either way one line, and the entities are never expanded
    "xml_entity_bomb": (lambda p: _xlsx_with_member(p, _SHEET, _LAUGHS), ["not a readable .xlsx workbook ("]),
    "damaged_compressed_data": (lambda p: _xlsx_with_member(p, _SHEET, damage=True), ["not a readable .xlsx workbook"]),
    "no_workbook_part": (lambda p: _xlsx_with_member(p, "xl/workbook.xml", b""), ["not a readable .xlsx workbook"]),
    "empty_sheet": (lambda p: _xlsx(p, [], header=None), ["the sheet is empty", "expected a header row input_list | output_list"]),
    "header_only": (lambda p: _xlsx(p, []), ["no data rows below the header"]),
    "missing_column": (lambda p: _xlsx(p, [GOOD_ROW], ("input_list", "target")), ["missing column 'output_list'"]),
    "not_a_list_literal": (lambda p: _xlsx(p, [GOOD_ROW, ("8, 9, 5", "[8]")]),
                           ["row 3, column input_list", "expected a list of 10 integers", "not a list literal"]),
    "python_expression": (lambda p: _xlsx(p, [("__import__('os').system('touch pwned')", "[8]")]),
                          ["row 2, column input_list", "not a list literal"]),
    "a_number_not_a_list": (lambda p: _xlsx(p, [(GOOD_ROW[0], 8)]), ["row 2, column output_list", "expected a list of 1 integer", "got 8"]),
    "empty_cell": (lambda p: _xlsx(p, [(GOOD_ROW[0], None)]), ["row 2, column output_list", "got None"]),
    "dict_not_list": (lambda p: _xlsx(p, [('{"a": 1}', "[8]")]), ["row 2, column input_list", "(not a list)"]),
    "wrong_length": (lambda p: _xlsx(p, [("[8, 9, 5, 1, 3, 2, 9, 4, 7]", "[8]")]), ["row 2, column input_list", "got 9 element(s)"]),
    "two_targets": (lambda p: _xlsx(p, [(GOOD_ROW[0], "[8, 1]")]), ["row 2, column output_list", "got 2 element(s)"]),
    "non_integer": (lambda p: _xlsx(p, [("[8, 9, 5, 1.5, 3, 2, 9, 4, 7, 1]", "[8]")]), ["row 2, column input_list", "non-integer 1.5"]),
    "string_element": (lambda p: _xlsx(p, [('[8, 9, 5, "1", 3, 2, 9, 4, 7, 1]', "[8]")]), ["row 2", "non-number '1'"]),
    "nan": (lambda p: _xlsx(p, [("[8, 9, 5, NaN, 3, 2, 9, 4, 7, 1]", "[8]")]), ["row 2, column input_list", "non-finite nan"]),
    "infinity_target": (lambda p: _xlsx(p, [(GOOD_ROW[0], "[Infinity]")]), ["row 2, column output_list", "non-finite inf"]),
    "value_out_of_range": (lambda p: _xlsx(p, [GOOD_ROW, ("[8, 9, 5, 1, 3, 2, 9, 4, 17, 1]", "[8]")]),
                           ["row 3, column input_list", "value at position 8 is 17, expected 0..9"]),
    "negative_value": (lambda p: _xlsx(p, [("[8, -9, 5, 1, 3, 2, 9, 4, 7, 1]", "[8]")]),
                       ["row 2, column input_list", "value at position 1 is -9, expected 0..9"]),
    "pointer_out_of_range": (lambda p: _xlsx(p, [("[8, 9, 5, 1, 3, 2, 9, 4, 7, 4]", "[8]")]),
                             ["row 2, column input_list", "pointer at position 9 is 4, expected 0..3"]),
    # A target that contradicts the inputs is an error (not silently re-labelled): the first such row is
    # named with the target the task gives, and the count of disagreeing rows is reported.
    "target_contradicts": (lambda p: _xlsx(p, [GOOD_ROW, (GOOD_ROW[0], "[3]"), (GOOD_ROW[0], "[2]")]),
                           ["row 3: output_list [3] contradicts input_list: the task gives 8", "2 row(s) disagree"]),
}


@pytest.mark.parametrize("case", sorted(XLSX_CASES))
def test_bad_xlsx_through_the_cli(case, good_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a "touch pwned" that ran would land here
    build, fragments = XLSX_CASES[case]
    data = build(tmp_path / "split.xlsx")
    assert main(["evaluate", "--mlp", str(good_run / MLP_PATH), "--data", str(data)]) == 2
    one_line_error(capsys, str(data), *fragments)
    assert not (tmp_path / "pwned").exists()


def test_bad_xlsx_inside_a_run_directory_is_named(good_run, tmp_path, capsys):
    import shutil

    run_dir = shutil.copytree(good_run, tmp_path / "run")
    _xlsx(dataset_path(run_dir, "test"), [GOOD_ROW, ("[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]", "[9]")])
    assert main(["probe", "--run-dir", str(run_dir)]) == 2
    one_line_error(capsys, "mlp_test.xlsx: row 3: output_list [9] contradicts input_list")


# --- 2. bad inputs: .pth / .pt ----------------------------------------------------------------------------------


def _mlp_sd():
    return bridge.mlp_to_state_dict(InterpretabilityMLP(10, rngs=nnx.Rngs(0)))


def _sae_sd():
    return bridge.sae_to_state_dict(saes.create("relu-l1", 512, 64, key=jax.random.key(0)))


def _edited(sd, **changes):
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


def _nan_at(sd, key, value=math.nan):
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = value
    return sd


def _truncated(path: Path) -> None:
    torch.save(_mlp_sd(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


PTH_CASES = {
    # id: (flag, writer(path), fragments)
    "missing": ("--mlp", lambda p: None, ["file not found"]),
    "empty_file": ("--mlp", lambda p: p.write_bytes(b""), ["not a readable torch file"]),
    "truncated": ("--mlp", _truncated, ["not a readable torch file", "truncated"]),
    "not_a_torch_file": ("--mlp", lambda p: p.write_text("hello"), ["not a readable torch file"]),
    "an_xlsx_named_pth": ("--mlp", lambda p: _xlsx(p, [GOOD_ROW]), ["not a readable torch file"]),
    "not_a_state_dict": ("--mlp", lambda p: torch.save(torch.zeros(3), p), ["expected a state_dict", "got Tensor"]),
    "missing_key": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__bn2__running_var=None), p),
                    ["missing keys ['layers.bn2.running_var']", "expected exactly"]),
    "extra_key": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__bn3__weight=torch.zeros(3)), p),
                  ["unexpected keys ['layers.bn3.weight']"]),
    "wrong_shape": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__hidden2__weight=torch.zeros(256, 500)), p),
                    ["key 'layers.hidden2.weight' has shape (256, 500), expected (256, 512)"]),
    "wrong_dtype": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__input__bias=torch.zeros(256, dtype=torch.float64)), p),
                    ["key 'layers.input.bias' has dtype float64, expected float32"]),
    "half_precision": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__output__bias=torch.zeros(1, dtype=torch.float16)), p),
                       ["key 'layers.output.bias' has dtype float16, expected float32"]),
    "bfloat16": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__output__bias=torch.zeros(1, dtype=torch.bfloat16)), p),
                 ["key 'layers.output.bias' has dtype bfloat16, expected float32"]),
    "sparse_tensor": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__input__bias=torch.zeros(256).to_sparse()), p),
                      ["key 'layers.input.bias' is a sparse_coo tensor, expected a dense tensor"]),
    "meta_tensor": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__input__bias=torch.zeros(256, device="meta")), p),
                    ["key 'layers.input.bias' is a meta tensor, expected a dense tensor with data"]),
    "float_counter": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__bn1__num_batches_tracked=torch.tensor(3.0)), p),
                      ["key 'layers.bn1.num_batches_tracked' has dtype float32, expected int64"]),
    "not_a_tensor": ("--mlp", lambda p: torch.save(_edited(_mlp_sd(), layers__output__bias=[0.0]), p),
                     ["key 'layers.output.bias' holds a list, expected a tensor"]),
    "nan_weight": ("--mlp", lambda p: torch.save(_nan_at(_mlp_sd(), "layers.hidden1.weight"), p),
                   ["key 'layers.hidden1.weight' contains NaN or infinite values"]),
    "inf_running_var": ("--mlp", lambda p: torch.save(_nan_at(_mlp_sd(), "layers.bn2.running_var", math.inf), p),
                        ["key 'layers.bn2.running_var' contains NaN or infinite values"]),
    "sae_given_an_mlp": ("--sae", lambda p: torch.save(_mlp_sd(), p), ["are not those of any SAE architecture"]),
    "sae_wrong_decoder_shape": ("--sae", lambda p: torch.save(_edited(_sae_sd(), decoder__weight=torch.zeros(512, 65)), p),
                                ["key 'decoder.weight' has shape (512, 65), expected (512, 64)"]),
    "sae_nan": ("--sae", lambda p: torch.save(_nan_at(_sae_sd(), "encoder.bias"), p), ["key 'encoder.bias' contains NaN"]),
    "sae_wrong_width": ("--sae", lambda p: torch.save(bridge.sae_to_state_dict(saes.create("relu-l1", 256, 64, key=jax.random.key(0))), p),
                        ["key 'encoder.weight' has shape (64, 256), expected (64, 512)"]),
}


@pytest.mark.parametrize("case", sorted(PTH_CASES))
def test_bad_pth_through_the_cli(case, good_run, tmp_path, capsys):
    flag, write, fragments = PTH_CASES[case]
    bad = tmp_path / "model.pth"
    write(bad)
    argv = ["evaluate", "--data", str(good_run / "dataset" / "mlp_test.xlsx")]
    argv += ["--mlp", str(bad)] if flag == "--mlp" else ["--mlp", str(good_run / MLP_PATH), "--sae", str(bad)]
    assert main(argv) == 2
    one_line_error(capsys, str(bad), *fragments)


def test_mlp_for_another_task_shape_is_named(good_run, capsys):
    assert main(["evaluate", "--mlp", str(good_run / MLP_PATH), "--data", str(good_run / "dataset" / "mlp_test.xlsx"),
                 "--x-dim", "6"]) == 2
    one_line_error(capsys, "the MLP takes 10 inputs but --x-dim 6 x --y-dim 2 rows have 12")


# The run's activations are read by the one activation reader (jax_impl.data.activations), with its messages.
ACTIVATION_CASES = {
    "wrong_width": (torch.zeros(64, 256), ["activations have shape (64, 256), expected (N, 512)"]),
    "one_dimensional": (torch.zeros(512), ["activations have shape (512,), expected a 2-D (N, d) matrix"]),
    "no_rows": (torch.zeros(0, 512), ["activations have 0 rows, expected at least 1"]),
    "float64": (torch.zeros(64, 512, dtype=torch.float64), ["activations have dtype torch.float64, expected torch.float32"]),
    "nan": (torch.full((64, 512), math.nan), ["row 0 contains NaN or infinite values"]),
    "a_state_dict": ({"x": torch.zeros(64, 512)}, ["holds a dict, expected one torch.Tensor"]),
    "sparse": (torch.zeros(64, 512).to_sparse(), ["holds a sparse_coo tensor, expected a dense (strided) tensor"]),
    "meta": (torch.zeros(64, 512, device="meta"), ["holds a meta tensor, expected a dense tensor with data"]),
}


@pytest.mark.parametrize("case", sorted(ACTIVATION_CASES))
def test_bad_activations_on_resume(case, tmp_path, capsys):
    run_dir = fabricate_run(tmp_path / "run", stages=("data", "mlp", "harvest"))
    payload, fragments = ACTIVATION_CASES[case]
    torch.save(payload, run_dir / ACTIVATIONS_PATH)
    assert main(["run", "--run-dir", str(run_dir), "--resume", *FAB_ARGS]) == 2
    one_line_error(capsys, str(run_dir / ACTIVATIONS_PATH), *fragments)
    assert set(json.loads((run_dir / MANIFEST).read_text())["stages"]) == {"data", "mlp", "harvest"}


def test_unusable_output_paths_are_one_line_errors(good_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["run", "--run-dir", str(tmp_path / "afile"), *FAB_ARGS]) == 2
    one_line_error(capsys, f"{tmp_path / 'afile'}: is a file; --run-dir must be a folder")
    evaluate = ["evaluate", "--mlp", str(good_run / MLP_PATH), "--data", str(good_run / "dataset" / "mlp_test.xlsx")]
    assert main([*evaluate, "--predictions", str(tmp_path)]) == 2
    one_line_error(capsys, f"{tmp_path}: Is a directory")
    assert main([*evaluate, "--predictions", str(tmp_path / "afile" / "p.csv")]) == 2
    one_line_error(capsys, f"{tmp_path / 'afile'}: File exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no temporary left behind


def test_unreadable_manifest_is_named(tmp_path, capsys):
    run_dir = fabricate_run(tmp_path / "run")
    (run_dir / MANIFEST).write_text('{"config": ')
    assert main(["run", "--run-dir", str(run_dir), "--resume", *FAB_ARGS]) == 2
    one_line_error(capsys, str(run_dir / MANIFEST), "not a readable manifest")
    assert main(["probe", "--run-dir", str(run_dir)]) == 2
    one_line_error(capsys, "not a readable manifest")


def test_resume_without_a_manifest_is_refused(tmp_path, capsys):
    assert main(["run", "--run-dir", str(tmp_path / "empty"), "--resume", *FAB_ARGS]) == 2
    one_line_error(capsys, "nothing to resume (no manifest.json); run without --resume")


def test_probe_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["probe", "--run-dir", str(tmp_path)]) == 2
    one_line_error(capsys, "no manifest.json; is this a run directory written by `monosem run`?")


# --- 2. bad inputs: flags ---------------------------------------------------------------------------------------

FLAG_CASES = {
    # (flags added to FAB_ARGS, fragments); test_pipeline.py covers --mlp-epochs 0, --dict-size -5,
    # --mlp-batch-size 200 > --n-train 100 and a remainder batch of one row.
    "sae_epochs_zero": (["--sae-epochs", "0"], ["--sae-epochs must be positive, got 0"]),
    "n_train_zero": (["--n-train", "0"], ["--n-train must be positive, got 0"]),
    "n_test_negative": (["--n-test", "-3"], ["--n-test must be positive, got -3"]),
    "mlp_batch_zero": (["--mlp-batch-size", "0"], ["--mlp-batch-size must be positive, got 0"]),
    "sae_lr_zero": (["--sae-lr", "0"], ["--sae-lr must be positive, got 0.0"]),
    "max_lr_negative": (["--mlp-max-lr", "-0.1"], ["--mlp-max-lr must be positive, got -0.1"]),
    "sae_batch_larger_than_split": (["--sae-batch-size", "65"], ["--sae-batch-size 65 is larger than the training split (--n-train 64)"]),
    "mlp_batch_larger_than_split": (["--mlp-batch-size", "128"], ["--mlp-batch-size 128 is larger than the training split"]),
    "batch_of_one_with_batchnorm": (["--mlp-batch-size", "1"], ["--mlp-batch-size 1", "BatchNorm cannot normalise"]),
    "pct_start_one": (["--mlp-pct-start", "1.0"], ["--mlp-pct-start must be in (0, 1), got 1.0"]),
    "x_dim_one": (["--data-x-dim", "1"], ["--data-x-dim must be at least 2"]),
    "negative_seed": (["--seed", "-1"], ["--seed must be in 0..9223372036854775807 (a PRNG seed), got -1"]),
    "seed_beyond_64_bits": (["--seed", str(2**64)], [f"--seed must be in 0..9223372036854775807 (a PRNG seed), got {2**64}"]),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag_values(case, tmp_path, capsys):
    flags, fragments = FLAG_CASES[case]
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), *FAB_ARGS, *flags]) == 2
    one_line_error(capsys, *fragments)
    assert not run_dir.exists() or not any(run_dir.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["run", "--mlp-epocs", "3"], ["unrecognized arguments: --mlp-epocs 3"]),
        (["run", "--mlp-epochs", "three"], ["argument --mlp-epochs:", "invalid int value: 'three'"]),
        (["run", "--sae-lr", "fast"], ["argument --sae-lr:", "invalid float value: 'fast'"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ([], ["the following arguments are required: COMMAND"]),
        (["evaluate", "--data", "x.xlsx"], ["the following arguments are required: --mlp"]),
    ],
)
def test_argument_errors_are_one_line_with_exit_2(argv, fragments, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    one_line_error(capsys, *fragments)


# --- 4. divergence guard ----------------------------------------------------------------------------------------


def test_mlp_divergence_stops_with_stage_epoch_and_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), *FAB_ARGS, "--mlp-max-lr", "1e6"]) == 2
    err = one_line_error(capsys, "MLP training diverged at epoch ", ", step ", "no weights were written")
    assert "(loss nan)" in err or "(loss inf)" in err
    assert not (run_dir / MLP_PATH).exists()
    assert set(json.loads((run_dir / MANIFEST).read_text())["stages"]) == {"data"}
    assert not list(run_dir.rglob(".*.tmp"))


def test_sae_divergence_stops_and_keeps_earlier_artifacts(tmp_path, capsys):
    extra = ["--sae-lr", "1e12"]
    run_dir = fabricate_run(tmp_path / "run", stages=("data", "mlp", "harvest"), extra=extra)
    (run_dir / SAE_PATH).unlink()
    mlp_bytes = (run_dir / MLP_PATH).read_bytes()
    assert main(["run", "--run-dir", str(run_dir), "--resume", *FAB_ARGS, *extra]) == 2
    one_line_error(capsys, "SAE training diverged at epoch ", ", step ", "no weights were written")
    assert not (run_dir / SAE_PATH).exists()
    assert (run_dir / MLP_PATH).read_bytes() == mlp_bytes
    assert set(json.loads((run_dir / MANIFEST).read_text())["stages"]) == {"data", "mlp", "harvest"}


# --- the real executable ----------------------------------------------------------------------------------------


def _monosem(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(MONOSEM), *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_executable_exit_code_one_line_and_debug_traceback(tmp_path):
    # A flag error is found before the slow imports, so these processes are quick; test_crash_resume.py
    # runs the executable into an error raised deep inside a run (the run-directory lock).
    argv = ["run", "--run-dir", "r", "--n-train", "100", "--mlp-batch-size", "200"]
    plain = _monosem(*argv, cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("monosem: error: --mlp-batch-size 200 is larger than the training split")
    assert plain.stdout == "" and not (tmp_path / "r").exists()

    debug = _monosem("--debug", *argv, cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "UserError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()

    usage = _monosem("run", "--mlp-epocs", "3", cwd=tmp_path)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1 and "Traceback" not in usage.stderr
    assert "unrecognized arguments: --mlp-epocs 3" in usage.stderr
