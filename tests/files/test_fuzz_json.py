"""Structure-aware fuzzing of every JSON document monosem reads, and of a synthetic set's ground_truth.npz
(issue 24, item 8), with hypothesis.

Each test starts from a valid document built in this process (a RunConfig's manifest, SAELens folders of tiny
SAEs, a synthetic set of 120 rows, a finished sweep of one tiny SAE, a training checkpoint, a causal map and an
atlas), mutates one node of it by type or range (a string for a bool, a float for an int, a list, an object,
null, a huge or negative int, a deleted key; as raw text NaN, Infinity, 1e400 and nesting 65 to 100,000 deep)
and gives it to the reader. The property:

  - the reader raises UserError with one line naming the file; no other exception, no warning;
  - or it accepts the document, and what it returned is usable: the consumer of each reader runs on it (the run's
    PRNG key and hook, a forward pass of the SAE, the ground-truth scorer, the sweep's report, the resumed
    training's epoch, the Sankey's causal view, the probe's labels).

Counts: the `ci` profile (conftest.py) runs the examples each test's `budget` names; HYPOTHESIS_PROFILE=long
runs `long` of them (CHANGELOG.md records the counts).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_file_values import CAUSAL

from jax_impl import saes
from jax_impl.data.synthetic import CONFIG_FILE, TRUTH_FILE, SyntheticConfig, load_synthetic, write_synthetic
from jax_impl.errors import UserError
from jax_impl.evaluation.atlas.document import ATLAS_JSON, feature_labels
from jax_impl.evaluation.groundtruth import Scorer
from jax_impl.evaluation.inference import format_probe
from jax_impl.interop import saelens
from jax_impl.jobs import sweep
from jax_impl.jobs.causal import read_causal
from jax_impl.jobs.pipeline import _completed_stages
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import MANIFEST, METRICS_FILE, SAE_CONFIG_FILE, Run, read_manifest, run_config
from jax_impl.jobs.train_sae import TrainSAEConfig
from jax_impl.models.mlp import HOOK_WIDTHS
from jax_impl.reports.circuit_trace import causal_sankey_view
from jax_impl.training import checkpoints as ck
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.sae_trainer import SAETrainConfig

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def budget(ci: int, long: int = 500) -> settings:
    """max_examples for this test: `ci` by default, `long` under HYPOTHESIS_PROFILE=long."""
    return settings(max_examples=long if LONG else ci)


# --------------------------------------------------------------------------- mutations

_RAW = "\x00raw{}\x00"  # a placeholder string, replaced in the JSON text by what json.dumps cannot write


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _replacements(old: Any) -> dict[str, Any]:
    """The values one mutation may put in place of `old`: another type, or the same type out of its range."""
    number = old if isinstance(old, (int, float)) and not isinstance(old, bool) else 1
    return {
        "string of it": json.dumps(old) if not isinstance(old, str) else old + "x",
        "string false": "false", "empty string": "",
        "bool": not old if isinstance(old, bool) else True,
        "float": number + 0.5, "integral float": float(number),
        "int": int(number) + 1 if not isinstance(old, int) or isinstance(old, bool) else -number,
        "zero": 0, "minus one": -1, "int32 max + 1": 2**31, "int64 max + 1": 2**63, "huge int": 10**400,
        "null": None, "list": [old], "empty list": [], "object": {"x": old}, "empty object": {},
        "NaN": _RAW.format("NaN"), "Infinity": _RAW.format("Infinity"), "-Infinity": _RAW.format("-Infinity"),
        "1e400": _RAW.format("1e400"),
        "65 deep": _RAW.format("[" * 65 + "]" * 65), "1000 deep": _RAW.format('{"a":' * 1000 + "1" + "}" * 1000),
        "100000 deep": _RAW.format("[" * 100_000 + "]" * 100_000),
    }


@st.composite
def mutated_json(draw, doc: Any, protect: tuple[tuple, ...] = ()) -> str:
    """The JSON text of `doc` with one node (not under a `protect` prefix) replaced by another type or range of
    value, or deleted."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if not any(p[: len(q)] == q for q in protect)]
    path = draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]] if path else doc
    kinds = _replacements(old)
    kind = draw(st.sampled_from(sorted(kinds) + ["delete"] * bool(path)))
    event(f"mutation: {kind}")
    if kind == "delete":
        del parent[path[-1]]
    elif path:
        parent[path[-1]] = kinds[kind]
    else:
        doc = kinds[kind]
    text = json.dumps(doc)
    for raw in ("NaN", "Infinity", "-Infinity", "1e400", "[" * 65 + "]" * 65, '{"a":' * 1000 + "1" + "}" * 1000,
                "[" * 100_000 + "]" * 100_000):
        text = text.replace(json.dumps(_RAW.format(raw)), raw)
    return text


