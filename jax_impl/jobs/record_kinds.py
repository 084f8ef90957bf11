"""Which command wrote a JSON record: a run's manifest.json, train-sae's sae_config.json or a sweep's sweep.json
(`read_record`: `--config FILE` of each command checks it has the file it reruns; jax_impl.jobs.records)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jax_impl.errors import UserError
from jax_impl.files import jsonfile

SWEEP_FORMAT = "monosem-sweep/1"  # sweep.json's `format` (jax_impl.jobs.sweep writes it)

# The kinds of record: the command that reruns it, what its file is, and how a document is told to be one.
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "run": ("a run's manifest.json", lambda d: "config" in d and "stages" in d),
    "train-sae": ("train-sae's sae_config.json", lambda d: "architecture" in d and "training" in d),
    "sweep": ("a sweep's sweep.json", lambda d: d.get("format") == SWEEP_FORMAT),
}


def read_record(path: Path | str, kind: str) -> jsonfile.Node:
    """The JSON document in `path`, checked to be a record of `kind` (a key of _KINDS: the command that reruns
    it); UserError naming the file when it cannot be read or is a record of another kind or of none."""
    what = _KINDS[kind][0]
    doc = jsonfile.read(path, unreadable=f"not {what} (--config)")
    if isinstance(doc.value, dict) and _KINDS[kind][1](doc.value):
        return doc
    other = next((k for k, (_, test) in _KINDS.items() if isinstance(doc.value, dict) and test(doc.value)), None)
    if other is not None:
        raise UserError(f"{path}: is {_KINDS[other][0]}, not {what}: give it to `monosem {other} --config`")
    keys = ", ".join(sorted(map(str, doc.value))[:6]) if isinstance(doc.value, dict) else jsonfile.describe(doc.value)
    raise UserError(f"{path}: not {what} (it holds {keys}); `monosem {kind} --config` takes the {what.split()[-1]} "
                    "that the command wrote")
