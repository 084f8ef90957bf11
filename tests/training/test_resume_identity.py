"""Resume knows its data (issue 24, item 3): a checkpoint's identity, and a sweep's configuration folder, record a
fingerprint of the activations' content (activations.fingerprint: the file's size and shape, and its first, last
and 64 seeded rows), so `--resume` with another file of the same name and shape is refused with one line, and so is
a checkpoint of an earlier version that recorded none; the same data under another path still resumes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from jax_impl.cli import main
from jax_impl.data.activations import FINGERPRINT_ROWS, fingerprint, open_activations
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
from jax_impl.training import checkpoints
from jax_impl.training.checkpoints import CheckpointPolicy

ROWS, WIDTH = 96, 8
TRAIN = ["--variant", "relu-l1", "--dict-size", "8", "--epochs", "2", "--batch-size", "16"]


def _save(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).normal(size=(ROWS, WIDTH)).astype(np.float32))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_the_fingerprint_is_of_the_content_not_the_path(tmp_path):
    a = _save(tmp_path / "a" / "acts.npy", 0)
    moved = tmp_path / "elsewhere" / "renamed.npy"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    other = _save(tmp_path / "b" / "acts.npy", 1)  # same name and shape, other values
    assert fingerprint(open_activations(a)) == fingerprint(open_activations(moved))
    assert fingerprint(open_activations(a)) != fingerprint(open_activations(other))
    x = np.load(a)
    for row in (0, ROWS - 1):  # always in the sample
        changed = x.copy()
        changed[row, 3] += 1e-3
        np.save(tmp_path / "changed.npy", changed)
        assert fingerprint(open_activations(tmp_path / "changed.npy")) != fingerprint(open_activations(a))
    assert FINGERPRINT_ROWS == 64


class _Stop(Exception):
    pass


def _files(step: Path) -> dict[str, bytes]:
    """Every file of a checkpoint's step folder, by its path inside it."""
    return {p.relative_to(step).as_posix(): p.read_bytes() for p in step.rglob("*") if p.is_file()}


def _interrupted_training(acts: Path, out: Path) -> Path:
    """A train-sae that stops after its first epoch's checkpoint; returns that checkpoint."""
    def log(line: str) -> None:
        if line.startswith("SAE Epoch [2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_sae(acts, out, TrainSAEConfig(variant="relu-l1", dict_size=8, epochs=2, batch_size=16, log_every=1),
                  checkpoint_every=CheckpointPolicy(epochs=1, seconds=None), log=log)
    (ckpt,) = (out / "checkpoints").iterdir()
    return ckpt


def test_train_sae_resume_on_other_data_or_an_unfingerprinted_checkpoint_is_refused_the_same_data_resumes(
        tmp_path, capsys):
    a, b = _save(tmp_path / "a" / "acts.npy", 0), _save(tmp_path / "b" / "acts.npy", 1)
    out = tmp_path / "out"
    ckpt = _interrupted_training(a, out)
    before = _files(ckpt)
    capsys.readouterr()

    assert main(["train-sae", "--activations", str(b), "--out", str(out), *TRAIN, "--resume"]) == 2
    line = one_line_error(capsys)
    old, new = fingerprint(open_activations(a))[:12], fingerprint(open_activations(b))[:12]
    assert line == (f"monosem: error: {ckpt}: written for other activations (the fingerprint of acts.npy differs: {old} -> "
                    f"{new}); pass the data of the original training to --resume it, or start over without --resume")
    assert _files(ckpt) == before and not (out / "sae.pth").exists()

    # An earlier version's checkpoint: its identity has the file's name and shape, no fingerprint.
    arrays, meta = checkpoints.read_step(ckpt)
    del meta["identity"]["activations"]["fingerprint"]
    checkpoints.write_step(ckpt, arrays, {k: v for k, v in meta.items() if k not in ("format", "arrays")})
    assert main(["train-sae", "--activations", str(a), "--out", str(out), *TRAIN, "--resume"]) == 2
    assert one_line_error(capsys) == (
        f"monosem: error: {ckpt}: written by an earlier version that recorded no fingerprint of its data, so it cannot "
        "be checked that acts.npy is what the training ran on; start over without --resume")

    # The checkpoint as it was, and its data moved to another folder: the fingerprint is of the content, so it resumes.
    shutil.rmtree(ckpt)
    for rel, data in before.items():
        (ckpt / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / rel).write_bytes(data)
    moved = tmp_path / "moved" / "acts.npy"
    moved.parent.mkdir()
    a.rename(moved)
    assert main(["train-sae", "--activations", str(moved), "--out", str(out), *TRAIN, "--resume"]) == 0
    assert f"Resuming from {ckpt}" in capsys.readouterr().out and (out / "sae.pth").exists()


def test_sweep_resume_on_other_data_is_refused_for_a_written_configuration(tmp_path, capsys):
    a, b = _save(tmp_path / "a" / "acts.npy", 0), _save(tmp_path / "b" / "acts.npy", 1)
    out = tmp_path / "sw"
    argv = ["sweep", "--out", str(out), "--variant", "relu-l1", "--dict-size", "8", "--epochs", "1", "--batch-size", "16"]
    assert main([*argv, "--activations", str(a)]) == 0
    written = _files(out)
    capsys.readouterr()
    assert main([*argv, "--activations", str(b), "--resume"]) == 2
    old, new = fingerprint(open_activations(a))[:12], fingerprint(open_activations(b))[:12]
    assert one_line_error(capsys) == (
        f"monosem: error: {out / '000'}: written for other activations (the fingerprint of acts.npy differs: {old} -> "
        f"{new}); pass the data of the original sweep to --resume it, or start over without --resume")
    assert _files(out) == written


def _files(folder: Path) -> dict[Path, bytes]:
    """Every file's bytes but the lock's (it records the pid of the last command that held it)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".monosem.lock")}


def test_a_state_that_read_other_data_is_not_taken_for_an_earlier_version():
    """An SAE's checkpoint resumed as a transcoder (its identity lacks the target's record, as no earlier version's
    lacks): refused as a training that did not read the target, not as an old checkpoint."""
    from jax_impl.training.checkpoints import data_mismatch

    acts = {"file": "acts.npy", "fingerprint": "a" * 64}
    written = {"activations": acts}
    expected = {"activations": acts, "target": {"file": "out.npy", "fingerprint": "b" * 64}}
    message = data_mismatch(written, expected)
    assert message is not None and "did not read out.npy" in message and "earlier version" not in message
    assert data_mismatch(expected, expected) is None
    assert "earlier version" in data_mismatch({"activations": {"file": "acts.npy"}}, written)