def read_or_refuse(path: Path, read) -> Any:
    """read() -> its value, or None when it raised a one-line UserError naming `path` (a file, or the folder of
    the files read together) and no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = read()
        except UserError as e:
            text = str(e)
            assert "\n" not in text and str(path) in text, text
            event("refused")
            value = None
        else:
            event("accepted")
    assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]
    return value


# --------------------------------------------------------------------------- a run's manifest


@budget(60, long=1000)
@given(data=st.data())
def test_fuzzed_manifest(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("manifest")
    manifest = {"config": RunConfig().to_dict(), "seed": 0, "versions": {"python": "3"},
                "stages": {"data": {"seconds": 1.5, "completed_at": "2026-01-01T00:00:00"}}, "metrics": {"data": {}}}
    path = run_dir / MANIFEST
    path.write_text(data.draw(mutated_json(manifest)))
    config = read_or_refuse(path, lambda: run_config(run_dir))
    if config is not None:  # what a reader of the run does with it first
        run = Run(run_dir, config)
        assert run.hook_width == HOOK_WIDTHS[config.hook] and run.shape.input_dim >= 2
        run.key(0)
        config.sae.train_config()
    recorded = read_or_refuse(path, lambda: read_manifest(run_dir))
    if recorded is not None:  # `run --resume` with the default flags: same config (resumes) or one line
        read_or_refuse(path, lambda: _completed_stages(recorded, RunConfig(), run_dir, resume=True))


# --------------------------------------------------------------------------- SAELens cfg.json

# SAELens's "standard" (untied), "topk" (k) and "matryoshka_batchtopk" (k, matryoshka_widths): every key the reader
# takes (HYPOTHESIS_PROFILE=long also passed with batchtopk and jumprelu, "jumprelu" with a threshold tensor)
SAELENS_VARIANTS = ("relu-l1", "topk", "matryoshka")


@pytest.fixture(scope="module")
def saelens_folders(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """A SAELens folder of each architecture, with our metadata and without (a plain SAELens file)."""
    root = tmp_path_factory.mktemp("saelens")
    folders = {}
    for variant in SAELENS_VARIANTS:
        arch = saes.get(variant)
        cfg = arch.config(**({"k": 2} if "k" in arch.config.__dataclass_fields__ else {}))
        sae = saes.create(variant, 6, 16, cfg, key=jax.random.key(1))
        for ours in (True, False):
            folder = saelens.save_saelens(sae, root / f"{variant}-{ours}")
            if not ours:
                cfg_json = json.loads((folder / saelens.CFG_FILE).read_text())
                del cfg_json["metadata"]["monosem"]
                (folder / saelens.CFG_FILE).write_text(json.dumps(cfg_json))
            folders[(variant, ours)] = folder
    return folders


@budget(40, long=1000)
@given(data=st.data())
def test_fuzzed_saelens_cfg(saelens_folders, tmp_path_factory, data):
    key = data.draw(st.sampled_from(sorted(saelens_folders)))
    folder = tmp_path_factory.mktemp("cfg") / "sae"
    shutil.copytree(saelens_folders[key], folder)
    path = folder / saelens.CFG_FILE
    path.write_text(data.draw(mutated_json(json.loads(path.read_text()))))
    sae = read_or_refuse(folder, lambda: saelens.load_saelens(folder, input_dim=None))
    if sae is not None:
        reconstruction, features = sae(jnp.ones((3, sae.input_dim), jnp.float32))
        assert reconstruction.shape == (3, 6) and features.shape == (3, 16)


# --------------------------------------------------------------------------- a synthetic set

SYNTHETIC = SyntheticConfig(n_features=10, dim=6, rows=120, parents=2, children_per_parent=2, correlation_rank=2)


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    return write_synthetic(SYNTHETIC, tmp_path_factory.mktemp("synthetic") / "set")


def _score(folder: Path) -> None:
    """What `synthetic-score` does with a set it read: the scorer over every row (a random 12-latent SAE)."""
    x, truth, cfg = load_synthetic(folder)
    decoder = np.random.default_rng(0).normal(size=(12, cfg.dim))
    scorer = Scorer(truth, decoder)
    rows = np.asarray(x, np.float64)
    scorer.add(0, rows, np.maximum(rows @ decoder.T, 0), rows)
    result = scorer.result()
    assert 0 <= result["f1"] <= 1


@budget(30, long=1000)
@given(data=st.data())
def test_fuzzed_synthetic_config(synthetic_set, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("syncfg") / "set"
    shutil.copytree(synthetic_set, folder)
    path = folder / CONFIG_FILE
    path.write_text(data.draw(mutated_json(json.loads(path.read_text()))))
    read_or_refuse(folder, lambda: _score(folder))


def _truth_arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / TRUTH_FILE) as z:
        return {k: z[k] for k in z.files}


@st.composite
def mutated_truth(draw, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One array of the ground truth changed in dtype, shape or values, removed, or one added."""
    arrays = dict(arrays)
    name = draw(st.sampled_from(sorted(arrays)))
    a = arrays[name]
    kind = draw(st.sampled_from(["dtype", "shape", "value", "values", "remove", "add", "empty", "scalar"]))
    event(f"npz mutation: {kind}")
    if kind == "dtype":
        arrays[name] = a.astype(draw(st.sampled_from(["float64", "float16", "int64", "int32", "int8", "uint32",
                                                      "bool", ">f4", ">i8", "complex64"])))
    elif kind == "shape":
        arrays[name] = draw(st.sampled_from([a[:-1], a[1:], np.concatenate([a, a[:1]]), a.reshape(1, -1), a.T]))
    elif kind in ("value", "values"):
        flat = a.reshape(-1).copy()
        if flat.size:
            picks = [draw(st.integers(0, flat.size - 1))] if kind == "value" else slice(None)
            choices = [-1, 0, 10, 120, 2**31 - 1, -(2**31)] if a.dtype.kind == "i" else \
                [np.nan, np.inf, -np.inf, -1.0, 0.0, 2.0, 1e30, 1e-30]
            flat[picks] = draw(st.sampled_from(choices))
            arrays[name] = flat.reshape(a.shape)
    elif kind == "remove":
        del arrays[name]
    elif kind == "add":
        arrays["extra"] = np.zeros(3)
    elif kind == "empty":
        arrays[name] = a[:0]
    else:
        arrays[name] = np.asarray(a.reshape(-1)[:1].sum() if a.size else 0, a.dtype)
    if name == "row" and kind == "values" and draw(st.booleans()):
        arrays["row"] = np.sort(arrays["row"])
    return arrays


