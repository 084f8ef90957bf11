"""train-sae and sweep on a sharded activation set: the same rows in the same order train to the same bytes as the
single file (in memory and streamed; over two processes with whole shards each, within float32 summation order);
the prefetch thread changes no byte; a shuffle buffer is recorded in sae_config.json and in the checkpoints' identity."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.data.activation_sets import open_activations
from jax_impl.jobs.rundir import METRICS_FILE, SAE_CONFIG_FILE, SAE_FILE
from jax_impl.jobs.train_sae import _process_rows
from jax_impl.training import sae_trainer
from jax_impl.training.distributed import Cluster
from jax_impl.training.sae_trainer import SAETrainConfig

REPO = Path(__file__).resolve().parents[2]
SAE_FILES = (SAE_FILE, "sae.safetensors", "saelens/sae_weights.safetensors", "saelens/cfg.json")
FLAGS = ["--variant", "topk", "--k", "6", "--dict-size", "48", "--epochs", "2", "--batch-size", "100"]
CUTS = (500, 800)  # 1200 rows: shards of 500, 300 and 400


def shard(activations: Path, folder: Path) -> Path:
    """The rows of `activations` cut at CUTS into an .npy, a .safetensors and an .npy shard."""
    a = np.load(activations)
    folder.mkdir()
    parts = np.split(a, CUTS)
    np.save(folder / "acts_1.npy", parts[0])
    save_file({"acts": np.ascontiguousarray(parts[1])}, str(folder / "acts_2.safetensors"))
    np.save(folder / "acts_10.npy", parts[2])
    return folder


def same_files(a: Path, b: Path) -> None:
    for file in SAE_FILES:
        assert (a / file).read_bytes() == (b / file).read_bytes(), file
    ma, mb = (json.loads((d / METRICS_FILE).read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k != "train_seconds"} == {k: v for k, v in mb.items() if k != "train_seconds"}
    ca, cb = (json.loads((d / SAE_CONFIG_FILE).read_text()) for d in (a, b))
    assert {k: v for k, v in ca.items() if k != "activations"} == {k: v for k, v in cb.items() if k != "activations"}


@pytest.mark.parametrize("chunk_rows", [4096, 300])  # in memory; streamed in 4 chunks that cross shard boundaries
def test_shards_train_to_the_single_files_bytes(chunk_rows, activations, tmp_path):
    folder = shard(activations, tmp_path / "set")
    for name, source in (("file", activations), ("shards", folder)):
        assert main(["train-sae", "--activations", str(source), "--out", str(tmp_path / name), *FLAGS,
                     "--chunk-rows", str(chunk_rows)]) == 0
    same_files(tmp_path / "file", tmp_path / "shards")
    record = json.loads((tmp_path / "shards" / SAE_CONFIG_FILE).read_text())["activations"]
    assert record["file"] == "set" and record["rows"] == 1200
    assert record["fingerprint"] == open_activations(folder).fingerprint
    assert "shuffle_buffer" not in record


def test_the_prefetch_thread_changes_no_byte(activations):
    source = open_activations(activations)
    sae = saes.create("topk", source.width, 48, saes.topk.Config(k=6), key=jax.random.key(0))
    train = SAETrainConfig(epochs=2, batch_size=100, log_every=10)
    results = [sae_trainer.fit(sae, source, train, key=jax.random.key(1), chunk_rows=300, log=lambda _: None,
                               prefetch=depth) for depth in (0, 1, 2)]
    weights = [jax.tree.map(np.asarray, r.model.params()) for r in results]
    for other in weights[1:]:
        assert all(np.array_equal(weights[0][k], other[k]) for k in weights[0])


def test_a_shuffle_buffer_reorders_the_rows_and_is_recorded(activations, tmp_path):
    folder = shard(activations, tmp_path / "set")
    out = tmp_path / "out"
    argv = ["train-sae", "--activations", str(folder), "--out", str(out), *FLAGS, "--chunk-rows", "300"]
    assert main([*argv, "--shuffle-buffer", "600"]) == 0
    assert json.loads((out / SAE_CONFIG_FILE).read_text())["shuffle_buffer"] == 600
    buffered = (out / SAE_FILE).read_bytes()
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / SAE_FILE).read_bytes() != buffered  # the buffer reorders the rows
    assert main([*argv, "--shuffle-buffer", "-1"]) == 2


def test_a_sweep_reads_a_sharded_set(activations, tmp_path):
    folder = shard(activations, tmp_path / "set")
    grid = ["--variant", "topk", "--grid", "k=6", "--dict-size", "48", "--epochs", "2", "--batch-size", "100",
            "--no-atlas"]
    for name, source in (("file", activations), ("shards", folder)):
        assert main(["sweep", "--activations", str(source), "--out", str(tmp_path / name), *grid]) == 0
    [a] = [p for p in (tmp_path / "file").iterdir() if (p / SAE_FILE).exists()]
    [b] = [p for p in (tmp_path / "shards").iterdir() if (p / SAE_FILE).exists()]
    assert (a / SAE_FILE).read_bytes() == (b / SAE_FILE).read_bytes()


def test_whole_shards_go_to_processes_and_their_padding_is_skipped(activations, tmp_path):
    source = open_activations(shard(activations, tmp_path / "set"))
    rows = [_process_rows(source, Cluster("127.0.0.1:1", 2, p)) for p in range(2)]
    assert [r[:3] for r in rows] == [(0, 500, 700), (500, 1200, 700)]  # shards 500 | 300 + 400: padded to 700
    positions = rows[0][3]
    assert np.array_equal(positions, np.concatenate([np.arange(500), 700 + np.arange(700)]))
    file_rows = _process_rows(open_activations(activations), Cluster("127.0.0.1:1", 2, 1))
    assert file_rows == (600, 1200, 600, None)  # one file: even row ranges, as before


@pytest.mark.slow
def test_two_processes_on_whole_shards_train_what_two_processes_on_the_file_train(activations, tmp_path):
    folder = shard(activations, tmp_path / "set")
    for name, source in (("file", activations), ("shards", folder)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(
            [sys.executable, "-m", "jax_impl.cli", "train-sae", "--activations", str(source), "--out",
             str(tmp_path / (name if p == 0 else f"{name}-{p}")), *FLAGS, "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(p), "--peer-timeout", "20"],
            cwd=REPO, env=os.environ | {"JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for p in range(2)]
        outs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        if name == "shards":
            assert "this process's rows 0..499" in outs[0][0]
    # Not the same bytes: the tied bias's mean (and the metrics) sum each process's rows, and the processes' rows are
    # split at 500 | 700 here, at 600 | 600 for the file: float32 sums in another grouping (measured 1.2e-7).
    a, b = (load_file(tmp_path / name / "sae.safetensors") for name in ("file", "shards"))
    assert max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a) <= 2e-6
    ma, mb = (json.loads((tmp_path / name / METRICS_FILE).read_text()) for name in ("file", "shards"))
    for key in ("explained_variance", "mse", "l0", "dead_fraction", "final_loss"):
        assert ma[key] == pytest.approx(mb[key], abs=1e-6), key



class _Stop(Exception):
    pass


@pytest.mark.slow  # four trainings (~1 min on 2 cores); a streamed resume's bytes are tests/training/test_checkpoints'
def test_resume_on_shards_with_a_buffer_writes_the_uninterrupted_bytes_and_knows_its_buffer(activations, tmp_path,
                                                                                              capsys):
    from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
    from jax_impl.training.checkpoints import CheckpointPolicy

    folder = shard(activations, tmp_path / "set")
    config = TrainSAEConfig(variant="topk", dict_size=48, epochs=2, batch_size=100, chunk_rows=300, shuffle_buffer=600,
                            architecture=saes.topk.Config(k=6))

    def stop_at_epoch_2(line: str) -> None:
        if line.startswith("SAE Epoch [2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_sae(folder, tmp_path / "out", config, checkpoint_every=CheckpointPolicy(epochs=1, seconds=None),
                  log=stop_at_epoch_2)
    argv = ["train-sae", "--activations", str(folder), "--out", str(tmp_path / "out"), *FLAGS, "--chunk-rows", "300",
            "--resume"]
    assert main([*argv, "--shuffle-buffer", "300"]) == 2  # another buffer: another order of rows
    err = capsys.readouterr().err
    assert "written by another training" in err and "shuffle_buffer" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / SAE_FILE).exists()
    assert main([*argv, "--shuffle-buffer", "600"]) == 0
    assert main(["train-sae", "--activations", str(folder), "--out", str(tmp_path / "whole"), *FLAGS, "--chunk-rows",
                 "300", "--shuffle-buffer", "600"]) == 0
    same_files(tmp_path / "out", tmp_path / "whole")
