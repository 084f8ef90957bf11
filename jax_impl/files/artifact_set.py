"""Artifact sets: the files a command writes together are committed as one unit.

A set is what one command (or one pipeline stage) writes into one folder, ROOT: train-sae's sae.pth,
sae.safetensors, saelens/, sae_config.json and metrics.json; a sweep configuration's folder; a pipeline
stage's files together with the manifest.json that records the stage; an export; the causal command's SAE of a
hook. A failure at any moment (a full disk, a bug, a signal, SIGKILL) leaves either the previous set whole or,
after the next command's start, the new set whole; never a new sae.pth beside an old metrics.json.

How (`artifact_set(ROOT)`):

1. Stage. The writers write every file of the set into a staging folder inside ROOT,
   `ROOT/.artifact-set.monosem-<random>.tmp/`, laid out as the files will be (`saelens/cfg.json`,
   `mlp/perfect_mlp.pth`), each with the usual atomic writer (jax_impl.files.atomic). Nothing in ROOT has changed:
   an error now removes the staging folder; SIGKILL leaves it, and the next command that takes the folder's
   lock sweeps it as a stale temporary (jax_impl.files.locks).
2. Journal. `ROOT/.monosem-commit.json` is written atomically (fsynced, after the staged files are): the
   staging folder's name and the staged files, in the order they are moved (the file that marks a set
   complete, e.g. metrics.json or manifest.json, last). From here on the new set is the one that counts.
3. Move. For each file: the file it replaces (if any) is renamed into the staging folder's `.previous/`, then
   the staged file is renamed onto its final path; both are renames within one filesystem, so each file is
   always whole. Only files are moved, never folders: a user's file kept in one of our folders (saelens/)
   stays where it is.
4. Finish. The journal is removed, then the staging folder with the files the set replaced.

A rename that fails in step 3 (ENOSPC for a new directory block, EIO) is undone at once: the moved files go
back into the staging folder and the previous ones back into place, the journal is removed, and the command
fails with one line naming the file, leaving the previous set. A process killed in step 3 (or an undo that
fails as well) leaves the journal: `finish_commit`, which every command runs on its folders right after
taking the lock and before anything else (jax_impl.files.locks.remove_stale_temporaries), completes the commit:
each file still in the staging folder is renamed into place, so the folder holds the whole new set.

Writers give their final paths' names to the staged files, so the bytes (torch.save names a zip's records
after its file) are those of a direct write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from jax_impl.errors import UserError
from jax_impl.files.atomic import OUR_TEMPORARY, create_temporary_folder, write_json_atomic

JOURNAL = ".monosem-commit.json"
STAGING = "artifact-set"  # the staging folder: .artifact-set.monosem-<random>.tmp
PREVIOUS = ".previous"  # inside the staging folder: the files the set replaces, until it is committed
FORMAT = "monosem-commit/1"
_MAX_JOURNAL_BYTES = 1 << 20


@contextlib.contextmanager
def artifact_set(root: Path | str, *, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging folder to write the set into (the same relative paths as in `root`); on success commit
    every file written there to `root` as one unit, on an error leave `root` as it was.

    last: relative paths moved last, in this order (the file whose presence marks the set complete).
    Call with `root`'s lock held (jax_impl.files.locks.folder_lock): the commit must be the folder's only writer.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    finish_commit(root)  # one left here (a failed undo, a folder no tidying lists): completed before it is replaced
    staging = create_temporary_folder(root, STAGING)
    try:
        try:
            yield staging
            files = _staged_files(staging, last)
            _check_destinations(root, files)
            _commit(root, staging, files)
        except OSError as e:  # named after the artifact, not its staged copy
            raise _renamed(e, staging, root) from e
    finally:
        if not os.path.lexists(root / JOURNAL):  # else the next command completes the commit from staging
            shutil.rmtree(staging, ignore_errors=True)


def finish_commit(folder: Path) -> bool:
    """Complete the commit a killed process left in `folder` (its journal); True if there was one.

    Call with the folder's lock held, before anything reads or writes the folder."""
    journal = folder / JOURNAL
    try:
        info = os.lstat(journal)
    except FileNotFoundError:
        return False
    staging, files = _read_journal(journal, info)
    if _is_real_folder(staging):
        for rel in files:
            new = staging / rel
            try:
                new_info = os.lstat(new)
            except FileNotFoundError:
                continue  # moved before the kill
            if not stat.S_ISREG(new_info.st_mode):
                raise UserError(f"{journal}: staged entry {rel!r} is not a regular file; expected the commit journal "
                                "monosem writes (remove the journal and its staging folder to go on)")
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(new, folder / rel)
        _fsync_folders({(folder / rel).parent for rel in files})
    journal.unlink()
    _fsync_folders({folder})
    if _is_real_folder(staging):
        shutil.rmtree(staging, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- commit


def _staged_files(staging: Path, last: Sequence[str]) -> list[str]:
    """The regular files under staging as relative POSIX paths: sorted, then `last` in its order."""
    files = []
    for folder, dirs, names in os.walk(staging):  # does not follow symlinks
        dirs[:] = sorted(d for d in dirs if not OUR_TEMPORARY.fullmatch(d))  # a writer's private temporary folder
        for name in names:
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode) and not OUR_TEMPORARY.fullmatch(name):
                files.append(path.relative_to(staging).as_posix())
    ordered = sorted(f for f in files if f not in last)
    return ordered + [f for f in last if f in files]


