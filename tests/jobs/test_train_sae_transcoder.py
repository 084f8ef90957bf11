"""`monosem train-sae --activations IN --target OUT` trains a transcoder of every architecture on any pair of
(N, d_in), (N, d_out) files; its files load back through the bridge (`.pth` and `.safetensors`) as the same
transcoder, whose predictions equal the trained one's; its metrics measure the prediction against the target;
bad input (rows that do not pair, a missing or non-finite target) is one line, exit 2, nothing written; an
interrupted training resumes to the bytes of an uninterrupted one, and not on another target file; a sweep with
--target trains transcoders that equal train-sae's."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.data.activations import open_activations, pair_activations
from jax_impl.errors import UserError
from jax_impl.evaluation.metrics import explained_variance
from jax_impl.interop import bridge
from jax_impl.jobs.rundir import METRICS_FILE, SAE_FILE
from jax_impl.jobs.rundir import SAE_CONFIG_FILE as CONFIG_FILE
from jax_impl.jobs.train_sae import TrainSAEConfig, data_record, train_sae
from jax_impl.training.checkpoints import CheckpointPolicy

ROWS, D_IN, D_OUT, DICT = 240, 7, 5, 16
ARCH_FLAGS = {
    "relu-l1": [], "anthropic": ["--l1-coeff", "1e-3", "--resample-every", "1"], "topk": ["--k", "4"],
    "batchtopk": ["--k", "4"], "matryoshka": ["--k", "4", "--matryoshka-groups", "4,8,16"],
    "jumprelu": ["--l0-coeff", "1e-3"],
}
TRAIN = ["--dict-size", str(DICT), "--epochs", "2", "--batch-size", "40"]


def _pair(folder: Path, d_out: int, seed: int = 0) -> tuple[Path, Path]:
    """An input (ROWS, D_IN) and a target (ROWS, d_out) that a ReLU layer computes from it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, D_IN)).astype(np.float32)
    y = np.maximum(x @ rng.normal(size=(D_IN, d_out)), 0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / f"y{d_out}.npy", y)
    return folder / "x.npy", folder / f"y{d_out}.npy"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return _pair(tmp_path_factory.mktemp("pair"), D_OUT)


def _prediction_sse(sae, x: np.ndarray, y: np.ndarray) -> float:
    prediction, _ = sae(jnp.asarray(x))
    return float(np.sum(np.square(np.asarray(prediction, np.float64) - y)))


# Every architecture with d_out != d_in; d_out == d_in for relu-l1 in make test, the others with -m slow (each case
# is one more compiled program).
WIDTH_CASES = [pytest.param(v, D_OUT, id=f"{v}-{D_IN}to{D_OUT}") for v in ARCH_FLAGS] + [
    pytest.param(v, D_IN, id=f"{v}-{D_IN}to{D_IN}", marks=() if v == "relu-l1" else pytest.mark.slow)
    for v in ARCH_FLAGS]


@pytest.mark.parametrize(("variant", "d_out"), WIDTH_CASES)
def test_every_architecture_trains_as_a_transcoder_and_loads_back(variant, d_out, tmp_path):
    acts, target = _pair(tmp_path, d_out)
    out = tmp_path / "out"
    skip = ["--skip"] if variant in ("topk", "relu-l1") else []
    assert main(["train-sae", "--activations", str(acts), "--target", str(target), "--out", str(out),
                 "--variant", variant, *TRAIN, *ARCH_FLAGS[variant], *skip]) == 0
    config = json.loads((out / CONFIG_FILE).read_text())
    assert (config["input_dim"], config["output_dim"], config["skip"], config["transcoder"]) == (
        D_IN, d_out, bool(skip), True)
    assert config["activations"]["file"] == "x.npy" and config["target"]["file"] == target.name
    assert config["target"]["width"] == d_out
    x, y = np.load(acts), np.load(target)
    for path in (out / SAE_FILE, out / "sae.safetensors"):
        sae = bridge.load_sae(path, input_dim=None)
        assert sae.transcoder and sae.skip == bool(skip) and (sae.input_dim, sae.output_dim) == (D_IN, d_out)
        assert sae.arch.name == variant
        if skip:  # trained away from its zero start
            assert np.abs(np.asarray(sae.params()["w_skip"])).max() > 1e-4
        # The metrics are of the prediction against the target, by the formulas of evaluation.metrics.
        metrics = json.loads((out / METRICS_FILE).read_text())
        sse = _prediction_sse(sae, x, y)
        centred = float(np.sum(np.square(y - y.mean(axis=0))))
        assert metrics["mse"] == pytest.approx(sse / y.size, rel=1e-4)
        assert metrics["explained_variance"] == pytest.approx(explained_variance(sse, centred), abs=1e-4)
        _, features = sae(jnp.asarray(x))
        assert metrics["l0"] == pytest.approx(float((np.asarray(features) > 0).sum(axis=1).mean()), abs=1e-6)
    reloaded = [bridge.load_sae(out / name, input_dim=None)(jnp.asarray(x))[0] for name in (SAE_FILE, "sae.safetensors")]
    assert np.array_equal(np.asarray(reloaded[0]), np.asarray(reloaded[1]))


