"""A split on disk: the upstream .xlsx format, written and read.

The format is the upstream one: one sheet, a header row `input_list | output_list`, cells holding
Python list literals as text (`"[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]"`, `"[8]"`).

`read_split` streams the first worksheet's XML itself (not through openpyxl, whose read-only mode pads every
missing row and trusts every cell): it reads the cells of the two columns it needs, checks each cell's type,
reference and row number, and never builds more than a row at a time, so a 2 KB sheet whose last row is
numbered 1,048,576 costs what its two rows cost. The values it reads are openpyxl's (`values_only=True`) for
every well-formed workbook (tests/task/test_fuzz_xlsx.py compares them on ours and on upstream's files, and on
mutated ones). Each row is then checked against the task (jax_impl.task.pointer): values and pointers in
range, the target the task gives.
"""

from __future__ import annotations

import itertools
import json
import math
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
from openpyxl.utils.datetime import from_ISO8601

from jax_impl.errors import UserError
from jax_impl.files import xlsx
from jax_impl.task.pointer import Split, TaskShape, first_invalid_input, pointer_targets

try:  # defusedxml (a requirement) refuses entity declarations, as openpyxl's reader does with it installed
    from defusedxml.ElementTree import fromstring as _xml_fromstring
    from defusedxml.ElementTree import iterparse as _xml_iterparse
except ImportError:  # the standard library's expat stops an entity-expansion bomb by its amplification limit
    from xml.etree.ElementTree import fromstring as _xml_fromstring
    from xml.etree.ElementTree import iterparse as _xml_iterparse

INPUT_COLUMN = "input_list"
TARGET_COLUMN = "output_list"


def split_filename(split: str) -> str:
    return f"mlp_{split}.xlsx"


def write_split(path: Path | str, split: Split) -> None:
    """Write one split in the upstream xlsx format (atomically): sheet `Sheet1`, the header, then per row
    the two list literals as text, as pandas' `to_excel` writes them."""

    def rows() -> Iterator[str]:
        yield xlsx.sheet_start()
        yield f'<row r="1">{xlsx.text_cell(INPUT_COLUMN)}{xlsx.text_cell(TARGET_COLUMN)}</row>'
        for r, (row, target) in enumerate(zip(split.inputs.tolist(), split.targets.tolist()), start=2):
            yield f'<row r="{r}">{xlsx.text_cell(str(row))}{xlsx.text_cell(str([int(target)]))}</row>'
        yield xlsx.SHEET_END

    xlsx.write_workbook(path, "Sheet1", rows())


_INT32 = 2**31 - 1  # the split is held as int32 inputs / float32 targets; anything larger is surely wrong


