"""Training checkpoints: the whole state of a training loop, saved atomically, checksummed, the last two kept.

One checkpoint is one file `ckpt-<epochs done, 6 digits>.ckpt`:

    b"MONOCKPT"  |  sha256 of everything after it (32 bytes)  |  a safetensors blob

The safetensors blob holds every array leaf of the saved pytree under its key path (`carry[0]['bn1']...`)
and, in its metadata, one JSON document (the epoch, the trainer's identity, log lines). No pickle anywhere:
safetensors stores raw little-endian arrays and a JSON header. The checksum covers every byte after it, so
a truncated, partly written or bit-flipped file is always told apart from a good one. Files are written
through `atomic.atomic_path` (temporary name, fsync, rename), so a SIGKILL during a write leaves the
earlier checkpoints as they were and at most a `.ckpt-....tmp` that the next run sweeps.

`save_tree` / `load_tree` work on any pytree of arrays, restored into the structure, dtypes and device
placement of a template (typed PRNG keys included). `TrainingCheckpoints` is the hook a training loop
(jax_impl.training.loop.run_epochs) calls: it restores the newest valid checkpoint on `--resume` (falling back to
the previous one, with one line saying so, when the newest is damaged) and decides when to save.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _safetensors_load
from safetensors.numpy import save as _safetensors_save

from jax_impl.errors import UserError
from jax_impl.files import jsonfile
from jax_impl.files.atomic import atomic_path

MAGIC = b"MONOCKPT"
FORMAT = "monosem-checkpoint/1"
SUFFIX = ".ckpt"
KEEP = 2  # the newest and the one before it: if the newest turns out damaged, the previous one is used
_NAME = re.compile(r"^ckpt-(\d{6,})\.ckpt$")
_META_KEY = "monosem"

Log = Callable[[str], None]


class CheckpointError(UserError):
    """A checkpoint file that cannot be used (damaged, another format, another training)."""


class _OtherTraining(CheckpointError):
    """A valid checkpoint of a training with other settings."""


# --------------------------------------------------------------------------- one file


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _host(leaf: Any) -> np.ndarray:
    """A leaf as a C-contiguous numpy array (a typed PRNG key as its raw uint32 key data)."""
    if _is_key(leaf):
        leaf = jax.random.key_data(leaf)
    return np.array(leaf, order="C", copy=True)  # not ascontiguousarray: that makes a 0-d array 1-d


def tree_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every leaf of `tree` (fetched from the device) under prefix + its key path, e.g. `carry[0]['bn1']`."""
    return {prefix + name: _host(leaf) for name, leaf in _flatten(tree)}


def write_file(path: Path | str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write named arrays and JSON-able `meta` as one checkpoint file, atomically."""
    blob = _safetensors_save(arrays, metadata={_META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(MAGIC + hashlib.sha256(blob).digest() + blob)


def save_tree(path: Path | str, tree: Any, meta: dict[str, Any]) -> None:
    """Write `tree` (any pytree of arrays) and JSON-able `meta` to `path`; `load_tree` reads it back."""
    write_file(path, tree_arrays(tree), meta)


def load_tree(path: Path | str, template: Any) -> tuple[Any, dict[str, Any]]:
    """The pytree saved by `save_tree`, in `template`'s structure and placement, and its metadata."""
    arrays, meta = read_file(path)
    return restore_like(template, arrays, path), meta


def read_file(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of a checkpoint file, after checking its magic and checksum.

    CheckpointError naming the file and what was expected when it is damaged or not a checkpoint."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    head = len(MAGIC) + 32
    if len(data) < head or not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a monosem checkpoint (expected a file starting with {MAGIC.decode()}, "
                              f"got {len(data)} bytes{' of something else' if len(data) >= len(MAGIC) else ''})")
    if hashlib.sha256(data[head:]).digest() != data[len(MAGIC):head]:
        raise CheckpointError(f"{path}: damaged checkpoint (its sha256 checksum does not match its {len(data)} bytes: "
                              "truncated or changed after it was written)")
    try:
        arrays = _safetensors_load(data[head:])
        meta = jsonfile.parse(_safetensors_header_metadata(data[head:]).get(_META_KEY, "null"), "metadata").value
    except (SafetensorError, ValueError, TypeError) as e:  # a checksum-valid file of another writer
        raise CheckpointError(f"{path}: not a readable monosem checkpoint ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a monosem checkpoint (expected metadata format {FORMAT!r})")
    return arrays, meta


def _safetensors_header_metadata(blob: bytes) -> dict[str, str]:
    """safetensors' `__metadata__` (its numpy loader returns the tensors only)."""
    n = int.from_bytes(blob[:8], "little")
    header = jsonfile.parse(blob[8 : 8 + n], "safetensors header").value
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not a mapping")
    return metadata


def restore_like(template: Any, arrays: dict[str, np.ndarray], source: Path | str, prefix: str = "") -> Any:
    """`template`'s pytree with every leaf replaced by arrays[prefix + its key path], checked to have the
    template leaf's shape and dtype and placed like it (same sharding; typed PRNG keys rewrapped).

    CheckpointError naming `source` and the first leaf that differs."""
    named = _flatten(template)
    expected = {prefix + name for name, _ in named}
    present = {name for name in arrays if name.startswith(prefix)}
    if present != expected:
        missing, extra = sorted(expected - present)[:3], sorted(present - expected)[:3]
        raise CheckpointError(f"{source}: holds other state than this training's ({len(present)} arrays, expected "
                              f"{len(expected)}; missing {missing}, unexpected {extra})")
    leaves = []
    for name, like in named:
        value = arrays[prefix + name]
        want = _host_spec(like)
        if value.shape != want[0] or value.dtype != want[1]:
            raise CheckpointError(f"{source}: array {prefix + name} has shape {value.shape} and dtype {value.dtype}, "
                                  f"expected {want[0]} {want[1]}")
        leaf = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like)) if _is_key(like) else value
        leaves.append(jax.device_put(leaf, like.sharding) if isinstance(like, jax.Array) else leaf)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def _host_spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    if _is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))


