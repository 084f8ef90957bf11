"""Training curves: loss, its terms, MSE, L0, explained variance, dead share and learning rate over the steps of a
training, written to `metrics.jsonl` (always) and to TensorBoard event files or an offline wandb run (`--log`).

Nothing here slows the jitted epoch: the step's scalars (sae_trainer.curve_scalars; the MLP's loss) are extra
outputs of the epoch's `lax.scan`, fetched with the losses at the epoch's one host sync, and reduced here on the
host: one point per `curve_every` steps of an epoch (the mean of those steps) and one for the epoch's remaining
steps, so an epoch's last point closes it. An epoch is the unit of resuming: `Curves.start(first)` keeps the points of
the `first` epochs already done and drops any later ones (a training killed after writing an epoch's points but
before its checkpoint), so a resumed training appends without repeating a step.

One point, one JSON object a line:

    {"step": 200, "epoch": 2, "steps": 100, "loss": ..., "mse": ..., "aux": ..., "l0": ..., "explained_variance": ...,
     "dead_fraction": ..., "lr": 0.001, "seconds": 1.52}

step: optimizer steps done (1-based; the point's last step); epoch: 1-based; steps: how many steps it averages;
the loss and the architecture's terms (jax_impl.saes: "mse" the reconstruction's, "aux", "l1", ...), l0 (active
latents per row), explained_variance (of the batch) and dead_fraction (latents silent for an epoch of steps)
are means over those steps' batches (an MLP's: its loss, the MSE, alone); lr: the learning rate of the point's last
step (schedules.py's OneCycle for the MLP); seconds: training wall time at the point's last step, the epoch's
time spread evenly over its steps. An epoch's last point adds "epoch_loss", the epoch's mean loss as the trainer
computes it (metrics.json's final_loss is the last epoch's). A NaN or infinite value is written as null.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl.errors import UserError
from jax_impl.files.atomic import write_text_atomic

CURVES_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"  # a folder beside metrics.jsonl: one run's event files
WANDB_DIR = "wandb"  # likewise: the offline wandb run (`wandb sync DIR/wandb/offline-run-*` uploads it)
BACKENDS = ("tensorboard", "wandb")  # --log: where curves go beside metrics.jsonl
DEFAULT_EVERY = 100  # steps per point: the seed MLP's 125-step epochs get 2 points each, 62,500 steps 1,000 points


def parse_backends(text: str) -> tuple[str, ...]:
    """--log's value, e.g. "tensorboard,wandb", as CurveConfig.log (checked by its validate)."""
    return tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


