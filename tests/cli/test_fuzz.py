"""Property-based fuzzing of every file monosem reads (issue 15, item 4), with hypothesis.

Each test starts from a valid file (an xlsx split, an MLP or SAE state_dict as .pth and .safetensors, an
activation matrix as .npy/.pt/.safetensors, a run's manifest, a training checkpoint), mutates it (bytes
flipped, set, inserted, deleted, duplicated or cut; or its structure edited: cells, keys, dtypes, shapes,
values, JSON nodes) and gives it to the command that reads it, in this process. The property:

  - the command ends with exit code 0 (the mutation left a usable file) or 2 with exactly one line on stderr,
    `monosem: error: ...`, naming the file; never a traceback (an exception escaping `main` fails the test);
  - on exit 2 the output folder is byte for byte what it was (no changed, partial or temporary file);
  - on exit 0 every file written is complete (loads), and a resumed run writes the same bytes as before.

Example counts: the `ci` settings profile (conftest.py, the default) runs a few derandomized examples per
test; `HYPOTHESIS_PROFILE=long` runs many more (CHANGELOG.md records a long run).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import warnings
import zipfile
from collections import OrderedDict
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file as save_safetensors

from jax_impl.cli import main
from jax_impl.errors import Interrupted
from jax_impl.interop import bridge
from jax_impl.jobs.rundir import MANIFEST, MLP_PATH, SAE_PATH, dataset_path
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
from jax_impl.training import checkpoints as ck
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.sae_trainer import SAETrainConfig

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def budget(ci: int, long: int = 1000) -> settings:
    """max_examples for this test: `ci` by default (a few seconds), `long` under HYPOTHESIS_PROFILE=long."""
    return settings(max_examples=long if LONG else ci)


# --------------------------------------------------------------------------- running a command


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    warned: list[str]  # warnings raised during the command: lines on stderr in a real process


# What Python's default warning filters never print in a real `monosem` process.
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_cli(*argv: str) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])  # an exception escaping main is a traceback: the test fails on it
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    return Outcome(rc, out.getvalue(), err.getvalue(), [f"{w.category.__name__}: {w.message}" for w in shown])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too: a temporary left behind shows up), but the lock's pid."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".monosem.lock"}


def assert_refused_or_fine(outcome: Outcome, path: Path, folder: Path, before: dict[str, bytes]) -> None:
    assert outcome.rc in (0, 2), (outcome.rc, outcome.err)
    assert "Traceback" not in outcome.err + outcome.out
    if outcome.rc == 2:
        lines = outcome.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("monosem: error: "), outcome.err
        assert not outcome.warned, outcome.warned  # a warning would print lines before the error
        assert str(path) in lines[0], lines[0]  # names the file
        assert snapshot(folder) == before  # nothing written, changed or left half-done


# --------------------------------------------------------------------------- mutations


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    """One to three edits of raw bytes, positions drawn near the start (headers) or anywhere."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        n = len(out)
        if n == 0:
            out += draw(st.binary(min_size=1, max_size=16))
            continue
        pos = draw(st.one_of(st.integers(0, min(n - 1, 256)), st.integers(0, n - 1)))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("0"), ord('"'), ord("{"), ord("<")]))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 64))]
        else:
            length = draw(st.integers(1, 64))
            out[pos:pos] = out[pos : pos + length]
    return bytes(out)


def mutated_copy(draw, source: Path, target: Path) -> Path:
    target.write_bytes(draw(byte_mutation(source.read_bytes())))
    return target


# --------------------------------------------------------------------------- xlsx splits

_CELL = re.compile(r"<t>(.*?)</t>", re.S)
_ROW = re.compile(r"<row[ >].*?</row>", re.S)

