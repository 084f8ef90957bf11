"""SIGKILL, SIGINT and SIGTERM inside the training stages, then `--resume` (issue 15, items 1-3).

`monosem run` is killed (`-m slow`) at several seeded random points of both training stages, each one either at an
epoch's log line (frozen with SIGSTOP, inspected, then SIGKILLed) or in the middle of writing a checkpoint
(the process runs through a wrapper that, at the chosen checkpoint, leaves half of it in the temporary file
and waits to be killed), or stopped by one SIGTERM (exit 143 after a checkpoint); every next process
resumes. After every interruption: every checkpoint file present is complete and valid (a kill can only
leave a temporary behind), the artifacts present load, and the next process resumes from at least the
epoch the interruption left. The finished chain writes the same bytes as an uninterrupted run.

`monosem train-sae` on a streamed .npy: SIGINT (exit 130, one line saying how to resume), then a SIGTERM
while a checkpoint is being written followed by a second SIGTERM, which ends the process at once with the
earlier checkpoints intact; the resumed training writes the uninterrupted training's bytes.

The plan of kill points is drawn from a seeded random.Random, so a failure reproduces; where exactly a
SIGKILL lands after a line depends on timing, and every assertion holds wherever it lands.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_crash_resume import _artifacts, check_loads_completely

from conftest import TINY_RUN_ARGS
from jax_impl.cli import main
from jax_impl.jobs.pipeline import STAGES
from jax_impl.jobs.rundir import MANIFEST
from jax_impl.training import checkpoints as ck

MONOSEM = Path(sys.executable).with_name("monosem")
MLP_EPOCHS, SAE_EPOCHS = 12, 8
RUN_ARGS = list(TINY_RUN_ARGS)
RUN_ARGS[RUN_ARGS.index("--mlp-epochs") + 1] = str(MLP_EPOCHS)
RUN_ARGS[RUN_ARGS.index("--sae-epochs") + 1] = str(SAE_EPOCHS)
EPOCHS = {"mlp": MLP_EPOCHS, "sae": SAE_EPOCHS}

# Runs `monosem` with one checkpoint write held: the step whose folder ends with $PAUSE_AT (e.g.
# "mlp/ckpt_000007"), or the $PAUSE_AT_WRITE-th step the process saves, is held in orbax's temporary folder
# just before orbax commits it (renames it into place), its largest file cut to half, a marker line is
# printed, and the process sleeps until it is killed (or signalled).
WRAPPER = r"""
import os, sys, time
from pathlib import Path
from jax_impl.training import checkpoints
real = checkpoints.seal_step
suffix, nth, count = os.environ.get("PAUSE_AT"), int(os.environ.get("PAUSE_AT_WRITE", "0")), 0

