"""`train-sae --coordinator HOST:PORT --num-processes 2 --process-id I`: two processes on 127.0.0.1 (CPU, gloo
collectives) train what one process trains, within float32 reduction order; process 0 alone writes; a peer that
never arrives or dies (process 0 included) ends the other within --peer-timeout with one line naming it, exit 2, no
artifact written.

Tolerance: the two processes split every batch between their devices and the compiler reduces the gradients
across them (as --devices does on one host), the tied bias's mean and the metrics' sums are added per shard:
measured max |weight difference| 2.1e-7 after 3 epochs, metrics within 3e-8. WEIGHTS = 2e-6 (10x); a wrong
shard, batch order or missing gradient share moves weights by >1e-3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from jax_impl.cli import main

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = 2e-6
METRICS = 1e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(activations: Path, out: Path, process_id: int, port: int, *, epochs: int = 3, timeout: float = 10,
           processes: int = 2, extra: Sequence[str] = ()) -> subprocess.Popen:
    argv = [sys.executable, "-u", "-m", "jax_impl.cli", "train-sae", "--activations", str(activations), "--out", str(out),
            "--variant", "topk", "--k", "6", "--dict-size", "48", "--epochs", str(epochs), "--batch-size", "100",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(process_id),
            "--peer-timeout", str(timeout), *extra]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("monosem:")]


def test_two_processes_train_what_one_process_trains(activations, tmp_path):
    port = free_port()
    # Process 1 gets another --out: only process 0 may write, so that folder must never appear.
    procs = [launch(activations, tmp_path / "two", 0, port), launch(activations, tmp_path / "not-written", 1, port)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert not (tmp_path / "not-written").exists()
    assert "2 processes, 2 devices, this process's rows 0..599" in outs[0][0] and "Training" not in outs[1][0]
    assert main(["train-sae", "--activations", str(activations), "--out", str(tmp_path / "one"), "--variant", "topk",
                 "--k", "6", "--dict-size", "48", "--epochs", "3", "--batch-size", "100"]) == 0
    a = torch.load(tmp_path / "two" / "sae.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "sae.pth", weights_only=True)
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= WEIGHTS
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two", "one"))
    for key in ("explained_variance", "mse", "l0", "dead_fraction", "final_loss"):
        assert ma[key] == pytest.approx(mb[key], abs=METRICS), key
    config = json.loads((tmp_path / "two" / "sae_config.json").read_text())
    assert config["processes"] == 2 and config["devices"] == 2
    # process 0 wrote the curves (jax_impl.training.curves), the global batches' steps: 3 epochs of 12 steps
    points = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [12, 24, 36] and points[-1]["epoch_loss"] == ma["final_loss"]


def test_a_peer_that_never_arrives_ends_process_0_within_the_timeout(activations, tmp_path):
    started = time.monotonic()
    proc = launch(activations, tmp_path / "out", 0, free_port(), timeout=3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert errors(err) == [f"monosem: error: --coordinator 127.0.0.1:{proc.args[proc.args.index('--coordinator') + 1].split(':')[1]}: "
                           "process 1 did not join within --peer-timeout 3 s (this is process 0 of 2); start every process "
                           "with the same --coordinator and --num-processes"]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()


# Process 1 killed runs under -m slow: the survivor's side (a missing heartbeat, the watchdog's one line) is the
# same code as when process 0 is killed, which make test runs.
@pytest.mark.parametrize("killed", [pytest.param(1, marks=pytest.mark.slow), 0])
def test_a_peer_killed_mid_training_ends_the_other_with_one_line(killed, activations, tmp_path):
    """Either process: process 0 too, whose host serves the coordination service (in a process of its own, so
    that the survivor's runtime does not abort with exit 134 when process 0 goes)."""
    port = free_port()
    procs = [launch(activations, tmp_path / "out", i, port, epochs=100000, timeout=5) for i in (0, 1)]
    survivor = procs[1 - killed]
    try:
        for line in procs[0].stdout:  # wait until training is under way
            if line.startswith("SAE Epoch [2/"):
                break
        procs[killed].kill()
        killed_at = time.monotonic()
        _, err = survivor.communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert survivor.returncode == 2, err[-2000:]
    assert errors(err) == [(f"monosem: error: process {killed} of 2 stopped responding (no heartbeat for --peer-timeout "
                            f"5 s: it died or hangs); process {1 - killed} stops too, nothing was written")], err[-2000:]
    assert time.monotonic() - killed_at < 5 + 15
    # No artifact, no temporary; the training curve so far (training/metrics.jsonl, docs/curves.md) stays for
    # --resume to continue, as the checkpoints would.
    kept = {"metrics.jsonl", "training"}  # the live curves, wherever the writer keeps them
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name not in kept) == [".monosem.lock"]


@pytest.mark.parametrize("argv, message", [
    (["--coordinator", "127.0.0.1:1234"], "needs all of --coordinator HOST:PORT, --num-processes P and --process-id I"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "--coordinator 'nohost': expected HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--peer-timeout", "0"], "--peer-timeout must be > 0"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--variant", "anthropic"],
     "--variant anthropic: its epoch hook"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--devices", "2"], "--devices with --coordinator"),
])
def test_bad_cluster_flags_are_one_line_exit_2(argv, message, activations, tmp_path, capsys):
    base = ["train-sae", "--activations", str(activations), "--out", str(tmp_path / "out"), "--dict-size", "8"]
    if "--variant" not in argv:
        base += ["--variant", "topk", "--k", "2"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
