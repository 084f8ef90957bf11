"""Training checkpoints: the whole state of a training loop, saved through orbax-checkpoint's `CheckpointManager`
(atomic, the last two kept, every process of a many-host run taking part), each step checksummed.

One checkpoint is one step folder `ckpt_<epochs done, 6 digits>/` of orbax's layout:

    ckpt_000002/
      state/            orbax's standard pytree item: every array (the carry's leaves, typed PRNG keys as their
                        raw uint32 key data, step_losses, epoch_seconds) in tensorstore's OCDBT files
      meta/metadata     orbax's JSON item: the format, the epoch, the trainer's identity, the log lines, and the
                        name, shape and dtype of every array in `state` (`carry[0]['bn1']...`)
      checksums.json    the sha256 of every file above (CHECKSUMS)
      _CHECKPOINT_METADATA, commit_success.txt   orbax's own bookkeeping

Orbax writes a step into `ckpt_NNNNNN.orbax-checkpoint-tmp` and renames it into place once complete, so a
SIGKILL during a write leaves the earlier steps as they were (and at most that temporary folder, which the next
run's manager sweeps). `checksums.json` is written into the temporary folder just before that rename
(`_checksummed_path`, through orbax's `temporary_path_class` hook), so it is part of the same atomic step: a
truncated, partly written or bit-flipped file is always told apart from a good one, and no array is read
before the step's checksums match. No pickle anywhere: tensorstore's array files and JSON.

`save_tree` / `load_tree` work on any pytree of arrays, restored into the structure, dtypes and device
placement of a template (typed PRNG keys included). `TrainingCheckpoints` is the hook a training loop
(jax_impl.training.loop.run_epochs) calls: it restores the newest valid checkpoint on `--resume` (falling back to
the previous one, with one line saying so, when the newest is damaged) and decides when to save. In a many-host run
(jax.distributed) every process calls it alike: orbax writes each array once (from the process holding its first
replica) into the shared folder, and every process restores the same step.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.errors import UserError
from jax_impl.files import jsonfile

FORMAT = "monosem-checkpoint/2"
STEP_PREFIX = "ckpt"  # orbax names a step folder STEP_PREFIX + "_" + the step, zero-padded to STEP_DIGITS
STEP_DIGITS = 6
KEEP = 2  # the newest and the one before it: if the newest turns out damaged, the previous one is used
CHECKSUMS = "checksums.json"
STATE, META = "state", "meta"  # the step's two orbax items
# Files of a step that checksums.json does not cover: orbax's bookkeeping, rewritten or written as the step is
# committed (after the checksums), and the checksums themselves.
_UNCHECKED = frozenset({CHECKSUMS, "_CHECKPOINT_METADATA", "commit_success.txt"})
_LEGACY_NAME = re.compile(r"^ckpt-\d{6,}\.ckpt$")  # monosem-checkpoint/1's single files (before orbax)
_NAME = re.compile(rf"^{STEP_PREFIX}_(\d{{{STEP_DIGITS},}})$")

Log = Callable[[str], None]


class CheckpointError(UserError):
    """A checkpoint that cannot be used (damaged, another format, another training)."""


class _OtherTraining(CheckpointError):
    """A valid checkpoint of a training with other settings."""


# --------------------------------------------------------------------------- orbax and the step folder


@cache
def _ocp() -> Any:
    """orbax.checkpoint, imported on first use (a quarter of a second a command that never checkpoints skips)."""
    import orbax.checkpoint as ocp

    return ocp


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_files(step: Path) -> list[str]:
    """Every file of a step folder that CHECKSUMS covers, as POSIX paths relative to it, sorted."""
    return sorted(p.relative_to(step).as_posix() for p in step.rglob("*")
                  if p.is_file() and not (p.parent == step and p.name in _UNCHECKED))


def seal_step(tmp: Path | str, final: Path | str) -> None:
    """Write CHECKSUMS (the sha256 of every file) into a step folder whose items orbax has written, `tmp`, just
    before orbax renames it to `final`. Called by orbax through `_checksummed_path`, on the one process that
    commits the step; tests that rewrite a step's files call it (tmp = final) to make the step valid again."""
    tmp = Path(tmp)
    files = {rel: _sha256(tmp / rel) for rel in step_files(tmp)}
    with (tmp / CHECKSUMS).open("w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename that commits the step


@cache
def _checksummed_path() -> type:
    """orbax's atomic-rename temporary folder, which seals a step (seal_step) before the rename that commits it."""
    base = _ocp().path.atomicity.AtomicRenameTemporaryPath

    class ChecksummedTemporaryPath(base):  # type: ignore[misc, valid-type]
        async def finalize(self, *args: Any, **kwargs: Any) -> None:
            final = Path(self.get_final())
            if final.name not in (STATE, META):  # each item's folder is finalised first; the step's last
                seal_step(Path(self.get()), final)
            await super().finalize(*args, **kwargs)

    return ChecksummedTemporaryPath


def _manager(folder: Path) -> Any:
    """orbax's CheckpointManager over `folder`: synchronous saves (a save is complete when it returns: a signal's
    checkpoint is on disk before the process exits), the newest KEEP steps kept, temporary folders of a save
    that was killed swept when it opens."""
    ocp = _ocp()
    return ocp.CheckpointManager(folder.absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=KEEP, step_prefix=STEP_PREFIX, step_format_fixed_length=STEP_DIGITS, create=True,
        cleanup_tmp_directories=True, enable_async_checkpointing=False, temporary_path_class=_checksummed_path(),
    ))