cell_texts = st.one_of(
    st.text(max_size=30),
    st.lists(st.integers(-20, 20) | st.integers(-(10**30), 10**30), max_size=12).map(str),
    st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.booleans() | st.none(), max_size=11).map(json.dumps),
    st.sampled_from(["[8]", "[[8]]", "[]", "8", "", "[1e400]", "[Infinity]", "[NaN]", '{"a": 1}', "[true]",
                     "[8, 9, 5, 1, 3, 2, 9, 4, 7, 1", "__import__('os')", "[8]" * 100, "[-0]", "[0x10]", "[8.0]"]),
)


@st.composite
def sheet_mutation(draw, sheet: str) -> str:
    """Edit the sheet XML of a split written by monosem (one inline-string cell per value)."""
    kind = draw(st.sampled_from(["cell", "cell", "drop_row", "duplicate_row", "cell_type", "raw"]))
    cells = list(_CELL.finditer(sheet))
    if kind == "cell":
        m = cells[draw(st.integers(0, len(cells) - 1))]
        from xml.sax.saxutils import escape

        return sheet[: m.start(1)] + escape(draw(cell_texts)) + sheet[m.end(1) :]
    rows = list(_ROW.finditer(sheet))
    if kind in ("drop_row", "duplicate_row"):
        m = rows[draw(st.integers(0, len(rows) - 1))]
        return sheet[: m.start()] + (m.group() * 2 if kind == "duplicate_row" else "") + sheet[m.end() :]
    if kind == "cell_type":
        new = draw(st.sampled_from(['t="n"', 't="s"', 't="b"', 't="e"', 't="str"', 't="d"', 't="zz"', ""]))
        i = draw(st.integers(0, sheet.count('t="inlineStr"') - 1))
        parts = sheet.split('t="inlineStr"')
        return 't="inlineStr"'.join(parts[: i + 1]) + new + 't="inlineStr"'.join(parts[i + 1 :])
    pos = draw(st.integers(0, len(sheet)))
    return sheet[:pos] + draw(st.sampled_from(["<", "</row>", "<row>", "&", "&amp;", "<c><v>1</v></c>",
                                               '<!DOCTYPE x [<!ENTITY a "b">]>', "\x00", "]]>"])) + sheet[pos:]


def _rezip(source: Path, target: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename == member else zin.read(item.filename))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    from test_hostile_inputs import fabricate_run

    return fabricate_run(tmp_path_factory.mktemp("fuzz_run"))


@budget(25)
@given(data=st.data())
def test_fuzzed_xlsx_splits(good_run, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("xlsx")
    good = dataset_path(good_run, "test")
    target = folder / "split.xlsx"
    if data.draw(st.booleans(), label="structural"):
        with zipfile.ZipFile(good) as z:
            sheet = z.read("xl/worksheets/sheet1.xml").decode()
        _rezip(good, target, "xl/worksheets/sheet1.xml", data.draw(sheet_mutation(sheet)).encode("utf-8", "surrogatepass"))
    else:
        mutated_copy(data.draw, good, target)
    out = folder / "out"
    out.mkdir()
    (out / "pred.csv").write_text("earlier\n")
    before = snapshot(out)
    outcome = run_cli("evaluate", "--mlp", good_run / MLP_PATH, "--data", target, "--predictions", out / "pred.csv")
    assert_refused_or_fine(outcome, target, out, before)
    if outcome.rc == 0:
        lines = (out / "pred.csv").read_text().splitlines()
        assert lines[0] == "prediction" and len(lines) > 1 and all(math.isfinite(float(v)) for v in lines[1:])


# --------------------------------------------------------------------------- state_dicts (.pth / .safetensors)

_DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]