def _with_declared_shape(npy: bytes, shape: str) -> bytes:
    """A .npy (format 1.0) whose header declares `shape` (Python tuple text) for the data that follows it."""
    stream = io.BytesIO(npy)
    np.lib.format.read_magic(stream)
    _, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    header = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': {fortran}, 'shape': ({shape}), }}"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1") + npy[stream.tell():]


@budget(40, long=1000)
@given(data=st.data())
def test_fuzzed_ground_truth(synthetic_set, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("truth") / "set"
    shutil.copytree(synthetic_set, folder)
    path = folder / TRUTH_FILE
    arrays = data.draw(mutated_truth(_truth_arrays(synthetic_set)))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    if data.draw(st.booleans(), label="header"):  # the declared shape of one member, not its data
        with zipfile.ZipFile(buffer) as zin:
            members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
        member = data.draw(st.sampled_from(sorted(members)))
        claim = data.draw(st.sampled_from(["10000000000000,", "0,", "-1,", "10, 10", "", "12,", "2**40,", "1e3,"]))
        event(f"npz header shape: ({claim})")
        members[member] = _with_declared_shape(members[member], claim)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zout:
            for name, content in members.items():
                zout.writestr(name, content)
    path.write_bytes(buffer.getvalue())
    read_or_refuse(folder, lambda: _score(folder))


# --------------------------------------------------------------------------- a sweep's files on --resume


class _Trains(Exception):
    """Raised in place of training a sweep group: the resume would train it again."""


SWEEP_ARGS = {"variants": ["topk"], "dict_size": 8, "train": SAETrainConfig(epochs=1, batch_size=50, log_every=1)}
SWEEP_GRID = {"k": [2]}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """(activations, a sweep folder of one finished topk configuration): the files a sweep writes for it
    (train_sae.write_artifacts, its config_record), of an SAE that is not trained, with metrics of a trained one."""
    from jax_impl.data.activations import open_activations
    from jax_impl.jobs.sweep_grid import sae_configurations
    from jax_impl.jobs.train_sae import config_record, write_artifacts

    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(2)
    activations = root / "acts.npy"
    np.save(activations, (rng.random((100, 6)) * (rng.random((100, 6)) < 0.4)).astype(np.float32))
    (c,) = sae_configurations(SWEEP_GRID, **SWEEP_ARGS, seed=0)
    model = saes.create(c.variant, 6, c.dict_size, c.cfg, key=jax.random.key(0))
    record = config_record(model, c.variant, c.train, open_activations(activations), seed=c.seed,
                           chunk_rows=TrainSAEConfig.chunk_rows, devices=1)
    metrics = {"rows": 100, "mse": 0.0123, "explained_variance": 0.61, "l0": 2.0, "dead_fraction": 0.25,
               "final_loss": 0.0456, "train_seconds": 0.5}
    write_artifacts(model, root / "sw" / c.name, record, metrics)
    return activations, root / "sw"


def _trains(*args, **kwargs):
    raise _Trains


def _resume(out: Path, activations: Path, monkeypatch) -> dict | None:
    monkeypatch.setattr(sweep, "fit_sae_group", _trains)
    try:
        doc = sweep.run_sweep(out, SWEEP_GRID, activations=activations, **SWEEP_ARGS, resume=True, log=lambda _: None)
    except _Trains:
        event("ignored: the group trains again")
        return None
    assert [row["name"] for row in doc["configurations"]] == ["000-k2"]
    assert (out / "sweep.csv").read_text().count("\n") == 2
    return doc


@budget(15, long=300)
@given(data=st.data())
def test_fuzzed_sweep_metrics_and_config(finished_sweep, tmp_path_factory, monkeypatch, data):
    activations, finished = finished_sweep
    out = tmp_path_factory.mktemp("resume") / "sw"
    shutil.copytree(finished, out)
    path = out / "000-k2" / data.draw(st.sampled_from([METRICS_FILE, SAE_CONFIG_FILE]))
    path.write_text(data.draw(mutated_json(json.loads(path.read_text()))))
    read_or_refuse(path.parent, lambda: _resume(out, activations, monkeypatch))


@budget(15, long=300)
@given(data=st.data())
def test_fuzzed_sweep_done_file(finished_sweep, tmp_path_factory, monkeypatch, data):
    """A group whose one configuration diverged: its row lives in checkpoints/group-000/done.json (no folder)."""
    from jax_impl.data.activations import open_activations
    from jax_impl.jobs.sweep_grid import sae_configurations

    activations, _ = finished_sweep
    out = tmp_path_factory.mktemp("done") / "sw"
    out.mkdir()
    configurations = sae_configurations(SWEEP_GRID, **SWEEP_ARGS, seed=0)
    identity = json.loads(json.dumps(sweep._sae_identity(configurations, open_activations(activations),
                                                         TrainSAEConfig.chunk_rows)))
    row = {"name": "000-k2", "group": 0, "variant": "topk", "k": 2, "status": "SAE (sweep group 1/1) diverged",
           "seconds": 0.5}
    path = out / "checkpoints" / "group-000" / sweep.GROUP_DONE_FILE
    path.parent.mkdir(parents=True)
    path.write_text(data.draw(mutated_json({"identity": identity, "diverged": {"000-k2": row}})))
    read_or_refuse(path.parent, lambda: _resume(out, activations, monkeypatch))


# --------------------------------------------------------------------------- a checkpoint's metadata


@budget(30, long=1000)
@given(data=st.data())
def test_fuzzed_checkpoint_metadata(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("ckpt")
    template = {"w": jnp.zeros((2, 3), jnp.float32), "key": jax.random.key(0)}
    identity = {"stage": "sae", "config": {"k": 2, "groups": [1, 2]}}
    saver = ck.TrainingCheckpoints(folder, identity, CheckpointPolicy(epochs=1, seconds=None), log=lambda _: None)
    saver.save(ck.Progress(template, 2, np.zeros((2, 4), np.float32), ["epoch 1", "epoch 2"], np.ones(2)))
    path = ck.checkpoint_path(folder, 2)
    meta_file = path / ck.META / "metadata"
    text = data.draw(mutated_json(json.loads(meta_file.read_text()), protect=(("format",),)))
    meta_file.write_text(text)
    ck.seal_step(path, path)  # checksums that match: what is read is the mutated JSON itself
    resumed = ck.TrainingCheckpoints(folder, identity, resume=True, log=lambda _: None)
    progress = read_or_refuse(path, lambda: resumed.restore(template))
    if progress is not None:  # where a training loop goes on from
        assert list(range(progress.epoch, 4)) == [2, 3] and all(isinstance(line, str) for line in progress.log_lines)


# --------------------------------------------------------------------------- a causal map and an atlas


@budget(50, long=1000)
@given(data=st.data())
def test_fuzzed_causal_map(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("causal") / "causal.json"
    path.write_text(data.draw(mutated_json(CAUSAL)))
    doc = read_or_refuse(path, lambda: read_causal(path))
    if doc is not None:
        causal_sankey_view(doc)


ATLAS = {"format": "monosem-feature-atlas/1", "rows": 64, "summary": {"live": 2},
         "features": [{"id": 4, "label": "p1=2", "family": "pointer", "f1": 0.95, "monosemantic": True, "top": []},
                      {"id": 9, "label": "t=1", "family": "target", "f1": None, "monosemantic": False, "top": []}]}


@budget(40, long=1000)
@given(data=st.data())
def test_fuzzed_atlas_labels(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("atlas") / ATLAS_JSON
    path.write_text(data.draw(mutated_json(ATLAS)))
    labels = read_or_refuse(path, lambda: feature_labels(path))
    if labels is not None:
        assert all(isinstance(k, int) and isinstance(v, str) for k, v in labels.items())
        from jax_impl.evaluation.inference import ProbeReport

        format_probe(ProbeReport(inputs=(1, 2), expected=1.0, prediction=1.0, active_count=1,
                                 top_features=[(4, 0.5)]), labels)