def held(tmp, final):
    global count
    count += 1
    real(tmp, final)
    if (suffix and str(final).endswith(suffix)) or count == nth:
        victim = max((p for p in Path(tmp).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        print(f"HELD IN CHECKPOINT WRITE {final}", flush=True)
        while True:
            time.sleep(1)

checkpoints.seal_step = held
from jax_impl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _line_fragment(stage: str, epoch: int) -> str:
    return f"Epoch {epoch} | Val MSE" if stage == "mlp" else f"SAE Epoch [{epoch}/{SAE_EPOCHS}]"


def _plan(seed: int, kills: dict[str, int | list[str]]) -> list[tuple[str, str, int]]:
    """(stage, kind, epoch) in order: kind line (SIGKILL after that epoch's line), write (SIGKILL during the
    write of that epoch's checkpoint) or term (one SIGTERM after that epoch's line). kills: per stage, the
    kinds in order, or a number of kinds drawn at random. Epochs of one stage are drawn at random at least 2
    apart, so each kill lies after the checkpoint the previous one left."""
    rng = random.Random(seed)
    plan = []
    for stage, kinds in kills.items():
        if isinstance(kinds, int):
            kinds = [rng.choice(["line", "write", "term"]) for _ in range(kinds)]
        while True:
            epochs = sorted(rng.sample(range(2, EPOCHS[stage]), len(kinds)))
            if all(b - a >= 2 for a, b in zip(epochs, epochs[1:])):
                break
        plan += [(stage, kind, epoch) for kind, epoch in zip(kinds, epochs, strict=True)]
    return plan


DEFAULT_PLAN = {"mlp": ["line", "term"], "sae": ["write"]}  # every kind, a SIGKILL in both stages


def _checkpoint_folder(run_dir: Path, stage: str) -> Path:
    return run_dir / "checkpoints" / stage


def _assert_checkpoints_valid(folder: Path) -> int:
    """Every checkpoint step is complete (orbax's atomic commit): its checksums match and its arrays read back;
    returns the newest epoch (0 if none)."""
    found = ck.list_checkpoints(folder)
    assert len(found) <= ck.KEEP + 1, found  # the last two, plus one not yet pruned when the kill landed
    for _, path in found:
        ck.read_step(path)  # raises if damaged
    return found[0][0] if found else 0


def _read_until(proc: subprocess.Popen, fragment: str, lines: list[str]) -> str:
    for line in proc.stdout:
        lines.append(line)
        if fragment in line:
            return line
    proc.wait()
    pytest.fail(f"ended (rc {proc.returncode}) without printing {fragment!r}:\n{''.join(lines[-30:])}")


def _resumed_from(lines: list[str], stage: str) -> int | None:
    for line in lines:
        m = re.search(rf"Resuming from .*{stage}/ckpt_\d+ \(epoch (\d+) done\)", line)
        if m:
            return int(m.group(1))
    return None


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    assert main(["run", "--run-dir", str(run_dir), *RUN_ARGS]) == 0
    return run_dir


def _kill_chain(run_dir: Path, tmp_path: Path, plan: list[tuple[str, str, int]]) -> None:
    wrapper = tmp_path / "held_write.py"
    wrapper.write_text(WRAPPER)
    expected_at_least = {"mlp": 0, "sae": 0}
    for n, (stage, kind, epoch) in enumerate(plan):
        cmd = [str(MONOSEM), "run", "--run-dir", str(run_dir), *RUN_ARGS, "--checkpoint-every", "1"]
        env = _env()
        if kind == "write":
            cmd[0:1] = [sys.executable, str(wrapper)]
            env["PAUSE_AT"] = f"{stage}/ckpt_{epoch:06d}"
        if n:
            cmd.append("--resume")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []
        try:
            if kind == "write":
                _read_until(proc, "HELD IN CHECKPOINT WRITE", lines)
                proc.send_signal(signal.SIGSTOP)
            elif kind == "line":
                _read_until(proc, _line_fragment(stage, epoch), lines)
                proc.send_signal(signal.SIGSTOP)
            else:
                _read_until(proc, _line_fragment(stage, epoch), lines)
                proc.send_signal(signal.SIGTERM)
                lines += proc.stdout.readlines()
                assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines[-20:])
        finally:
            proc.kill()  # SIGKILL (a no-op for the SIGTERM case, which has ended)
            proc.wait(timeout=60)
            proc.stdout.close()
        if n:  # this process resumed the previous interruption's stage from at least where it was left
            previous = plan[n - 1][0]
            resumed = _resumed_from(lines, previous)
            assert resumed is not None and resumed >= expected_at_least[previous], (resumed, expected_at_least, lines[:12])
        folder = _checkpoint_folder(run_dir, stage)
        newest = _assert_checkpoints_valid(folder)
        if kind == "write":
            assert list(folder.glob("ckpt_*.orbax-checkpoint-tmp*")), "the held write left no temporary"
            assert newest == epoch - 1, newest
        elif kind == "line":
            assert newest >= epoch - 1, newest  # epoch-1's checkpoint was written before epoch ran
        else:
            message = [line for line in lines if line.startswith("monosem: interrupted by SIGTERM")]
            assert len(message) == 1 and "Traceback" not in "".join(lines), lines[-10:]
            done = int(re.search(r"after \w+ epoch (\d+)/", message[0]).group(1))
            assert done >= epoch and newest == done and f"ckpt_{done:06d}" in message[0]
            assert message[0].rstrip().endswith("to continue, run the same command with --resume")
        expected_at_least[stage] = max(newest, 1)
        for path in _artifacts(run_dir):
            check_loads_completely(path)
        if stage == "sae":  # the MLP stage finished on the way: its checkpoints are gone
            assert not _checkpoint_folder(run_dir, "mlp").exists()
            assert "mlp" in json.loads((run_dir / MANIFEST).read_text())["stages"]

    final = subprocess.run([str(MONOSEM), "run", "--run-dir", str(run_dir), *RUN_ARGS, "--resume"],
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert _resumed_from(final.stdout.splitlines(), "sae") >= expected_at_least["sae"]
    assert not (run_dir / "checkpoints").exists()  # removed with the stage that completed
    assert not list(run_dir.rglob(".*.tmp"))


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    for rel in (rel for stage in STAGES for rel in stage.outputs):
        ours, theirs = run_dir / rel, reference / rel
        if not theirs.exists():  # an optional stage the tiny run leaves out (--no-circuit)
            assert not ours.exists(), rel
            continue
        if rel.suffix == ".json" and rel.name != "cfg.json":
            assert json.loads(ours.read_text()) == json.loads(theirs.read_text()), rel
        else:
            assert ours.read_bytes() == theirs.read_bytes(), rel
    ours, theirs = json.loads((run_dir / MANIFEST).read_text()), json.loads((reference / MANIFEST).read_text())
    assert ours["metrics"] == theirs["metrics"]  # exact floats: the losses recorded before each kill included


def test_plan_is_reproducible_and_covers_both_stages_and_every_kind():
    assert _plan(15, DEFAULT_PLAN) == _plan(15, DEFAULT_PLAN) and _plan(2, {"mlp": 4}) == _plan(2, {"mlp": 4})
    plan = _plan(15, DEFAULT_PLAN)
    assert {s for s, _, _ in plan} == {"mlp", "sae"} and {k for _, k, _ in plan} == {"line", "write", "term"}


# About a minute on 2 cores (a reference run, then a chain of four processes): `-m slow`, to keep `make test` under
# ten minutes. `make test` still kills `monosem run` in its data and last stages and resumes it
# (tests/training/test_crash_resume.py) and interrupts train-sae mid-epoch and mid-checkpoint-write (below).
@pytest.mark.slow
def test_sigkill_at_random_points_of_both_training_stages_then_resume_writes_the_same_bytes(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    _kill_chain(run_dir, tmp_path, _plan(15, DEFAULT_PLAN))
    _assert_same_run(run_dir, reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_more_kill_points(reference_run, tmp_path, seed):
    run_dir = tmp_path / "run"
    _kill_chain(run_dir, tmp_path, _plan(seed, {"mlp": 4, "sae": 3}))
    _assert_same_run(run_dir, reference_run)


# --------------------------------------------------------------------------- train-sae and signals


TRAIN_SAE_ARGS = ["--variant", "anthropic", "--resample-every", "1", "--dict-size", "32", "--epochs", "8",
                  "--batch-size", "32", "--chunk-rows", "200", "--log-every", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory) -> Path:
    rng = np.random.default_rng(9)
    path = tmp_path_factory.mktemp("streamed") / "acts.npy"
    codes = rng.random((700, 10)) * (rng.random((700, 10)) < 0.3)
    np.save(path, (codes @ rng.normal(size=(10, 16))).astype(np.float32))
    return path


def test_train_sae_sigint_then_a_double_sigterm_mid_write_then_resume_writes_the_same_bytes(streamed, tmp_path):
    reference = tmp_path / "reference"
    assert main(["train-sae", "--activations", str(streamed), "--out", str(reference), *TRAIN_SAE_ARGS]) == 0
    out = tmp_path / "out"
    cmd = [str(MONOSEM), "train-sae", "--activations", str(streamed), "--out", str(out), *TRAIN_SAE_ARGS,
           "--checkpoint-every", "1"]

    # 1. SIGINT: the epoch finishes, a checkpoint is saved, one line says how to resume, exit 130
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[str] = []
    _read_until(proc, "SAE Epoch [2/8]", lines)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"monosem: interrupted by SIGINT after SAE epoch \d/8; saved .*/checkpoints/ckpt_00000\d; "
                        r"to continue, run the same command with --resume", last), err
    assert "Traceback" not in err and not (out / "sae.pth").exists()
    first = int(re.search(r"epoch (\d)/8", last).group(1))
    assert first >= 2 and _assert_checkpoints_valid(out / "checkpoints") == first

    # 2. resumed; SIGTERM while the 2nd checkpoint of this process is being written: the write is held, the
    #    first signal is acknowledged, and a second SIGTERM ends the process at once
    wrapper = tmp_path / "held_write.py"
    wrapper.write_text(WRAPPER)
    proc = subprocess.Popen([sys.executable, str(wrapper), *cmd[1:], "--resume"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**_env(), "PAUSE_AT_WRITE": "2"})
    lines = []
    _read_until(proc, "HELD IN CHECKPOINT WRITE", lines)
    assert _resumed_from(lines, "checkpoints") == first
    proc.send_signal(signal.SIGTERM)
    _read_until(proc, "SIGTERM received: finishing this epoch and saving a checkpoint", lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM  # ended by the signal itself: no cleanup ran
    proc.stdout.close()
    assert _assert_checkpoints_valid(out / "checkpoints") == first + 1
    assert list((out / "checkpoints").glob("ckpt_*.orbax-checkpoint-tmp*"))  # the held write, never renamed

    # 3. resumed to the end: the same bytes as the uninterrupted training
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert _resumed_from(done.stdout.splitlines(), "checkpoints") == first + 1
    assert not (out / "checkpoints").exists()
    for name in ("sae.pth", "sae.safetensors", "saelens/sae_weights.safetensors", "saelens/cfg.json", "sae_config.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in ours.items() if k != "train_seconds"} == {k: v for k, v in theirs.items() if k != "train_seconds"}
