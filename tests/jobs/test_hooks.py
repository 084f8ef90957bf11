"""Hook points: `monosem run --hook layer1|layer3` harvests, trains, labels, probes, reports and exports at
that activation, and every reader of the run (parity, evaluate, probe) follows the hook the manifest records.
(The readout from each hook is checked against the MLP in tests/evaluation/test_atlas.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_RUN_ARGS
from jax_impl.cli import main
from jax_impl.data.activations import read_activations
from jax_impl.interop import bridge
from jax_impl.jobs import parity
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, SAE_PATH, SAELENS_DIR, load_run


@pytest.fixture(scope="module")
def layer1_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("hook_layer1")
    assert main(["run", "--run-dir", str(run_dir), "--hook", "layer1", *TINY_RUN_ARGS]) == 0
    return run_dir


def test_the_run_decomposes_the_chosen_activation(layer1_run, capsys):
    manifest = json.loads((layer1_run / "manifest.json").read_text())
    assert manifest["config"]["hook"] == "layer1" and manifest["metrics"]["harvest"]["hook"] == "layer1"
    run = load_run(layer1_run, log=lambda _: None)
    assert run.activations.shape == (512, 256)  # 512 train rows, layer1 is 256 wide
    np.testing.assert_array_equal(run.activations, read_activations(layer1_run / ACTIVATIONS_PATH, width=256))
    assert run.sae.input_dim == 256 and bridge.load_sae(layer1_run / SAE_PATH, input_dim=256).dict_size == 512
    cfg = json.loads((layer1_run / SAELENS_DIR / "cfg.json").read_text())
    assert cfg["d_in"] == 256 and cfg["metadata"]["hook_name"] == "layer1"
    atlas = json.loads((layer1_run / "feature_atlas.json").read_text())
    assert atlas["hook"] == "layer1" and atlas["metrics"]["explained_variance"] > 0


def test_readers_follow_the_recorded_hook(layer1_run, capsys):
    rows = parity.compare_run(layer1_run)
    assert [r.quantity for r in rows] == ["prediction", "layer2", "layer1", "features", "reconstruction"]
    assert all(r.ok for r in rows), parity.format_table(rows)
    capsys.readouterr()
    assert main(["evaluate", "--mlp", str(layer1_run / "mlp/perfect_mlp.pth"), "--data",
                 str(layer1_run / "dataset/mlp_test.xlsx"), "--sae", str(layer1_run / SAE_PATH), "--hook", "layer1",
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    recorded = json.loads((layer1_run / "manifest.json").read_text())["metrics"]["sae"]["test"]
    assert metrics["explained_variance"] == pytest.approx(recorded["explained_variance"], abs=1e-9)
    # the same SAE read as if it decomposed layer2 is refused with the widths named
    assert main(["evaluate", "--mlp", str(layer1_run / "mlp/perfect_mlp.pth"), "--data",
                 str(layer1_run / "dataset/mlp_test.xlsx"), "--sae", str(layer1_run / SAE_PATH)]) == 2
    assert "512" in capsys.readouterr().err
    assert main(["probe", "--run-dir", str(layer1_run), "--input", "8,9,5,1,3,2,9,4,7,1"]) == 0
    assert "Number of active SAE features" in capsys.readouterr().out


def test_a_resume_at_another_hook_is_refused(layer1_run, capsys):
    assert main(["run", "--run-dir", str(layer1_run), "--resume", "--hook", "layer3", *TINY_RUN_ARGS]) == 2
    assert "hook" in capsys.readouterr().err


def test_an_unknown_hook_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--hook", "layer4"])
    assert stop.value.code == 2 and "--hook: invalid choice: 'layer4'" in capsys.readouterr().err