def _checkpointer() -> Any:
    """orbax's Checkpointer for one step folder outside a manager (save_tree, write_step, reading a step)."""
    ocp = _ocp()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(), temporary_path_class=_checksummed_path())


_barriers = itertools.count()


def sync_processes(what: str) -> None:
    """Wait until every process of a many-host run gets here (orbax's barrier; nothing with one process)."""
    if jax.process_count() > 1:
        _ocp().multihost.sync_global_processes(f"monosem-{what}-{next(_barriers)}")


def _same_folder_everywhere(folder: Path) -> None:
    """CheckpointError on every process of a many-host run whose checkpoint folder is not process 0's: orbax's
    saves are collective over one folder (processes given folders of their own would wait on each other forever)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.frombuffer(hashlib.sha256(str(folder.absolute()).encode()).digest(), np.uint8)
    if not np.array_equal(np.asarray(multihost_utils.broadcast_one_to_all(mine)), mine):
        raise CheckpointError(f"{folder}: process {jax.process_index()}'s checkpoint folder is not process 0's; a "
                              "multi-process run checkpoints into one folder that every process reaches under the same "
                              "path: give every process the same output folder (on a shared file system), or turn "
                              "checkpoints off")


# --------------------------------------------------------------------------- arrays


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _flatten(tree: Any) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _storable(leaf: Any) -> Any:
    """A leaf as orbax stores it: a jax.Array as it is (orbax fetches each shard from its device; a typed PRNG key
    as its raw uint32 key data), anything else as a numpy array."""
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    return leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)


def _slot(i: int) -> str:
    # orbax's name of the i-th array: key paths like carry[0]['bn1'] are no file names; the metadata maps them
    return f"a{i:05d}"


def tree_arrays(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of `tree` under prefix + its key path, e.g. `carry[0]['bn1']` (typed PRNG keys as key data)."""
    return {prefix + name: _storable(leaf) for name, leaf in _flatten(tree)}


def _save_args(arrays: dict[str, Any], meta: dict[str, Any]) -> Any:
    """orbax's arguments for one step: the arrays as the STATE item, meta (plus the name, shape and dtype of
    every array) as the META item."""
    ocp = _ocp()
    specs = [{"name": name, "shape": list(np.shape(a)), "dtype": np.dtype(a.dtype).name} for name, a in arrays.items()]
    state = {_slot(i): a for i, a in enumerate(arrays.values())}
    return ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 META: ocp.args.JsonSave({"format": FORMAT, **meta, "arrays": specs})})