@st.composite
def state_dict_mutation(draw, sd: OrderedDict, tensors_only: bool):
    """An edited copy of a state_dict: a key dropped/added/renamed, a tensor's dtype/shape/values changed, a
    value replaced by a non-tensor, or the whole object replaced."""
    sd = OrderedDict((k, v.clone()) for k, v in sd.items())
    keys = list(sd)
    key = keys[draw(st.integers(0, len(keys) - 1))]
    t = sd[key]
    kind = draw(st.sampled_from(["drop", "add", "rename", "dtype", "shape", "nan", "value", "whole", "noncontiguous"]))
    if kind == "drop":
        del sd[key]
    elif kind == "add":
        sd[draw(st.sampled_from([f"{key}.extra", "layers.extra.weight", "threshold", "k", "", "é"]))] = torch.zeros(3)
    elif kind == "rename":
        sd[key + draw(st.sampled_from(["_", ".0", "s"]))] = sd.pop(key)
    elif kind == "dtype":
        dtype = draw(st.sampled_from(_DTYPES))
        sd[key] = t.to(dtype) if not (dtype == torch.bool or t.dtype == torch.bool) else (t != 0)
    elif kind == "shape":
        how = draw(st.sampled_from(["flat", "unsqueeze", "transpose", "slice", "empty", "scalar"]))
        if how == "flat":
            sd[key] = t.reshape(-1)
        elif how == "unsqueeze":
            sd[key] = t.unsqueeze(0)
        elif how == "transpose" and t.ndim == 2:
            sd[key] = t.T.contiguous()
        elif how == "slice" and t.numel() > 1:
            sd[key] = t.reshape(-1)[: t.numel() - 1].clone()
        elif how == "empty":
            sd[key] = t.reshape(-1)[:0].clone()
        else:
            sd[key] = torch.tensor(0.0)
    elif kind == "nan" and t.is_floating_point() and t.numel():
        flat = t.reshape(-1).clone()
        flat[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38]))
        sd[key] = flat.reshape(t.shape)
    elif kind == "noncontiguous" and t.ndim == 2:
        sd[key] = t.T.contiguous().T  # the same values, strided differently: a usable file
    elif kind == "value":
        if tensors_only:
            sd[key] = torch.zeros(draw(st.integers(0, 4)), 3)
        else:
            sd[key] = draw(st.sampled_from([None, 1, 1.5, "w", [1.0, 2.0], {"a": torch.zeros(1)}, (t,), b"x"]))
    elif kind == "whole" and not tensors_only:
        return draw(st.sampled_from([[], None, 3, "sd", t, [sd], {"state_dict": sd}, OrderedDict()]))
    return sd


