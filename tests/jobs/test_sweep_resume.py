"""`monosem sweep` checkpoints, `--resume` and SIGINT/SIGTERM (issue 15 for the sweep engine).

A sweep of two groups is stopped by a real signal delivered to this process at a chosen epoch line (the way
tests/training/test_checkpoints.py stops the trainers), resumed, stopped again in the second group, and resumed to the
end: every configuration's files are the bytes of an uninterrupted sweep (CPU), and sweep.csv/json are equal
but for the timing columns (`seconds`, the groups' `seconds`, the spread of `seconds`; metrics.json's
`train_seconds`). The epoch-hook path (anthropic's resampling, PRNG fold_in(key, epoch)) runs in the SAE
groups. One subprocess test checks the CLI: SIGTERM -> exit 143 and one line, then `--resume` completes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_impl.cli import main
from jax_impl.errors import Interrupted, UserError
from jax_impl.jobs.rundir import MLP_PATH
from jax_impl.jobs.sweep import run_sweep
from jax_impl.training import checkpoints as ck
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.sae_trainer import SAETrainConfig

EVERY_EPOCH = CheckpointPolicy(epochs=1, seconds=None)
TIMING = {"seconds", "train_seconds"}
MONOSEM = Path(sys.executable).with_name("monosem")
# Two groups (dict_size is static), two seeds each; anthropic resamples after every epoch (the epoch hook).
SAE_GRID = {"dict_size": [16, 24], "seed": [0, 1], "resample_every": [1]}
SAE_ARGS = {"variants": ["anthropic"], "train": SAETrainConfig(epochs=3, batch_size=50, log_every=1)}


@pytest.fixture(scope="module")
def activations(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    codes = rng.random((300, 10)) * (rng.random((300, 10)) < 0.3)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, (codes @ rng.normal(size=(10, 12))).astype(np.float32))
    return path


class _StopAtLine:
    """A `log` that delivers `signum` to this process at the n-th line containing `fragment` (1-based)."""

    def __init__(self, fragment: str, n: int, signum: int = signal.SIGTERM):
        self.fragment, self.n, self.signum, self.lines = fragment, n, signum, []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.fragment in line:
            self.n -= 1
            if self.n == 0:
                signal.raise_signal(self.signum)


def _interrupted(sweep, stop: _StopAtLine, resume: bool) -> str:
    with pytest.raises(Interrupted) as e:
        sweep(stop, resume)
    assert e.value.exit_code == 128 + stop.signum
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the previous handlers are back
    return str(e.value)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".monosem.lock"}


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _csv_without_timing(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(io.StringIO(path.read_text()))]


def _assert_same_sweep(ours: Path, reference: Path, weights: str) -> None:
    a, b = _files(ours), _files(reference)
    assert sorted(a) == sorted(b)
    names = [n for n in a if n.endswith(weights)]
    assert len(names) == 4 or len(names) == 2
    for name in a:
        if name.endswith(".json"):  # metrics.json: equal but for train_seconds; sweep.json: but for timing
            assert _without_timing(json.loads(a[name])) == _without_timing(json.loads(b[name])), name
        elif name.endswith(".jsonl"):  # the curves: a resumed group's are the uninterrupted one's, but for seconds
            assert ([_without_timing(json.loads(line)) for line in a[name].splitlines()]
                    == [_without_timing(json.loads(line)) for line in b[name].splitlines()]), name
        elif name.endswith(".csv"):
            assert _csv_without_timing(ours / name) == _csv_without_timing(reference / name)
        elif not name.endswith(".html"):  # the plot's hover text shows seconds
            assert a[name] == b[name], name  # sae.pth, sae.safetensors, saelens/, the MLP: the same bytes
    assert not (ours / "checkpoints").exists()


def test_an_sae_sweep_interrupted_in_each_group_resumes_to_the_same_bytes(activations, tmp_path):
    def sweep(log, resume, out=tmp_path / "sw"):
        return run_sweep(out, SAE_GRID, activations=activations, **SAE_ARGS, resume=resume,
                         checkpoint_every=EVERY_EPOCH, log=log)

    sweep(lambda _: None, False, tmp_path / "reference")
    # 1. SIGTERM at group 1's 2nd epoch line: that epoch is saved, nothing is written
    first = _interrupted(sweep, _StopAtLine("SAE Epoch [2/3]", 1), resume=False)
    assert re.fullmatch(r"interrupted by SIGTERM after SAE \(sweep group 1/2\) epoch 2/3; saved .*group-000/"
                        r"ckpt_000002; to continue, run the same command with --resume", first), first
    assert [e for e, _ in ck.list_checkpoints(tmp_path / "sw" / "checkpoints" / "group-000")] == [2, 1]
    # no configuration's files: its folder holds only the curves its training writes as it goes
    assert {p.name for p in (tmp_path / "sw").glob("0*/*")} <= {"metrics.jsonl"}
    # 2. resumed: group 1 ends (its folders written, its checkpoints gone); SIGINT at group 2's 2nd epoch
    stop = _StopAtLine("SAE Epoch [", 3, signal.SIGINT)
    _interrupted(sweep, stop, resume=True)
    assert any(line.startswith("Resuming from") and "group-000/ckpt_000002" in line for line in stop.lines)
    assert any("resampled" in line for line in stop.lines)  # the epoch hook ran after the restore
    assert not (tmp_path / "sw" / "checkpoints" / "group-000").exists()
    assert [e for e, _ in ck.list_checkpoints(tmp_path / "sw" / "checkpoints" / "group-001")] == [2, 1]
    # 3. resumed to the end: group 1 read back, group 2 from its epoch 2
    lines = []
    doc = sweep(lines.append, True)
    assert any("Sweep group 1/2: every configuration is written; read back" in line for line in lines)
    assert sum(line.startswith("SAE Epoch") for line in lines) == 1  # group 2's last epoch only
    assert [r["status"] for r in doc["configurations"]] == ["ok"] * 4
    _assert_same_sweep(tmp_path / "sw", tmp_path / "reference", "sae.pth")


def test_mlp_seeds_interrupted_mid_training_resume_to_the_same_bytes(tiny_run, tmp_path):
    def sweep(log, resume, out=tmp_path / "mlp"):
        return run_sweep(out, {"seed": [7, 8]}, stage="mlp", run_dir=tiny_run, resume=resume,
                         checkpoint_every=EVERY_EPOCH, log=log)

    sweep(lambda _: None, False, tmp_path / "reference")
    _interrupted(sweep, _StopAtLine("MLP Epoch 2 |", 1), resume=False)
    lines = []
    sweep(lines.append, True)
    assert any("(epoch 2 done)" in line for line in lines)
    _assert_same_sweep(tmp_path / "mlp", tmp_path / "reference", MLP_PATH.name)


def test_a_fresh_sweep_forgets_old_checkpoints_and_resume_refuses_other_settings(activations, tmp_path):
    out = tmp_path / "sw"
    stale = out / "checkpoints" / "group-007"
    stale.mkdir(parents=True)
    (stale / "ckpt_000001").mkdir()
    grid = {"seed": [0], "k": [2]}
    train = SAETrainConfig(epochs=1, batch_size=50)
    run_sweep(out, grid, activations=activations, variants=["topk"], dict_size=8, train=train, log=lambda _: None)
    assert not (out / "checkpoints").exists()
    # the folder is complete; resuming it with another --epochs is refused, naming the folder and the setting
    with pytest.raises(UserError, match=r"000-seed0-k2: written by a sweep with other settings \(training differ\)"):
        run_sweep(out, grid, activations=activations, variants=["topk"], dict_size=8, resume=True,
                  train=SAETrainConfig(epochs=2, batch_size=50), log=lambda _: None)


@pytest.mark.slow  # -m slow for make test's 10 minutes: divergence is kept in the table by test_sweep too
def test_a_diverged_configuration_is_kept_across_a_resume(activations, tmp_path):
    """Its row (no folder) survives in the group's done.json until the sweep ends."""
    out = tmp_path / "sw"
    grid = {"lr": [1e-3, 1e12], "dict_size": [8, 12]}
    args = {"activations": activations, "variants": ["relu-l1"], "train": SAETrainConfig(epochs=2, batch_size=50, log_every=1),
            "checkpoint_every": EVERY_EPOCH}
    reference = run_sweep(tmp_path / "reference", grid, **args, log=lambda _: None)
    _interrupted(lambda log, resume: run_sweep(out, grid, **args, resume=resume, log=log),
                 _StopAtLine("SAE Epoch [1/2]", 2), resume=False)  # group 2's first epoch
    assert (out / "checkpoints" / "group-000" / "done.json").exists()
    lines = []
    doc = run_sweep(out, grid, **args, resume=True, log=lines.append)
    assert any("Sweep group 1/2: every configuration is written" in line for line in lines)
    assert _without_timing(doc["configurations"]) == _without_timing(reference["configurations"])
    statuses = [r["status"] for r in doc["configurations"]]
    assert statuses[:2] == ["ok", "ok"] and all(s.startswith("SAE (") and "diverged" in s for s in statuses[2:])


# -m slow for make test's 10 minutes: the sweep's resume bytes are test_an_sae_sweep_interrupted_in_each_group's,
# a signal's one line test_kill_resume's
@pytest.mark.slow
def test_sigterm_ends_the_cli_with_one_line_and_resume_completes(activations, tmp_path):
    args = ["sweep", "--activations", str(activations), "--variant", "topk", "--grid", "k=2,3", "--dict-size", "8",
            "--epochs", "40", "--batch-size", "50"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    cmd = [str(MONOSEM), *args, "--out", str(tmp_path / "sw"), "--checkpoint-every", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "SAE Epoch [2/40]" in line:  # 38 epochs left in the group: the signal lands inside its loop
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (seen, err)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len([line for line in lines if line.startswith("monosem: interrupted")]) == 1
    assert re.fullmatch(r"monosem: interrupted by SIGTERM after SAE \(sweep group 1/2\) epoch \d+/40; saved "
                        r".*checkpoints/group-000/ckpt_0000\d\d; to continue, run the same command with --resume",
                        lines[-1]), err
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Resuming from" in done.stdout
    _assert_same_sweep(tmp_path / "sw", tmp_path / "reference", "sae.pth")
