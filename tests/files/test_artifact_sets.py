"""Nothing of the user's touched, nothing half-claimed (issue 24, items 1, 2 and part of 7).

- An artifact set is one unit (jax_impl.files.artifact_set): every rename and every file write of a command fails
  in turn (ENOSPC) into a folder that holds a complete earlier set: after each failure the folder holds
  exactly that set, exit 2 and one line; a process killed between the commit's renames leaves a journal that
  the next command completes (the whole new set). For train-sae, the pipeline's harvest stage and export.
- The lock never follows a symlink or writes into anything but its own regular file; the sweep of stale
  temporaries removes only ours, only in our folders (a user's `notes/.draft.tmp` stays).
- Every file and folder written follows the umask (0o666 / 0o777 less it); TorchScript archives have the
  same bytes under two PYTHONHASHSEEDs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, TINY_RUN_ARGS
from jax_impl.cli import main
from jax_impl.errors import TrainingDiverged
from jax_impl.files.artifact_set import JOURNAL
from jax_impl.files.locks import LOCK_FILE
from jax_impl.training import sae_trainer
from jax_impl.training.curves import CURVES_FILE

TRAIN_SAE = ["--variant", "topk", "--k", "4", "--dict-size", "32", "--epochs", "1", "--batch-size", "64",
             "--checkpoint-every", "off"]
NO_SPACE = os.strerror(errno.ENOSPC)

# sae_trainer.fit's results by (PRNG key, dictionary size): each seed trains once per session; the commands
# below then run whole (lock, tidying, metrics, every write) in a fraction of a second.
_TRAINED: dict[tuple[bytes, int], Any] = {}
_real_fit = sae_trainer.fit


def _fit_once(sae, rows, train, *, key, **kwargs):
    memo = (np.asarray(jax.random.key_data(key)).tobytes(), sae.dict_size)
    if memo not in _TRAINED:
        _TRAINED[memo] = _real_fit(sae, rows, train, key=key, **kwargs)
    return _TRAINED[memo]


@pytest.fixture(autouse=True)
def _trained_once(monkeypatch):
    monkeypatch.setattr(sae_trainer, "fit", _fit_once)


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32))
    return path


def _train_sae(acts: Path, out: Path, seed: int) -> int:
    return main(["train-sae", "--activations", str(acts), "--out", str(out), *TRAIN_SAE, "--seed", str(seed)])


def _files(folder: Path) -> dict[str, str]:
    """Every file and link under folder (hidden ones too, not the lock) -> sha256 of its bytes or its target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.name == CURVES_FILE:
            # Left out: a fit memoised by _fit_once writes no curves. That a failed training leaves the earlier
            # set's curves is tests/files/test_full_disk.py's, their contents tests/training/test_curves.py's.
            continue
        elif path.is_file() and path.name != LOCK_FILE:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _without_timing(folder: Path) -> dict[str, object]:
    """_files, with metrics.json compared without its train_seconds (the one value that differs between runs)."""
    files: dict[str, object] = dict(_files(folder))
    for rel in [r for r in files if Path(r).name == "metrics.json"]:
        metrics = json.loads((folder / rel).read_text())
        metrics.pop("train_seconds", None)
        files[rel] = metrics
    return files


def _one_line(capsys, folder: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"monosem: error: {folder}/"), err
    assert ".tmp" not in err and "artifact-set" not in err, err  # the artifact is named, not its staged copy
    return err


class _Failing:
    """os.replace or os.fsync that raises ENOSPC at its k-th call on a path under `root` (k = 1, 2, ...);
    with `kill`, raises _Killed instead (a process ending there: nothing after it runs, no undo)."""

    def __init__(self, real, root: Path, k: int, kill: bool = False):
        self.real, self.root, self.k, self.kill, self.calls = real, str(root), k, kill, 0

    def _ours(self, path) -> bool:
        if isinstance(path, int):  # an fd (fsync): the file it is open on
            path = os.readlink(f"/proc/self/fd/{path}")
            if not stat.S_ISREG(os.stat(path).st_mode):
                return False
        return str(path).startswith(self.root + os.sep)

    def __call__(self, *args, **kwargs):
        if self._ours(args[0]):
            self.calls += 1
            if self.calls == self.k:
                if self.kill:
                    raise _Killed
                raise OSError(errno.ENOSPC, NO_SPACE, *(str(a) for a in args[:1] if not isinstance(a, int)))
        return self.real(*args, **kwargs)


class _Killed(BaseException):
    pass


