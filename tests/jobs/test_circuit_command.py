"""`monosem circuit` on a tiny run directory: the document's fields (CIRCUIT_SCHEMA, docs/circuit.md), the cached
transcoders, and bad input (one line naming the flag, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from jax_impl import cli
from jax_impl.interop import bridge
from jax_impl.jobs.run_config import RunConfig
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import Split, pointer_targets
from jax_impl.task.splits import write_split

TINY = ["--circuit-dict-sizes", "16,16,16", "--circuit-k", "3,3,3", "--circuit-epochs", "2", "--circuit-batch-size", "64",
        "--circuit-label-rows", "100", "--circuit-global-graphs", "40", "--circuit-pairs", "32",
        "--circuit-global-features", "8", "--circuit-max-feature-nodes", "6", "--circuit-train-rows", "0",
        "--circuit-finetune-epochs", "1"]
ROW = "8,9,5,1,3,2,9,4,7,1"


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 10, (n, 2, 5))
    grid[:, :, -1] = rng.integers(0, 4, (n, 2))
    return grid.reshape(n, 10).astype(np.int32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    for i, name in enumerate(("train", "val", "test")):
        inputs = _rows(200 if name == "train" else 50, 10 + i)
        write_split(path / "dataset" / f"mlp_{name}.xlsx", Split(inputs, pointer_targets(inputs).astype(np.float32)))
    bridge.save_mlp(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), path / "mlp" / "perfect_mlp.pth")
    (path / "manifest.json").write_text(json.dumps({"config": RunConfig().to_dict()}))
    return path


def test_circuit_command_writes_the_document(run_dir, capsys):
    assert cli.main(["circuit", "--run-dir", str(run_dir), "--input", ROW, "--input", "0,0,0,0,0,9,9,9,9,3", *TINY]) == 0
    doc = json.loads((run_dir / "circuit" / "circuit.json").read_text())
    assert doc["format"] == "monosem-circuit/1" and doc["share"] == 0.9
    layers = doc["replacement"]["layers"]
    assert [(x["name"], x["reads"], x["d_in"], x["d_out"]) for x in layers] == [
        ("layer1", "input", 10, 256), ("layer2", "layer1", 256, 512), ("layer3", "layer2", 512, 256)]
    test = doc["replacement"]["test"]
    assert test["rows"] == 50
    assert test["replacement_with_errors"]["mse"] == pytest.approx(test["mlp"]["mse"], rel=1e-4, abs=1e-6)
    assert [g["input"] for g in doc["graphs"]] == [[int(v) for v in ROW.split(",")], [0, 0, 0, 0, 0, 9, 9, 9, 9, 3]]
    for g in doc["graphs"]:
        assert {"input", "target", "output", "completeness", "n_features", "nodes", "edges", "checks"} <= set(g)
        assert g["n_features"] <= 6
        ids = {n["id"] for n in g["nodes"]}
        assert {f"input/{i}" for i in range(10)} | {"error/layer1", "error/layer2", "error/layer3", "output"} <= ids
        assert sum(n["layer"] in ("layer1", "layer2", "layer3") and n["feature"] is not None for n in g["nodes"]) == g["n_features"]
        for n in g["nodes"]:
            assert {"id", "layer", "feature", "activation", "label", "influence"} <= set(n)
            if n["feature"] is not None and n["layer"] != "input":
                assert n["id"] in doc["features"]
        assert all(e["source"] in ids and e["target"] in ids for e in g["edges"])
        assert all({"node", "attributed", "measured", "agrees"} <= set(c) for c in g["checks"])
        # the graph's effects: input cells + errors + the biases' share make the output
        leaves = sum(n["influence"] for n in g["nodes"] if n["layer"] == "input" or n["id"].startswith("error/"))
        assert leaves + g["bias"] == pytest.approx(g["output"], abs=1e-3)
    view = doc["global"]
    assert view["graphs"] == 40 and {"variable", "features"} <= set(view["groups"][0])
    assert {c["variable"] for c in view["causal_map"]} == {"A", "B", "D", "T"}
    for fid, info in doc["features"].items():
        assert {"layer", "feature", "label", "variable", "top_inputs", "graphs"} <= set(info), fid
    out = capsys.readouterr().out
    assert "Replacement on 50 test rows" in out
    for layer in ("layer1", "layer2", "layer3"):
        assert (run_dir / "circuit" / "transcoders" / layer / "sae.pth").exists()
    # the same settings again: the transcoders are read back, and the document is the same
    assert cli.main(["circuit", "--run-dir", str(run_dir), "--input", ROW, "--input", "0,0,0,0,0,9,9,9,9,3", *TINY]) == 0
    assert "read back" in capsys.readouterr().out
    assert json.loads((run_dir / "circuit" / "circuit.json").read_text()) == doc


@pytest.mark.parametrize("value, says", [
    ("8,9,5,1,3,2,9,4,7", "expected 10 integers, got 9"),
    ("8,9,5,1,3,2,9,4,7,x", "comma-separated integers"),
    ("8,9,5,1,4,2,9,4,7,1", "pointer at position 4 is 4, expected 0..3"),
    ("8,9,5,1,3,2,9,4,10,1", "value at position 8 is 10, expected 0..9"),
])
def test_bad_input_is_one_line_naming_the_flag(run_dir, capsys, value, says):
    assert cli.main(["circuit", "--run-dir", str(run_dir), "--input", value, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input" in err and says in err, err


def test_missing_run_dir_and_bad_settings(tmp_path, run_dir, capsys):
    assert cli.main(["circuit", "--run-dir", str(tmp_path / "nope"), "--input", ROW]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    assert cli.main(["circuit", "--run-dir", str(run_dir), "--input", ROW, "--circuit-k", "3,3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--circuit-k" in err


def test_the_causal_map_is_read_checked_and_a_damaged_one_is_left_out_in_one_line(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    causal = copy / "causal" / "causal.json"
    causal.parent.mkdir(exist_ok=True)
    causal.write_text(json.dumps({"variables": {"A": {"best": {"hook": "layer2"}}}, "hooks": {"layer2": {}}}))
    assert cli.main(["circuit", "--run-dir", str(copy), "--input", ROW, *TINY]) == 0
    compared = {c["variable"]: c for c in json.loads((copy / "circuit" / "circuit.json").read_text())["global"]["causal_map"]}
    assert compared["A"]["causal_hook"] == "layer2" and compared["A"]["causal_hooks"] == ["layer2"]
    capsys.readouterr()
    causal.write_text(json.dumps({"variables": {"A": {"best": 3}}}))  # valid JSON of the wrong shape
    assert cli.main(["circuit", "--run-dir", str(copy), "--input", ROW, *TINY]) == 0
    out = capsys.readouterr().out
    assert "the causal map is not compared" in out and "variables.A.best" in out
    doc = json.loads((copy / "circuit" / "circuit.json").read_text())
    assert all(c["causal_hook"] is None for c in doc["global"]["causal_map"])