def write_step(path: Path | str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write named arrays and JSON-able `meta` as one checkpoint step folder at `path` (replacing one there),
    atomically, through orbax."""
    _checkpointer().save(Path(path).absolute(), args=_save_args(arrays, meta), force=True)


def save_tree(path: Path | str, tree: Any, meta: dict[str, Any]) -> None:
    """Write `tree` (any pytree of arrays) and JSON-able `meta` as a step folder at `path`; `load_tree` reads it."""
    write_step(path, tree_arrays(tree), meta)


def load_tree(path: Path | str, template: Any) -> tuple[Any, dict[str, Any]]:
    """The pytree saved by `save_tree`, in `template`'s structure and placement, and its metadata."""
    meta = read_meta(path)
    return restore_like(template, meta, path, lambda target: _restore_state(_checkpointer(), Path(path), target)), meta


def verify_step(path: Path | str) -> None:
    """Check every file of a step folder against its CHECKSUMS; CheckpointError naming the step and the first
    file that is missing, extra or changed."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a monosem checkpoint (expected a step folder of orbax-checkpoint's layout)")
    try:
        doc = jsonfile.parse((path / CHECKSUMS).read_bytes(), str(path / CHECKSUMS)).value
    except OSError as e:
        raise CheckpointError(f"{path}: damaged checkpoint (its {CHECKSUMS} cannot be read: {e.strerror or e})") from None
    except UserError as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({e})") from None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: not a monosem checkpoint (expected {CHECKSUMS} of format {FORMAT!r})")
    present = step_files(path)
    if set(present) != set(files):
        missing, extra = sorted(set(files) - set(present))[:3], sorted(set(present) - set(files))[:3]
        raise CheckpointError(f"{path}: damaged checkpoint (its files are not those its {CHECKSUMS} lists: missing "
                              f"{missing}, unexpected {extra})")
    for rel in present:
        if _sha256(path / rel) != files[rel]:
            raise CheckpointError(f"{path}: damaged checkpoint ({rel} does not match its sha256 in {CHECKSUMS}: "
                                  "truncated or changed after it was written)")


def read_meta(path: Path | str) -> dict[str, Any]:
    """The metadata of a checkpoint step folder (its META item), after checking its checksums and format.

    CheckpointError naming the step and what was expected when it is damaged or not a checkpoint."""
    path = Path(path)
    verify_step(path)
    where = path / META / "metadata"
    try:
        meta = jsonfile.parse(where.read_bytes(), str(where)).value
    except (OSError, UserError) as e:
        raise CheckpointError(f"{path}: not a readable monosem checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a monosem checkpoint (expected metadata format {FORMAT!r})")
    specs = meta.get("arrays")
    if not isinstance(specs, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
            and all(type(n) is int and n >= 0 for n in s["shape"]) and _dtype(s.get("dtype")) is not None
            for s in specs):
        raise CheckpointError(f"{path}: not a readable monosem checkpoint (expected its metadata's arrays as a list "
                              "of {name, shape, dtype})")
    return meta


def _dtype(name: Any) -> np.dtype | None:
    try:
        return np.dtype(jnp.dtype(name)) if isinstance(name, str) else None
    except TypeError:
        return None


def read_step(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (as numpy, by name) and metadata of a checkpoint step folder, after checking its checksums."""
    path = Path(path)
    meta = read_meta(path)
    target = {s["name"]: np.zeros(s["shape"], _dtype(s["dtype"])) for s in meta["arrays"]}
    state = _restore_state(_checkpointer(), path, list(target.values()))
    return dict(zip(target, state, strict=True)), meta


def _restore_state(reader: Any, path: Path, target: list[Any], step: int | None = None) -> list[Any]:
    """The STATE item's arrays restored into `target` (in the metadata's order: numpy arrays, or
    jax.ShapeDtypeStructs with the sharding to place each on); reader: a Checkpointer (path) or the manager (step)."""
    ocp = _ocp()
    args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore({_slot(i): t for i, t in enumerate(target)})})
    try:
        restored = reader.restore(path.absolute(), args=args) if step is None else reader.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - whatever tensorstore makes of files the checksums let through
        raise CheckpointError(f"{path}: not a readable monosem checkpoint ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:150]})") from None
    state = restored[STATE]
    return [state[_slot(i)] for i in range(len(target))]