def _shown(text: str, limit: int = 80) -> str:
    """repr(text), cut to `limit` characters: a message stays one short line whatever the cell holds."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


# A list literal as the upstream files and write_split spell it ("[8, 9, 5]": digits, no leading zeros, ", "
# between): json.loads reads it as these ints, and splitting it is a few times faster (10,000 rows per split).
_PLAIN_INT_LIST = re.compile(r"\[(?:0|[1-9][0-9]{0,8})(?:, (?:0|[1-9][0-9]{0,8}))*\]")


def _parse_int_list(text: object, path: Path, row: int, column: str, length: int, example: str) -> list[int]:
    if isinstance(text, str) and _PLAIN_INT_LIST.fullmatch(text):
        values = [int(v) for v in text[1:-1].split(", ")]
        if len(values) == length and max(values) <= _INT32:
            return values
    where = f"{path}: row {row}, column {column}"
    expected = f"expected a list of {length} integer{'s' if length > 1 else ''} like {example!r}"
    if not isinstance(text, str):
        raise UserError(f"{where}: {expected}, got {repr(text)[:80]}")
    try:
        # A Python list of ints is valid JSON, and json cannot execute anything (unlike eval).
        values = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise UserError(f"{where}: {expected}, got {_shown(text)} (not a list literal)") from None
    if not isinstance(values, list):
        raise UserError(f"{where}: {expected}, got {_shown(text)} (not a list)")
    if len(values) != length:
        raise UserError(f"{where}: {expected}, got {len(values)} element(s) in {_shown(text)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where}: {expected}, got non-number {_shown(v) if isinstance(v, str) else repr(v)[:40]} in {_shown(text)}")
        if not math.isfinite(v):
            raise UserError(f"{where}: {expected}, got non-finite {v!r} in {_shown(text)}")
        if v != int(v):
            raise UserError(f"{where}: {expected}, got non-integer {v!r} in {_shown(text)}")
        if abs(v) > _INT32:
            raise UserError(f"{where}: {expected}, got out-of-range {str(v)[:24]} in {_shown(text)}")
        out.append(int(v))
    return out


def _check_split(split: Split, row_numbers: np.ndarray, shape: TaskShape, path: Path) -> None:
    """Range and target checks over the whole split at once; the first offending row is reported."""
    invalid = first_invalid_input(split.inputs, shape)
    if invalid:
        r, problem = invalid
        raise UserError(f"{path}: row {row_numbers[r]}, column {INPUT_COLUMN}: {problem}")
    expected = pointer_targets(split.inputs, shape)
    wrong = np.flatnonzero(expected != split.targets)
    if wrong.size:
        r = wrong[0]
        raise UserError(
            f"{path}: row {row_numbers[r]}: {TARGET_COLUMN} [{int(split.targets[r])}] contradicts {INPUT_COLUMN}: "
            f"the task gives {int(expected[r])} (|first column[its pointer] - last column[its pointer]|); "
            f"{wrong.size} row(s) disagree"
        )


def read_split(path: Path | str, shape: TaskShape = TaskShape()) -> Split:
    """Read and validate an upstream-format xlsx split at `path` for the task `shape`: a Split of inputs
    (N, x_dim * y_dim) int32 and targets (N,) float32. Any defect raises UserError naming row and column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (expected an .xlsx split with columns {INPUT_COLUMN}, {TARGET_COLUMN})")
    inputs, targets, row_numbers = [], [], []
    with ExitStack() as stack:
        fh = stack.enter_context(open(path, "rb"))  # our own handle, closed whatever happens
        try:
            archive = stack.enter_context(zipfile.ZipFile(fh))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise UserError(f"{path}: not a readable .xlsx workbook ({e.__class__.__name__}: {str(e).strip()[:100]})") from None
        sheet = _FirstWorksheet(archive, path)
        rows = stack.enter_context(closing(sheet.rows()))
        first = next(rows, None)
        if first is None:
            raise UserError(f"{path}: the sheet is empty; expected a header row {INPUT_COLUMN} | {TARGET_COLUMN}")
        # As openpyxl reads a sheet: the header is row 1, empty when the sheet's first row comes later.
        header_cells, pending = (first[1], []) if first[0] == 1 else ({}, [first])
        header = {}
        for column, cell in sorted(header_cells.items()):
            value = sheet.value(cell, f"{path}: row 1 (the header)")
            header[column] = value.strip() if isinstance(value, str) else value
        for name in (INPUT_COLUMN, TARGET_COLUMN):
            if name not in header.values():
                found = [h for h in header.values() if h is not None]
                raise UserError(f"{path}: missing column {name!r} in the header row (found {found})")
        i_col = min(c for c, h in header.items() if h == INPUT_COLUMN)
        t_col = min(c for c, h in header.items() if h == TARGET_COLUMN)
        example_input = str([0] * shape.input_dim)
        for row_number, cells in itertools.chain(pending, rows):
            if all(cell.text is None for cell in cells.values()):
                continue  # blank rows that spreadsheet programs leave behind
            x = sheet.value(cells.get(i_col), f"{path}: row {row_number}, column {INPUT_COLUMN}")
            t = sheet.value(cells.get(t_col), f"{path}: row {row_number}, column {TARGET_COLUMN}")
            inputs.append(_parse_int_list(x, path, row_number, INPUT_COLUMN, shape.input_dim, example_input))
            targets.append(_parse_int_list(t, path, row_number, TARGET_COLUMN, 1, "[8]")[0])
            row_numbers.append(row_number)
    if not inputs:
        raise UserError(f"{path}: no data rows below the header")
    split = Split(np.asarray(inputs, np.int32), np.asarray(targets, np.float32))
    _check_split(split, np.asarray(row_numbers), shape, path)
    return split


# --------------------------------------------------------------------------- the xlsx reader