def _fail_each_write_in_turn(monkeypatch, root: Path, command, check_failed, reset) -> int:
    """Run command() with the k-th rename, then (after reset(): root as before) the k-th fsync of a file under
    root failing, k = 1, 2, ... until it succeeds; check_failed(name, k) after each failure. Returns how many
    renames a successful command made."""
    renames = 0
    for name, real in (("replace", os.replace), ("fsync", os.fsync)):
        reset()
        for k in range(1, 200):
            failing = _Failing(real, root, k)
            with monkeypatch.context() as m:
                m.setattr(os, name, failing)
                code = command()
            if failing.calls < k:  # the k-th call never came: every write succeeded
                assert code in (0, None), code
                break
            assert code in (2, "raised"), (name, k, code)
            check_failed(name, k)
        else:
            pytest.fail(f"{name} failed 200 times")
        renames = renames if name == "fsync" else failing.calls
        assert k > 3, (name, k)  # the set has several files: this counted the command's writes
    return renames


# --------------------------------------------------------------------------- train-sae


def _complete_set(acts: Path, tmp_path_factory, name: str, seed: int) -> Path:
    out = tmp_path_factory.mktemp(name) / "out"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sae_trainer, "fit", _fit_once)
        assert _train_sae(acts, out, seed=seed) == 0
    return out


@pytest.fixture(scope="module")
def previous_set(acts, tmp_path_factory) -> Path:
    """train-sae's complete set for seed 0 (read-only; copy it)."""
    return _complete_set(acts, tmp_path_factory, "previous", seed=0)


@pytest.fixture(scope="module")
def new_set(acts, tmp_path_factory) -> Path:
    """train-sae's complete set for seed 1 written into a fresh folder: what the commands below must leave."""
    return _complete_set(acts, tmp_path_factory, "new", seed=1)


def test_train_sae_failing_at_every_write_leaves_the_previous_set(acts, previous_set, new_set, tmp_path, monkeypatch,
                                                                  capsys):
    out = tmp_path / "out"
    shutil.copytree(previous_set, out)
    before = _files(out)
    assert before != _files(new_set)

    def failed(name, k):
        err = _one_line(capsys, out)
        assert NO_SPACE in err, (name, k, err)
        assert _files(out) == before, (name, k)  # no file changed, none added, none half-written, no temporary

    def reset():
        shutil.rmtree(out)
        shutil.copytree(previous_set, out)

    renames = _fail_each_write_in_turn(monkeypatch, out, lambda: _train_sae(acts, out, seed=1), failed, reset)
    # 7 files (sae.pth, sae.safetensors, saelens/ x 3, sae_config.json, metrics.json) written and renamed in
    # staging, the journal, then each file's predecessor and itself moved
    assert renames == 7 + 1 + 2 * 7, renames
    assert _without_timing(out) == _without_timing(new_set)


@pytest.mark.parametrize("k", range(1, 2 * 7 + 1))
def test_a_commit_killed_between_renames_is_completed_by_the_next_command(acts, previous_set, new_set, tmp_path,
                                                                          monkeypatch, capsys, k):
    """SIGKILL between any two of the commit's renames (here: the k-th rename never returns, and nothing after
    it runs): the journal stays, and the next train-sae in the folder completes the set before anything else,
    even one that then fails (its training diverges)."""
    out = tmp_path / "out"
    shutil.copytree(previous_set, out)
    staging_writes = 7 + 1  # the seven files in staging and the journal come before the commit's renames
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _Failing(os.replace, out, staging_writes + k, kill=True))
        with pytest.raises(_Killed):
            _train_sae(acts, out, seed=1)
    assert (out / JOURNAL).is_file()
    assert _files(out) != _files(previous_set)  # a mixed folder, until the next command

    def diverges(*args, **kwargs):
        raise TrainingDiverged("loss is NaN at epoch 1")

    monkeypatch.setattr(sae_trainer, "fit", diverges)
    capsys.readouterr()
    assert _train_sae(acts, out, seed=2) == 2
    assert "loss is NaN" in capsys.readouterr().err
    assert _without_timing(out) == _without_timing(new_set)  # the whole new set, no journal, no staging folder


