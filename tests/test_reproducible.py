"""Reproducible from anywhere (issue 15, item 7): the same run from another checkout, another working
directory and another run directory writes the same bytes, and no artifact carries an absolute path or the
user's home.

Two real processes: one imports the package from this checkout, the other from a copy of it in a temporary
folder (PYTHONPATH; asserted), each with its own working directory, run directory and train-sae output
folder. Both use PYTHONHASHSEED=0: TorchScript orders a module's constants by string hashes
(docs/robustness.md), which is the one thing that differs with the hash seed, not with the paths.
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

from conftest import REPO, TINY_RUN_ARGS

PACKAGES = ("jax_impl", "torch_ref")


def _run_from(checkout: Path, cwd: Path, run_dir: Path, acts: Path, sae_out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
    script = (
        "import sys, jax_impl, torch_ref; from jax_impl.cli import main\n"
        "print('IMPORTED|' + jax_impl.__file__ + '|' + torch_ref.__file__)\n"
        f"assert main(['run', '--run-dir', {str(run_dir)!r}, *{TINY_RUN_ARGS!r}]) == 0\n"
        f"assert main(['train-sae', '--activations', {str(acts)!r}, '--out', {str(sae_out)!r}, '--variant', 'topk',"
        " '--k', '4', '--dict-size', '32', '--epochs', '2', '--batch-size', '64']) == 0\n"
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


def test_another_checkout_cwd_and_run_directory_write_the_same_bytes_and_no_paths(tmp_path):
    copy = tmp_path / "elsewhere" / "another checkout"  # a space in the path, too
    for package in PACKAGES:
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((256, 12)).astype(np.float32)
    places = []
    for checkout, name in ((REPO, "a"), (copy, "bbbbbbbb")):
        base = tmp_path / name
        (base / "cwd").mkdir(parents=True)
        (base / "data").mkdir()
        np.save(base / "data" / "acts.npy", acts)
        run_dir, sae_out = base / f"run_{name}", base / "nested" / f"sae_{name}"
        stdout = _run_from(checkout, base / "cwd", run_dir, base / "data" / "acts.npy", sae_out)
        imported = next(line for line in stdout.splitlines() if line.startswith("IMPORTED|")).split("|")[1:]
        assert all(Path(p).is_relative_to(checkout) for p in imported), imported  # really that checkout's code
        places.append((run_dir, sae_out))

    (run_a, sae_a), (run_b, sae_b) = places
    for a, b in ((run_a, run_b), (sae_a, sae_b)):
        files_a, files_b = _files(a), _files(b)
        assert files_a.keys() == files_b.keys()
        for rel in files_a:
            if rel == "manifest.json":  # records seconds and the time of day; everything else must match
                assert _without_timings(files_a[rel]) == _without_timings(files_b[rel])
            elif rel == "metrics.json":  # train-sae's, with its training seconds
                ours, theirs = json.loads(files_a[rel]), json.loads(files_b[rel])
                assert ours.pop("train_seconds") > 0 and theirs.pop("train_seconds") > 0 and ours == theirs
            else:
                assert files_a[rel] == files_b[rel], rel

    # no absolute path of anything involved, nor the home folder (with the user's name), in any file or member
    needles = {str(REPO), str(copy), str(tmp_path), sys.prefix, os.path.expanduser("~") + "/", f"/{getpass.getuser()}/"}
    needles = {n.encode() for n in needles if len(n) > 2}
    for folder in (run_a, sae_a):
        for rel, data in _files(folder).items():
            for member, content in _members(rel, data).items():
                found = [n for n in needles if n in content]
                assert not found, (member, found)