_MAIN = f"{{{xlsx.XLSX_NS}}}"
_WORKSHEET, _SHEET_DATA, _ROW, _CELL = (f"{_MAIN}{t}" for t in ("worksheet", "sheetData", "row", "c"))
_VALUE, _INLINE_STRING = f"{_MAIN}v", f"{_MAIN}is"
_CONTENT_TYPES = "[Content_Types].xml"
_CT = "{http://schemas.openxmlformats.org/package/2006/content-types}"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
# The workbook part's content types (xlsx, xltx, xlsm, xltm), as openpyxl looks for them, and the strings'.
_WORKBOOK_TYPES = (
    "application/vnd.openxmlformats-officedocument.spreadsheetml.template.main+xml",
    "application/vnd.ms-excel.template.macroEnabled.main+xml",
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml",
)
_SHARED_STRINGS_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
MAX_ROWS, MAX_COLUMNS = 1_048_576, 16_384  # a sheet's limits in Excel (rows 1..1048576, columns A..XFD)
# The largest uncompressed XML part read: Excel's row limit at 256 bytes a row (a split's row takes ~130). A
# zip entry's declared size bounds what zipfile inflates, so a compression bomb is refused before parsing.
MAX_PART_BYTES = MAX_ROWS * 256
_CELL_REF = re.compile(r"([A-Z]{1,3})([0-9]{1,7})")
_ROW_NUMBER = re.compile(r"[0-9]{1,7}")
_STRING_INDEX = re.compile(r"[0-9]{1,9}")
# Each cell type (the `t` attribute; absent means "n") and what it holds, for messages.
_CELL_TYPES = {"n": "a number", "s": "a shared string", "inlineStr": "an inline string", "str": "a formula's text",
               "b": "a boolean", "e": "an error", "d": "a date"}
# What a damaged part makes zipfile or the XML parser raise (defusedxml's refusals are ValueErrors; zipfile
# says RuntimeError for an encrypted member and NotImplementedError for an unknown compression method).
_DAMAGE = (ParseError, ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, RuntimeError,
           NotImplementedError)


@dataclass(frozen=True)
class _Cell:
    ref: str  # "B3" (made up from the position where the file gives none)
    kind: str  # the `t` attribute
    text: str | None  # the <v> text, or an inline string's text; None for a cell without a value


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _text_content(element: Element) -> str:
    """The text of an <is> or <si> element as openpyxl reads it: its <t> (the last, if several), then the
    <t> of each rich-text run <r>; phonetic runs (<rPh>) are left out. Namespaces are ignored, as openpyxl does."""
    plain, runs = None, []
    for child in element:
        name = _local(child.tag)
        if name == "t":
            plain = child.text
        elif name == "r":
            run = None
            for part in child:
                if _local(part.tag) == "t":
                    run = part.text
            if run is not None:
                runs.append(run)
    return (plain or "") + "".join(runs)


def _column_number(letters: str) -> int:
    """'A' -> 1, 'Z' -> 26, 'AA' -> 27."""
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - 64
    return number