def test_the_transcoder_learns_its_target_and_an_sae_records_no_transcoder_keys(pair, tmp_path):
    acts, target = pair
    config = TrainSAEConfig(variant="topk", dict_size=DICT, epochs=20, batch_size=40, lr=3e-3, skip=True,
                            architecture=saes.get("topk").config(k=4))
    metrics = train_sae(acts, tmp_path / "tc", config, target=target, log=lambda line: None)
    assert metrics["explained_variance"] > 0.5, metrics  # measured 0.588; 2 epochs: < 0.1
    # An SAE's identity and sae_config.json are what they were before transcoders (the files' bytes unchanged).
    assert list(data_record(open_activations(acts))) == ["activations"]


def test_a_tampered_transcoder_marker_or_skip_without_marker_is_refused(tmp_path):
    import jax
    import torch

    bridge.save_sae(saes.create("topk", D_IN, DICT, saes.get("topk").config(k=4), key=jax.random.key(0),
                                output_dim=D_OUT, skip=True), tmp_path / "tc.pth")
    sd = torch.load(tmp_path / "tc.pth", weights_only=True)
    assert bridge.sae_from_state_dict(sd, input_dim=None).skip
    bad = dict(sd, transcoder=torch.tensor(2))
    with pytest.raises(UserError, match="'transcoder' is int64 \\(\\) = 2, expected the int64 scalar 1"):
        bridge.sae_from_state_dict(bad, input_dim=None)
    no_marker = {k: v for k, v in sd.items() if k != "transcoder"}
    with pytest.raises(UserError, match="'skip.weight' .* without the key 'transcoder'"):
        bridge.sae_from_state_dict(no_marker, input_dim=None)
    wrong = dict(sd, **{"skip.weight": torch.zeros(D_IN, D_OUT)})
    with pytest.raises(UserError, match=f"'skip.weight' has shape \\({D_IN}, {D_OUT}\\), expected \\({D_OUT}, {D_IN}\\)"):
        bridge.sae_from_state_dict(wrong, input_dim=None)


def _bad_target(case: str, folder: Path) -> tuple[Path, str]:
    if case == "missing":
        return folder / "nope.npy", "file not found"
    if case == "rows":
        np.save(folder / "short.npy", np.zeros((ROWS - 1, 3), np.float32))
        return folder / "short.npy", f"{ROWS - 1} rows, but"
    y = np.ones((ROWS, 3), np.float32)
    y[17, 1] = np.nan
    np.save(folder / "nan.npy", y)
    return folder / "nan.npy", "row 17 contains NaN"


