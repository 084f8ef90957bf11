"""Atomic file writes: an artifact is either the old file, the new file, or absent; never half-written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, keep_name: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    The temporary file lives in the same folder so the final `os.replace` is a same-filesystem rename,
    which POSIX guarantees to be atomic even if the process is killed right after. Temporaries are
    named `.NAME.<random>.tmp` (a process killed by SIGKILL leaves one behind; `monosem run` sweeps them).

    keep_name=True yields `.NAME.<random>.tmp/NAME` instead: a file with the final name inside a private
    temporary folder beside `path`. For writers that record the file's own name in what they write
    (torch.save names the records of its zip archive after the file: `perfect_mlp/data.pkl`), so the
    bytes do not depend on the random temporary name.

    A failed write (ENOSPC and other OSErrors) is raised as OSError naming `path`, which the CLI prints as
    one line; the old file, if any, is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = None
    if keep_name:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp = tmp_dir / path.name
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the usual permissions (umask)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, I/O error: named after the artifact, not its temporary
        if e.filename is None or str(e.filename).startswith(str(path.parent / f".{path.name}.")):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, obj: Any) -> None:
    # allow_nan=False: a bare NaN/Infinity is not JSON (other readers refuse it); a metric that can be undefined
    # is None, and a NaN reaching here is a bug to see, not a file to write.
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