# --------------------------------------------------------------------------- a training loop's checkpoints


@dataclass
class Progress:
    """Where a training loop stands: its carry after `epoch` completed epochs, and what it recorded so far.

    step_losses (epoch, steps) float32, epoch_seconds (epoch,) float64, log_lines: the lines printed."""

    carry: Any
    epoch: int
    step_losses: np.ndarray
    log_lines: list[str]
    epoch_seconds: np.ndarray


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / f"ckpt-{epoch:06d}{SUFFIX}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the checkpoint files in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str) for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _data_records(identity: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(key path, record) of every data record in an identity: a dict with a "fingerprint" (of its data's content,
    jax_impl.data.activations.fingerprint) and the "file" it was taken of."""
    if not isinstance(identity, dict):
        return []
    if "fingerprint" in identity:
        return [(path, identity)]
    return [found for key, value in identity.items() for found in _data_records(value, (*path, str(key)))]


def data_mismatch(written: Any, expected: Any, *, what: str = "training", resume: str = "--resume it") -> str | None:
    """Why state `written` (an identity as read back from a file) was not made from the data `expected` (this
    run's identity) names, as the tail of a one-line message, or None when every data record of `expected` is
    in `written` with the same fingerprint. what: the writer ("training", "sweep"); resume: how the user goes on
    with the right data ("--resume it")."""
    for path, record in _data_records(expected):
        old: Any = written
        for key in path:
            old = old.get(key) if isinstance(old, dict) else None
        name = record.get("file", "the data")
        if (not isinstance(old, dict) or "fingerprint" not in old) and _data_records(written):
            # a state of this version that read other data (e.g. an SAE's, resumed as a transcoder with a target)
            return (f"written by a {what} that did not read {name}; pass the data of the original {what} to "
                    f"{resume}, or start over without --resume")
        if not isinstance(old, dict) or "fingerprint" not in old:
            return (f"written by an earlier version that recorded no fingerprint of its data, so it cannot be checked "
                    f"that {name} is what the {what} ran on; start over without --resume")
        if old["fingerprint"] != record["fingerprint"]:
            other = f" (was {old.get('file')})" if old.get("file") != name else ""
            return (f"written for other activations (the fingerprint of {name}{other} differs: "
                    f"{str(old['fingerprint'])[:12]} -> {record['fingerprint'][:12]}); pass the data of the original "
                    f"{what} to {resume}, or start over without --resume")
    return None


@dataclass(frozen=True)
class CheckpointPolicy:
    """When training saves its state (jax_impl.training.checkpoints): every `epochs` epochs, or at the end of the first
    epoch that finishes `seconds` or more after the previous checkpoint; both None: never (an interrupt by
    SIGINT/SIGTERM still saves one). Not part of RunConfig: it changes no result, so a resumed run may use
    another one."""

    epochs: int | None = None
    seconds: float | None = 60.0

    @classmethod
    def parse(cls, text: str, flag: str = "--checkpoint-every") -> CheckpointPolicy:
        """`5` (epochs), `60s` / `2.5m` (seconds, minutes) or `off`; UserError naming the flag otherwise."""
        text = text.strip().lower()
        if text == "off":
            return cls(epochs=None, seconds=None)
        try:
            if text.endswith(("s", "m")):
                number = float(text[:-1])
                policy = cls(epochs=None, seconds=number * (60 if text.endswith("m") else 1))
            else:
                policy = cls(epochs=int(text), seconds=None)
        except ValueError:
            policy = None
        if policy is None or not ((policy.epochs or 0) >= 1 or math.isfinite(policy.seconds or 0) and (policy.seconds or 0) > 0):
            raise UserError(
                f"{flag} {text!r}: expected a number of epochs (e.g. 5), seconds or minutes (e.g. 60s, 2m), or off"
            )
        return policy

    def describe(self) -> str:
        if self.epochs is not None:
            return f"every {self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return f"every {self.seconds:g} s" if self.seconds is not None else "off"


class TrainingCheckpoints:
    """The checkpoints of one training loop in `folder`, for `jax_impl.training.loop.run_epochs`.

    identity: JSON-able description of the training (config, seed, data) that a checkpoint must match to be
    resumed; the data it reads from the user's files as records {"file", ..., "fingerprint"} (data_mismatch)
    where it has them; resume: look for one at the start (else the folder's old checkpoints are removed);
    resume_hint: how the user continues after an interrupt (one line, e.g. the command plus --resume).
    """

    def __init__(self, folder: Path | str, identity: dict[str, Any], policy: CheckpointPolicy = CheckpointPolicy(), *,
                 resume: bool = False, resume_hint: str = "run the same command with --resume", log: Log = print,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from a file (tuples -> lists)
        self.policy = policy
        self.resume = resume
        self.resume_hint = resume_hint
        self.log = log
        self.clock = clock
        self._last_save = clock()
        self.last_saved: Path | None = None

    def restore(self, template: Any) -> Progress | None:
        """The newest valid checkpoint, its carry placed like `template` (None: start at epoch 0).

        A damaged newest one (checksum, or content that does not fit the template) is skipped with one line
        naming it; if none is valid, CheckpointError. One written by another training (its identity differs) is
        refused with what differs; one of a training on other data (a data record's fingerprint differs, or it
        has none: an earlier version's) is refused saying so (data_mismatch)."""
        self._last_save = self.clock()
        if not self.resume:
            self.clear()
            return None
        found = list_checkpoints(self.folder)
        if not found:
            self.log(f"No checkpoint in {self.folder}; training from the first epoch.")
            return None
        damaged: list[CheckpointError] = []
        for epoch, path in found:
            try:
                arrays, meta = read_file(path)
                other_data = data_mismatch(meta.get("identity"), self.identity)
                if other_data:
                    raise _OtherTraining(f"{path}: {other_data}")
                diffs = _differences(meta.get("identity"), self.identity)
                if diffs:
                    raise _OtherTraining(f"{path}: written by another training ({'; '.join(diffs[:4])}); pass the "
                                         "flags of the original run to --resume it, or start over without --resume")
                # an int, not 2.0 (equal to the name's 2, but the loop goes on with range(epoch, ...))
                if type(meta.get("epoch")) is not int or meta["epoch"] != epoch:
                    raise CheckpointError(f"{path}: its name says epoch {epoch} but it holds epoch {meta.get('epoch')!r}")
                progress = self._progress(arrays, meta, template, path)
            except _OtherTraining:
                raise  # not damage: resuming another training's state would be wrong, falling back too
            except CheckpointError as e:
                damaged.append(e)
                continue
            for error in damaged:
                self.log(f"monosem: warning: {error}; resuming from the previous checkpoint {path.name} instead")
            self.log(f"Resuming from {path} (epoch {epoch} done)")
            self.last_saved = path
            return progress
        raise CheckpointError(f"{damaged[0]}; no valid checkpoint left in {self.folder} (remove that folder to train "
                              "from the first epoch)")

    def _progress(self, arrays: dict[str, np.ndarray], meta: dict, template: Any, path: Path) -> Progress:
        epoch = meta["epoch"]
        losses, seconds = arrays.get("step_losses"), arrays.get("epoch_seconds")
        lines = meta.get("log_lines")
        if (losses is None or losses.dtype != np.float32 or losses.ndim != 2 or losses.shape[0] != epoch
                or seconds is None or seconds.shape != (epoch,) or not isinstance(lines, list)
                or not all(isinstance(line, str) for line in lines)):
            raise CheckpointError(f"{path}: incomplete checkpoint (expected step_losses ({epoch}, steps) float32, "
                                  f"epoch_seconds ({epoch},) and a list of log lines)")
        carry = restore_like(template, arrays, path, prefix="carry")
        return Progress(carry, epoch, losses, list(lines), seconds.astype(np.float64))

    def due(self, epoch: int, total: int) -> bool:
        """Whether to save after `epoch` completed epochs (never after the last: the artifacts follow)."""
        if epoch >= total:
            return False
        if self.policy.epochs is not None and epoch % self.policy.epochs == 0:
            return True
        return self.policy.seconds is not None and self.clock() - self._last_save >= self.policy.seconds

    def save(self, progress: Progress) -> Path:
        """Write `progress` as the folder's newest checkpoint and keep only the newest KEEP; returns its path."""
        path = checkpoint_path(self.folder, progress.epoch)
        if path == self.last_saved and path.exists():
            return path  # this epoch is saved already (an interrupt right after a periodic save)
        arrays = tree_arrays(progress.carry, prefix="carry") | {
            "step_losses": np.asarray(progress.step_losses, np.float32),
            "epoch_seconds": np.asarray(progress.epoch_seconds, np.float64),
        }
        write_file(path, arrays, {"epoch": progress.epoch, "identity": self.identity, "log_lines": progress.log_lines})
        for _, old in list_checkpoints(self.folder)[KEEP:]:
            old.unlink(missing_ok=True)
        self._last_save, self.last_saved = self.clock(), path
        return path

    def clear(self) -> None:
        """Remove the folder and every checkpoint in it (a finished or restarted training)."""
        shutil.rmtree(self.folder, ignore_errors=True)