def restore_like(template: Any, meta: dict[str, Any], source: Path | str, restore: Callable[[list[Any]], list[Any]],
                 prefix: str = "") -> Any:
    """`template`'s pytree with every leaf replaced by the stored array named prefix + its key path (restore_named)."""
    named = [(prefix + name, like) for name, like in _flatten(template)]
    return jax.tree.unflatten(jax.tree.structure(template), restore_named(named, meta, source, restore))


def restore_named(named: list[tuple[str, Any]], meta: dict[str, Any], source: Path | str,
                  restore: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """The stored array of each (name, template leaf) of `named`, checked against the metadata (meta["arrays"],
    which must hold exactly these names) to have the template leaf's shape and dtype, and placed like it (same
    sharding; typed PRNG keys rewrapped). restore(targets) -> the stored arrays in the metadata's order.

    CheckpointError naming `source` and the first leaf that differs."""
    specs = {s["name"]: s for s in meta["arrays"]}
    expected, present = {name for name, _ in named}, set(specs)
    if present != expected or len(specs) != len(meta["arrays"]):
        missing, extra = sorted(expected - present)[:3], sorted(present - expected)[:3]
        raise CheckpointError(f"{source}: holds other state than this training's ({len(meta['arrays'])} arrays, "
                              f"expected {len(expected)}; missing {missing}, unexpected {extra})")
    wanted: dict[str, Any] = {}
    for name, like in named:
        spec = specs[name]
        shape, dtype = _host_spec(like)
        if tuple(spec["shape"]) != shape or _dtype(spec["dtype"]) != dtype:
            raise CheckpointError(f"{source}: array {name} has shape {tuple(spec['shape'])} and dtype "
                                  f"{spec['dtype']}, expected {shape} {dtype}")
        if isinstance(like, jax.Array):  # restored straight onto the template's devices
            sharding = jax.random.key_data(like).sharding if _is_key(like) else like.sharding
            wanted[name] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        else:
            wanted[name] = np.zeros(shape, dtype)
    order = [s["name"] for s in meta["arrays"]]
    values = dict(zip(order, restore([wanted[name] for name in order]), strict=True))
    return [jax.random.wrap_key_data(values[name], impl=jax.random.key_impl(like)) if _is_key(like) else values[name]
            for name, like in named]


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
    """The step folder of the checkpoint after `epoch` epochs (orbax's name for that step)."""
    return folder / f"{STEP_PREFIX}_{epoch:0{STEP_DIGITS}d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the committed checkpoint step folders in `folder`, newest first (not orbax's temporary
    folders of a save in progress or killed)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
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

    In a many-host run (jax.distributed) every process makes one alike and every call is collective: orbax's
    saves and restores take part of every process, a time-based policy follows process 0's clock, process 0
    alone removes the folder and prints. A signal there stops the process without a checkpoint of its own
    (saving is a collective its peers are not in); the run resumes from the last periodic one.
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
        self._orbax: Any = None  # the CheckpointManager, opened on first use (after a fresh start's clear)

    @property
    def save_on_signal(self) -> bool:
        """Whether a SIGINT/SIGTERM saves a checkpoint before stopping (one process: yes; see the class)."""
        return jax.process_count() == 1

    def _manager(self) -> Any:
        if self._orbax is None:
            _same_folder_everywhere(self.folder)
            self._orbax = _manager(self.folder)
        return self._orbax

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
        if not found and self.folder.is_dir() and any(_LEGACY_NAME.match(p.name) for p in self.folder.iterdir()):
            raise CheckpointError(f"{self.folder}: holds checkpoints of an earlier version's format (ckpt-NNNNNN.ckpt "
                                  "files; this version resumes orbax step folders ckpt_NNNNNN); finish that training "
                                  "with the version that wrote them, or start over without --resume")
        if not found:
            self.log(f"No checkpoint in {self.folder}; training from the first epoch.")
            return None
        damaged: list[CheckpointError] = []
        for epoch, path in found:
            try:
                meta = read_meta(path)
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
                progress = self._progress(epoch, meta, template, path)
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

    def _progress(self, epoch: int, meta: dict, template: Any, path: Path) -> Progress:
        specs = {s["name"]: s for s in meta["arrays"]}
        losses, seconds = specs.get("step_losses"), specs.get("epoch_seconds")
        lines = meta.get("log_lines")
        if (losses is None or losses["dtype"] != "float32" or len(losses["shape"]) != 2 or losses["shape"][0] != epoch
                or seconds is None or seconds["dtype"] != "float64" or seconds["shape"] != [epoch]
                or not isinstance(lines, list) or not all(isinstance(line, str) for line in lines)):
            raise CheckpointError(f"{path}: incomplete checkpoint (expected step_losses ({epoch}, steps) float32, "
                                  f"epoch_seconds ({epoch},) float64 and a list of log lines)")
        named = [("carry" + name, like) for name, like in _flatten(template)] + [
            ("step_losses", np.zeros(losses["shape"], np.float32)), ("epoch_seconds", np.zeros(epoch, np.float64))]
        *leaves, step_losses, epoch_seconds = restore_named(
            named, meta, path, lambda targets: _restore_state(self._manager(), path, targets, epoch))
        carry = jax.tree.unflatten(jax.tree.structure(template), leaves)
        return Progress(carry, epoch, step_losses, list(lines), epoch_seconds)

    def due(self, epoch: int, total: int) -> bool:
        """Whether to save after `epoch` completed epochs (never after the last: the artifacts follow)."""
        if epoch >= total:
            return False
        if self.policy.epochs is not None and epoch % self.policy.epochs == 0:
            return True
        if self.policy.seconds is None:
            return False
        due = self.clock() - self._last_save >= self.policy.seconds
        if jax.process_count() > 1:  # every process must take part in the save: process 0's clock decides
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        return due

    def save(self, progress: Progress) -> Path:
        """Write `progress` as the folder's newest checkpoint (orbax keeps only the newest KEEP); returns its path."""
        path = checkpoint_path(self.folder, progress.epoch)
        if path == self.last_saved and path.exists():
            return path  # this epoch is saved already (an interrupt right after a periodic save)
        manager = self._manager()
        for step in manager.all_steps():
            if step >= progress.epoch:  # a damaged one that restore fell back past: replaced, as a file was
                manager.delete(step)
        arrays = tree_arrays(progress.carry, prefix="carry") | {
            "step_losses": np.asarray(progress.step_losses, np.float32),
            "epoch_seconds": np.asarray(progress.epoch_seconds, np.float64),
        }
        meta = {"epoch": progress.epoch, "identity": self.identity, "log_lines": progress.log_lines}
        if not manager.save(progress.epoch, args=_save_args(arrays, meta), force=True):
            raise RuntimeError(f"orbax did not save step {progress.epoch} in {self.folder}")
        manager.wait_until_finished()
        self._last_save, self.last_saved = self.clock(), path
        return path

    def clear(self) -> None:
        """Remove the folder and every checkpoint in it (a finished or restarted training); in a many-host run
        process 0 removes it while the others wait."""
        if self._orbax is not None:
            self._orbax.close()
            self._orbax = None
        if jax.process_index() == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        sync_processes("clear")
