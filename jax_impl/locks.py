"""One writer per output folder: an flock on `FOLDER/.monosem.lock`, and the sweep of what killed writers left.

`monosem run` holds it on its run directory and `monosem train-sae` on its `--out` folder, so a second process
pointed at the same folder is refused at once (one line naming the folder and the holder's pid) instead of
interleaving its files with the first one's. The kernel releases an flock when its holder dies, even by
SIGKILL, so a stale lock never needs cleaning by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from jax_impl.errors import UserError

LOCK_FILE = ".monosem.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, *, flag: str, what: str) -> Iterator[None]:
    """Hold the folder's lock for the block (creating the folder); a second holder raises UserError.

    flag: the option that chose the folder (`--run-dir`, `--out`), what: how the message names it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{folder}: another monosem process (pid {owner}) is using this {what}; "
                f"wait for it to finish or choose another {flag}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the `.NAME.<random>.tmp` files/folders (jax_impl.atomic) a killed process left in `folder`.

    Call only while holding the folder's lock, so no live writer owns them. Returns what was removed.
    """
    stale = sorted(folder.rglob(".*.tmp"), reverse=True)  # deepest first
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