@dataclass(frozen=True)
class CurveConfig:
    """How a training writes its curves: a point every `curve_every` optimizer steps (and at each epoch's end) into
    metrics.jsonl (0: no curves, and the epoch computes nothing for them), and into each of `log`'s
    backends too (BACKENDS)."""

    curve_every: int = field(default=DEFAULT_EVERY, metadata={
        "help": "optimizer steps per point of the training curves in metrics.jsonl (each epoch's end is one too; "
        "0: no curves)", "metavar": "STEPS"})
    log: tuple[str, ...] = field(default=(), metadata={
        "help": f"also write the curves to {' and '.join(BACKENDS)} (comma-separated): TensorBoard event files in "
        f"{TENSORBOARD_DIR}/, an offline wandb run in {WANDB_DIR}/ beside metrics.jsonl", "type": parse_backends,
        "metavar": ",".join(BACKENDS), "shown_default": "metrics.jsonl only"})

    def validate(self, flag: Callable[[str], str] = str) -> CurveConfig:
        """UserError naming the field (as flag(name) spells it) whose value cannot work; self."""
        if isinstance(self.curve_every, bool) or not isinstance(self.curve_every, int) or self.curve_every < 0:
            raise UserError(f"{flag('curve_every')} must be an integer >= 0, got {self.curve_every!r}")
        for name in self.log:
            if name not in BACKENDS:
                raise UserError(f"{flag('log')}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
        if self.log and not self.curve_every:
            raise UserError(f"{flag('log')} {','.join(self.log)} needs curves: {flag('curve_every')} must be >= 1")
        return self

    @property
    def on(self) -> bool:
        return self.curve_every > 0


def split_output(out: Any) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """An epoch's fetched output: (its step losses (..., S), its curve scalars by name (..., S) each, or None where
    the step returned only its loss)."""
    if isinstance(out, Mapping):
        scalars = {name: np.asarray(value) for name, value in out.items()}
        return scalars["loss"], scalars
    return np.asarray(out), None


_ORDER = ("loss", "mse")  # a point's first numbers; the loss's other terms, then l0, ... by name


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def epoch_points(e: int, scalars: Mapping[str, np.ndarray], every: int, *, steps_before: int,
                 lr: float | np.ndarray, seconds_before: float, seconds: float) -> list[dict[str, Any]]:
    """Epoch e's (0-based) points: scalars by name (S,) each (the epoch's steps, "loss" among them), one point per
    `every` steps and one for the rest. steps_before: optimizer steps of the epochs before; lr: the learning rate,
    or every step's (a schedule's table, indexed by the global 0-based step); seconds_before, seconds: the wall time
    of the epochs before and of this one."""
    losses = np.asarray(scalars["loss"])
    n = len(losses)
    points = []
    for start in range(0, n, every):
        stop = min(start + every, n)
        last = steps_before + stop - 1  # the point's last step, 0-based
        point: dict[str, Any] = {"step": last + 1, "epoch": e + 1, "steps": stop - start}
        for name in sorted(scalars, key=lambda name: (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)):
            point[name] = _number(float(np.mean(np.asarray(scalars[name][start:stop], np.float64))))
        point["lr"] = float(lr if np.ndim(lr) == 0 else np.asarray(lr)[last])
        point["seconds"] = round(seconds_before + seconds * stop / n, 6)
        points.append(point)
    if points:
        points[-1]["epoch_loss"] = _number(float(losses.mean()))  # as TrainResult.epoch_losses (float32)
    return points


class Curves:
    """One training's curves: metrics.jsonl in `folder` and the backends config.log names (their files beside it);
    folder None: none written (a multi-process run's other processes compute the same program, process 0 writes).

    name: the run's name in the backends (e.g. a sweep's configuration); meta: what the wandb run records as its
    config. The trainer sets `lr`, the learning rate (float) or each step's (its schedule's table, (total steps,)),
    and calls start(epochs done) once it knows where it starts, epoch() after each epoch, close() at the end."""

    def __init__(self, folder: Path | str | None, config: CurveConfig, *, name: str = "train",
                 meta: Mapping[str, Any] | None = None):
        self.folder = None if folder is None else Path(folder)
        self.config = config
        self.lr: float | np.ndarray = float("nan")
        self.name = name
        self.meta = dict(meta or {})
        self.path = None if self.folder is None else self.folder / CURVES_FILE
        self._file: Any = None
        self._backends: list[Any] = []
        self._steps = 0
        self._seconds = 0.0

    def start(self, first: int) -> None:
        """Begin after `first` epochs (0: a fresh training, whose old curves are removed; else a resumed one: the
        points of those epochs are kept, later ones and a torn last line dropped)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = read_curves(self.path, before_epoch=first + 1) if first and self.path.exists() else []
        if kept or self.path.exists():
            write_text_atomic(self.path, "".join(json.dumps(p, allow_nan=False) + "\n" for p in kept))
        if kept:
            self._steps, self._seconds = int(kept[-1]["step"]), float(kept[-1]["seconds"])
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole training
        self._backends = [_open_backend(b, self.folder, self.name, self.meta, resumed=bool(first))
                          for b in self.config.log]

    def epoch(self, e: int, scalars: Mapping[str, np.ndarray], seconds: float) -> None:
        """Write epoch e's (0-based) points: scalars by name (S,) each, "loss" among them; seconds: its wall time."""
        points = epoch_points(e, scalars, self.config.curve_every, steps_before=self._steps, lr=self.lr,
                              seconds_before=self._seconds, seconds=seconds)
        self._steps += len(np.asarray(scalars["loss"]))
        self._seconds += seconds
        if self._file is None:
            return
        self._file.write("".join(json.dumps(p, allow_nan=False) + "\n" for p in points))
        self._file.flush()  # a point is on disk once its epoch is done (an interrupted run keeps its curves)
        for backend in self._backends:
            backend.write(points)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for backend in self._backends:
            backend.close()
        self._backends = []


def remove_curves(folder: Path | str) -> None:
    """Remove the curves a training wrote into folder (metrics.jsonl and the backends' folders), and the folder when
    nothing else is left in it (a sweep's configuration that diverged keeps no folder)."""
    folder = Path(folder)
    (folder / CURVES_FILE).unlink(missing_ok=True)
    for name in (TENSORBOARD_DIR, WANDB_DIR):
        if (folder / name).is_dir() and not (folder / name).is_symlink():
            shutil.rmtree(folder / name)
    with contextlib.suppress(OSError):  # not empty (a user's file) or already gone: left as it is
        folder.rmdir()


def read_curves(path: Path | str, before_epoch: int | None = None) -> list[dict[str, Any]]:
    """The points of a metrics.jsonl, in order (a torn or unreadable line, the last one of a killed training, ends
    them); before_epoch: only those of 1-based epochs below it."""
    points = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                point = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(point, dict) or not isinstance(point.get("epoch"), int):
                break
            if before_epoch is not None and point["epoch"] >= before_epoch:
                break
            points.append(point)
    return points


_NOT_LOGGED = ("step", "epoch", "steps", "seconds")  # a backend's own axes, or the point's bookkeeping


def series(points: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each point's numbers by name (step and epoch left out): name -> [(step, value)], as the backends log them."""
    out: dict[str, list[tuple[int, float]]] = {}
    for point in points:
        for name, value in point.items():
            if name not in _NOT_LOGGED and isinstance(value, (int, float)):
                out.setdefault(name, []).append((int(point["step"]), float(value)))
    return out


# --------------------------------------------------------------------------- backends


def _open_backend(name: str, folder: Path, run: str, meta: Mapping[str, Any], resumed: bool) -> Any:
    if name == "tensorboard":
        return TensorBoardWriter(folder / TENSORBOARD_DIR)
    return _WandbWriter(folder, run, meta, resumed)


class TensorBoardWriter:
    """TensorBoard's event file format written directly (TFRecord frames of `Event` protobufs holding scalar
    `Summary` values), so neither TensorFlow nor tensorboardX is needed: a new `events.out.tfevents.*` file in
    `folder` per training (a resumed one adds a file; TensorBoard reads a folder's files as one run)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        import socket
        import time

        stamp = time.time()
        self.path = folder / f"events.out.tfevents.{int(stamp)}.{socket.gethostname()}.{os.getpid()}.monosem"
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the whole training
        self._file.write(_record(_event(stamp, 0, file_version="brain.Event:2")))
        self._file.flush()

    def write(self, points: Sequence[Mapping[str, Any]]) -> None:
        import time

        stamp = time.time()
        for point in points:
            values = [(tag, float(v)) for tag, v in point.items() if tag not in _NOT_LOGGED and isinstance(v, (int, float))]
            self._file.write(_record(_event(stamp, int(point["step"]), scalars=values)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # protobuf's int64: two's complement
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: Sequence[tuple[str, float]] = ()) -> bytes:
    """An `Event` protobuf (tensorflow/core/util/event.proto): wall_time = 1 (double), step = 2 (int64),
    file_version = 3 (string), summary = 5 (`Summary`: value = 1, each `Summary.Value`: tag = 1, simple_value = 2)."""
    out = _field(1, 1, np.float64(wall_time).tobytes()) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, np.float32(v).tobytes()))
                          for tag, v in scalars)
        out += _bytes_field(5, values)
    return out


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask


def _record(data: bytes) -> bytes:
    """One TFRecord frame: length (uint64 LE), its masked CRC-32C, the data, the data's masked CRC-32C."""
    length = np.uint64(len(data)).tobytes()
    return (length + np.uint32(_masked_crc32c(length)).tobytes() + data
            + np.uint32(_masked_crc32c(data)).tobytes())


class _WandbWriter:
    """An offline wandb run in `folder`/WANDB_DIR (wandb's own name for its folder); offline: nothing leaves the
    machine, `wandb sync` uploads it. wandb is imported only here: without it, one line says how to get it."""

    def __init__(self, folder: Path, name: str, meta: Mapping[str, Any], resumed: bool):
        try:
            import wandb
        except ImportError:
            raise UserError("--log wandb: the wandb package is not installed (pip install wandb)") from None
        self._run = wandb.init(dir=str(folder), name=name, config=dict(meta), mode="offline", reinit="create_new",
                               settings=wandb.Settings(silent=True, console="off"),
                               notes="resumed" if resumed else None)

    def write(self, points: Sequence[Mapping[str, Any]]) -> None:
        for point in points:
            self._run.log({k: v for k, v in point.items() if k not in _NOT_LOGGED and v is not None} | {
                "epoch": point["epoch"]}, step=int(point["step"]))

    def close(self) -> None:
        self._run.finish()