def _check_destinations(root: Path, files: Sequence[str]) -> None:
    """Refuse, before anything moves, a folder where a file of the set goes or a file where its folder goes."""
    for rel in files:
        final = root / rel
        if final.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"is a folder, expected the file {final.name} (remove or rename it)",
                                    str(final))
        for parent in final.parents:
            if parent == root:
                break
            if os.path.lexists(parent) and not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"is a file, expected the folder {parent.name} (remove or "
                                         "rename it)", str(parent))


def _commit(root: Path, staging: Path, files: Sequence[str]) -> None:
    """Journal, move, finish (the module docstring); raises the OSError of a failed move, after undoing it (or,
    where the undo fails too, leaving the journal for the next command to complete)."""
    _fsync_folders({(staging / rel).parent for rel in files})  # the staged files' names, before the journal's
    write_json_atomic(root / JOURNAL, {"format": FORMAT, "staging": staging.name, "files": list(files)})
    _fsync_folders({root})
    begun: list[str] = []
    try:
        for rel in files:
            begun.append(rel)
            final, previous = root / rel, staging / PREVIOUS / rel
            if os.path.lexists(final):
                previous.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, previous)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
    except OSError as e:
        failed = OSError(e.errno, e.strerror or str(e), str(root / begun[-1]))
        try:
            _undo(root, staging, begun)
            (root / JOURNAL).unlink()
        except OSError:
            raise OSError(e.errno, f"{e.strerror or e}; the next monosem command that writes {root} completes "
                          "the new set", str(root / begun[-1])) from e
        raise failed from e
    _fsync_folders({(root / rel).parent for rel in files})
    with contextlib.suppress(OSError):  # the set is in place; a journal left behind is finished (a no-op) later
        (root / JOURNAL).unlink()
        _fsync_folders({root})


def _undo(root: Path, staging: Path, begun: Sequence[str]) -> None:
    """Put back what a failed move changed, newest first: each new file back into staging, the previous file
    back into place (so the journal, if it stays, still describes the whole commit)."""
    for rel in reversed(begun):
        new, final, previous = staging / rel, root / rel, staging / PREVIOUS / rel
        if not os.path.lexists(new):  # moved into place
            os.replace(final, new)
        if os.path.lexists(previous):
            os.replace(previous, final)


def _renamed(e: OSError, staging: Path, root: Path) -> OSError:
    """e with any path inside the staging folder named as the artifact it stands for."""
    names = []
    for name in (e.filename, e.filename2):
        if name is not None and str(name).startswith(f"{staging}{os.sep}"):
            name = str(root / Path(name).relative_to(staging))
        names.append(name)
    if names == [e.filename, e.filename2]:
        return e
    return OSError(e.errno, e.strerror or str(e), *(n for n in names if n is not None))


# --------------------------------------------------------------------------- reading a journal


def _read_journal(journal: Path, info: os.stat_result) -> tuple[Path, list[str]]:
    """(staging folder, files) of a journal, or UserError naming it when it is not one monosem wrote."""
    def bad(problem: str) -> UserError:
        return UserError(f"{journal}: {problem}; expected the commit journal monosem writes "
                         "(remove it, and the staging folder it names, to go on)")

    if not stat.S_ISREG(info.st_mode):
        raise bad("not a regular file")
    if info.st_size > _MAX_JOURNAL_BYTES:
        raise bad(f"{info.st_size} bytes")
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(_MAX_JOURNAL_BYTES))
    except (OSError, ValueError, RecursionError) as e:
        raise bad(f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"no 'format': {FORMAT!r}")
    name, files = doc.get("staging"), doc.get("files")
    if not isinstance(name, str) or not OUR_TEMPORARY.fullmatch(name) or "/" in name:
        raise bad(f"key 'staging' is {str(name)[:80]!r}, expected the name of a staging folder beside it")
    if not isinstance(files, list) or not all(_is_relative_file(f) for f in files):
        raise bad("key 'files' is not a list of relative paths inside the folder")
    return journal.parent / name, files


def _is_relative_file(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return not PurePosixPath(rel).is_absolute() and all(p not in ("", ".", "..") for p in parts) \
        and parts[0] != PREVIOUS and PurePosixPath(rel).as_posix() == rel


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _fsync_folders(folders: set[Path]) -> None:
    """Make the renames in these folders durable (best effort: some filesystems cannot fsync a folder)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