class _FirstWorksheet:
    """The first sheet of an xlsx workbook, which must be a worksheet, read as a stream of rows.

    The package is followed as openpyxl follows it: [Content_Types].xml names the workbook and shared-strings
    parts, the workbook's first <sheet> and its relationship name the sheet's part. Every defect is a
    one-line UserError naming the file (and the part, row or cell).
    """

    def __init__(self, archive: zipfile.ZipFile, path: Path):
        self.archive, self.path = archive, path
        types = self._xml(_CONTENT_TYPES)
        overrides = {}
        for override in types.iter(f"{_CT}Override"):
            overrides.setdefault(override.get("ContentType"), str(override.get("PartName", "")).lstrip("/"))
        defaults = {d.get("ContentType") for d in types.iter(f"{_CT}Default")}
        workbook = next((overrides[t] for t in _WORKBOOK_TYPES if t in overrides), None)
        if workbook is None and defaults.intersection(_WORKBOOK_TYPES):
            workbook = "xl/workbook.xml"  # some applications make the workbook type the default, as openpyxl knows
        if workbook is None:
            raise self._unreadable(f"{_CONTENT_TYPES} names no workbook part")
        self.part, self.sheet_name = self._first_sheet(workbook)
        strings_part = overrides.get(_SHARED_STRINGS_TYPE)
        self.shared_strings = self._shared_strings(strings_part) if strings_part else []

    def _unreadable(self, problem: str) -> UserError:
        return UserError(f"{self.path}: not a readable .xlsx workbook ({problem})")

    def _damaged(self, part: str, e: BaseException) -> UserError:
        if isinstance(e, KeyError):
            return self._unreadable(f"{part} is missing")
        hostile = " or hostile" if isinstance(e, ValueError) and not isinstance(e, UnicodeError) else ""
        detail = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
        return self._unreadable(f"{part} is damaged{hostile}: {e.__class__.__name__}: {detail}")

    def _open(self, part: str):
        try:
            info = self.archive.getinfo(part)
        except KeyError:
            raise self._unreadable(f"{part} is missing") from None
        if info.file_size > MAX_PART_BYTES:
            raise self._unreadable(f"{part} holds {info.file_size} bytes uncompressed, more than the {MAX_PART_BYTES} read")
        try:
            return self.archive.open(info)
        except _DAMAGE as e:
            raise self._damaged(part, e) from None

    def _xml(self, part: str) -> Element:
        """A small part (content types, workbook, relationships), parsed whole."""
        with self._open(part) as stream:
            try:
                return _xml_fromstring(stream.read())
            except _DAMAGE as e:
                raise self._damaged(part, e) from None

    def _first_sheet(self, workbook: str) -> tuple[str, str]:
        """(the part, the name) of the workbook's first sheet, which must be a worksheet."""
        sheet = next(self._xml(workbook).iter(f"{_MAIN}sheet"), None)
        if sheet is None:
            raise UserError(f"{self.path}: the workbook has no sheets; expected one with the columns {INPUT_COLUMN}, {TARGET_COLUMN}")
        name = sheet.get("name", "")
        rel_id = sheet.get(f"{{{xlsx.REL_NS}}}id")
        folder, base = posixpath.split(workbook)
        rels_part = posixpath.join(folder, "_rels", f"{base}.rels")
        rel = None
        if rel_id is not None and rels_part in self.archive.namelist():
            rel = next((r for r in self._xml(rels_part).iter(f"{_RELS}Relationship") if r.get("Id") == rel_id), None)
        if rel is None or rel.get("TargetMode") == "External":
            raise self._unreadable(f"its first sheet {name!r} has no part ({rels_part} has no relationship {rel_id!r})")
        kind = str(rel.get("Type", "")).rpartition("/")[2]
        if kind != "worksheet":
            raise UserError(f"{self.path}: the first sheet {name!r} is a {kind or 'part of no type'}, expected a worksheet with "
                            f"the columns {INPUT_COLUMN}, {TARGET_COLUMN}")
        target = str(rel.get("Target", ""))  # relative to the workbook's folder, or absolute in the package
        part = target[1:] if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
        return part, name

    def _shared_strings(self, part: str) -> list[str]:
        """The shared-string table, as openpyxl reads it (its text, with openpyxl's removal of 'x005F_')."""
        strings = []
        with self._open(part) as stream:
            try:
                for _, element in _xml_iterparse(stream):
                    if element.tag == f"{_MAIN}si":
                        strings.append(_text_content(element).replace("x005F_", ""))
                        element.clear()
            except _DAMAGE as e:
                raise self._damaged(part, e) from None
        return strings

    def rows(self) -> Iterator[tuple[int, dict[int, _Cell]]]:
        """(row number, {column number: cell}) for each <row> of the sheet, in order, one row in memory at a time.

        Checked here: the XML's nesting (rows in <sheetData>, cells in rows), row numbers (increasing, within
        1..MAX_ROWS) and cell references (well-formed, in their row, columns increasing within A..XFD).
        """
        with self._open(self.part) as stream:
            events = _xml_iterparse(stream, events=("start", "end"))
            open_tags: list[Element] = []
            previous = 0
            while True:
                try:
                    event, element = next(events)
                except StopIteration:
                    return
                except _DAMAGE as e:
                    raise self._damaged(self.part, e) from None
                if event == "start" and not open_tags and element.tag != _WORKSHEET:
                    raise self._not_a_worksheet(element.tag, events)
                if event == "start":
                    if open_tags:
                        self._check_nesting(element, open_tags[-1])
                    open_tags.append(element)
                    continue
                open_tags.pop()
                if element.tag == _ROW:
                    number = self._row_number(element, previous)
                    yield number, self._cells(element, number)
                    previous = number
                    open_tags[-1].remove(element)  # a row at a time: the parsed rows are not kept
                elif len(open_tags) == 1:
                    element.clear()  # a finished part of the sheet (columns, views, merged cells): not needed

    def _not_a_worksheet(self, root: str, events: Iterator) -> UserError:
        """The error for a sheet part whose root is not a worksheet: the part's damage if it is damaged (read to
        its end, within MAX_PART_BYTES), else what the root is."""
        try:
            for _, element in events:
                element.clear()
        except _DAMAGE as e:
            return self._damaged(self.part, e)
        kind = f"<{_local(root)}>" + ("" if root.startswith(_MAIN) else f" outside the namespace {xlsx.XLSX_NS}")
        return UserError(f"{self.path}: the first sheet {self.sheet_name!r} ({self.part}) is a {kind}, expected a worksheet "
                         f"with the columns {INPUT_COLUMN}, {TARGET_COLUMN}")

    def _check_nesting(self, element: Element, parent: Element) -> None:
        expected = {_SHEET_DATA: _WORKSHEET, _ROW: _SHEET_DATA, _CELL: _ROW}.get(element.tag)
        if expected is not None and parent.tag != expected:
            raise self._unreadable(f"{self.part} is damaged: a <{_local(element.tag)}> inside <{_local(parent.tag)}>, "
                                   f"expected inside <{_local(expected)}>")

    def _row_number(self, row: Element, previous: int) -> int:
        text = row.get("r")
        if text is None:
            number = previous + 1  # a row without a number follows the one before, as in openpyxl
        elif _ROW_NUMBER.fullmatch(text):
            number = int(text)
        else:
            raise UserError(f"{self.path}: the row after row {previous} has row number {_shown(text, 40)}, expected 1..{MAX_ROWS}")
        if not 1 <= number <= MAX_ROWS:
            raise UserError(f"{self.path}: row number {number} (after row {previous}) is out of range, expected 1..{MAX_ROWS}")
        if number <= previous:
            raise UserError(f"{self.path}: row {number} comes after row {previous}; expected increasing row numbers")
        return number

    def _cells(self, row: Element, number: int) -> dict[int, _Cell]:
        cells: dict[int, _Cell] = {}
        column = 0
        for c in row:
            if c.tag != _CELL:
                continue  # a row's extension list, or an element of another namespace: no cell
            ref = c.get("r")
            if ref is None:
                column += 1  # a cell without a reference follows the one before, as in openpyxl
                ref = f"{xlsx.column_letter(column - 1)}{number}"
            else:
                match = _CELL_REF.fullmatch(ref)
                if match is None or int(match[2]) != number:
                    raise UserError(f"{self.path}: row {number}: cell reference {_shown(ref, 40)}, expected a reference to a "
                                    f"cell of row {number} (column letters A..XFD, then {number})")
                previous, column = column, _column_number(match[1])
                if column <= previous:
                    raise UserError(f"{self.path}: row {number}: cell {ref} comes after column "
                                    f"{xlsx.column_letter(previous - 1)}; expected increasing columns")
            if column > MAX_COLUMNS:
                raise UserError(f"{self.path}: row {number}: cell {ref} is beyond column XFD, the last of a sheet")
            kind = c.get("t", "n")
            if kind == "inlineStr":
                inline = c.find(_INLINE_STRING)
                text = None if inline is None else _text_content(inline)
            else:
                text = c.findtext(_VALUE) or None
            cells[column] = _Cell(ref, kind, text)
        return cells

    def value(self, cell: _Cell | None, where: str) -> object:
        """The cell's value as openpyxl gives it (None, str, int, float, bool, datetime), after checking its
        type: a number or boolean must hold one, a shared string's index must be in the table."""
        if cell is None:
            return None
        if cell.kind not in _CELL_TYPES:
            raise UserError(f"{where}: cell {cell.ref} has type {_shown(cell.kind, 20)}, expected one of {', '.join(_CELL_TYPES)}")
        text = cell.text
        if text is None or cell.kind in ("inlineStr", "str", "e"):
            return text
        if cell.kind == "s":
            index = int(text) if _STRING_INDEX.fullmatch(text) else -1
            if not 0 <= index < len(self.shared_strings):
                raise UserError(f"{where}: cell {cell.ref} refers to shared string {_shown(text, 20)}, but the workbook has "
                                f"{len(self.shared_strings)} (indices 0..{len(self.shared_strings) - 1})")
            return self.shared_strings[index]
        try:
            if cell.kind == "n":
                return float(text) if "." in text or "e" in text or "E" in text else int(text)
            if cell.kind == "b":
                return bool(int(text))
            return from_ISO8601(text)
        except (ValueError, TypeError, OverflowError):
            raise UserError(f"{where}: cell {cell.ref} has type {cell.kind!r} ({_CELL_TYPES[cell.kind]}) "
                            f"but holds {_shown(text)}") from None
