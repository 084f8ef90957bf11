"""Reproducible from anywhere (issue 15, item 7): the same run from another checkout, another working
directory and another run directory writes the same bytes, and no artifact carries an absolute path or the
user's home.

A real process imports the package from a copy of this checkout in a temporary folder (PYTHONPATH;
asserted), with its own working directory, run directory and train-sae output folder, and its files are
compared with the session's run made here, every file byte for byte (TorchScript archives too: their constants
are written in name order, not in the hash seed's; CHANGELOG.md); the `-m slow` variant runs both sides
in fresh processes.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_RUN_ARGS

# folder in the checkout -> the name it is imported (and installed) under
PACKAGES = {"jax_impl": "jax_impl", "torch_ref": "monosem_torch_ref"}
TRAIN_SAE_ARGS = ["--variant", "topk", "--k", "4", "--dict-size", "32", "--epochs", "2", "--batch-size", "64"]


def _run_from(checkout: Path, cwd: Path, run_dir: Path, acts: Path, sae_out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
    script = (
        "import sys, jax_impl, monosem_torch_ref; from jax_impl.cli import main\n"
        "print('IMPORTED|' + jax_impl.__file__ + '|' + monosem_torch_ref.__file__)\n"
        f"assert main(['run', '--run-dir', {str(run_dir)!r}, *{TINY_RUN_ARGS!r}]) == 0\n"
        f"assert main(['train-sae', '--activations', {str(acts)!r}, '--out', {str(sae_out)!r}, *{TRAIN_SAE_ARGS!r}]) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".monosem.lock"}


def _members(name: str, data: bytes) -> dict[str, bytes]:
    """A file's bytes, and each member of it decompressed when it is a zip (xlsx, .pth, TorchScript, .pt2)."""
    out = {name: data}
    if data[:4] == b"PK\x03\x04":
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out |= {f"{name}:{m}": z.read(m) for m in z.namelist()}
    return out


def _without_timings(manifest: bytes) -> dict:
    doc = json.loads(manifest)
    for stage in doc["stages"].values():
        stage.pop("seconds"), stage.pop("completed_at")
    return doc


def _checkout_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "elsewhere" / "another checkout"  # a space in the path, too
    for folder, name in PACKAGES.items():
        shutil.copytree(REPO / folder, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _acts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "acts.npy", np.random.default_rng(0).standard_normal((256, 12)).astype(np.float32))
    return folder / "acts.npy"


def _assert_same(a: Path, b: Path) -> None:
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    for rel in files_a:
        if rel == "manifest.json":  # records seconds and the time of day; everything else must match
            assert _without_timings(files_a[rel]) == _without_timings(files_b[rel])
        elif rel == "metrics.json":  # train-sae's, with its training seconds
            ours, theirs = json.loads(files_a[rel]), json.loads(files_b[rel])
            assert ours.pop("train_seconds") > 0 and theirs.pop("train_seconds") > 0 and ours == theirs
        elif rel.endswith("metrics.jsonl"):  # training curves (train-sae's, a run's mlp/ and sae/): with seconds
            ours, theirs = ([json.loads(line) for line in f[rel].splitlines()] for f in (files_a, files_b))
            assert all(p.pop("seconds") >= 0 for p in ours + theirs) and ours == theirs, rel
        else:
            assert files_a[rel] == files_b[rel], rel


def _assert_no_paths(folders: list[Path], extra: list[Path]) -> None:
    """No absolute path of anything involved, nor the home folder (with the user's name), in any file or member."""
    needles = {*map(str, extra), str(REPO), sys.prefix, os.path.expanduser("~") + "/", f"/{getpass.getuser()}/"}
    needles = {n.encode() for n in needles if len(n) > 2}
    for folder in folders:
        for rel, data in _files(folder).items():
            for member, content in _members(rel, data).items():
                found = [n for n in needles if n in content]
                assert not found, (member, found)


def test_a_copy_of_the_checkout_elsewhere_writes_this_checkouts_bytes_and_no_paths(tiny_run, tmp_path):
    """The session's run (this checkout, in process) against a process importing a copy of the package from
    another folder, with another working directory, run directory and activation folder."""
    reference_sae = tmp_path / "here" / "sae"
    acts_here = _acts(tmp_path / "here")
    from jax_impl.cli import main

    assert main(["train-sae", "--activations", str(acts_here), "--out", str(reference_sae), *TRAIN_SAE_ARGS]) == 0
    copy = _checkout_copy(tmp_path)
    base = tmp_path / "there with spaces"
    (base / "cwd").mkdir(parents=True)
    run_dir, sae_out = base / "run_elsewhere", base / "nested" / "sae_elsewhere"
    stdout = _run_from(copy, base / "cwd", run_dir, _acts(base / "data"), sae_out)
    imported = next(line for line in stdout.splitlines() if line.startswith("IMPORTED|")).split("|")[1:]
    assert all(Path(p).is_relative_to(copy) for p in imported), imported  # really the copy's code
    _assert_same(run_dir, tiny_run)
    _assert_same(sae_out, reference_sae)
    _assert_no_paths([run_dir, sae_out, tiny_run, reference_sae], [copy, tmp_path, tiny_run])


@pytest.mark.slow
def test_two_checkouts_with_one_hash_seed_write_byte_identical_files(tmp_path):
    """Both runs in fresh processes with PYTHONHASHSEED=0: every file byte for byte, TorchScript included."""
    copy = _checkout_copy(tmp_path)
    places = []
    for checkout, name in ((REPO, "a"), (copy, "bbbbbbbb")):
        base = tmp_path / name
        (base / "cwd").mkdir(parents=True)
        run_dir, sae_out = base / f"run_{name}", base / "nested" / f"sae_{name}"
        _run_from(checkout, base / "cwd", run_dir, _acts(base / "data"), sae_out)
        places.append((run_dir, sae_out))
    (run_a, sae_a), (run_b, sae_b) = places
    _assert_same(run_a, run_b)
    _assert_same(sae_a, sae_b)
    _assert_no_paths([run_a, sae_a], [copy, tmp_path])
