"""`monosem run|train-sae|sweep --config FILE` (issue 27, item 7): the JSON each command writes reruns the recorded
run to the same bytes; flags given beside it override its values; data that changed since is refused where it comes
from the record and noted where it is given again; a bad file is one line naming the file and the key, exit 2."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_RUN_ARGS
from jax_impl.cli import _config_from_args, build_parser, main
from jax_impl.jobs.run_config import RunConfig
from jax_impl.jobs.rundir import MLP_PATH, SAE_PATH
from jax_impl.jobs.train_sae import TrainSAEConfig

# Every value other than train-sae's default, so that a rerun that fell back to a default would differ.
TRAIN_ARGS = ["--variant", "topk", "--k", "3", "--dict-size", "24", "--epochs", "2", "--batch-size", "64",
              "--seed", "5", "--lr", "0.002", "--log-every", "2"]
SWEEP_ARGS = ["--grid", "k=2,4", "--variant", "topk", "--dict-size", "16", "--epochs", "2", "--batch-size", "64",
              "--seed", "3", "--lr", "0.002"]
SAE_FILES = ("sae.pth", "sae.safetensors", "saelens/sae_weights.safetensors")


def _digests(folder: Path, names=SAE_FILES) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


@pytest.fixture(scope="module")
def trained(activations, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("config_rerun") / "sae"
    assert main(["train-sae", "--activations", str(activations), "--out", str(out), *TRAIN_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def swept(activations, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("config_rerun") / "sweep"
    assert main(["sweep", "--activations", str(activations), "--out", str(out), *SWEEP_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A manifest.json as `monosem run` TINY_RUN_ARGS writes it (its config; no stage run: nothing here trains)."""
    config = _config_from_args(build_parser().parse_args(["run", *TINY_RUN_ARGS]))
    path = tmp_path_factory.mktemp("config_rerun") / "manifest.json"
    path.write_text(json.dumps({"config": config.to_dict(), "seed": config.seed, "versions": {}, "stages": {},
                                "metrics": {}}))
    return path


def test_train_sae_config_reruns_the_recorded_training_to_the_same_bytes(trained, activations, tmp_path):
    again = tmp_path / "again"
    assert main(["train-sae", "--config", str(trained / "sae_config.json"), "--activations", str(activations),
                 "--out", str(again)]) == 0
    assert _digests(again) == _digests(trained)
    assert (again / "sae_config.json").read_bytes() == (trained / "sae_config.json").read_bytes()
    config = TrainSAEConfig.from_record(trained / "sae_config.json")
    assert (config.variant, config.architecture.k, config.dict_size, config.seed, config.lr) == ("topk", 3, 24, 5, 0.002)


def test_train_sae_flags_beside_config_override_it_and_other_data_given_is_noted(trained, activations, tmp_path,
                                                                               capsys):
    other = tmp_path / "other.npy"  # the same shape, other rows: another fingerprint
    np.save(other, np.load(activations)[::-1].copy())
    out = tmp_path / "out"
    assert main(["train-sae", "--config", str(trained / "sae_config.json"), "--activations", str(other),
                 "--out", str(out), "--epochs", "1", "--k", "2"]) == 0
    record = json.loads((out / "sae_config.json").read_text())
    assert record["training"] == {"epochs": 1, "batch_size": 64, "lr": 0.002, "log_every": 2}
    assert (record["architecture"], record["config"]["k"], record["dict_size"], record["seed"]) == ("topk", 2, 24, 5)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "key activations.fingerprint" in notes[0] and "other.npy" in notes[0]


def test_run_config_reads_the_manifest_and_flags_beside_it_override(manifest):
    recorded = RunConfig.from_record(manifest)
    assert recorded == _config_from_args(build_parser().parse_args(["run", *TINY_RUN_ARGS]))
    args = build_parser().parse_args(["run", "--config", str(manifest), "--seed", "8", "--mlp-epochs", "4",
                                      "--l1-coeff", "0.5"])
    merged = _config_from_args(args, RunConfig.from_record(args.config))
    assert merged == dataclasses.replace(
        recorded, seed=8, mlp=dataclasses.replace(recorded.mlp, epochs=4),
        sae=dataclasses.replace(recorded.sae, architecture=dataclasses.replace(recorded.sae.architecture,
                                                                               l1_coeff=0.5)))
    assert not merged.circuit_stage  # the file's --no-circuit stays


@pytest.mark.slow
def test_run_config_reruns_the_recorded_run_to_the_same_bytes(tiny_run, tmp_path):
    again = tmp_path / "again"
    assert main(["run", "--config", str(tiny_run / "manifest.json"), "--run-dir", str(again)]) == 0
    names = (str(MLP_PATH), str(MLP_PATH.with_suffix(".safetensors")), str(SAE_PATH),
             str(SAE_PATH.with_suffix(".safetensors")))
    assert _digests(again, names) == _digests(tiny_run, names)
    assert (json.loads((again / "manifest.json").read_text())["config"]
            == json.loads((tiny_run / "manifest.json").read_text())["config"])


