"""End to end: a tiny `monosem run`, its artifacts in plain PyTorch, and the other commands."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from jax_impl.cli import main
from jax_impl.jobs.pipeline import run_dir_lock


# The upstream classes, written from the spec, independent of this project's code.
class UpstreamMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleDict({
            "input": nn.Linear(10, 256), "bn1": nn.BatchNorm1d(256), "hidden1": nn.Linear(256, 512),
            "bn2": nn.BatchNorm1d(512), "hidden2": nn.Linear(512, 256), "output": nn.Linear(256, 1),
        })
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.layers["bn1"](self.layers["input"](x)))
        x = self.relu(self.layers["bn2"](self.layers["hidden1"](x)))
        self.layer2 = x
        return self.layers["output"](self.relu(self.layers["hidden2"](x)))


class UpstreamSAE(nn.Module):
    def __init__(self, input_dim=512, dict_size=2048):
        super().__init__()
        self.encoder = nn.Linear(input_dim, dict_size)
        self.decoder = nn.Linear(dict_size, input_dim)

    def forward(self, x):
        hidden = torch.relu(self.encoder(x))
        return self.decoder(hidden), hidden


def test_artifacts_load_strictly_in_plain_torch(tiny_run):
    from jax_impl.task.splits import read_split

    mlp = UpstreamMLP()
    mlp.load_state_dict(torch.load(tiny_run / "mlp" / "perfect_mlp.pth", weights_only=True), strict=True)
    sae = UpstreamSAE(512, 512)
    sae.load_state_dict(torch.load(tiny_run / "sae" / "sae_model.pth", weights_only=True), strict=True)
    assert int(mlp.layers["bn1"].num_batches_tracked) == 3 * 8  # 3 epochs x 512/64 batches

    acts = torch.load(tiny_run / "mlp_activations.pt", weights_only=True)
    assert acts.dtype == torch.float32 and tuple(acts.shape) == (512, 512)
    train = read_split(tiny_run / "dataset" / "mlp_train.xlsx")
    mlp.eval()
    with torch.no_grad():
        mlp(torch.tensor(train.inputs, dtype=torch.float32))
    # the harvested activations are torch's own layer2 of the training rows, in row order
    np.testing.assert_allclose(acts.numpy(), mlp.layer2.numpy(), atol=1e-5)


def test_manifest_records_config_versions_metrics_and_timings(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["config"]["data"]["n_train"] == 512
    assert manifest["config"]["sae"]["dict_size"] == 512
    assert set(manifest["stages"]) >= {"data", "mlp", "harvest", "sae", "probe"}
    assert all(s["seconds"] > 0 for s in manifest["stages"].values())
    assert {"jax", "flax", "optax", "torch", "numpy"} <= set(manifest["versions"])
    test_metrics = manifest["metrics"]["mlp"]["test"]
    assert 0 <= test_metrics["exact_match"] <= 1 and test_metrics["mse"] > 0
    assert manifest["metrics"]["harvest"]["shape"] == [512, 512]


def test_the_circuit_stage_traces_the_probe_inputs_and_the_reports_link_it(tiny_run, tmp_path):
    """The stage `--no-circuit` left out of tiny_run, run on a copy: circuit/ holds the probe inputs' graphs, the
    page and the transcoders, the manifest records it, and the reports written after it link to the page."""
    import dataclasses
    import shutil

    from jax_impl.evaluation.circuit.config import CircuitConfig
    from jax_impl.jobs import pipeline
    from jax_impl.jobs.rundir import Run, read_manifest, run_config

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    assert not (run_dir / "circuit").exists()
    assert "Attribution graphs per input" not in (run_dir / "uhd_bold_sankey.html").read_text()
    tiny = CircuitConfig(dict_sizes=(16, 16, 16), k=(3, 3, 3), epochs=2, batch_size=64, label_rows=64,
                         global_graphs=16, pairs=16, global_features=4, max_feature_nodes=6, train_rows=0,
                         finetune_epochs=1)
    config = dataclasses.replace(run_config(run_dir), circuit=tiny, circuit_stage=True)
    run = Run(run_dir, config, log=lambda line: None)
    stages = {s.name: s for s in pipeline.STAGES}
    manifest = pipeline.run_stage(run, stages["circuit"], read_manifest(run_dir))
    doc = json.loads((run_dir / "circuit" / "circuit.json").read_text())
    probe = pipeline.probe_inputs(run.shape, run.splits["test"])
    assert [g["input"] for g in doc["graphs"]] == probe.tolist()
    assert "monosem-circuit/1" in (run_dir / "circuit" / "circuit.html").read_text()
    assert sorted(p.name for p in (run_dir / "circuit" / "transcoders").iterdir()) == ["layer1", "layer2", "layer3"]
    assert read_manifest(run_dir)["metrics"]["circuit"] == manifest["metrics"]["circuit"]
    assert 0 <= manifest["metrics"]["circuit"]["exact_match"]["replacement"] <= 1
    pipeline.run_stage(run, stages["reports"], manifest)
    assert 'href="circuit/circuit.html"' in (run_dir / "uhd_bold_sankey.html").read_text()
    _recompute_edges_in_torch(run_dir, doc["graphs"][0])


def _recompute_edges_in_torch(run_dir, graph) -> None:
    """A graph's input -> layer1 and layer3 -> output edges recomputed in plain torch from the files alone (the
    MLP's and the transcoders' state_dicts, read by torch_ref): with the error terms, transcoder l reads the MLP's
    true layer_{l-1}; an edge is source activation x virtual weight (docs/circuit.md)."""
    import torch

    from monosem_torch_ref.models import mlp_from_state_dict
    from monosem_torch_ref.saes import sae_from_state_dict

    mlp = mlp_from_state_dict(torch.load(run_dir / "mlp" / "perfect_mlp.pth", weights_only=True)).eval()
    tc = {layer: sae_from_state_dict(torch.load(run_dir / "circuit" / "transcoders" / layer / "sae.pth",
                                                weights_only=True)) for layer in ("layer1", "layer3")}
    x = torch.tensor([graph["input"]], dtype=torch.float32)
    with torch.no_grad():
        layer2 = mlp.hook_activations(x)["layer2"]
        f1, f3 = tc["layer1"].encode(x)[0], tc["layer3"].encode(layer2)[0]
        w_out = mlp.layers["output"].weight[0]
        checked = 0
        for edge in graph["edges"]:
            source, target = edge["source"].split("/"), edge["target"].split("/")
            if source[0] == "layer3" and target[0] == "output":
                j = int(source[1])
                expected = f3[j] * (tc["layer3"].decoder.weight[:, j] @ w_out)
            elif source[0] == "input" and target[0] == "layer1":
                i, j = int(source[1]), int(target[1])
                assert f1[j] > 0  # a kept feature is active
                expected = x[0, i] * tc["layer1"].encoder.weight[j, i]
            else:
                continue
            assert edge["weight"] == pytest.approx(float(expected), rel=1e-4, abs=1e-5), edge
            checked += 1
    assert checked > 0


def test_run_output_has_seed_lines(tiny_run, capsys):
    from conftest import TINY_RUN_ARGS

    # Rerun only the probe: --resume reruns the first stage whose artifact is missing (and those after it).
    (tiny_run / "probe.txt").unlink()
    assert main(["run", "--run-dir", str(tiny_run), "--resume", *TINY_RUN_ARGS]) == 0
    assert (tiny_run / "probe.txt").exists()
    out = capsys.readouterr().out
    assert "[2/" in out and "already completed, skipped (--resume)" in out
    assert "Sample Input: [8, 9, 5, 1, 3, 2, 9, 4, 7, 1]     |     Expected Output: 8.0" in out
    assert "Execution Summary:" in out and "Duration:" in out


def test_probe_command(tiny_run, capsys):
    assert main(["probe", "--run-dir", str(tiny_run), "--input", "8,9,5,1,3,2,9,4,7,1"]) == 0
    out = capsys.readouterr().out
    assert "Expected Output: 8.0" in out and "MLP Output:" in out and "Number of active SAE features:" in out
    assert main(["probe", "--run-dir", str(tiny_run), "--input", "8,9,5,1,7,2,9,4,7,1"]) == 2
    assert "pointer" in capsys.readouterr().err


def test_resume_with_a_different_config_is_refused(tiny_run, capsys):
    from conftest import TINY_RUN_ARGS

    args = [a if a != "3" else "4" for a in TINY_RUN_ARGS]  # --mlp-epochs 3 -> 4
    assert main(["run", "--run-dir", str(tiny_run), "--resume", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with a different config" in err and "mlp.epochs: 3 -> 4" in err


def test_evaluate_reproduces_upstream_numbers(upstream, tmp_path, capsys):
    pth = str(upstream / "mlp" / "perfect_mlp.pth")
    for split, mse, exact in (("test", 0.1294, 0.859), ("val", 0.1469, 0.840)):
        data = str(upstream / "dataset" / f"mlp_{split}.xlsx")
        assert main(["evaluate", "--mlp", pth, "--data", data, "--json", "--predictions", str(tmp_path / "p.csv")]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert abs(metrics["mse"] - mse) < 1e-4 and abs(metrics["exact_match"] - exact) < 1e-9
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == 1001
    # predictions agree with torch's own forward
    model = UpstreamMLP()
    model.load_state_dict(torch.load(pth, weights_only=True))
    model.eval()
    from jax_impl.task.splits import read_split

    with torch.no_grad():
        expected = model(torch.tensor(read_split(upstream / "dataset" / "mlp_val.xlsx").inputs, dtype=torch.float32))
    np.testing.assert_allclose(np.array(lines[1:], dtype=np.float64), expected[:, 0].numpy(), atol=1e-5)


def test_evaluate_with_sae(tiny_run, capsys):
    assert main([
        "evaluate", "--mlp", str(tiny_run / "mlp" / "perfect_mlp.pth"), "--data", str(tiny_run / "dataset" / "mlp_test.xlsx"),
        "--sae", str(tiny_run / "sae" / "sae_model.pth"), "--json",
    ]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"mse", "exact_match", "explained_variance", "l0", "dead_fraction", "spliced_mse"} <= set(m)
    assert m["explained_variance"] < 1 and 0 <= m["dead_fraction"] <= 1 and m["l0"] > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--mlp-epochs", "0"], "--mlp-epochs must be positive"),
        (["run", "--n-train", "100", "--mlp-batch-size", "200"], "--mlp-batch-size 200 is larger than the training split"),
        (["run", "--n-train", "129", "--mlp-batch-size", "64"], "batch of 1 row"),
        (["run", "--dict-size", "-5"], "--dict-size must be positive"),
        (["evaluate", "--mlp", "/nonexistent.pth", "--data", "x.xlsx"], "/nonexistent.pth: file not found"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(argv, message, capsys, tmp_path):
    if argv[0] == "run":
        argv = [*argv[:1], "--run-dir", str(tmp_path / "r"), *argv[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--mlp-epocs", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --mlp-epocs" in capsys.readouterr().err


def test_second_process_in_the_same_run_dir_is_refused(tmp_path):
    # The child takes the lock as run_dir_lock does (folder_lock), without importing the pipeline (torch, plotly:
    # seconds per process) that the parent's run_dir_lock already brought in.
    child = (
        "import sys; from pathlib import Path; from jax_impl.files.locks import folder_lock\n"
        "with folder_lock(Path(sys.argv[1]), flag='--run-dir', what='run directory'): pass"
    )
    with run_dir_lock(tmp_path):
        refused = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode != 0 and f"another monosem process (pid {os.getpid()})" in refused.stderr
    allowed = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr


def test_the_atlas_stage_writes_the_dashboard_and_links_it(tiny_run):
    """RUN_DIR/dashboard/: the SAE's features over its training activations, each top row labelled by its input and
    target; the atlas page links it."""
    from jax_impl.jobs.rundir import ACTIVATIONS_PATH, SAE_PATH
    from jax_impl.task.splits import read_split

    assert 'href="dashboard/dashboard.html"' in (tiny_run / "feature_atlas.html").read_text()
    index = json.loads((tiny_run / "dashboard" / "dashboard.json").read_text())
    train = read_split(tiny_run / "dataset" / "mlp_train.xlsx")
    assert index["columns"] == ["input", "target"] and index["activations"]["rows"] == len(train.targets)
    assert index["sae"]["name"] == SAE_PATH.as_posix() and index["activations"]["file"] == ACTIVATIONS_PATH.as_posix()
    text = (tiny_run / "dashboard" / "dashboard_data" / "page-00000.js").read_text()
    page = json.loads(text[text.index("(0,") + 3:text.rindex(");")])
    shown = [t for f in page["features"] for t in f["top"]]
    assert shown, "some feature fires"
    for row, _, (inputs, target) in shown:
        assert inputs == " ".join(map(str, train.inputs[row].tolist())) and float(target) == train.targets[row]
