"""One writer per output folder: an flock on `FOLDER/.monosem.lock`, and the tidying of what killed writers left.

`monosem run` holds it on its run directory, `train-sae` and `sweep` on their `--out` folder, `causal` and
`export` on the folder they write, so a second process pointed at the same folder is refused at once (one
line naming the folder and the holder's pid) instead of interleaving its files with the first one's. The
kernel releases an flock when its holder dies, even by SIGKILL, so a stale lock never needs cleaning by hand.

Nothing that is not ours is touched: the lock file is opened with O_NOFOLLOW and used only when it is a
regular file with one link (a symlink, FIFO, folder or hard link at that name is refused with
one line, and nothing is written to it). With the lock held, `remove_stale_temporaries` first completes a
commit a killed writer left (jax_impl.files.artifact_set), then removes only the temporaries this project names
(jax_impl.files.atomic.OUR_TEMPORARY: `.NAME.monosem-<random>.tmp`), only in the folders the command's writers
write into (listed by each command), never recursively, never through a symlink.

Temporaries of the naming older versions used, `.NAME.<8 random>.tmp`, are removed too where NAME is one of
the artifact names those versions wrote (LEGACY_ARTIFACTS) and they lie in one of those folders; any other
`.x.tmp` is the user's and stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from jax_impl.errors import UserError
from jax_impl.files.artifact_set import finish_commit
from jax_impl.files.atomic import OUR_TEMPORARY

LOCK_FILE = ".monosem.lock"

# Every artifact name written through jax_impl.files.atomic while temporaries were named `.NAME.<random>.tmp` (mkstemp,
# 8 characters); frozen: new names only ever get the `.monosem-` form.
LEGACY_ARTIFACTS = frozenset({
    "manifest.json", "mlp_train.xlsx", "mlp_val.xlsx", "mlp_test.xlsx", "perfect_mlp.pth", "perfect_mlp.safetensors",
    "mlp_activations.pt", "mlp_activations.safetensors", "sae_model.pth", "sae_model.safetensors", "cfg.json",
    "sae_weights.safetensors", "feature_atlas.json", "feature_atlas.html", "causal.json", "causal.html", "probe.txt",
    "circuit_trace_detailed.xlsx", "logic_circuit_map.html", "circuit_bell_curves.html", "uhd_bold_sankey.html",
    "mlp.torchscript.pt", "mlp.pt2", "sae.torchscript.pt", "sae.pt2", "sae.pth", "sae.safetensors", "sae_config.json",
    "metrics.json", "mlp_config.json", "sweep.json", "sweep.csv", "sweep.html", "done.json",
})
_LEGACY_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
_LEGACY_CHECKPOINT = re.compile(r"ckpt-\d{6,}\.ckpt")


@contextlib.contextmanager
def folder_lock(folder: Path, *, flag: str, what: str) -> Iterator[None]:
    """Hold the folder's lock for the block (creating the folder); a second holder raises UserError.

    flag: the option that chose the folder (`--run-dir`, `--out`), what: how the message names it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    not_ours = (f"{path}: {{}}, expected the regular file monosem keeps its lock in; it is left as it is: "
                f"remove or rename it, or choose another {flag}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(not_ours.format("is a symbolic link")) from None
        if e.errno == errno.EISDIR:
            raise UserError(not_ours.format("is a folder")) from None
        if e.errno == errno.ENXIO:  # a socket
            raise UserError(not_ours.format("is a socket")) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) \
                or stat.S_ISBLK(info.st_mode) else "not a regular file"
            raise UserError(not_ours.format(f"is {kind}"))
        if info.st_nlink != 1:  # writing our pid would change the file under its other name too
            raise UserError(not_ours.format(f"has {info.st_nlink - 1} other name(s) (a hard link)"))
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


def our_folders(folder: Path, subfolders: Sequence[str] = ()) -> list[Path]:
    """`folder` and those of `subfolders` (relative paths; a component may be a glob such as `group-*`) that
    exist as real folders: no component is followed through a symlink."""
    found = [folder]
    for pattern in subfolders:
        level = [folder]
        for part in Path(pattern).parts:
            nxt = []
            for parent in level:
                if any(c in part for c in "*?["):
                    with contextlib.suppress(OSError), os.scandir(parent) as entries:
                        nxt += sorted(parent / e.name for e in entries
                                      if fnmatch.fnmatchcase(e.name, part) and e.is_dir(follow_symlinks=False))
                elif _is_real_folder(parent / part):
                    nxt.append(parent / part)
            level = nxt
        found += [p for p in level if p not in found]
    return found


def is_our_temporary(name: str) -> bool:
    """Whether a file or folder name is one of this project's temporaries (today's naming or the old one's)."""
    if OUR_TEMPORARY.fullmatch(name):
        return True
    legacy = _LEGACY_TEMPORARY.fullmatch(name)
    return legacy is not None and (legacy["name"] in LEGACY_ARTIFACTS or bool(_LEGACY_CHECKPOINT.fullmatch(legacy["name"])))


def remove_stale_temporaries(folder: Path, subfolders: Sequence[str] = ()) -> list[Path]:
    """Complete the commits and delete the temporaries (files or folders) killed writers left in `folder` and its
    `subfolders` (our_folders): only our names (is_our_temporary), one level deep in each, never following a
    symlink. Call only while holding the folder's lock, so no live writer owns them. Returns what was removed."""
    removed = []
    for place in our_folders(folder, subfolders):
        finish_commit(place)  # before the sweep: its staging folder is one of our temporaries
        stale: list[Path] = []
        with contextlib.suppress(OSError), os.scandir(place) as entries:
            stale = sorted(place / e.name for e in entries if is_our_temporary(e.name))
        for path in stale:
            if _is_real_folder(path):
                shutil.rmtree(path, ignore_errors=True)  # rmtree removes links inside, never what they point to
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
