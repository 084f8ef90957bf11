"""Atomic file writes: an artifact is either the old file, the new file, or absent; never half-written.

Every temporary this project makes is named `.NAME.monosem-<8 random>.tmp` (OUR_TEMPORARY), created beside
its artifact with O_CREAT|O_EXCL|O_NOFOLLOW (a file) or mkdir (a folder): never through a symlink, never onto
anything that exists. Only names of that form are ever swept as stale (jax_impl.files.locks), so a user's
`.draft.tmp` is never mistaken for one of ours. Files get the usual permissions (0o666 less the umask, applied
by the kernel when the temporary is created), whatever the writer does to the file in between.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TAG = "monosem"
_RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # tempfile's alphabet
_RANDOM_LENGTH = 8
OUR_TEMPORARY = re.compile(rf"\..+\.{TAG}-[a-z0-9_]{{{_RANDOM_LENGTH}}}\.tmp")  # fullmatch a name
_ATTEMPTS = 100


def temporary_name(name: str) -> str:
    """`.NAME.monosem-<random>.tmp`: a fresh name for a temporary of the artifact NAME."""
    random = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(_RANDOM_LENGTH))
    return f".{name}.{TAG}-{random}.tmp"


def create_temporary_file(folder: Path, name: str) -> Path:
    """A new empty file `folder/.NAME.monosem-<random>.tmp` (mode 0o666 less the umask); O_EXCL|O_NOFOLLOW, so
    it is never something that was there before, nor reached through a symlink."""
    for _ in range(_ATTEMPTS):
        path = folder / temporary_name(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_ATTEMPTS} tries", str(folder / name))


def create_temporary_folder(folder: Path, name: str) -> Path:
    """A new private folder `folder/.NAME.monosem-<random>.tmp` (mkdir never follows a symlink at that name)."""
    for _ in range(_ATTEMPTS):
        path = folder / temporary_name(name)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, f"no free temporary name after {_ATTEMPTS} tries", str(folder / name))


@contextlib.contextmanager
def atomic_path(path: Path | str, *, keep_name: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    The temporary file lives in the same folder so the final `os.replace` is a same-filesystem rename,
    which POSIX guarantees to be atomic even if the process is killed right after. Temporaries are
    named `.NAME.monosem-<random>.tmp` (a process killed by SIGKILL leaves one behind; the next command that
    takes the folder's lock sweeps them, jax_impl.files.locks).

    keep_name=True yields `.NAME.monosem-<random>.tmp/NAME` instead: a file with the final name inside a
    private temporary folder beside `path`. For writers that record the file's own name in what they write
    (torch.save names the records of its zip archive after the file: `perfect_mlp/data.pkl`), so the
    bytes do not depend on the random temporary name.

    The file keeps the mode it was created with (0o666 less the umask) even when the writer replaces it
    (safetensors' save_file writes its own file and renames it: 0600).

    A failed write (ENOSPC and other OSErrors) is raised as OSError naming `path`, which the CLI prints as
    one line; the old file, if any, is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = None
    try:
        if keep_name:
            tmp_dir = create_temporary_folder(path.parent, path.name)
            tmp = tmp_dir / path.name
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
        else:
            tmp = create_temporary_file(path.parent, path.name)
        mode = stat.S_IMODE(os.lstat(tmp).st_mode)  # what the umask made of 0o666
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                    os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:  # disk full, quota, I/O error: named after the artifact, not its temporary
        if e.filename is None or str(e.filename).startswith(str(path.parent / f".{path.name}.{TAG}-")):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, obj: Any) -> None:
    # allow_nan=False: a bare NaN/Infinity is not JSON (other readers refuse it); a metric that can be undefined
    # is None, and a NaN reaching here is a bug to see, not a file to write.
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