def test_a_damaged_journal_is_refused_with_one_line(acts, previous_set, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(previous_set, out)
    for text in ('{"format": "monosem-commit/1", "staging": ".x.monosem-abcdefgh.tmp", "files": ["../../etc/passwd"]}',
                 "[" * 100_000, '{"format": "monosem-commit/1", "staging": "../elsewhere", "files": []}'):
        (out / JOURNAL).write_text(text)
        before = _files(out)
        assert _train_sae(acts, out, seed=1) == 2
        err = _one_line(capsys, out)
        assert f"{out / JOURNAL}: " in err and "expected the commit journal monosem writes" in err, err
        assert _files(out) == before


# --------------------------------------------------------------------------- the pipeline's sets, export


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    (copy / LOCK_FILE).unlink()
    return copy


def test_a_pipeline_stage_and_its_manifest_are_one_set(tiny_run, run_copy, monkeypatch):
    """The harvest stage (activations .pt, its .safetensors twin and the manifest that records the stage),
    failing at each of its writes: the run directory as it was; then all three new."""
    from jax_impl.jobs.pipeline import STAGES, run_stage
    from jax_impl.jobs.rundir import load_run, read_manifest
    from jax_impl.models.mlp import InterpretabilityMLP

    run = load_run(run_copy, log=lambda line: None)
    run.mlp = InterpretabilityMLP(run.shape.input_dim, rngs=nnx.Rngs(12345))  # other activations than the run's
    manifest = read_manifest(run_copy)
    harvest = next(s for s in STAGES if s.name == "harvest")
    before = _files(run_copy)

    def command():
        try:
            run_stage(run, harvest, manifest)
        except OSError as e:
            assert e.strerror == NO_SPACE and str(e.filename).startswith(f"{run_copy}/") and ".tmp" not in e.filename
            return "raised"

    def failed(name, k):
        assert _files(run_copy) == before, (name, k)

    def reset():
        shutil.rmtree(run_copy)
        shutil.copytree(tiny_run, run_copy, symlinks=True)
        (run_copy / LOCK_FILE).unlink()

    renames = _fail_each_write_in_turn(monkeypatch, run_copy, command, failed, reset)
    assert renames == 3 + 1 + 2 * 3, renames
    after = _files(run_copy)
    assert {rel for rel in before if before[rel] != after[rel]} == {
        "mlp_activations.pt", "mlp_activations.safetensors", "manifest.json"}


def test_export_failing_at_writes_leaves_the_previous_files(run_copy, monkeypatch, capsys):
    """`monosem export` (programs, twins, SAELens folder: one set) failing in the middle of its commit, with files
    of four folders already moved (an export takes seconds: one failure point here; the write and rename
    failures of every kind are enumerated above on train-sae and a pipeline stage, through the same commit)."""
    (run_copy / "export" / "mlp.pt2").write_bytes(b"an older export")  # so that the new set differs
    (run_copy / "sae" / "saelens" / "cfg.json").write_text('{"older": true}\n')
    before = _files(run_copy)
    files = 9 + 1  # four programs, two twins, the SAELens folder's three files; the journal
    with monkeypatch.context() as m:
        m.setattr(os, "replace", _Failing(os.replace, run_copy, files + 2 * 5 + 1))  # the sixth file's first move
        assert main(["export", "--run-dir", str(run_copy)]) == 2
    assert NO_SPACE in _one_line(capsys, run_copy)
    assert _files(run_copy) == before
    counting = _Failing(os.replace, run_copy, k=0)
    monkeypatch.setattr(os, "replace", counting)
    assert main(["export", "--run-dir", str(run_copy)]) == 0
    assert counting.calls == files + 2 * 9  # every file replaced one: the failure above was mid-commit
    after = _files(run_copy)
    assert after["export/mlp.pt2"] != before["export/mlp.pt2"]
    assert after["sae/saelens/cfg.json"] != before["sae/saelens/cfg.json"]


# --------------------------------------------------------------------------- item 1: the lock, the sweep


def _precious(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "precious.txt"
    path.write_bytes(b"the user's own file\n")
    return path, path.read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "symlink to nowhere", "fifo", "folder", "hard link"])
