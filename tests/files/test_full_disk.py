"""A full disk: a write that fails with ENOSPC leaves every earlier artifact intact, no temporary behind, and
one line naming the file, exit 2. On a real tiny tmpfs where this process may mount one (root), else skipped;
and everywhere with the disk-full error injected into the writer."""

from __future__ import annotations

import errno
import gc
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jax_impl.cli import main

WIDTH = 37


@pytest.fixture()
def activations(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "acts.npy"
    np.save(path, rng.normal(size=(400, WIDTH)).astype(np.float32))
    return path


def _train(activations: Path, out: Path, dict_size: int) -> int:
    return main(["train-sae", "--activations", str(activations), "--out", str(out), "--variant", "topk", "--k", "4",
                 "--dict-size", str(dict_size), "--epochs", "1", "--batch-size", "100"])


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".monosem.lock"}


def _assert_one_line_naming_a_file_in(out: Path, capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"monosem: error: {out}/"), err
    return err


@pytest.fixture()
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-error test below covers the writer")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-error test covers the writer")
    yield mount_point
    gc.collect()  # a failed torch.save's writer, held by its traceback, may still hold a file open there
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.mark.slow  # -m slow for make test's 10 minutes: the injected ENOSPC test below checks the same guarantee
def test_a_real_full_disk_keeps_the_earlier_artifacts(activations, tiny_filesystem, capsys):
    out = tiny_filesystem / "out"
    assert _train(activations, out, dict_size=48) == 0  # ~60 KB of files: fits
    before = _files(out)
    capsys.readouterr()
    assert _train(activations, out, dict_size=1024) == 2  # sae.pth alone is ~300 KB: ENOSPC
    err = _assert_one_line_naming_a_file_in(out, capsys)
    assert "No space left on device" in err or "disk full" in err, err
    assert _files(out) == before  # the first file failed: every earlier artifact as it was
    assert not list(out.rglob(".*.tmp"))


def test_an_injected_enospc_names_the_file_and_leaves_no_partial_file(activations, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _train(activations, out, dict_size=48) == 0
    before = _files(out)
    capsys.readouterr()
    real_fsync, calls = os.fsync, []

    def fsync_until_full(fd: int) -> None:  # atomic_path fsyncs each artifact before its rename
        calls.append(fd)
        if len(calls) >= 3:  # the third artifact of the run finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    assert _train(activations, out, dict_size=64) == 2
    err = _assert_one_line_naming_a_file_in(out, capsys)
    assert "No space left on device" in err and ".tmp" not in err, err
    # the set is one unit (jax_impl.files.artifact_set): nothing lost, nothing new, not even the two files written before
    assert _files(out) == before
    assert not list(out.rglob(".*.tmp"))