@pytest.mark.parametrize("command", ["train-sae", "sweep"])
@pytest.mark.parametrize("case", ["missing", "rows", "nan"])
def test_bad_targets_are_one_line_exit_2_nothing_written(case, command, pair, tmp_path, capsys):
    path, fragment = _bad_target(case, tmp_path)
    out = tmp_path / "out"
    code = main([command, "--activations", str(pair[0]), "--target", str(path), "--out", str(out), *TRAIN,
                 "--variant", "relu-l1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and fragment in err, err
    if case == "rows":
        assert str(pair[0]) in err and str(ROWS) in err  # both files, both counts
    assert not out.exists()


def test_skip_without_target_is_refused(pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train-sae", "--activations", str(pair[0]), "--out", str(out), "--skip", *TRAIN,
                 "--variant", "relu-l1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "monosem: error: --skip is a transcoder's skip connection: it needs --target" and not out.exists()


def test_pairing_reads_both_files_lazily_and_fingerprints_both(pair, tmp_path):
    acts, target = pair
    paired = pair_activations(open_activations(acts), open_activations(target))
    x, y = np.load(acts), np.load(target)
    assert (paired.n_rows, paired.width) == (ROWS, D_IN + D_OUT)
    assert np.array_equal(paired.rows(3, 9), np.concatenate([x[3:9], y[3:9]], axis=1))
    assert np.array_equal(paired.take(np.array([5, 1, 5])), np.concatenate([x, y], axis=1)[[5, 1, 5]])
    other = tmp_path / "y2.npy"
    np.save(other, y + np.float32(1e-3))
    fingerprints = {pair_activations(open_activations(a), open_activations(b)).fingerprint
                    for a, b in ((acts, target), (acts, other), (target, acts))}
    assert len(fingerprints) == 3


class _Stop(Exception):
    pass


def _interrupted(acts: Path, target: Path, out: Path, config: TrainSAEConfig) -> None:
    """A transcoder's training that stops after its first epoch's checkpoint."""
    def log(line: str) -> None:
        if line.startswith("SAE Epoch [2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_sae(acts, out, config, target=target, checkpoint_every=CheckpointPolicy(epochs=1, seconds=None), log=log)
    assert len(list((out / "checkpoints").iterdir())) == 1


def test_an_interrupted_transcoder_resumes_to_the_same_bytes_and_not_on_another_target(pair, tmp_path, capsys):
    acts, target = pair
    config = TrainSAEConfig(variant="batchtopk", dict_size=DICT, epochs=3, batch_size=40, skip=True,
                            architecture=saes.get("batchtopk").config(k=4))
    train_sae(acts, tmp_path / "whole", config, target=target, log=lambda line: None)
    _interrupted(acts, target, tmp_path / "resumed", config)
    other = tmp_path / "other.npy"
    np.save(other, np.load(target) * np.float32(2))
    argv = ["train-sae", "--activations", str(acts), "--out", str(tmp_path / "resumed"), "--variant", "batchtopk",
            "--k", "4", "--dict-size", str(DICT), "--epochs", "3", "--batch-size", "40", "--skip", "--resume"]
    capsys.readouterr()
    assert main([*argv, "--target", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "written for other activations (the fingerprint of other.npy" in err, err
    assert main([*argv, "--target", str(target)]) == 0
    for name in (SAE_FILE, "sae.safetensors", CONFIG_FILE):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_a_sweep_with_target_trains_what_train_sae_trains(pair, tmp_path):
    acts, target = pair
    out = tmp_path / "sweep"
    assert main(["sweep", "--activations", str(acts), "--target", str(target), "--out", str(out), "--skip",
                 "--variant", "topk", "--grid", "k=2,4", *TRAIN]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert [row["status"] for row in doc["configurations"]] == ["ok", "ok"]
    for row in doc["configurations"]:
        assert row["config"]["target"]["file"] == target.name and row["config"]["skip"] is True
    k4 = next(row["name"] for row in doc["configurations"] if row["k"] == 4)
    alone = tmp_path / "alone"
    assert main(["train-sae", "--activations", str(acts), "--target", str(target), "--out", str(alone), "--skip",
                 "--variant", "topk", "--k", "4", *TRAIN]) == 0
    swept, single = (bridge.load_sae(folder / SAE_FILE, input_dim=None) for folder in (out / k4, alone))
    assert swept.transcoder and swept.skip
    for name, value in single.params().items():  # tests/jobs/test_sweep.py's tolerance for a vmapped program
        assert np.abs(np.asarray(value) - np.asarray(swept.params()[name])).max() <= 2e-6, name
    metrics = [json.loads((folder / METRICS_FILE).read_text()) for folder in (out / k4, alone)]
    assert metrics[0]["explained_variance"] == pytest.approx(metrics[1]["explained_variance"], abs=1e-6)


@pytest.mark.slow
def test_two_processes_train_the_transcoder_one_process_trains(pair, tmp_path):
    """--coordinator: each process reads its shard of both files; process 0 writes what one process writes."""
    import os
    import socket
    import subprocess
    import sys

    acts, target = pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["train-sae", "--activations", str(acts), "--target", str(target), "--variant", "topk", "--k", "4",
            "--skip", *TRAIN]
    cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--peer-timeout", "30"]
    procs = [subprocess.Popen([sys.executable, "-m", "jax_impl.cli", *argv, "--out", str(tmp_path / out), *cluster,
                               "--process-id", str(i)], cwd=Path(__file__).resolve().parents[2],
                              env=os.environ | {"JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, out in enumerate(("two", "not-written"))]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert not (tmp_path / "not-written").exists()
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    two, one = (bridge.load_sae(tmp_path / d / SAE_FILE, input_dim=None) for d in ("two", "one"))
    assert two.transcoder and two.skip
    for name, value in one.params().items():
        assert np.abs(np.asarray(value) - np.asarray(two.params()[name])).max() <= 2e-6, name
    ma, mb = (json.loads((tmp_path / d / METRICS_FILE).read_text()) for d in ("two", "one"))
    for key in ("explained_variance", "mse", "l0", "dead_fraction"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-6), key