def test_a_lock_that_is_not_our_regular_file_is_refused_and_left_alone(acts, tmp_path, capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    precious, content = _precious(tmp_path)
    lock = out / LOCK_FILE
    if kind == "symlink":
        lock.symlink_to(precious)
    elif kind == "symlink to nowhere":
        lock.symlink_to(tmp_path / "would-be-created")
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    else:
        os.link(precious, lock)
    assert _train_sae(acts, out, seed=0) == 2
    err = _one_line(capsys, out)
    assert err.startswith(f"monosem: error: {lock}: ") and "expected the regular file monosem keeps its lock in" in err
    assert precious.read_bytes() == content and not (tmp_path / "would-be-created").exists()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written


def test_a_symlinked_run_directory_lock_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    precious, content = _precious(tmp_path)
    (run_dir / LOCK_FILE).symlink_to(precious)
    assert main(["run", "--run-dir", str(run_dir), *TINY_RUN_ARGS]) == 2
    assert "is a symbolic link" in _one_line(capsys, run_dir)
    assert precious.read_bytes() == content


def _plant(folder: Path, tmp_path: Path, ours: list[str], users: list[str]) -> tuple[list[Path], dict[str, str]]:
    """Our stale temporaries (files; a staging folder) and the user's files, under folder."""
    for rel in ours + users:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"stale" if rel in ours else b"the user's")
    staging = folder / ".artifact-set.monosem-k1l2m3n4.tmp"
    (staging / "saelens").mkdir(parents=True)
    (staging / "saelens" / "cfg.json").write_text("{}")
    precious, _ = _precious(tmp_path)
    (staging / "link").symlink_to(precious)  # removed with the staging folder; what it points to stays
    return [folder / rel for rel in ours] + [staging], {rel: (folder / rel).read_bytes() for rel in users}