def _save_state(obj, path: Path) -> None:
    if path.suffix == ".safetensors":
        save_safetensors({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("model", ["mlp", "sae"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@budget(12)
@given(data=st.data())
def test_fuzzed_state_dicts(good_run, tmp_path_factory, model, suffix, data):
    folder = tmp_path_factory.mktemp("sd")
    good_path = good_run / (MLP_PATH if model == "mlp" else SAE_PATH)
    good = good_path.with_suffix(suffix)
    target = folder / f"model{suffix}"
    if data.draw(st.booleans(), label="structural"):
        sd = (bridge.read_safetensors(good) if suffix == ".safetensors" else bridge.torch_load(good))
        edited = data.draw(state_dict_mutation(sd, tensors_only=suffix == ".safetensors"))
        try:
            _save_state(edited, target)
        except (TypeError, ValueError, RuntimeError, AttributeError):
            assume(False)  # a writer that cannot store it: not a file anyone can hand us
    else:
        mutated_copy(data.draw, good, target)
    out = folder / "out"
    out.mkdir()
    before = snapshot(out)
    mlp = target if model == "mlp" else good_run / MLP_PATH
    extra = ["--sae", target] if model == "sae" else []
    outcome = run_cli("evaluate", "--mlp", mlp, *extra, "--data", dataset_path(good_run, "test"),
                      "--predictions", out / "pred.csv")
    assert_refused_or_fine(outcome, target, out, before)


# --------------------------------------------------------------------------- activation files

ROWS, WIDTH = 48, 6
TRAIN_ARGS = ["--variant", "relu-l1", "--dict-size", "8", "--epochs", "1", "--batch-size", "8", "--checkpoint-every", "off"]


@pytest.fixture(scope="module")
def activation_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("acts")
    x = np.random.default_rng(3).standard_normal((ROWS, WIDTH)).astype(np.float32)
    paths = {s: folder / f"acts{s}" for s in (".npy", ".pt", ".safetensors")}
    np.save(paths[".npy"], x)
    torch.save(torch.from_numpy(x), paths[".pt"])
    save_safetensors({"activations": torch.from_numpy(x)}, str(paths[".safetensors"]))
    return paths


@pytest.fixture(scope="module")
def trained_out(activation_files, tmp_path_factory) -> Path:
    """A train-sae output folder from the good .npy: what a failed later training must leave untouched."""
    out = tmp_path_factory.mktemp("trained") / "out"
    assert run_cli("train-sae", "--activations", activation_files[".npy"], "--out", out, *TRAIN_ARGS).rc == 0
    return out


@st.composite
def array_mutation(draw, x: np.ndarray):
    kind = draw(st.sampled_from(["dtype", "shape", "nonfinite", "huge", "fortran", "endian", "object", "structured"]))
    if kind == "dtype":
        return x.astype(draw(st.sampled_from([np.float64, np.float16, np.int32, np.int8, np.bool_, np.complex64, np.uint16])))
    if kind == "shape":
        how = draw(st.sampled_from(["flat", "3d", "no_rows", "no_cols", "transpose", "one_row"]))
        return {"flat": x.reshape(-1), "3d": x[None], "no_rows": x[:0], "no_cols": x[:, :0], "transpose": x.T.copy(),
                "one_row": x[:1]}[how]
    if kind == "nonfinite":
        y = x.copy()
        y.flat[draw(st.integers(0, y.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return y
    if kind == "huge":
        with np.errstate(over="ignore"):  # 3e38 overflows to inf in places: refused as non-finite
            return x * np.float32(draw(st.sampled_from([1e18, 1e30, 3e38])))
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "endian":
        return x.astype(">f4")
    if kind == "object":
        return np.array([object()] * 4, dtype=object)
    return np.zeros(ROWS, dtype=[("a", np.float32), ("b", np.float32)])


def _write_array(y: np.ndarray, path: Path) -> None:
    if path.suffix == ".npy":
        np.save(path, y, allow_pickle=y.dtype == object)  # a hostile file; monosem must never unpickle it
    elif path.suffix == ".pt":
        torch.save(torch.from_numpy(np.ascontiguousarray(y)) if y.dtype != object else [1, 2], path)
    else:
        save_safetensors({"activations": torch.from_numpy(np.ascontiguousarray(y.astype(y.dtype.newbyteorder("="))))},
                         str(path))


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
@budget(8, long=400)
@given(data=st.data())
def test_fuzzed_activation_files(activation_files, trained_out, tmp_path_factory, suffix, data):
    folder = tmp_path_factory.mktemp("actfuzz")
    target = folder / f"acts{suffix}"
    if data.draw(st.booleans(), label="structural"):
        y = data.draw(array_mutation(np.load(activation_files[".npy"])))
        try:
            _write_array(y, target)
        except (TypeError, ValueError, RuntimeError):
            assume(False)
    else:
        mutated_copy(data.draw, activation_files[suffix], target)
    out = folder / "out"
    shutil.copytree(trained_out, out)
    before = snapshot(out)
    outcome = run_cli("train-sae", "--activations", target, "--out", out, *TRAIN_ARGS)
    assert_refused_or_fine(outcome, target, out, before)
    if outcome.rc == 0:
        bridge.load_sae(out / "sae.pth", input_dim=None)
        json.loads((out / "metrics.json").read_text())
        assert not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- manifests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**20) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6,
)


def _json_paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _json_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _json_paths(v, (*path, i))


@st.composite
def json_mutation(draw, doc, protect=()):
    """Replace, delete or add one node of a JSON document (paths starting with a `protect` prefix are kept)."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _json_paths(doc) if not any(p[: len(q)] == q for q in protect)]
    path = paths[draw(st.integers(0, len(paths) - 1))]
    if not path:
        return draw(json_values)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    kind = draw(st.sampled_from(["replace", "delete", "add"]))
    if kind == "replace":
        parent[path[-1]] = draw(json_values)
    elif kind == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(json_values)
    return doc


@pytest.fixture(scope="module")
def complete_run(tiny_run) -> Path:
    return tiny_run


@pytest.mark.slow  # -m slow for make test's 10 minutes: test_fuzz_json's damaged manifests stay
@budget(15, long=300)
@given(data=st.data())
def test_fuzzed_manifests_on_resume(complete_run, tmp_path_factory, data):
    """`run --resume` of a finished run with a damaged manifest: exit 2 naming it, or (a change that leaves a
    valid manifest of this config) a resume that writes the same bytes. Stage entries are kept in place here:
    removing one reruns stages, which is what --resume is for, and slow."""
    from conftest import TINY_RUN_ARGS

    run_dir = tmp_path_factory.mktemp("manifest") / "run"
    shutil.copytree(complete_run, run_dir)
    path = run_dir / MANIFEST
    if data.draw(st.booleans(), label="structural"):
        doc = json.loads(path.read_text())
        protect = [("stages", name) for name in doc["stages"]]
        path.write_text(json.dumps(data.draw(json_mutation(doc, protect=protect))))
    else:
        mutated_copy(data.draw, complete_run / MANIFEST, path)
    before = snapshot(run_dir)
    outcome = run_cli("run", "--run-dir", run_dir, "--resume", *TINY_RUN_ARGS)
    assert_refused_or_fine(outcome, path, run_dir, before)
    if outcome.rc == 0:  # whatever it reran, it wrote what the run had
        after = snapshot(run_dir)
        for rel, content in before.items():
            if rel != MANIFEST and not rel.endswith(".torchscript.pt"):
                assert after[rel] == content, rel


@budget(15)
@given(data=st.data())
def test_fuzzed_manifests_on_probe(good_run, tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    shutil.copytree(good_run, run_dir)
    path = run_dir / MANIFEST
    if data.draw(st.booleans(), label="structural"):
        path.write_text(json.dumps(data.draw(json_mutation(json.loads(path.read_text())))))
    else:
        mutated_copy(data.draw, good_run / MANIFEST, path)
    before = snapshot(run_dir)
    outcome = run_cli("probe", "--run-dir", run_dir)
    assert_refused_or_fine(outcome, path, run_dir, before)
    assert snapshot(run_dir) == before  # probe never writes


# --------------------------------------------------------------------------- checkpoints

CKPT_ARGS = ["--variant", "topk", "--k", "2", "--dict-size", "8", "--epochs", "4", "--batch-size", "8", "--seed", "5",
             "--log-every", "1"]


@pytest.fixture(scope="module")
def interrupted_training(activation_files, tmp_path_factory) -> tuple[Path, Path]:
    """(a train-sae folder interrupted after epoch 2 with checkpoints of epochs 1 and 2, the same training
    uninterrupted)."""
    base = tmp_path_factory.mktemp("ckpt")
    reference = base / "reference"
    assert run_cli("train-sae", "--activations", activation_files[".npy"], "--out", reference, *CKPT_ARGS).rc == 0
    out = base / "interrupted"

    def log(line: str) -> None:
        if line.startswith("SAE Epoch [2/4]"):
            signal.raise_signal(signal.SIGTERM)

    from jax_impl import saes

    with pytest.raises(Interrupted):
        train_sae(activation_files[".npy"], out, TrainSAEConfig(dict_size=8, architecture=saes.get("topk").config(k=2),
                                                                epochs=4, batch_size=8, log_every=1, seed=5),
                  checkpoint_every=CheckpointPolicy(epochs=1, seconds=None), log=log)
    assert [e for e, _ in ck.list_checkpoints(out / "checkpoints")] == [2, 1]
    return out, reference


@budget(5, long=300)
@given(data=st.data())
def test_fuzzed_checkpoints(activation_files, interrupted_training, tmp_path_factory, data):
    """Any change to a checkpoint's bytes (a file of its step folder) is caught by its checksums: a damaged newest one falls back to the
    previous (one line naming it) and the resumed training writes the uninterrupted bytes; with both damaged,
    exit 2 naming the newest, nothing written. A checksum-valid file whose content does not fit (an array
    missing or of another shape, a wrong epoch) is damage too; one of another training (identity) is refused."""
    interrupted, reference = interrupted_training
    out = tmp_path_factory.mktemp("ckptfuzz") / "out"
    shutil.copytree(interrupted, out)
    newest, older = out / "checkpoints" / "ckpt_000002", out / "checkpoints" / "ckpt_000001"
    which = data.draw(st.sampled_from(["newest", "both", "resigned"]))
    if which == "resigned":  # a checksum-valid file whose content is wrong: refused by what it holds
        arrays, meta = ck.read_step(newest)
        del meta["arrays"]  # write_step records the arrays as they are
        name = data.draw(st.sampled_from(sorted(arrays)))
        kind = data.draw(st.sampled_from(["drop", "shape", "dtype", "epoch", "identity", "lines"]))
        if kind == "drop":
            del arrays[name]
        elif kind == "shape":
            arrays[name] = np.zeros((*arrays[name].shape, 1), arrays[name].dtype)
        elif kind == "dtype":
            arrays[name] = arrays[name].astype(np.float16 if arrays[name].dtype != np.float16 else np.float32)
        elif kind == "epoch":
            meta["epoch"] = data.draw(st.sampled_from([0, 1, 3, -1, "2", None]))
        elif kind == "identity":
            original = meta["identity"]
            meta["identity"] = data.draw(json_mutation(original))
            assume(meta["identity"] != original)
        else:
            meta["log_lines"] = data.draw(st.sampled_from([None, "x", [1], {}]))
        ck.write_step(newest, arrays, meta)
        which = "other training" if kind == "identity" else "newest"  # a wrong content is damage: fall back
    else:
        for step in [newest] + ([older] if which == "both" else []):  # any file the step's checksums cover
            path = step / data.draw(st.sampled_from([*ck.step_files(step), ck.CHECKSUMS]))
            mutated = data.draw(byte_mutation(path.read_bytes()))
            assume(mutated != path.read_bytes())
            path.write_bytes(mutated)
    before = snapshot(out)
    outcome = run_cli("train-sae", "--activations", activation_files[".npy"], "--out", out, *CKPT_ARGS, "--resume")
    if which == "newest":
        assert outcome.rc == 0, outcome.err
        warnings = [line for line in outcome.out.splitlines() if "warning" in line]
        assert len(warnings) == 1 and str(newest) in warnings[0] and "ckpt_000001 instead" in warnings[0]
        for name in ("sae.pth", "sae.safetensors", "saelens/sae_weights.safetensors", "sae_config.json"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    else:
        assert outcome.rc == 2, outcome.out[-500:]
        assert_refused_or_fine(outcome, newest, out, before)


# --------------------------------------------------------------------------- sweep grids

GRID_KEYS = ["seed", "dict_size", "epochs", "batch_size", "lr", "k", "aux_coeff", "l1_coeff", "groups", "data", "Seed"]
GOOD_SPECS = ["k=2,3", "seed=0..1", "lr=1e-3,3e-3", "aux_coeff=0.1", "dict_size=8,12", "epochs=1", "batch_size=32"]
GRID_VALUES = st.one_of(
    st.integers(-3, 40).map(str), st.floats().map(repr), st.text(max_size=5),
    st.sampled_from(["0..2", "3..1", "0..99999999999", "2:4:8", "", " ", "1e-3", "nan", "inf", "-0", "1_0", "0x10",
                     "\u0663", "9" * 40, "1e999", "1..", "..", "4,", "k=2"]),
)
# One sweep of the grids the fuzzer makes trains at most this much (a valid grid of 10**6 epochs would run
# for days; it is valid, so nothing is wrong with it, and the property is about parsing and validation).
MAX_WORK = {"configurations": 4, "epochs": 2, "dict_size": 32}


@st.composite
def grid_spec(draw) -> str:
    """One `--grid` string: a good one, a good one with characters inserted, deleted or replaced, a known or
    random key with random values, or random text."""
    kind = draw(st.sampled_from(["good", "mutated", "key-values", "text"]))
    if kind == "good":
        return draw(st.sampled_from(GOOD_SPECS))
    if kind == "key-values":
        key = draw(st.sampled_from(GRID_KEYS) | st.text(max_size=6))
        return f"{key}={','.join(draw(st.lists(GRID_VALUES, max_size=3)))}"
    if kind == "text":
        return draw(st.text(max_size=20))
    spec = list(draw(st.sampled_from(GOOD_SPECS)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(spec)))
        char = draw(st.sampled_from(list("=,.:-_ 0123456789eE+kx\n\t\x00\u00e9")) | st.characters())
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert" or not spec:
            spec.insert(at, char)
        elif op == "delete":
            del spec[min(at, len(spec) - 1)]
        else:
            spec[min(at, len(spec) - 1)] = char
    return "".join(spec)


@pytest.fixture(scope="module")
def sweep_rows(tmp_path_factory) -> Path:
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("sweeprows") / "acts.npy"
    np.save(path, rng.normal(size=(64, 6)).astype(np.float32))
    return path


def _sweep_work(specs: list[str]) -> dict[str, int] | None:
    """What the grid would train (from the public API), or None when it is refused."""
    from jax_impl.errors import UserError
    from jax_impl.jobs.sweep_grid import parse_grid, sae_configurations

    try:
        configs = sae_configurations(parse_grid(specs), variants=["topk"], dict_size=8,
                                     train=SAETrainConfig(epochs=1, batch_size=32), seed=0)
    except UserError:
        return None
    return {"configurations": len(configs), "epochs": max(c.train.epochs for c in configs),
            "dict_size": max(c.dict_size for c in configs)}


# Half the examples mix good, mutated and random specs; the other half are good specs with one of them
# perhaps mutated, so that a fair share of the grids is valid and the sweep trains (exit 0).
GRIDS = st.lists(grid_spec(), min_size=1, max_size=3) | st.tuples(
    st.lists(st.sampled_from(GOOD_SPECS), min_size=1, max_size=2, unique=True), st.lists(grid_spec(), max_size=1),
).map(lambda parts: parts[0] + parts[1])


@budget(8, long=300)
@given(specs=GRIDS)
def test_fuzzed_sweep_grids(sweep_rows, tmp_path_factory, specs):
    """Exit 0 with a table of every configuration, or exit 2 with one line naming --grid and nothing in --out
    but its lock file; never a traceback."""
    work = _sweep_work(specs)
    assume(work is None or all(work[k] <= v for k, v in MAX_WORK.items()))
    out = tmp_path_factory.mktemp("gridfuzz") / "out"
    outcome = run_cli("sweep", "--activations", sweep_rows, "--out", out, "--variant", "topk", "--dict-size", "8",
                      "--epochs", "1", "--batch-size", "32", *(f"--grid={s}" for s in specs))
    assert "Traceback" not in outcome.err and not outcome.warned, (specs, outcome)
    event(f"exit {outcome.rc}")
    if outcome.rc == 0:
        assert work is not None, specs
        doc = json.loads((out / "sweep.json").read_text())
        assert len(doc["configurations"]) == work["configurations"] and not (out / "checkpoints").exists()
        return
    assert outcome.rc == 2, (specs, outcome)
    assert outcome.err.count("\n") == 1 and outcome.err.startswith("monosem: error: --grid"), (specs, outcome.err)
    assert not out.exists() or [p.name for p in out.iterdir()] == [".monosem.lock"], (specs, list(out.iterdir()))
