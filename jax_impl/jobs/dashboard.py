"""`monosem dashboard`: an offline page of every feature of any SAE over a user's activations (docs/dashboard.md).

The SAE is any one jax_impl.interop.saelens.load_sae reads (our `.pth` / `.safetensors`, a SAELens folder); the
activations an (N, d) float32 file as train-sae reads it (jax_impl.data.activations.open_activations), d the
SAE's input width; the labels an optional CSV: a header row naming its columns (the user's text: token, context,
document, ...), then one row per activation row, in order. The statistics are computed in JAX over the rows
streamed chunk by chunk (jax_impl.evaluation.dashboard); the labels are read twice, streamed too: once to check
them before anything is computed, once to keep the cells of the rows the page shows (the top rows), never all.

OUT holds dashboard.html, dashboard_data/ (index.js and one page-NNNNN.js per page of features;
jax_impl.reports.dashboard_page) and dashboard.json (index.js's record, for scripts), written as one artifact set
(jax_impl.files.artifact_set) under OUT's lock: a failure leaves OUT's previous dashboard whole.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jax_impl.data.activations import open_activations
from jax_impl.errors import UserError
from jax_impl.evaluation.dashboard import ArrayRows, DashboardConfig, FeatureStatistics, Rows, feature_statistics
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import write_json_atomic
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.interop import saelens
from jax_impl.precision import highest_precision
from jax_impl.reports import dashboard_page
from jax_impl.saes import SAE

DASHBOARD_DIR = "dashboard"  # a run's dashboard folder (RUN_DIR/dashboard/, written by the atlas stage)
SUMMARY_JSON = "dashboard.json"
DASHBOARD_PAGE = f"{DASHBOARD_DIR}/{dashboard_page.DASHBOARD_HTML}"  # relative to a run directory
_PAGE_FILE = re.compile(r"page-(\d{5})\.js")
MAX_COLUMNS = 64  # label columns; more is not a label table


@dataclass(frozen=True)
class LabelTable:
    """Labels held in memory: column names and one row of cells per activation row."""

    columns: tuple[str, ...]
    cells: Sequence[Sequence[str]]


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record of a UTF-8 CSV, streamed; one-line UserError for a file that is none."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, strict=True)
            for fields in reader:
                yield reader.line_num, fields
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; --labels must be a CSV file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV file of labels") from None
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV file ({str(e).splitlines()[0][:120]})") from None


def check_labels(path: Path | str, n_rows: int, activations: str = "the activations") -> tuple[str, ...]:
    """The column names of a labels CSV (its first row) after checking it has one row per activation row and as many
    fields in each as the header; one-line UserError naming the file and the row otherwise."""
    path = Path(path)
    columns: tuple[str, ...] | None = None
    count = 0
    for line, fields in _csv_rows(path):
        if columns is None:
            if not fields or not 1 <= len(fields) <= MAX_COLUMNS:
                raise UserError(f"{path}: line {line}: the header row names {len(fields)} columns; expected 1 to "
                                f"{MAX_COLUMNS} column names (e.g. token,context)")
            columns = tuple(fields)
            continue
        if len(fields) != len(columns):
            raise UserError(f"{path}: line {line} (label row {count}) has {len(fields)} fields, expected "
                            f"{len(columns)} like the header")
        count += 1
        if count > n_rows:
            break
    if columns is None:
        raise UserError(f"{path}: empty; expected a header row of column names, then one row per activation row")
    if count != n_rows:
        found = f"more than {n_rows}" if count > n_rows else str(count)
        raise UserError(f"{path}: {found} label rows after the header, expected {n_rows} (one per row of "
                        f"{activations})")
    return columns


def read_label_rows(labels: Path | LabelTable, wanted: set[int]) -> dict[int, list[str]]:
    """The cells of the label rows `wanted` (0-based, after the header), by row."""
    if isinstance(labels, LabelTable):
        return {r: [str(c) for c in labels.cells[r]] for r in wanted}
    found: dict[int, list[str]] = {}
    for i, (_, fields) in enumerate(_csv_rows(labels)):
        if i - 1 in wanted:  # record 0 is the header
            found[i - 1] = fields
    return found


def _activations(activations: Path | str | np.ndarray, width: int) -> tuple[Rows, dict[str, Any]]:
    if isinstance(activations, np.ndarray):
        if activations.ndim != 2 or activations.shape[1] != width or not len(activations):
            raise ValueError(f"activations of shape {activations.shape}, expected (N >= 1, {width})")
        return ArrayRows(activations), {"file": "(in memory)", "rows": len(activations), "width": width}
    source = open_activations(activations)
    if source.width != width:
        raise UserError(f"{source.path}: rows of width {source.width}, expected the SAE's input width {width}")
    return source, {"file": source.path.name, "rows": source.n_rows, "width": source.width}


def build_dashboard(sae: SAE, source: Rows, labels: Path | LabelTable | None, config: DashboardConfig, *,
                    sae_record: Mapping[str, Any], activations_record: Mapping[str, Any],
                    log: Callable[[str], object]) -> tuple[FeatureStatistics, dict[str, Any], dict[int, list[str]]]:
    """(statistics, index record, label cells of the top rows) of a dashboard, labels checked first."""
    columns: tuple[str, ...] = ()
    if isinstance(labels, LabelTable):
        if len(labels.cells) != source.n_rows:
            raise ValueError(f"{len(labels.cells)} label rows for {source.n_rows} activation rows")
        columns = labels.columns
    elif labels is not None:
        columns = check_labels(labels, source.n_rows, str(activations_record["file"]))
    log(f"Dashboard: {sae.dict_size} features of a {sae.arch.name} SAE over {source.n_rows} x {source.width} "
        f"activations, {config.rows_per_chunk(sae.dict_size)} rows at a time")
    started = time.perf_counter()
    passes = {1: "firings, sums, top rows", 2: "histograms"}

    def progress(step: int, done: int) -> None:
        if done == source.n_rows:
            log(f"  pass {step} of 2 ({passes[step]}) over {done} rows: {time.perf_counter() - started:.1f} s")

    stats = feature_statistics(sae, source, config, progress=progress)
    log(f"  decoder neighbours: {time.perf_counter() - started:.1f} s")
    wanted = {int(r) for r in np.unique(stats.top_rows) if r >= 0}
    cells = read_label_rows(labels, wanted) if labels is not None else {}
    index = dashboard_page.index_doc(stats, per_page=config.features_per_page, sae=sae_record,
                                     activations=activations_record, columns=columns, settings=asdict(config))
    return stats, index, cells


def stage_dashboard(folder: Path, stats: FeatureStatistics, index: dict[str, Any], cells: dict[int, list[str]]
                    ) -> list[Path]:
    """Write a dashboard's files into `folder` (an artifact set's staging folder); returns their paths."""
    written = dashboard_page.write_dashboard(folder, stats, index, cells)
    write_json_atomic(folder / SUMMARY_JSON, index)
    return [*written, folder / SUMMARY_JSON]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@highest_precision
def dashboard(sae: SAE | Path | str, activations: Path | str | np.ndarray, out_dir: Path | str, *,
              labels: Path | str | LabelTable | None = None, config: DashboardConfig | None = None,
              log: Callable[[str], object] = _stderr) -> Path:
    """Write the feature dashboard of `sae` (an SAE, or a path load_sae reads) over `activations` ((N, d) float32:
    a file open_activations reads, or an array), labelled by `labels` (a CSV path: header, then one row per
    activation row; or a LabelTable), into out_dir as one artifact set (config: DashboardConfig's defaults where
    None). Returns out_dir/dashboard.html."""
    config = DashboardConfig() if config is None else config
    try:
        config.validate()
    except ValueError as e:
        raise UserError(f"dashboard: {e}") from None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # before the work, not after it
        raise UserError(f"{out_dir}: is a file; --out must be a folder")
    if isinstance(sae, SAE):
        model, name = sae, "(in memory)"
    else:
        model, name = saelens.load_sae(sae, input_dim=None), Path(sae).name
    source, record = _activations(activations, model.input_dim)
    kind = "transcoder" if model.transcoder else "SAE"
    sae_record = {"name": name, "architecture": model.arch.name, "kind": kind, "input_dim": model.input_dim,
                  "dict_size": model.dict_size}
    label_source = Path(labels) if isinstance(labels, str | Path) else labels
    stats, index, cells = build_dashboard(model, source, label_source, config, sae_record=sae_record,
                                          activations_record=record, log=log)
    with folder_lock(out_dir, flag="--out", what="output folder"):
        remove_stale_temporaries(out_dir, (dashboard_page.DATA_DIR,))
        with artifact_set(out_dir, last=(SUMMARY_JSON,)) as staging:
            stage_dashboard(staging, stats, index, cells)
        _remove_stale_pages(out_dir / dashboard_page.DATA_DIR, index["pages"])
    page = out_dir / dashboard_page.DASHBOARD_HTML
    log(f"Dashboard of {model.dict_size} features ({index['pages']} pages, {index['dead']} never fire) -> {page}")
    return page


def _remove_stale_pages(data_dir: Path, pages: int) -> None:
    """Page files an earlier dashboard with more pages left (an artifact set replaces files, removes none)."""
    for path in data_dir.glob("page-*.js"):
        match = _PAGE_FILE.fullmatch(path.name)
        if match and int(match.group(1)) >= pages:
            path.unlink(missing_ok=True)