def test_train_sae_sweeps_only_our_temporaries(acts, previous_set, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(previous_set, out)
    user_dir = tmp_path / "user_dir"
    user_dir.mkdir()
    (user_dir / ".sae.pth.monosem-abcdefgh.tmp").write_bytes(b"the user's")
    (out / "saelens_link").symlink_to(user_dir)
    ours, users = _plant(out, tmp_path, ours=[
        ".sae.pth.monosem-abcdefgh.tmp", "saelens/.cfg.json.monosem-a1b2c3d4.tmp", "checkpoints/.ckpt-000001.ckpt.monosem-zz99zz99.tmp",
        ".metrics.json.q9w8e7r6.tmp",  # the naming of earlier versions, for one of our artifacts
    ], users=[
        "notes/.draft.tmp", ".x.tmp", "saelens/.x.tmp", ".notes.txt.abcdefgh.tmp", "notes/.sae.pth.monosem-abcdefgh.tmp",
        "saelens/notes.txt", "sae.pth.bak",
    ])
    assert _train_sae(acts, out, seed=1) == 0
    assert not any(os.path.lexists(p) for p in ours)
    assert {rel: (out / rel).read_bytes() for rel in users} == users
    assert (user_dir / ".sae.pth.monosem-abcdefgh.tmp").read_bytes() == b"the user's"  # not followed
    assert (tmp_path / "precious.txt").read_bytes() == b"the user's own file\n"


def test_run_sweeps_only_our_temporaries(run_copy, tmp_path, capsys):
    ours, users = _plant(run_copy, tmp_path, ours=[
        ".manifest.json.monosem-abcdefgh.tmp", "mlp/.perfect_mlp.pth.monosem-abcdefgh.tmp",
        "sae/saelens/.cfg.json.a1b2c3d4.tmp", "export/.mlp.pt2.monosem-abcdefgh.tmp", "dataset/.mlp_val.xlsx.monosem-x_y_z_w_.tmp",
    ], users=[
        "notes/.draft.tmp", ".x.tmp", "mlp/.x.tmp", "sae/saelens/.draft.tmp", "notes/deep/.probe.txt.abcdefgh.tmp",
        "dataset/.mlp_val.xlsx.tmp", "notes/.manifest.json.monosem-abcdefgh.tmp",
    ])
    assert main(["run", "--run-dir", str(run_copy), "--resume", *TINY_RUN_ARGS]) == 0
    assert not any(os.path.lexists(p) for p in ours)
    assert {rel: (run_copy / rel).read_bytes() for rel in users} == users


def test_checkpoints_of_a_run_are_never_removed_through_a_symlink(run_copy, tmp_path):
    user_dir = tmp_path / "user_checkpoints"
    (user_dir / "mlp").mkdir(parents=True)
    (user_dir / "mlp" / "keep.txt").write_text("mine")
    (user_dir / "keep.txt").write_text("mine")
    (run_copy / "checkpoints").symlink_to(user_dir)
    assert main(["run", "--run-dir", str(run_copy), "--resume", *TINY_RUN_ARGS]) == 0
    assert sorted(str(p.relative_to(user_dir)) for p in user_dir.rglob("*")) == ["keep.txt", "mlp", "mlp/keep.txt"]


# --------------------------------------------------------------------------- item 7: modes, TorchScript bytes


def _modes_follow(folder: Path, umask: int, only: set[str] | None = None) -> None:
    """Every file and folder under `folder` (not itself: pytest makes some 0700) or those of `only`."""
    for path in folder.rglob("*"):
        rel = str(path.relative_to(folder))
        if only is not None and rel not in only:
            continue
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{rel}: {oct(mode)}, expected {oct(expected)} under umask {oct(umask)}"


def test_every_file_written_follows_the_umask(acts, previous_set, tiny_run, run_copy, tmp_path):
    session_umask = os.umask(0o022)
    os.umask(session_umask)
    _modes_follow(tiny_run, session_umask)  # the run, written under the session's umask (the lock file too)
    for umask in (0o022, 0o002):
        os.umask(umask)
        try:
            out = tmp_path / f"out-{umask:o}"
            assert _train_sae(acts, out, seed=0) == 0
            _modes_follow(out, umask)
            if umask != session_umask:  # export's files and its new folder, in a copy of the run
                shutil.rmtree(run_copy / "export")
                assert main(["export", "--run-dir", str(run_copy)]) == 0
                written = {"export", LOCK_FILE, "mlp/perfect_mlp.safetensors", "sae/sae_model.safetensors",
                           "sae/saelens/cfg.json", "sae/saelens/sae_weights.safetensors"} | {
                    f"export/{name}" for name in ("mlp.torchscript.pt", "mlp.pt2", "sae.torchscript.pt", "sae.pt2")}
                _modes_follow(run_copy, umask, only=written)
        finally:
            os.umask(session_umask)


_EXPORT_SCRIPT = """
import sys
from pathlib import Path
import torch
from monosem_torch_ref.models import InterpretabilityMLP
from jax_impl.jobs.export import _write_torchscript
torch.manual_seed(0)
_write_torchscript(InterpretabilityMLP(20).eval().requires_grad_(False), Path(sys.argv[1]) / "mlp.torchscript.pt")
"""


def test_torchscript_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    """TorchScript declares a module's constants in the order of a set of their names (string hashes): under
    PYTHONHASHSEED 1 and 2 the BatchNorm's five constants came out in two orders before they were sorted."""
    folders, processes = [], []
    for seed in ("1", "2"):
        folder = tmp_path / seed
        folder.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        processes.append(subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(folder)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        folders.append(folder)
    for p in processes:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-2000:]
    first, second = ((f / "mlp.torchscript.pt").read_bytes() for f in folders)
    assert first == second


# --------------------------------------------------------------------------- the other commands' sets

SYNTHETIC = ["--rows", "64", "--dim", "8", "--n-features", "12", "--parents", "2", "--children-per-parent", "2",
             "--correlation-rank", "1"]


def test_synthetic_failing_at_every_write_leaves_the_previous_set(tmp_path, monkeypatch, capsys):
    """`monosem synthetic`'s three files (activations, ground truth, config) are one set."""
    previous = tmp_path / "previous"
    assert main(["synthetic", "--out", str(previous), *SYNTHETIC, "--seed", "0"]) == 0
    new = tmp_path / "new"
    assert main(["synthetic", "--out", str(new), *SYNTHETIC, "--seed", "1"]) == 0
    out = tmp_path / "out"

    def failed(name, k):
        assert NO_SPACE in _one_line(capsys, out), (name, k)
        assert _files(out) == _files(previous), (name, k)

    def reset():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(previous, out)

    renames = _fail_each_write_in_turn(
        monkeypatch, out, lambda: main(["synthetic", "--out", str(out), *SYNTHETIC, "--seed", "1"]), failed, reset)
    assert renames == 3 + 1 + 2 * 3, renames
    assert _files(out) == _files(new)


def test_the_atlas_command_failing_mid_commit_leaves_the_previous_atlas(run_copy, monkeypatch, capsys):
    """`monosem atlas` takes the folder's lock and commits feature_atlas.json and .html together."""
    (run_copy / "feature_atlas.html").write_text("an older page\n")
    before = _files(run_copy)
    with monkeypatch.context() as m:  # the json's own write, the html's, the journal, the json's two moves
        m.setattr(os, "replace", _Failing(os.replace, run_copy, 2 + 1 + 2 + 1))  # ... then the html's first
        assert main(["atlas", "--run-dir", str(run_copy)]) == 2
    assert NO_SPACE in _one_line(capsys, run_copy)
    assert _files(run_copy) == before
    assert main(["atlas", "--run-dir", str(run_copy)]) == 0
    assert _files(run_copy)["feature_atlas.html"] != before["feature_atlas.html"]