def test_sweep_config_reruns_the_recorded_sweep_to_the_same_bytes(swept, tmp_path):
    again = tmp_path / "again"
    assert main(["sweep", "--config", str(swept / "sweep.json"), "--out", str(again)]) == 0
    folders = sorted(p.name for p in swept.iterdir() if (p / "sae.pth").is_file())
    assert len(folders) == 2 and folders == sorted(p.name for p in again.iterdir() if (p / "sae.pth").is_file())
    for name in folders:
        assert _digests(again / name) == _digests(swept / name)
    first, second = (json.loads((folder / "sweep.json").read_text()) for folder in (swept, again))
    assert first["settings"] == second["settings"] and first["data"] == second["data"]
    assert first["settings"]["train"] == {"epochs": 2, "batch_size": 64, "lr": 0.002, "log_every": 1}


def test_sweep_grid_flag_beside_config_replaces_that_key(swept, tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(swept / "sweep.json"), "--out", str(out), "--grid", "k=5",
                 "--epochs", "1"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["grid"] == {"k": ["5"]} and [row["name"] for row in doc["configurations"]] == ["000-k5"]
    record = doc["configurations"][0]["config"]
    assert (record["training"]["epochs"], record["training"]["lr"], record["dict_size"], record["seed"]) == (1, 0.002,
                                                                                                             16, 3)


def test_sweep_config_refuses_recorded_data_that_changed(swept, activations, tmp_path, capsys):
    copy = tmp_path / "acts.npy"
    shutil.copy(activations, copy)
    doc = json.loads((swept / "sweep.json").read_text())
    doc["settings"]["activations"] = str(copy)
    (tmp_path / "sweep.json").write_text(json.dumps(doc))
    np.save(copy, np.load(activations)[::-1].copy())  # changed since the sweep
    assert main(["sweep", "--config", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key data.activations.fingerprint" in err and "sweep.json" in err
    assert not (tmp_path / "out").exists()


def _edit(source: Path, tmp_path: Path, change) -> Path:
    doc = json.loads(source.read_text())
    change(doc)
    path = tmp_path / "edited" / source.name
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    return path


def _set(keys: str, value):
    def change(doc):
        *parents, last = keys.split(".")
        for k in parents:
            doc = doc[k]
        doc[last] = value
    return change


# (command, which record, how it is spoilt, what the one line must name besides the file)
BAD = [
    ("run", "missing", None, "No such file"),
    ("train-sae", "missing", None, "No such file"),
    ("sweep", "missing", None, "No such file"),
    ("train-sae", "not json", None, "not train-sae's sae_config.json"),
    ("run", "sae_config", None, "monosem train-sae --config"),
    ("train-sae", "manifest", None, "monosem run --config"),
    ("sweep", "sae_config", None, "monosem train-sae --config"),
    ("run", "manifest", _set("config.mlp.bogus", 1), "bogus"),
    ("train-sae", "sae_config", _set("bogus", 1), "bogus"),
    ("sweep", "sweep", _set("settings.bogus", 1), "bogus"),
    ("run", "manifest", _set("config.mlp.epochs", 0), "key config.mlp.epochs"),
    ("run", "manifest", _set("config.seed", "7"), "key config.seed"),
    ("train-sae", "sae_config", _set("training.epochs", 0), "key training.epochs"),
    ("train-sae", "sae_config", _set("config.k", 99), "key config"),
    ("train-sae", "sae_config", _set("dict_size", 2.5), "key 'dict_size'"),
    ("train-sae", "sae_config", _set("transcoder", True), "key 'target'"),
    ("train-sae", "sae_config", lambda doc: doc.update(transcoder=True, skip=False, output_dim=doc["input_dim"],
                                                      target=doc["activations"]), "give --target"),
    ("sweep", "sweep", _set("settings.chunk_rows", 0), "key 'settings.chunk_rows'"),
    ("sweep", "sweep", _set("settings.train.lr", -1), "key settings.train.lr"),
    ("sweep", "sweep", lambda doc: doc.pop("settings"), "key 'settings'"),
]


@pytest.mark.parametrize(("command", "kind", "change", "named"), BAD)
def test_a_bad_config_file_is_one_line_naming_it_and_exit_2(command, kind, change, named, trained, swept, manifest,
                                                            activations, tmp_path, capsys):
    sources = {"sae_config": trained / "sae_config.json", "sweep": swept / "sweep.json", "manifest": manifest}
    if kind == "missing":
        path = tmp_path / "absent.json"
    elif kind == "not json":
        path = tmp_path / "sae_config.json"
        path.write_text("{not json")
    else:
        path = sources[kind] if change is None else _edit(sources[kind], tmp_path, change)
    out = tmp_path / "out"
    argv = {"run": ["run", "--run-dir", str(out)],
            "train-sae": ["train-sae", "--activations", str(activations), "--out", str(out)],
            "sweep": ["sweep", "--out", str(out)]}[command]
    assert main([*argv, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and named in err, err
    assert not out.exists()


def test_recipe_beside_config_is_refused(manifest, tmp_path, capsys):
    assert main(["run", "--config", str(manifest), "--recipe", "strong", "--run-dir", str(tmp_path / "out")]) == 2
    assert "--recipe strong with --config" in capsys.readouterr().err
