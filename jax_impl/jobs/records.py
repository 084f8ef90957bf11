"""Rerunning what a command recorded (`monosem run|train-sae|sweep --config FILE`): the JSON file each command
writes, read back and checked as the configuration that reruns it.

  run        RUN_DIR/manifest.json   its `config` (RunConfig.to_dict)
  train-sae  OUT/sae_config.json     jax_impl.jobs.train_sae.config_record: the architecture and its config, the
                                     training, dict_size, seed, chunk_rows, devices; its data by name and fingerprint
  sweep      OUT/sweep.json          its `settings` (run_sweep's arguments, jax_impl.jobs.sweep.settings_record), its
                                     `grid`, and its `data` (names and fingerprints)

The readers: RunConfig.from_record and TrainSAEConfig.from_record (the configs; jax_impl.jobs.record_kinds tells
the kinds apart), train_sae_from_record (with its data) and sweep_from_record here. A file of another kind (a
sae_config.json given to `run`), an unknown key or a value of the wrong type or range is refused with one line
naming the file and the key (UserError).

The data: a run makes its own from its seed. train-sae records its files by name and fingerprint only (its folder
holds no path, so it is the same bytes wherever it is written: tests/jobs/test_reproducible.py), so its
`--activations` (and `--target`) are always given again. A sweep records the paths it was given. Data taken from
the record's path must still have the recorded fingerprint, else UserError (the file changed: rerunning would not
reproduce the sweep); data given again explicitly is used as given, with one line saying that it differs from the
recorded data where it does (check_data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jax_impl import saes
from jax_impl.checks import section_from_dict
from jax_impl.errors import UserError
from jax_impl.files import jsonfile
from jax_impl.jobs.record_kinds import read_record
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, load_run
from jax_impl.jobs.sweep import settings_record, splits_record
from jax_impl.jobs.train_sae import TrainSAEConfig, data_record, open_training_data
from jax_impl.training.loop import Log
from jax_impl.training.sae_trainer import SAETrainConfig

_DATA_KEYS = ("file", "rows", "width", "fingerprint")
_SETTINGS_KEYS = tuple(settings_record(stage="sae"))  # sweep.json's `settings`, as the sweep writes them


# --------------------------------------------------------------------------- train-sae


@dataclass(frozen=True)
class TrainSAERecord:
    """What a sae_config.json records: the TrainSAEConfig that reruns it, and its data (config_record's data keys:
    `activations`, for a transcoder also `target`, each {file, rows, width, fingerprint}); path: the file."""

    config: TrainSAEConfig
    data: dict[str, Any]
    path: Path

    @property
    def transcoder(self) -> bool:
        return "target" in self.data


def train_sae_from_record(path: Path | str) -> TrainSAERecord:
    """The TrainSAEConfig and data a train-sae folder's sae_config.json records (`monosem train-sae --config`),
    validated: UserError naming the file and the key for an unknown key or a value that cannot work."""
    path = Path(path)
    doc = read_record(path, "train-sae")
    config = TrainSAEConfig.from_record(doc)
    data = {"activations": _data_entry(doc["activations"])}
    if doc.get("transcoder", False).boolean():
        data["target"] = _data_entry(doc["target"])
    return TrainSAERecord(config, data, path)


def _data_entry(node: jsonfile.Node) -> dict[str, Any]:
    """One data record ({file, rows, width, fingerprint}: train_sae.activations_record), checked."""
    node.fields(_DATA_KEYS)
    return {"file": node["file"].string(), "rows": node["rows"].integer(1), "width": node["width"].integer(1),
            "fingerprint": node["fingerprint"].string()}


# --------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class SweepRecord:
    """What a sweep.json records: run_sweep's arguments (the fields of the same names), the grid, and the data's
    names and fingerprints (`data`: data_record's form; an MLP sweep's {"splits": ...}); path: the file."""

    stage: str
    grid: dict[str, list[Any]]
    activations: str | None
    run_dir: str | None
    target: str | None
    skip: bool
    variants: list[str] | None
    dict_size: int | None
    train: SAETrainConfig | None
    seed: int | None
    chunk_rows: int
    atlas_scores: bool
    data: dict[str, Any]
    path: Path


def sweep_from_record(path: Path | str) -> SweepRecord:
    """The arguments, grid and data a sweep.json records (`monosem sweep --config`), checked: UserError naming the
    file and the key for an unknown key or a value of the wrong type or range (the grid's values are checked as
    run_sweep checks a grid, which names --grid KEY)."""
    path = Path(path)
    doc = read_record(path, "sweep")
    if "settings" not in doc.value:
        raise UserError(f"{path}: key 'settings' is missing: written by an earlier version that did not record the "
                        "sweep's arguments; rerun it with its flags")
    s = doc["settings"]
    s.fields(_SETTINGS_KEYS)  # an unknown key is refused
    stage = s["stage"].string(("sae", "mlp"))

    def text(name: str) -> str | None:
        return s.get(name, None).string(null=True)

    train = None
    if not s.get("train", None).is_null:
        try:
            train = section_from_dict(SAETrainConfig, s["train"].object(), "settings.train")
        except ValueError as e:
            raise UserError(f"{path}: key {e}") from None
    variants = None
    if not s.get("variants", None).is_null:
        variants = [v.string(saes.NAMES) for v in s["variants"].elements(min_items=1)]
    grid = {k: [v.value for v in values.elements(min_items=1)] for k, values in doc["grid"].items()}
    for key, values in grid.items():
        for i, v in enumerate(values):
            if not isinstance(v, (str, int, float, list)) or isinstance(v, bool):
                doc["grid"][key].child(i, v).fail("a value as --grid takes it (a number or a string)")
    record = SweepRecord(
        stage=stage, grid=grid, activations=text("activations"), run_dir=text("run_dir"), target=text("target"),
        skip=bool(s.get("skip", False).boolean()), variants=variants,
        dict_size=s.get("dict_size", None).integer(1, null=True), train=train,
        seed=s.get("seed", None).integer(0, null=True),
        chunk_rows=s.get("chunk_rows", TrainSAEConfig.chunk_rows).integer(1),
        atlas_scores=bool(s.get("atlas_scores", True).boolean()), data=doc.get("data", {}).object(), path=path,
    )
    given = {"dict_size": record.dict_size, "seed": record.seed, "chunk_rows": record.chunk_rows}
    given = {k: v for k, v in given.items() if v is not None} | ({} if train is None else dataclasses.asdict(train))
    try:
        dataclasses.replace(TrainSAEConfig(), **given).validate_settings(
            lambda name: f"key settings.{'train.' if name in dataclasses.asdict(SAETrainConfig()) else ''}{name}:")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if stage == "sae" and (record.activations is None) == (record.run_dir is None):
        s["activations"].fail("a path where settings.run_dir is null, else null (a sweep reads one of them)")
    return record


# --------------------------------------------------------------------------- the data


def recorded_paths(record: SweepRecord, *, source: bool, target: bool) -> None:
    """UserError naming the file and the key where a path a rerun takes from the record (source: settings.activations
    or settings.run_dir; target: settings.target) is not there: paths are recorded as the sweep was given them
    (a relative one from its working directory)."""
    keys = [("activations", record.activations), ("run_dir", record.run_dir)] if source else []
    for key, value in [*keys, *([("target", record.target)] if target else [])]:
        if value is not None and not Path(value).exists():
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{record.path}: key settings.{key}: {value} is not there (a path as the sweep was given "
                            f"it, relative to the folder it ran in); give {flag} again")


def current_data(*, activations: Path | str | None = None, target: Path | str | None = None, skip: bool = False,
                 run_dir: Path | str | None = None, stage: str = "sae") -> dict[str, Any]:
    """The data record (names and fingerprints, data_record's form) of the data a rerun reads: the activations
    (and target) files, a run directory's harvested activations, or (stage mlp) a run directory's splits.
    UserError naming a file that cannot be read."""
    if stage == "mlp":
        return {"splits": splits_record(load_run(run_dir, log=lambda line: None))}
    path = Path(run_dir) / ACTIVATIONS_PATH if activations is None else activations
    # fingerprints read a few rows: the full scan for NaN is the training's
    return data_record(open_training_data(path, target, check_finite=False), skip=skip)


def _fingerprints(data: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{key: (file name, fingerprint)} of every data entry in a data record."""
    out = {}
    for part in ("activations", "target"):
        entry = data.get(part)
        if isinstance(entry, Mapping) and "fingerprint" in entry:
            out[part] = (str(entry.get("file")), str(entry["fingerprint"]))
    for name, entry in (data.get("splits") or {}).items():
        if isinstance(entry, Mapping) and "fingerprint" in entry:
            out[f"splits.{name}"] = (str(entry.get("file")), str(entry["fingerprint"]))
    return out


def check_data(recorded: Mapping[str, Any], current: Mapping[str, Any], *, where: Path | str, prefix: str,
               explicit: Callable[[str], bool], flag_of: Callable[[str], str], log: Log = print) -> None:
    """Compare the data a rerun reads (current) with what the record holds (recorded; both data records). A part
    (activations, target, a split) whose fingerprint differs: UserError naming the file and key where it comes from
    the record (the file changed since); where it was given explicitly (explicit(part)), one line through `log`,
    and the rerun goes on with it. prefix: where the data record sits in the file ("" or "data.")."""
    now = _fingerprints(current)
    for part, (name, fingerprint) in _fingerprints(recorded).items():
        if part not in now or now[part][1] == fingerprint:
            continue
        line = (f"{where}: key {prefix}{part}.fingerprint: the data read now ({now[part][0]}) is not the data "
                f"recorded ({name}): fingerprint {fingerprint[:12]} -> {now[part][1][:12]}")
        if not explicit(part):
            raise UserError(f"{line}; the file changed since, so the rerun would not reproduce the record (give "
                            f"{flag_of(part)} explicitly to train on it anyway)")
        log(f"note: {line}; training on it as given (the results will differ from the record's)")
